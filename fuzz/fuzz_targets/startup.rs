//! The startup packet and frame splitters on arbitrary bytes: must never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    usher::fuzzing::startup_bytes(data);
});
