//! Arbitrary operation sequences on the engine (producers, workers, faults, crashes, clock
//! jumps) over the Redis Streams model: no invariant may break.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    datalayer_core::fuzz::engine_ops(data);
});
