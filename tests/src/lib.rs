//! Test harness shared by the end-to-end tests and the benchmark.
