//! What a first run brought up: how many synths started, which failed and why, and whether
//! anything that started can still be heard (a path of started synths to a DAC).

use crate::deploy::{Deployment, Edge};
use crate::plan::Action;
use orchestra_protocol::{ClientName, LinkId, Part, PortRef};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// A synth (or a network link end) that did not start.
#[derive(Debug, Clone, PartialEq)]
pub struct Failed {
    pub host: String,
    pub block: Part,
    pub client: ClientName,
    /// A network link end (jacktrip), not a synth.
    pub link: bool,
    /// The telling line of its log (or the error when it never ran).
    pub why: String,
}

/// The outcome of bringing a deployment up.
#[derive(Debug, Clone, PartialEq)]
pub struct BroughtUp {
    /// Synths the deployment asks for (network link ends not counted).
    pub synths: usize,
    /// Synths and link ends that failed to start.
    pub failed: Vec<Failed>,
    /// Some source (a started synth nothing feeds, an adc) reaches a DAC through started
    /// synths and links (or, in an orchestra without a DAC, some synth started at all).
    pub can_sound: bool,
}

impl BroughtUp {
    /// Judge `deployment` after its start actions failed as `failures` say.
    pub fn judge(deployment: &Deployment, failures: &[(Action, anyhow::Error)]) -> BroughtUp {
        let failed: Vec<Failed> = failures
            .iter()
            .filter_map(|(action, error)| match action {
                Action::Start { host, process, .. } => Some(Failed {
                    host: host.clone(),
                    block: process.block.clone(),
                    client: process.client.clone(),
                    link: process.module == "jacktrip",
                    why: telling_line(&format!("{error:#}")),
                }),
                _ => None,
            })
            .collect();
        let synths = deployment
            .hosts
            .values()
            .flat_map(|h| h.processes.values())
            .filter(|p| p.module != "jacktrip")
            .count();
        let dead: BTreeSet<(String, ClientName)> = failed
            .iter()
            .map(|f| (f.host.clone(), f.client.clone()))
            .collect();
        BroughtUp {
            synths,
            // Only failures can silence an orchestra here: one written without a path to a
            // DAC plays as written.
            can_sound: failed.is_empty() || can_sound(deployment, &dead),
            failed,
        }
    }

    /// Synths that failed (network link ends left out).
    pub fn failed_synths(&self) -> usize {
        self.failed.iter().filter(|f| !f.link).count()
    }

    /// `(host, client)` of everything that failed to start: edges to them will never come.
    pub fn dead(&self) -> BTreeSet<(&str, &ClientName)> {
        self.failed
            .iter()
            .map(|f| (f.host.as_str(), &f.client))
            .collect()
    }

    /// The edges of `host` worth waiting for: those whose both ends may still appear.
    pub fn awaitable(&self, host: &str, edges: &BTreeSet<Edge>) -> Vec<Edge> {
        let dead = self.dead();
        let alive = |port: &PortRef| !dead.contains(&(host, &port.client));
        edges
            .iter()
            .filter(|e| alive(&e.from) && alive(&e.to))
            .cloned()
            .collect()
    }
}

/// What csound prints on its way out, whatever went wrong: never the reason.
const CLOSING_WORDS: [&str; 4] = [
    "end of score",
    "overall samples out of range",
    "errors in performance",
    "inactive allocs returned",
];

/// The line of an error (with its `  | ` log tail) that says most: the last log line that
/// reports an error (csound marks them `***` or says "error"), else the last line that is not
/// csound's closing words.
fn telling_line(error: &str) -> String {
    let log: Vec<String> = error
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("| "))
        .map(|l| l.replace(|c: char| c.is_control(), " ").trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    let is_error = |l: &&String| {
        let lower = l.to_lowercase();
        l.starts_with("***")
            || (lower.contains("error") && !lower.contains("errors in performance"))
    };
    let closing = |l: &&String| CLOSING_WORDS.iter().any(|w| l.contains(w));
    if let Some(line) = log.iter().rev().find(is_error) {
        return line.clone();
    }
    log.iter()
        .rev()
        .find(|l| !closing(l))
        .or(log.last())
        .cloned()
        .unwrap_or_else(|| error.lines().next().unwrap_or("").to_string())
}

/// Whether sound still reaches a DAC: a path from a source (a started synth that nothing
/// feeds, or a sound card's input) through started synths and network links, without the
/// `dead` `(host, client)`s. A DAC is a port of no process of ours that edges lead to (the
/// host's sound card: system blocks have ports, no process).
fn can_sound(deployment: &Deployment, dead: &BTreeSet<(String, ClientName)>) -> bool {
    // A unit is a process (host/client) or, for ports of no process, the port itself; a
    // link carries many wires, one a channel: both ends of one channel are one unit (the
    // link id and the channel), so paths cross hosts and do not jump between wires.
    #[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
    enum Unit {
        Process(String, ClientName),
        Link(LinkId, u32),
        Port(String, PortRef),
    }
    let mut processes: BTreeMap<(&str, &ClientName), Unit> = BTreeMap::new();
    let mut links: BTreeSet<(&str, &ClientName)> = BTreeSet::new();
    for (host, h) in &deployment.hosts {
        for p in h.processes.values() {
            if p.is_link() {
                links.insert((host.as_str(), &p.client));
            } else {
                processes.insert(
                    (host.as_str(), &p.client),
                    Unit::Process(host.clone(), p.client.clone()),
                );
            }
        }
    }
    let unit_of = |host: &str, port: &PortRef| {
        if links.contains(&(host, &port.client)) {
            // `link-…:send_3` and `link-…:receive_3`: channel 3 of the link.
            if let Some((link, _, channel)) = port.link_channel() {
                return Unit::Link(link, channel);
            }
        }
        processes
            .get(&(host, &port.client))
            .cloned()
            .unwrap_or_else(|| Unit::Port(host.to_string(), port.clone()))
    };
    let dead_links: BTreeSet<LinkId> = dead
        .iter()
        .filter(|(h, c)| links.contains(&(h.as_str(), c)))
        .filter_map(|(_, c)| c.link())
        .collect();
    let dead_units: BTreeSet<Unit> = dead
        .iter()
        .filter_map(|(h, c)| processes.get(&(h.as_str(), c)).cloned())
        .collect();
    let is_dead = |unit: &Unit| match unit {
        Unit::Link(link, _) => dead_links.contains(link),
        other => dead_units.contains(other),
    };
    let mut next: BTreeMap<Unit, Vec<Unit>> = BTreeMap::new();
    let mut dacs = BTreeSet::new();
    for (host, h) in &deployment.hosts {
        for edge in &h.edges {
            let (from, to) = (unit_of(host, &edge.from), unit_of(host, &edge.to));
            if matches!(to, Unit::Port(..)) {
                dacs.insert(to.clone());
            }
            next.entry(from).or_default().push(to);
        }
    }
    let started: Vec<Unit> = processes
        .values()
        .filter(|u| matches!(u, Unit::Process(..)) && !dead_units.contains(u))
        .cloned()
        .collect();
    if dacs.is_empty() {
        return !started.is_empty();
    }
    // Sound starts at a started synth nothing feeds (an oscillator), or at a sound card's
    // input (an adc): a filter whose input failed is silent.
    let fed: BTreeSet<&Unit> = next.values().flatten().collect();
    let sources: Vec<Unit> = started
        .iter()
        .filter(|u| !fed.contains(u))
        .chain(next.keys().filter(|u| matches!(u, Unit::Port(..))))
        .cloned()
        .collect();
    let mut seen: BTreeSet<Unit> = sources.iter().cloned().collect();
    let mut queue: VecDeque<Unit> = sources.into();
    while let Some(unit) = queue.pop_front() {
        if dacs.contains(&unit) {
            return true;
        }
        for to in next.get(&unit).into_iter().flatten() {
            if !is_dead(to) && seen.insert(to.clone()) {
                queue.push_back(to.clone());
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::{HostDeployment, ProcessSpec};
    use crate::model::Host;

    fn process(block: &str, module: &str, client: &str) -> ProcessSpec {
        ProcessSpec {
            dir: format!("blocks/{block}"),
            command: vec!["csound".into()],
            spec_hash: "00000000".into(),
            inputs: vec![format!("{client}:input1").as_str().into()],
            outputs: vec![format!("{client}:output1").as_str().into()],
            fade_ms: crate::model::DEFAULT_FADE_MS,
            ..ProcessSpec::fixture(block, module, client)
        }
    }

    fn edge(from: &str, to: &str) -> Edge {
        Edge {
            from: from.into(),
            to: to.into(),
        }
    }

    /// `h1`: fm → lp → link; `h2`: link → lp2 → DAC, and adc → lp4 → DAC.
    fn two_hosts() -> Deployment {
        let mut d = Deployment::default();
        let mut host = |name: &str, procs: Vec<ProcessSpec>, edges: Vec<Edge>| {
            d.hosts.insert(
                name.into(),
                HostDeployment {
                    host: Host {
                        name: name.into(),
                        ..Host::localhost()
                    },
                    processes: procs
                        .into_iter()
                        .map(|p| (p.block.to_string(), p))
                        .collect(),
                    edges: edges.into_iter().collect(),
                },
            );
        };
        host(
            "h1",
            vec![
                process("fm", "fm", "fm-1"),
                process("lp", "lp", "lp-1"),
                process("link-a.send", "jacktrip", "link-a"),
            ],
            vec![
                edge("fm-1:output1", "lp-1:input1"),
                edge("lp-1:output1", "link-a:send_1"),
            ],
        );
        host(
            "h2",
            vec![
                process("link-a.receive", "jacktrip", "link-a"),
                process("lp2", "lp", "lp2-1"),
                process("lp4", "lp", "lp4-1"),
            ],
            vec![
                edge("link-a:receive_1", "lp2-1:input1"),
                edge("lp2-1:output1", "system:playback_1"),
                edge("system:capture_1", "lp4-1:input1"),
                edge("lp4-1:output1", "system:playback_1"),
            ],
        );
        d
    }

    fn dead(pairs: &[(&str, &str)]) -> BTreeSet<(String, ClientName)> {
        pairs
            .iter()
            .map(|(h, c)| (h.to_string(), (*c).into()))
            .collect()
    }

    #[test]
    fn a_started_chain_across_a_link_sounds() {
        let d = two_hosts();
        assert!(can_sound(&d, &dead(&[])));
        assert!(can_sound(&d, &dead(&[("h2", "lp4-1")])), "fm's chain");
        assert!(can_sound(&d, &dead(&[("h1", "lp-1")])), "lp4 from the adc");
        assert!(can_sound(&d, &dead(&[("h1", "fm-1")])), "lp4 from the adc");
    }

    #[test]
    fn the_wires_of_one_link_are_told_apart_by_channel() {
        // fm's channel 1 reaches nothing on h2; the DAC hangs off channel 2, fed by lp.
        let mut d = two_hosts();
        let h1 = d.hosts.get_mut("h1").unwrap();
        h1.edges = [
            edge("fm-1:output1", "link-a:send_1"),
            edge("lp-1:output1", "link-a:send_2"),
        ]
        .into();
        let h2 = d.hosts.get_mut("h2").unwrap();
        h2.edges = [edge("link-a:receive_2", "system:playback_1")].into();
        assert!(can_sound(&d, &dead(&[])));
        assert!(
            !can_sound(&d, &dead(&[("h1", "lp-1")])),
            "fm's sound does not jump to channel 2"
        );
        assert!(!can_sound(&d, &dead(&[("h2", "link-a")])));
    }

    #[test]
    fn a_broken_chain_and_a_dead_side_branch_cannot_sound() {
        let d = two_hosts();
        // lp2 started, but what fed it did not: it is silent.
        assert!(!can_sound(&d, &dead(&[("h1", "lp-1"), ("h2", "lp4-1")])));
        assert!(!can_sound(&d, &dead(&[("h1", "link-a"), ("h2", "lp4-1")])));
        assert!(!can_sound(
            &d,
            &dead(&[
                ("h1", "fm-1"),
                ("h1", "lp-1"),
                ("h2", "lp2-1"),
                ("h2", "lp4-1")
            ])
        ));
    }

    #[test]
    fn without_a_dac_any_started_synth_counts() {
        let mut d = two_hosts();
        for h in d.hosts.values_mut() {
            h.edges.retain(|e| e.to.client != "system");
        }
        assert!(can_sound(&d, &dead(&[("h1", "fm-1")])));
        let all = [
            ("h1", "fm-1"),
            ("h1", "lp-1"),
            ("h2", "lp2-1"),
            ("h2", "lp4-1"),
        ];
        assert!(!can_sound(&d, &dead(&all)));
    }

    #[test]
    fn the_telling_line_is_the_last_error_of_the_log() {
        let error = "block `lp` (lp-1) exited with code 1 while starting; its log ends:\n  | sr = 44100.0, kr = 441.000, ksmps = 100\n  |  *** rtjack: period size (-b) must be an integer multiple of ksmps\n  | 0 errors in performance\n  | end of score.";
        assert_eq!(
            telling_line(error),
            "*** rtjack: period size (-b) must be an integer multiple of ksmps"
        );
        let compile = "block `lp` (lp-1) exited with code 1 while starting; its log ends:\n  |  >>> aout\tno_such_opcode\u{0} <<<\n  | Stopping on parser failure\n  | cannot compile orchestra\n  | end of score.\t\t   overall amps:      0.0\n  | \t   overall samples out of range:        0\n  | 1 errors in performance";
        assert_eq!(telling_line(compile), "cannot compile orchestra");
        assert_eq!(
            telling_line("cannot start `csound` for block `x`"),
            "cannot start `csound` for block `x`"
        );
    }

    #[test]
    fn edges_to_a_failed_synth_are_not_awaited() {
        let d = two_hosts();
        let up = BroughtUp {
            synths: 4,
            failed: vec![Failed {
                host: "h2".into(),
                block: "lp4".into(),
                client: "lp4-1".into(),
                link: false,
                why: String::new(),
            }],
            can_sound: true,
        };
        let awaited = up.awaitable("h2", &d.hosts["h2"].edges);
        assert_eq!(awaited.len(), 2, "{awaited:?}");
        assert!(awaited
            .iter()
            .all(|e| !e.to.client.contains("lp4") && !e.from.client.contains("lp4")));
        assert_eq!(up.failed_synths(), 1);
    }
}
