//! Cost of the framing on the data path: cutting whole frames off a client buffer
//! (`split_frame`), and the relay's header-only scan of a server buffer that is then forwarded
//! as one slice (`peek_header` per frame, no body decoded, no copy).
//!
//!   cargo bench --bench frames

use std::hint::black_box;

use bytes::{BufMut, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use usher::protocol::frame::peek_header;
use usher::protocol::split_frame;

/// A server answer: RowDescription, `rows` DataRows of `width` bytes, CommandComplete, RFQ.
fn answer(rows: usize, width: usize) -> BytesMut {
    let mut b = BytesMut::new();
    let mut frame = |tag: u8, body: &[u8]| {
        b.put_u8(tag);
        b.put_i32(body.len() as i32 + 4);
        b.put_slice(body);
    };
    frame(
        b'T',
        b"\0\x01aid\0\0\0\0\0\0\x01\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0",
    );
    let mut row = vec![0u8, 1];
    row.extend_from_slice(&(width as i32).to_be_bytes());
    row.extend(std::iter::repeat_n(b'x', width));
    for _ in 0..rows {
        frame(b'D', &row);
    }
    frame(b'C', b"SELECT 1000\0");
    frame(b'Z', b"I");
    b
}

fn frames(c: &mut Criterion) {
    let buf = answer(1000, 100);
    let mut g = c.benchmark_group("server answer, 1000 rows of 100 bytes");
    g.throughput(Throughput::Bytes(buf.len() as u64));
    g.bench_function("relay scan (headers only, forwarded as one slice)", |b| {
        b.iter(|| {
            let data = black_box(&buf[..]);
            let mut pos = 0;
            let mut frames = 0;
            while let Ok(Some((_, total))) = peek_header(&data[pos..], 1 << 30) {
                if data.len() < pos + total {
                    break;
                }
                pos += total;
                frames += 1;
            }
            black_box((frames, pos))
        })
    });
    g.bench_function("split_frame each frame (Bytes handles, no copy)", |b| {
        b.iter_batched(
            || buf.clone(),
            |mut data| {
                let mut n = 0;
                while let Ok(Some(f)) = split_frame(&mut data, 1 << 30) {
                    n += f.raw.len();
                }
                black_box(n)
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
    // A client's extended-protocol batch: Parse/Bind/Describe/Execute/Sync.
    let mut batch = BytesMut::new();
    for (tag, body) in [
        (
            b'P',
            &b"\0SELECT abalance FROM pgbench_accounts WHERE aid = $1\0\0\0"[..],
        ),
        (b'B', &b"\0\0\0\0\0\x01\0\0\0\x0512345\0\0"[..]),
        (b'D', &b"P\0"[..]),
        (b'E', &b"\0\0\0\0\0"[..]),
        (b'S', &b""[..]),
    ] {
        batch.put_u8(tag);
        batch.put_i32(body.len() as i32 + 4);
        batch.put_slice(body);
    }
    c.bench_function("split a client batch (P/B/D/E/S)", |b| {
        b.iter_batched(
            || batch.clone(),
            |mut data| {
                let mut n = 0;
                while let Ok(Some(f)) = split_frame(&mut data, 1 << 20) {
                    n += f.tag as usize;
                }
                black_box(n)
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(std::time::Duration::from_secs(3));
    targets = frames
}
criterion_main!(benches);
