//! Counting the host's xruns for the controller: the JACK client's callback bumps a counter,
//! and this turns it into at most one `Event::Xruns` a second (the count since the last one
//! and the total), so a host in trouble informs the musician without flooding the terminal;
//! likewise each jacktrip end's under- and over-runs, from the stats it prints.

use orchestra_protocol::wire::Event;
use orchestra_protocol::{LinkEnd, Side};
use std::time::{Duration, Instant};

/// At most one report per host this often.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);

pub struct XrunMeter {
    total: u64,
    unsent: u64,
    /// When the last report went out.
    last_sent: Option<Instant>,
    /// When the counter was last read: the first unsent xrun happened after it.
    last_read: Instant,
    /// Since when the unsent xruns were counted.
    window_from: Instant,
}

impl XrunMeter {
    pub fn new(now: Instant) -> XrunMeter {
        XrunMeter {
            total: 0,
            unsent: 0,
            last_sent: None,
            last_read: now,
            window_from: now,
        }
    }

    /// `n` xruns were read from the counter at `now`.
    pub fn add(&mut self, n: u64, now: Instant) {
        if n > 0 && self.unsent == 0 {
            self.window_from = self.last_read;
        }
        self.total += n;
        self.unsent += n;
        self.last_read = now;
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// The report to send now, if xruns are unsent and the last report is old enough.
    pub fn due(&mut self, now: Instant) -> Option<Event> {
        if self.unsent == 0 || self.last_sent.is_some_and(|t| now - t < REPORT_EVERY) {
            return None;
        }
        let from = match self.last_sent {
            Some(sent) => sent.max(self.window_from),
            None => self.window_from,
        };
        let event = Event::Xruns {
            count: self.unsent,
            total: self.total,
            window_ms: (now - from).as_millis() as u64,
        };
        self.unsent = 0;
        self.last_sent = Some(now);
        Some(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(event: Option<Event>) -> Option<(u64, u64, u64)> {
        match event? {
            Event::Xruns {
                count,
                total,
                window_ms,
            } => Some((count, total, window_ms)),
            other => panic!("not an xrun report: {other:?}"),
        }
    }

    #[test]
    fn reports_at_most_once_a_second_with_the_count_since_the_last_and_the_total() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut meter = XrunMeter::new(t0);
        meter.add(0, at(200));
        assert_eq!(counts(meter.due(at(200))), None, "nothing to say");
        meter.add(3, at(400));
        assert_eq!(counts(meter.due(at(400))), Some((3, 3, 200)));
        meter.add(2, at(600));
        assert_eq!(counts(meter.due(at(600))), None, "too soon after the last");
        meter.add(4, at(1400));
        assert_eq!(counts(meter.due(at(1400))), Some((6, 9, 1000)));
        assert_eq!(meter.total(), 9);
        meter.add(0, at(5000));
        meter.add(1, at(5200));
        assert_eq!(
            counts(meter.due(at(5200))),
            Some((1, 10, 200)),
            "a quiet spell is not counted in the window"
        );
    }
}

/// A jacktrip end's own counts, from the stats line `-I 1` makes it print every second
/// (`2026-12-01T16:24:03 10.0.0.12 send: 0/0 recv: 54/1 prot: …`): under-runs and over-runs
/// of its ring buffers since it started, for each direction, and the peer's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JacktripStats {
    pub peer: String,
    pub send: (u64, u64),
    pub recv: (u64, u64),
}

/// The last stats line in `log` (the end of a jacktrip end's log).
pub fn last_jacktrip_stats(log: &str) -> Option<JacktripStats> {
    log.lines().rev().find_map(|line| {
        let counts = |key: &str| -> Option<(u64, u64)> {
            let (_, rest) = line.split_once(key)?;
            let (u, o) = rest.split_whitespace().next()?.split_once('/')?;
            Some((u.parse().ok()?, o.parse().ok()?))
        };
        Some(JacktripStats {
            peer: line.split_whitespace().nth(1)?.to_string(),
            send: counts(" send: ")?,
            recv: counts(" recv: ")?,
        })
    })
}

/// How many bytes of a link's log are read each time: several stats lines.
const STATS_TAIL: u64 = 2048;

/// The end of a file, at most `STATS_TAIL` bytes.
fn tail(path: &std::path::Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(STATS_TAIL)))
        .ok()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// Under- and over-runs of this host's jacktrip ends, in the direction each carries the
/// orchestra's audio (a receiving end's `recv`, a sending end's `send`), read from their logs
/// once a second: one `Event::LinkRuns` per end that had new ones.
pub struct LinkMeter {
    /// Per end: the counts last read from its log.
    seen: std::collections::BTreeMap<LinkEnd, (u64, u64)>,
    /// New runs since this agent started, over all ends: (under, over).
    total: (u64, u64),
    last_read: Instant,
}

impl LinkMeter {
    pub fn new(now: Instant) -> LinkMeter {
        LinkMeter {
            seen: Default::default(),
            total: (0, 0),
            last_read: now,
        }
    }

    pub fn total(&self) -> (u64, u64) {
        self.total
    }

    /// Read the ends' logs if a second has passed; the reports of those with new runs.
    pub fn read(&mut self, ends: &[(LinkEnd, std::path::PathBuf)], now: Instant) -> Vec<Event> {
        if now - self.last_read < REPORT_EVERY {
            return Vec::new();
        }
        let window_ms = (now - self.last_read).as_millis() as u64;
        self.last_read = now;
        self.seen
            .retain(|end, _| ends.iter().any(|(e, _)| e == end));
        let mut events = Vec::new();
        for (end, log) in ends {
            let Some(stats) = tail(log).as_deref().and_then(last_jacktrip_stats) else {
                continue;
            };
            let now_counts = match end.side {
                Side::Send => stats.send,
                Side::Receive => stats.recv,
            };
            let before = self.seen.insert(end.clone(), now_counts).unwrap_or((0, 0));
            // A restarted end counts from zero again.
            let since = |now: u64, then: u64| if now >= then { now - then } else { now };
            let (under, over) = (since(now_counts.0, before.0), since(now_counts.1, before.1));
            if under + over == 0 {
                continue;
            }
            self.total.0 += under;
            self.total.1 += over;
            events.push(Event::LinkRuns {
                end: end.clone(),
                peer: stats.peer,
                underruns: under,
                overruns: over,
                window_ms,
            });
        }
        events
    }
}

#[cfg(test)]
mod link_tests {
    use super::*;

    const LOG: &str = "Received Connection from Peer!
2026-12-01T16:24:02 10.0.0.12 send: 0/0 recv: 0/0 prot: 0/0/0 tot: 570 sync: 4/0/0/0/0
UDP waiting too long (more than 30ms) for 10.0.0.12...
2026-12-01T16:24:03 10.0.0.12 send: 2/0 recv: 54/1 prot: 0/0/0 tot: 702 sync: 1/54/0/0/0
";

    #[test]
    fn the_last_stats_line_of_a_jacktrip_log_gives_its_counts() {
        assert_eq!(
            last_jacktrip_stats(LOG),
            Some(JacktripStats {
                peer: "10.0.0.12".into(),
                send: (2, 0),
                recv: (54, 1),
            })
        );
        assert_eq!(last_jacktrip_stats("Waiting for Peer...\n"), None);
    }

    #[test]
    fn each_end_reports_its_new_runs_once_a_second() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        std::fs::write(&log, LOG).unwrap();
        let ends = vec![("link-a.receive".parse::<LinkEnd>().unwrap(), log.clone())];
        let t0 = Instant::now();
        let mut meter = LinkMeter::new(t0);
        assert!(meter.read(&ends, t0).is_empty(), "not a second yet");
        let events = meter.read(&ends, t0 + REPORT_EVERY);
        assert!(
            matches!(&events[..], [Event::LinkRuns { underruns: 54, overruns: 1, peer, .. }] if peer == "10.0.0.12"),
            "{events:?}"
        );
        assert!(
            meter.read(&ends, t0 + 2 * REPORT_EVERY).is_empty(),
            "nothing new"
        );
        std::fs::write(
            &log,
            format!("{LOG}2026-12-01T16:24:04 10.0.0.12 send: 2/0 recv: 60/1\n"),
        )
        .unwrap();
        let events = meter.read(&ends, t0 + 3 * REPORT_EVERY);
        assert!(
            matches!(
                &events[..],
                [Event::LinkRuns {
                    underruns: 6,
                    overruns: 0,
                    ..
                }]
            ),
            "{events:?}"
        );
        assert_eq!(meter.total(), (60, 1));
    }
}
