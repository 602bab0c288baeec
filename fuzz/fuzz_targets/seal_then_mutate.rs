//! Seal a plaintext, mutate the envelope or its context: it opens exactly when unchanged.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    datalayer_core::fuzz::seal_then_mutate(data);
});
