//! The time the controller's policies go by — restarts, agents respawned, down hosts probed,
//! links avoided, unreachable hosts retried: tokio's clock, so that a test with paused time
//! (`#[tokio::test(start_paused = true)]`) moves through a policy's window without waiting
//! for it; real time otherwise (and outside a runtime). Timings said to people (`applied in
//! 12 ms`) are real time, always.

use std::time::{Duration, Instant};

/// Now, by the policies' clock.
pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// How long since `then`, by the policies' clock.
pub fn since(then: Instant) -> Duration {
    now().saturating_duration_since(then)
}
