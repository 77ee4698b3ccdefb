//! UDP ports per host, for OSC blocks and network links alike: a port that is kept stays; a
//! new one is the lowest port of its range that nothing running holds on that host — what
//! plays now still holds its ports, since make-before-break runs old and new side by side.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;

/// Ports held per host.
#[derive(Debug, Default)]
pub struct PortPool {
    held: BTreeMap<String, BTreeSet<u16>>,
}

impl PortPool {
    /// `port` on `host` is in use (by what runs now, or kept).
    pub fn hold(&mut self, host: &str, port: u16) {
        self.held.entry(host.to_string()).or_default().insert(port);
    }

    /// Take the lowest free port of `range` on `host`; `None` when the range is full.
    pub fn take_lowest(&mut self, host: &str, range: RangeInclusive<u16>) -> Option<u16> {
        let held = self.held.entry(host.to_string()).or_default();
        let port = range.into_iter().find(|p| !held.contains(p))?;
        held.insert(port);
        Some(port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_free_port_per_host_and_none_when_full() {
        let mut pool = PortPool::default();
        pool.hold("h1", 10);
        assert_eq!(pool.take_lowest("h1", 10..=12), Some(11));
        assert_eq!(pool.take_lowest("h2", 10..=12), Some(10));
        assert_eq!(pool.take_lowest("h1", 10..=12), Some(12));
        assert_eq!(pool.take_lowest("h1", 10..=12), None);
    }
}
