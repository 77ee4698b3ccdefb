//! Link health, seen from the receiving end: while no packet comes, jacktrip says `UDP
//! waiting too long` about every 30 ms (a sender that runs but sends nothing — stopped, its
//! host's network gone one way — looks alive to everything else). A receiving end that keeps
//! saying so for [`STARVED_AFTER`] is reported once per starvation, and the controller
//! restarts the link.

use orchestra_protocol::wire::Event;
use orchestra_protocol::{ClientName, LinkEnd};
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How long a receiving end may go without packets before its link counts as starved.
pub const STARVED_AFTER: Duration = Duration::from_millis(1000);

/// What jacktrip prints while it waits for packets.
const STARVING: &str = "UDP waiting too long";

/// A receiving end being watched: how much of its log was read, and since when it starves.
#[derive(Debug, Default)]
struct Watched {
    read: u64,
    starving_since: Option<Instant>,
    reported: bool,
}

/// The receiving ends of this host's links and what their logs said lately.
#[derive(Debug, Default)]
pub struct LinkHealth {
    watched: BTreeMap<ClientName, Watched>,
}

/// One receiving end: which end it is, its client and its log file.
pub struct Receiver {
    pub end: LinkEnd,
    pub client: ClientName,
    pub log: PathBuf,
}

impl LinkHealth {
    /// Read what each receiving end logged since the last look; the links starved for
    /// [`STARVED_AFTER`] now, once each per starvation.
    pub fn check(&mut self, receivers: Vec<Receiver>, now: Instant) -> Vec<Event> {
        self.watched
            .retain(|client, _| receivers.iter().any(|r| r.client == *client));
        let mut starved = Vec::new();
        for receiver in receivers {
            let watched = self.watched.entry(receiver.client.clone()).or_default();
            let fresh = read_new(&receiver.log, &mut watched.read);
            if fresh.contains(STARVING) {
                let since = *watched.starving_since.get_or_insert(now);
                if !watched.reported && now.duration_since(since) >= STARVED_AFTER {
                    watched.reported = true;
                    starved.push(Event::LinkStarved {
                        end: receiver.end,
                        client: receiver.client,
                        for_ms: now.duration_since(since).as_millis() as u64,
                    });
                }
            } else {
                *watched = Watched {
                    read: watched.read,
                    ..Watched::default()
                };
            }
        }
        starved
    }
}

/// What `log` gained past `read` (which follows it; a log started anew is read from its
/// start).
fn read_new(log: &std::path::Path, read: &mut u64) -> String {
    let Ok(mut file) = std::fs::File::open(log) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len < *read {
        *read = 0;
    }
    // At most the last 64 KiB: a long starvation is a lot of identical lines.
    let from = (*read).max(len.saturating_sub(64 * 1024));
    let mut fresh = Vec::new();
    if file.seek(SeekFrom::Start(from)).is_ok() {
        let _ = file.take(len - from).read_to_end(&mut fresh);
    }
    *read = len;
    String::from_utf8_lossy(&fresh).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_receiver_that_keeps_waiting_is_reported_once_and_again_after_it_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        std::fs::write(
            &log,
            "Waiting for Peer...\nReceived Connection from Peer!\n",
        )
        .unwrap();
        let receiver = || {
            vec![Receiver {
                end: "link-a.receive".parse().unwrap(),
                client: "link-a".parse().unwrap(),
                log: log.clone(),
            }]
        };
        let say = |text: &str| {
            let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
            file.write_all(text.as_bytes()).unwrap();
        };
        let mut health = LinkHealth::default();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert!(health.check(receiver(), at(0)).is_empty(), "healthy");
        let waiting = "UDP waiting too long (more than 30ms) for 10.0.0.1...\n";
        let mut reports = Vec::new();
        for ms in (200..=2000).step_by(200) {
            say(waiting);
            reports.extend(health.check(receiver(), at(ms)));
        }
        assert_eq!(reports.len(), 1, "once: {reports:?}");
        assert!(
            matches!(&reports[0], Event::LinkStarved { for_ms, .. } if *for_ms == 1000),
            "{reports:?}"
        );
        // Packets again: quiet log. Then a new starvation is reported anew.
        assert!(health.check(receiver(), at(2200)).is_empty());
        say(waiting);
        assert!(health.check(receiver(), at(2400)).is_empty());
        say(waiting);
        assert_eq!(health.check(receiver(), at(3400)).len(), 1);
    }
}
