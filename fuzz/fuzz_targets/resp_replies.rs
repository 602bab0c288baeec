//! Arbitrary bytes as replies from Redis into the core's RESP decoder: the same replies
//! (or the same failure) however the bytes arrive, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    datalayer_core::fuzz::resp_replies(data);
});
