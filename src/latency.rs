//! Latency per path: how late each source's sound reaches a `dac`, estimated from the
//! placement and the buffers (one JACK period per host the path crosses and, per network link,
//! jacktrip's receive queue of periods and half the link's round trip where one was measured
//! while it played), so `plan --explain` can say what a placement and a
//! buffer choice cost and `latency { max_ms = … }` can hold a placement to it.

use crate::placement::Placement;
use crate::resolve::Resolved;
use std::collections::BTreeMap;
use std::fmt::Write;

/// The worst path from one source to a `dac`.
#[derive(Debug, Clone, PartialEq)]
pub struct PathLatency {
    /// The blocks along it, source first, `dac` last.
    pub blocks: Vec<String>,
    /// The host of each block.
    pub hosts: Vec<String>,
    /// Network links it crosses.
    pub links: usize,
    pub ms: f64,
}

/// Every source's worst path to a `dac`, the worst first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Latency {
    pub paths: Vec<PathLatency>,
}

/// Round trips measured between hosts while links played (`agent::link_rtt`), in ms, by
/// (sending host, receiving host).
pub type RoundTrips = BTreeMap<(String, String), f64>;

/// One JACK period of the orchestra, in milliseconds.
fn period_ms(audio: crate::audio::AudioSettings) -> f64 {
    audio.period as f64 * 1000.0 / audio.rate as f64
}

/// How far from a block the worst way to a `dac` is (`None`: no `dac` is reached).
#[derive(Clone, Copy)]
enum Visit {
    Open,
    Done(Option<(f64, Option<usize>)>),
}

/// Each source's (a block nothing feeds) worst path to any `dac` (a block of module `dac`).
/// A feedback connection (one back to a block already on the way) adds nothing.
pub fn estimate(resolved: &Resolved, placement: &Placement, round_trips: &RoundTrips) -> Latency {
    let names: Vec<&str> = resolved.blocks.keys().map(String::as_str).collect();
    let index: BTreeMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let mut next: Vec<Vec<usize>> = vec![Vec::new(); names.len()];
    let mut fed = vec![false; names.len()];
    for (from, to) in &resolved.connections {
        let (Some(&a), Some(&b)) = (index.get(from.as_str()), index.get(to.as_str())) else {
            continue;
        };
        if !next[a].contains(&b) {
            next[a].push(b);
        }
        fed[b] = true;
    }
    let host: Vec<&str> = names
        .iter()
        .map(|n| placement.host_of(n).unwrap_or("?"))
        .collect();
    let is_dac: Vec<bool> = names
        .iter()
        .map(|n| resolved.blocks[*n].module.name() == "dac")
        .collect();
    let period_ms = period_ms(resolved.audio);
    // Going from block a to block b: nothing on one host; across hosts, the link's queue of
    // periods, one more period on the host it reaches, and half the measured round trip.
    let step = |a: usize, b: usize| -> f64 {
        if host[a] == host[b] {
            0.0
        } else {
            let queue = resolved.network.buffers(host[a], host[b]).queue;
            let one_way = round_trips
                .get(&(host[a].to_string(), host[b].to_string()))
                .map_or(0.0, |rtt| rtt / 2.0);
            (queue as f64 + 1.0) * period_ms + one_way
        }
    };

    // Depth-first, without recursion (chains may be thousands of blocks long): each block's
    // worst way to a dac once all its successors have theirs.
    let mut visit: Vec<Option<Visit>> = vec![None; names.len()];
    for start in 0..names.len() {
        if visit[start].is_some() {
            continue;
        }
        let mut stack = vec![(start, 0usize)];
        visit[start] = Some(Visit::Open);
        while let Some(&mut (block, ref mut child)) = stack.last_mut() {
            if let Some(&succ) = next[block].get(*child) {
                *child += 1;
                if visit[succ].is_none() {
                    visit[succ] = Some(Visit::Open);
                    stack.push((succ, 0));
                }
                continue;
            }
            let mut best: Option<(f64, Option<usize>)> = is_dac[block].then_some((period_ms, None));
            for &succ in &next[block] {
                if let Some(Visit::Done(Some((ms, _)))) = visit[succ] {
                    let through = ms + step(block, succ);
                    if best.is_none_or(|(b, _)| through > b) {
                        best = Some((through, Some(succ)));
                    }
                }
            }
            visit[block] = Some(Visit::Done(best));
            stack.pop();
        }
    }

    let mut paths: Vec<PathLatency> = (0..names.len())
        .filter(|&b| !fed[b])
        .filter_map(|source| {
            let Some(Visit::Done(Some((ms, _)))) = visit[source] else {
                return None;
            };
            let mut blocks = vec![source];
            let mut at = source;
            while let Some(Visit::Done(Some((_, Some(succ))))) = visit[at] {
                blocks.push(succ);
                at = succ;
            }
            let links = blocks
                .windows(2)
                .filter(|w| host[w[0]] != host[w[1]])
                .count();
            Some(PathLatency {
                hosts: blocks.iter().map(|&b| host[b].to_string()).collect(),
                blocks: blocks.iter().map(|&b| names[b].to_string()).collect(),
                links,
                ms,
            })
        })
        .collect();
    paths.sort_by(|a, b| b.ms.total_cmp(&a.ms).then_with(|| a.blocks.cmp(&b.blocks)));
    Latency { paths }
}

impl Latency {
    pub fn worst(&self) -> Option<&PathLatency> {
        self.paths.first()
    }

    /// `plan --explain`'s part: the worst paths (at most `shown`) and what one costs.
    pub fn explain(&self, resolved: &Resolved, round_trips: &RoundTrips, shown: usize) -> String {
        let mut out = String::new();
        let audio = resolved.audio;
        let period_ms = period_ms(audio);
        let Some(worst) = self.worst() else {
            let _ = writeln!(out, "latency: no source reaches a dac");
            return out;
        };
        let _ = writeln!(
            out,
            "latency: worst {:.1} ms from a source to a dac (period {} at {} Hz = {period_ms:.1} ms per host crossed; a link adds its queue of periods: {})",
            worst.ms,
            audio.period,
            audio.rate,
            queues(resolved)
        );
        if !round_trips.is_empty() {
            let measured: Vec<String> = round_trips
                .iter()
                .map(|((from, to), ms)| format!("{from} → {to} {ms:.2} ms"))
                .collect();
            let _ = writeln!(
                out,
                "  and half the round trip measured while it last played: {}",
                measured.join(", ")
            );
        }
        for path in self.paths.iter().take(shown) {
            let _ = writeln!(out, "  {:.1} ms: {}", path.ms, path.route());
        }
        if self.paths.len() > shown {
            let _ = writeln!(out, "  … and {} more source(s)", self.paths.len() - shown);
        }
        out
    }
}

impl PathLatency {
    /// `osc (h1) → filt (h2) → out (h3)`, one host named once for a run of blocks on it.
    pub fn route(&self) -> String {
        let mut out = String::new();
        for (i, (block, host)) in self.blocks.iter().zip(&self.hosts).enumerate() {
            if i > 0 {
                out.push_str(" → ");
            }
            out.push_str(block);
            if self.hosts.get(i + 1) != Some(host) {
                let _ = write!(out, " ({host})");
            }
        }
        out
    }
}

/// `queue 4` or `queue 4, 12 from h1 to h3`.
fn queues(resolved: &Resolved) -> String {
    let network = &resolved.network;
    let mut out = format!("queue {}", network.queue);
    for rule in &network.links {
        if let Some(queue) = rule.queue {
            let _ = write!(
                out,
                ", {queue} from {} to {}",
                rule.from.as_deref().unwrap_or("any host"),
                rule.to.as_deref().unwrap_or("any host")
            );
        }
    }
    out
}

/// `latency { max_ms = … }` against the worst path: `None` when within it (or none is set).
pub fn over_limit(resolved: &Resolved, latency: &Latency) -> Option<String> {
    let max_ms = resolved.latency_max_ms?;
    let worst = latency.worst()?;
    (worst.ms > max_ms).then(|| {
        format!(
            "the path {} takes about {:.1} ms, over latency {{ max_ms = {max_ms} }}: it crosses {} link(s) (fewer hosts on the way, a smaller period or queue cost less)",
            worst.route(),
            worst.ms,
            worst.links
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modules::ModuleLibrary;

    fn resolved(script: &str) -> Resolved {
        let orchestra = crate::script::orchestra_from_text("song.lua", script, None).unwrap();
        crate::resolve::resolve(&orchestra, &ModuleLibrary::builtin()).unwrap()
    }

    fn placed(pairs: &[(&str, &str)]) -> Placement {
        Placement(
            pairs
                .iter()
                .map(|(b, h)| (b.to_string(), h.to_string()))
                .collect(),
        )
    }

    const HOSTS: &str = r#"
host "h1" { address = "10.0.0.11" }
host "h2" { address = "10.0.0.12" }
host "h3" { address = "10.0.0.13" }
"#;

    #[test]
    fn a_measured_round_trip_adds_half_of_itself_to_each_path_over_its_link() {
        let r = resolved(&format!(
            "{HOSTS}\naudio {{ rate = 51200, period = 512 }}\nnetwork {{ queue = 4 }}\n\
             block \"osc\" {{ module = \"sine\" }}\nblock \"filt\" {{ module = \"lp\" }}\n\
             block \"out\" {{ module = \"dac\" }}\nconnect(\"osc\", \"filt\")\nconnect(\"filt\", \"out\")\n"
        ));
        let placement = placed(&[("osc", "h1"), ("filt", "h2"), ("out", "h3")]);
        let measured: RoundTrips = [
            (("h1".to_string(), "h2".to_string()), 30.0),
            // Not on the path: the other direction.
            (("h3".to_string(), "h2".to_string()), 100.0),
        ]
        .into();
        // 3 periods of 10 ms, two links of 4 periods, and half of 30 ms.
        let l = estimate(&r, &placement, &measured);
        assert_eq!(l.paths[0].ms, 30.0 + 80.0 + 15.0);
        let explained = l.explain(&r, &measured, 5);
        assert!(
            explained.contains(
                "  and half the round trip measured while it last played: h1 → h2 30.00 ms, h3 → h2 100.00 ms\n"
            ),
            "{explained}"
        );
    }

    #[test]
    fn a_chain_over_three_hosts_costs_a_period_per_host_and_a_queue_per_link() {
        let r = resolved(&format!(
            "{HOSTS}\naudio {{ rate = 51200, period = 512 }}\nnetwork {{ queue = 4, links = {{ {{ to = \"h3\", queue = 9 }} }} }}\n\
             block \"osc\" {{ module = \"sine\" }}\nblock \"filt\" {{ module = \"lp\" }}\nblock \"out\" {{ module = \"dac\" }}\n\
             connect(\"osc\", \"filt\")\nconnect(\"filt\", \"out\")\n"
        ));
        let l = estimate(
            &r,
            &placed(&[("osc", "h1"), ("filt", "h2"), ("out", "h3")]),
            &RoundTrips::new(),
        );
        // 10 ms a period: 3 hosts, the link into h2 queues 4 periods, the one into h3 9.
        assert_eq!(l.paths.len(), 1);
        let p = &l.paths[0];
        assert_eq!(p.blocks, ["osc", "filt", "out"]);
        assert_eq!(p.links, 2);
        assert!((p.ms - (30.0 + 40.0 + 90.0)).abs() < 1e-9, "{}", p.ms);
        assert_eq!(p.route(), "osc (h1) → filt (h2) → out (h3)");
        // All on one host: one period.
        let l = estimate(
            &r,
            &placed(&[("osc", "h1"), ("filt", "h1"), ("out", "h1")]),
            &RoundTrips::new(),
        );
        assert!((l.paths[0].ms - 10.0).abs() < 1e-9);
        assert_eq!(l.paths[0].route(), "osc → filt → out (h1)");
    }

    #[test]
    fn each_source_gets_its_worst_path_and_feedback_adds_nothing() {
        let r = resolved(&format!(
            "{HOSTS}\naudio {{ rate = 51200, period = 512 }}\n\
             block \"a\" {{ module = \"sine\" }}\nblock \"b\" {{ module = \"sine\" }}\n\
             block \"near\" {{ module = \"gain\" }}\nblock \"far\" {{ module = \"gain\" }}\n\
             block \"mix\" {{ module = \"mixer\", inputs = 2 }}\nblock \"out\" {{ module = \"dac\" }}\n\
             block \"lonely\" {{ module = \"noise\" }}\n\
             connect(\"a\", \"near\")\nconnect(\"a\", \"far\")\nconnect(\"near\", \"mix\")\nconnect(\"far\", \"mix\")\n\
             connect(\"b\", \"mix\")\nconnect(\"mix\", \"out\")\nconnect(\"mix\", \"near\")\n"
        ));
        let l = estimate(
            &r,
            &placed(&[
                ("a", "h1"),
                ("b", "h3"),
                ("near", "h1"),
                ("far", "h2"),
                ("mix", "h3"),
                ("out", "h3"),
                ("lonely", "h2"),
            ]),
            &RoundTrips::new(),
        );
        let routes: Vec<(String, f64)> = l.paths.iter().map(|p| (p.route(), p.ms)).collect();
        // a: through far (h2) is two links (60 + 10 per host = 110 ms), through near one (60).
        // b: on the dac's host. lonely reaches no dac. near ← mix is feedback: no loop.
        assert_eq!(
            routes,
            [
                ("a (h1) → far (h2) → mix → out (h3)".to_string(), 110.0),
                ("b → mix → out (h3)".to_string(), 10.0),
            ]
        );
        assert_eq!(l.paths[0].links, 2);
    }

    #[test]
    fn a_chain_of_thousands_of_blocks_is_no_trouble() {
        let n = 5000;
        let mut script = String::from("block \"b0\" { module = \"sine\" }\n");
        for i in 1..n {
            script.push_str(&format!(
                "block \"b{i}\" {{ module = \"gain\" }}\nconnect(\"b{}\", \"b{i}\")\n",
                i - 1
            ));
        }
        script.push_str(&format!(
            "block \"out\" {{ module = \"dac\" }}\nconnect(\"b{}\", \"out\")\n",
            n - 1
        ));
        let r = resolved(&script);
        let placement = Placement(
            r.blocks
                .keys()
                .map(|b| (b.clone(), "localhost".to_string()))
                .collect(),
        );
        let l = estimate(&r, &placement, &RoundTrips::new());
        assert_eq!(l.paths.len(), 1);
        assert_eq!(l.paths[0].blocks.len(), n + 1);
    }

    #[test]
    fn over_the_limit_names_the_worst_path() {
        let mut r = resolved(&format!(
            "{HOSTS}\naudio {{ rate = 51200, period = 512 }}\n\
             block \"osc\" {{ module = \"sine\" }}\nblock \"out\" {{ module = \"dac\" }}\nconnect(\"osc\", \"out\")\n"
        ));
        let l = estimate(
            &r,
            &placed(&[("osc", "h1"), ("out", "h2")]),
            &RoundTrips::new(),
        );
        assert_eq!(over_limit(&r, &l), None, "no limit set");
        r.latency_max_ms = Some(60.0);
        assert_eq!(over_limit(&r, &l), None, "60 ms is within 60");
        r.latency_max_ms = Some(20.0);
        assert_eq!(
            over_limit(&r, &l).unwrap(),
            "the path osc (h1) → out (h2) takes about 60.0 ms, over latency { max_ms = 20 }: it crosses 1 link(s) (fewer hosts on the way, a smaller period or queue cost less)"
        );
    }
}
