//! Holds the cross-crate tests in tests/ and the benchmarks in benches/.
