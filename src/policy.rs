//! Retry and back-off as data (as kube-rs returns `Action::requeue`): how often a dead synth
//! is restarted before it is left stopped, and how often a lost agent is replaced. Pure: the
//! caller passes the time, so each rule is tested without a clock or a synth.

use orchestra_protocol::ClientName;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// When to stop restarting a synth that keeps dying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Exits within `window` after which it is left stopped until the next reload.
    pub max_exits: usize,
    pub window: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            max_exits: 3,
            window: Duration::from_secs(30),
        }
    }
}

/// Every retry rule of a run, as data (tests shorten them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policies {
    pub restart: RestartPolicy,
    /// A lost agent is replaced at most this often per host.
    pub respawn_every: Duration,
    /// A host that went down is asked this often whether it answers again.
    pub probe_down_every: Duration,
    /// A link given up on (it kept failing) has its sending host left out of placements
    /// this long, so its blocks are placed to avoid it.
    pub avoid_failing_link_for: Duration,
}

impl Default for Policies {
    fn default() -> Self {
        Policies {
            restart: RestartPolicy::default(),
            respawn_every: Duration::from_secs(5),
            probe_down_every: Duration::from_secs(2),
            avoid_failing_link_for: Duration::from_secs(60),
        }
    }
}

/// What to do with a synth found dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    Now,
    /// It has died too often: say so once and leave it stopped.
    GiveUp,
    /// Given up on earlier; stays stopped until the next reload.
    Stopped,
}

/// Recent exits per client, and the clients given up on.
#[derive(Debug, Clone, Default)]
pub struct Restarts {
    pub policy: RestartPolicy,
    exits: BTreeMap<ClientName, Vec<Instant>>,
    given_up: BTreeSet<ClientName>,
}

impl Restarts {
    pub fn new(policy: RestartPolicy) -> Restarts {
        Restarts {
            policy,
            ..Restarts::default()
        }
    }

    /// A dead `client` was found at `now`: restart it, or not.
    pub fn decide(&mut self, client: &ClientName, now: Instant) -> Restart {
        if self.given_up.contains(client) {
            return Restart::Stopped;
        }
        let times = self.exits.entry(client.clone()).or_default();
        times.retain(|t| now.saturating_duration_since(*t) < self.policy.window);
        if times.len() >= self.policy.max_exits {
            self.given_up.insert(client.clone());
            return Restart::GiveUp;
        }
        times.push(now);
        Restart::Now
    }

    /// A restart that failed counts like an exit (it is not retried at once).
    pub fn failed(&mut self, client: &ClientName, now: Instant) {
        self.exits.entry(client.clone()).or_default().push(now);
    }

    /// A reload is a fresh start for every synth: its past exits no longer count.
    pub fn forgive(&mut self) {
        self.given_up.clear();
        self.exits.clear();
    }
}

/// At most one attempt per key (a host) every `every`.
#[derive(Debug, Clone)]
pub struct Throttle {
    pub every: Duration,
    last: BTreeMap<String, Instant>,
}

impl Throttle {
    pub fn new(every: Duration) -> Throttle {
        Throttle {
            every,
            last: BTreeMap::new(),
        }
    }

    /// Whether `key` may try again at `now` (and if so, the attempt is counted).
    pub fn allow(&mut self, key: &str, now: Instant) -> bool {
        if self
            .last
            .get(key)
            .is_some_and(|t| now.saturating_duration_since(*t) < self.every)
        {
            return false;
        }
        self.last.insert(key.to_string(), now);
        true
    }

    /// When `key` last tried, if it did.
    pub fn last(&self, key: &str) -> Option<Instant> {
        self.last.get(key).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_synth_that_exits_three_times_in_30_s_is_left_stopped_until_the_next_reload() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut restarts = Restarts::new(RestartPolicy::default());
        assert_eq!(
            restarts.decide(&"osc-1".parse().unwrap(), at(0)),
            Restart::Now
        );
        assert_eq!(
            restarts.decide(&"osc-1".parse().unwrap(), at(10)),
            Restart::Now
        );
        assert_eq!(
            restarts.decide(&"osc-1".parse().unwrap(), at(20)),
            Restart::Now
        );
        assert_eq!(
            restarts.decide(&"osc-1".parse().unwrap(), at(25)),
            Restart::GiveUp
        );
        assert_eq!(
            restarts.decide(&"osc-1".parse().unwrap(), at(100)),
            Restart::Stopped
        );
        // Another synth is not affected, and a reload forgives.
        assert_eq!(
            restarts.decide(&"filt-1".parse().unwrap(), at(100)),
            Restart::Now
        );
        restarts.forgive();
        assert_eq!(
            restarts.decide(&"osc-1".parse().unwrap(), at(101)),
            Restart::Now
        );
    }

    #[test]
    fn exits_spread_wider_than_the_window_are_restarted_every_time() {
        let start = Instant::now();
        let mut restarts = Restarts::new(RestartPolicy::default());
        for minute in 0..10 {
            let now = start + Duration::from_secs(60 * minute);
            assert_eq!(
                restarts.decide(&"osc-1".parse().unwrap(), now),
                Restart::Now
            );
        }
    }

    #[test]
    fn a_lost_agent_is_replaced_no_more_often_than_the_throttle_says() {
        let start = Instant::now();
        let mut throttle = Throttle::new(Duration::from_secs(5));
        assert!(throttle.allow("h1", start));
        assert!(!throttle.allow("h1", start + Duration::from_secs(1)));
        assert!(throttle.allow("h2", start + Duration::from_secs(1)));
        assert!(!throttle.allow("h1", start + Duration::from_millis(4999)));
        assert!(throttle.allow("h1", start + Duration::from_secs(5)));
    }
}
