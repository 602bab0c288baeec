//! Benchmarks of datalayer; the benches live in `benches/`.
