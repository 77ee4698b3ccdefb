//! Placement benchmarks over generated orchestra families.
fn main() {}
