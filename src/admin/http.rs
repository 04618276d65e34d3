//! A small HTTP/1.1 server for `metrics_listen`: `GET /metrics` (Prometheus text format),
//! `/health` (the process serves), `/ready` (every shard of every database has a reachable
//! primary) and `/pools` (JSON). One request per connection; requests are capped in size and
//! time so a slow or hostile scraper cannot hold anything.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::app::App;
use crate::stats::collect;

/// Largest request head read.
const MAX_REQUEST: usize = 8192;

/// Serves HTTP on `listener` until dropped.
pub async fn serve(app: Arc<App>, listener: TcpListener) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let app = app.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), handle(app, stream)).await;
        });
    }
}

async fn handle(app: Arc<App>, mut stream: TcpStream) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_REQUEST {
            return respond(&mut stream, 431, "text/plain", "request too large\n").await;
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    if method != "GET" && method != "HEAD" {
        return respond(&mut stream, 405, "text/plain", "only GET\n").await;
    }
    match path {
        "/metrics" => {
            let body = collect::render(&app);
            respond(
                &mut stream,
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                &body,
            )
            .await
        }
        "/health" => respond(&mut stream, 200, "text/plain", "ok\n").await,
        "/ready" => {
            let problems = not_ready(&app).await;
            if problems.is_empty() {
                respond(&mut stream, 200, "text/plain", "ready\n").await
            } else {
                respond(
                    &mut stream,
                    503,
                    "text/plain",
                    &(problems.join("\n") + "\n"),
                )
                .await
            }
        }
        "/pools" => {
            respond(
                &mut stream,
                200,
                "application/json",
                &collect::pools_json(&app),
            )
            .await
        }
        _ => {
            respond(
                &mut stream,
                404,
                "text/plain",
                "not found: try /metrics, /health, /ready or /pools\n",
            )
            .await
        }
    }
}

/// Why usher is not ready: shards without a known, unbanned, reachable primary.
pub async fn not_ready(app: &App) -> Vec<String> {
    let topology = app.topology();
    let mut checks = Vec::new();
    let mut problems = Vec::new();
    for (db, shards) in &topology.databases {
        for (i, shard) in shards.iter().enumerate() {
            match shard.primary().map(|p| &shard.servers[p]) {
                None => problems.push(format!("database {db} shard {i}: no primary known")),
                Some(s) if s.is_banned() => problems.push(format!(
                    "database {db} shard {i}: primary {} is banned",
                    s.addr
                )),
                Some(s) => checks.push((db.clone(), i, s.addr.clone())),
            }
        }
    }
    let results = futures_util::future::join_all(checks.iter().map(|(_, _, addr)| {
        tokio::time::timeout(
            Duration::from_secs(1),
            TcpStream::connect((addr.host.as_str(), addr.port)),
        )
    }))
    .await;
    for ((db, i, addr), r) in checks.iter().zip(results) {
        if !matches!(r, Ok(Ok(_))) {
            problems.push(format!(
                "database {db} shard {i}: primary {addr} unreachable"
            ));
        }
    }
    problems.sort();
    problems
}

async fn respond(
    stream: &mut TcpStream,
    status: u16,
    kind: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
