//! Generated placement instances that look like real orchestras, for benchmarks and tests.
