//! Arbitrary bytes into `Sealer::open`: must give a record or a typed error, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    datalayer_core::fuzz::open_envelope(data);
});
