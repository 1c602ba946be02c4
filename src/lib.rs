//! Root package: owns the integration tests in tests/ and the benchmarks in benches/.
