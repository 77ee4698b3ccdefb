//! Counting the host's xruns for the controller: the JACK client's callback bumps a counter,
//! and this turns it into at most one `Event::Xruns` a second (the count since the last one
//! and the total), so a host in trouble informs the musician without flooding the terminal.

use super::protocol::Event;
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
