//! What the terminal says about clean sound: a host's xruns and its jacktrip ends' under- and
//! over-runs as its agent reports them (at most one line a second each), hosts that cannot
//! give real-time scheduling, and each host's totals at the end of a run.

use crate::events::{Events, Happening};
use crate::hosts::fleet::Fleet;
use orchestra_protocol::wire::{self, Event};

/// An agent's clean-sound event (`Xruns`, `LinkRuns`, `NoRealtime`) as the terminal says it;
/// `None` for the others.
pub fn line(host: &str, event: &Event) -> Option<String> {
    Some(match event {
        Event::Xruns {
            count,
            total,
            window_ms,
        } => xruns_line(host, *count, *total, *window_ms),
        Event::LinkRuns {
            end,
            peer,
            underruns,
            overruns,
            window_ms,
        } => format!(
            "link under-runs on {host}: {end} (peer {peer}): {underruns} under-run(s), {overruns} over-run(s) in the last {:.1} s",
            *window_ms as f64 / 1000.0
        ),
        Event::NoRealtime { reason } => {
            format!("warning: no real-time scheduling on {host}: {reason}")
        }
        _ => return None,
    })
}

/// `xruns on h2: 3 in the last 1.0 s (12 since start)`.
pub fn xruns_line(host: &str, count: u64, total: u64, window_ms: u64) -> String {
    format!(
        "xruns on {host}: {count} in the last {:.1} s ({total} since start)",
        window_ms as f64 / 1000.0
    )
}

/// Per host that had xruns or link runs during the run, its totals (`xruns on h2: 12 during
/// the run`). Asked of the agents before teardown (a host that does not answer is left out:
/// teardown says why).
pub async fn say_totals(fleet: &Fleet, events: &Events) {
    let asked = fleet
        .sessions
        .iter()
        .map(|(host, session)| async move { (host, session.ask(wire::Status {}).await) });
    for (host, reply) in futures::future::join_all(asked).await {
        let Ok(status) = reply else {
            continue;
        };
        let (underruns, overruns) = status.link_runs;
        if status.xruns + underruns + overruns > 0 {
            events.emit(Happening::SoundTotals {
                host: host.clone(),
                xruns: status.xruns,
                underruns,
                overruns,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_xrun_report_is_one_line_naming_the_host_and_both_counts() {
        assert_eq!(
            xruns_line("h2", 3, 12, 1000),
            "xruns on h2: 3 in the last 1.0 s (12 since start)"
        );
    }
}
