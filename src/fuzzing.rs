//! Entry points for the fuzz targets in `fuzz/` and for the property tests that run the same
//! code in the normal test suite: each feeds arbitrary bytes to every decoder that reads what
//! a peer sent, which must return (a value or an error) and never panic.

use bytes::BytesMut;

use crate::config::KeyType;
use crate::protocol::{client, messages, server, split_frame, startup, Frame};
use crate::router::shard::{keys, values};

/// Startup-phase bytes: the startup packet splitter and the frame splitter.
pub fn startup_bytes(input: &[u8]) {
    let mut buf = BytesMut::from(input);
    while let Ok(Some(_)) = startup::split_startup(&mut buf) {}
    let mut buf = BytesMut::from(input);
    while let Ok(Some(_)) = split_frame(&mut buf, 1 << 16) {}
}

/// One message body under every client and server tag usher decodes: the typed views, the
/// prepared-statement translation, bind values and shard keys, and query normalization.
pub fn message_bytes(input: &[u8]) {
    for tag in *b"QPBDCEfSHcdFXZ" {
        let frame = Frame::new(tag, input);
        let _ = client::validate(&frame);
        let _ = client::sql_of(&frame);
        if let Ok(p) = client::Parse::new(&frame) {
            let _ = (p.name_span().of(frame.body()), p.owned_query_and_types());
        }
        if let Ok(b) = client::Bind::new(&frame) {
            let _ = (b.statement_span().of(frame.body()), b.rest());
        }
        if let Ok(t) = client::Targeted::new(&frame) {
            let _ = t.name_span().of(frame.body());
        }
        let _ = server::frame_at(input, 1 << 16);
        let _ = server::ready_status(input);
        let _ = server::parameter_status(input);
        let _ = server::command_tag(input);
        let _ = server::row_description_columns(input);
    }
    let _ = messages::ErrorFields::parse(input);
    for tag in [b'P', b'B', b'D', b'C'] {
        crate::session::probe_translate(tag, input);
    }
    let _ = values::BindParams::parse(input);
    for key_type in [KeyType::Bigint, KeyType::Uuid, KeyType::Text] {
        for oid in [0, 20, 21, 23, 25, 2950, 7] {
            let _ = keys::from_binary(input, oid, key_type);
        }
        let _ = keys::from_text(input, key_type);
    }
    let mut spans = Vec::new();
    let _ = crate::router::normalize::cache_key_and_spans(input, &mut spans);
    for span in &spans {
        let _ = crate::router::normalize::literal_value(input, span);
    }
}
