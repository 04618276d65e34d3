//! Every decoder of a message body a peer sent (client views, prepared-statement rewriting,
//! bind values, shard keys, server views) on arbitrary bytes: must never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    usher::fuzzing::message_bytes(data);
});
