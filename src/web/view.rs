//! What the page draws, as data: the [`Scene`] (what was applied, the hosts' loads, what the
//! agents report running) with what the [`Happening`]s told since (exits, synths given up,
//! hosts down, links' round trips, the log), folded into one [`View`] sent whole as JSON.

use crate::events::{BlockParam, Happening, Scene};
use crate::modules::params::ParamKind;
use crate::plan::Action;
use orchestra_protocol::wire::Event;
use orchestra_protocol::{ClientName, LinkId, PortRef};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{SystemTime, UNIX_EPOCH};

/// Log lines the page keeps (the oldest go first).
pub const LOG_LINES: usize = 300;

/// The whole page, as sent on every change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct View {
    pub orchestra: String,
    pub hosts: Vec<HostView>,
    pub links: Vec<LinkView>,
    pub log: Vec<LogLine>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostView {
    pub name: String,
    pub address: String,
    /// `up` or `down`.
    pub state: &'static str,
    pub cores: u32,
    /// Cores its blocks take.
    pub load: u64,
    pub blocks: Vec<BlockView>,
    /// Its JACK edges, in block terms.
    pub connections: Vec<ConnectionView>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BlockView {
    pub name: String,
    pub module: String,
    /// `starting`, `playing`, `restarting` or `failed`.
    pub state: &'static str,
    pub pid: Option<u32>,
    /// Its module's params with the values it plays with now: the page's controls.
    pub params: Vec<ParamView>,
}

/// One param as a control: a slider for numbers, a checkbox for booleans, a select when there
/// are choices, a text field otherwise.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParamView {
    pub name: String,
    /// `number`, `integer`, `boolean`, `text`, `osc_path`, `block` or `host`.
    pub kind: ParamKind,
    /// What the block plays with now.
    pub value: Value,
    /// A slider's range and step (numbers only): the manifest's, or derived (see [`slider`]);
    /// no step: any value.
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub step: Option<f64>,
    pub unit: Option<String>,
    /// What a select offers: the manifest's choices, or the orchestra's blocks or hosts.
    pub choices: Option<Vec<String>>,
}

/// One JACK edge: `from`/`to` are a block, a link id or `system`, with the port.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConnectionView {
    pub from: String,
    pub from_port: String,
    pub to: String,
    pub to_port: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LinkView {
    pub id: String,
    pub from_host: String,
    pub to_host: String,
    /// `starting`, `up`, `starved` or `failed`.
    pub state: &'static str,
    /// The last measured round trip, in ms.
    pub rtt_ms: Option<f64>,
    pub wires: usize,
    pub channels: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogLine {
    /// Time of day (UTC), `HH:MM:SS`.
    pub at: String,
    /// `error`, `warning`, `reload`, `applied` or `info`: how the page colours it.
    pub kind: &'static str,
    /// The line the terminal printed (several lines for a repair or a synth's last words).
    pub text: String,
}

/// The scene and what the happenings told since.
#[derive(Debug, Default)]
pub struct ViewModel {
    scene: Scene,
    /// Clients that exited and were not seen running since: the repair restarts them.
    exited: BTreeSet<ClientName>,
    /// Clients given up on until the next reload.
    given_up: BTreeSet<ClientName>,
    /// Blocks that failed to start and are not part of what was applied: (host, block, module).
    failed_starts: BTreeSet<(String, String, String)>,
    down: BTreeSet<String>,
    /// Link → last round trip in ms.
    rtt: BTreeMap<LinkId, f64>,
    /// Links whose receiving end got nothing since their last round trip.
    starved: BTreeSet<LinkId>,
    log: VecDeque<LogLine>,
}

impl ViewModel {
    pub fn set_scene(&mut self, scene: Scene) {
        for pids in scene.running.values() {
            self.exited.retain(|client| !pids.contains_key(client));
        }
        let applied: BTreeSet<(&str, &str)> = scene
            .deployment
            .hosts
            .iter()
            .flat_map(|(host, h)| h.processes.keys().map(move |b| (host.as_str(), b.as_str())))
            .collect();
        self.failed_starts
            .retain(|(host, block, _)| !applied.contains(&(host.as_str(), block.as_str())));
        self.scene = scene;
    }

    /// Fold one happening in: its line goes to the log, and what it says about a block, host
    /// or link is kept until the scene says otherwise.
    pub fn tell(&mut self, happening: &Happening) {
        match happening {
            Happening::Host { host, event } => match event {
                Event::Exited { client, .. } => {
                    self.exited.insert(client.clone());
                    self.forget_pid(host, client);
                }
                Event::LinkRtt { end, rtt_us, .. } => {
                    self.starved.remove(&end.link);
                    self.rtt.insert(end.link.clone(), *rtt_us as f64 / 1000.0);
                }
                Event::LinkStarved { end, .. } => {
                    self.starved.insert(end.link.clone());
                }
                _ => {}
            },
            Happening::GaveUp { client, .. } => {
                self.given_up.insert(client.clone());
            }
            Happening::Applied { .. } | Happening::Unchanged { .. } => self.given_up.clear(),
            Happening::ActionFailed {
                action: Action::Start { host, process, .. },
                ..
            } if !process.is_link() => {
                self.failed_starts.insert((
                    host.clone(),
                    process.block.to_string(),
                    process.module.clone(),
                ));
            }
            Happening::HostDown { host, .. } => {
                self.down.insert(host.clone());
            }
            Happening::HostBack { host, .. }
            | Happening::HostUp { host }
            | Happening::AgentReplaced { host, .. } => {
                self.down.remove(host);
            }
            _ => {}
        }
        // Link round trips come every few seconds: the page shows them, the log need not.
        if !matches!(
            happening,
            Happening::Host {
                event: Event::LinkRtt { .. },
                ..
            }
        ) {
            self.log(happening);
        }
    }

    fn log(&mut self, happening: &Happening) {
        let text = happening.to_string();
        let kind = kind_of(happening);
        if self.log.len() == LOG_LINES {
            self.log.pop_front();
        }
        self.log.push_back(LogLine {
            at: time_of_day(SystemTime::now()),
            kind,
            text,
        });
    }

    /// A client that exited is not running, whatever the last report said.
    fn forget_pid(&mut self, host: &str, client: &ClientName) {
        if let Some(pids) = self.scene.running.get_mut(host) {
            pids.remove(client);
        }
    }

    pub fn view(&self) -> View {
        let deployment = &self.scene.deployment;
        let no_pids = BTreeMap::new();
        let mut hosts: Vec<HostView> = deployment
            .hosts
            .iter()
            .map(|(name, h)| {
                let running = self.scene.running.get(name).unwrap_or(&no_pids);
                let mut blocks: Vec<BlockView> = h
                    .processes
                    .values()
                    .filter_map(|p| Some((p, p.block.block()?)))
                    .map(|(p, block)| {
                        let pid = running.get(&p.client).copied();
                        BlockView {
                            name: block.to_string(),
                            module: p.module.clone(),
                            state: self.state(&p.client, pid),
                            pid,
                            params: self.params_of(block.as_str()),
                        }
                    })
                    .collect();
                blocks.extend(
                    self.failed_starts
                        .iter()
                        .filter(|(host, _, _)| host == name)
                        .map(|(_, block, module)| BlockView {
                            name: block.clone(),
                            module: module.clone(),
                            state: "failed",
                            pid: None,
                            params: self.params_of(block),
                        }),
                );
                let clients: BTreeMap<&ClientName, String> = h
                    .processes
                    .values()
                    .map(|p| (&p.client, p.block.to_string()))
                    .collect();
                let connections = h
                    .edges
                    .iter()
                    .map(|e| {
                        let (from, from_port) = in_block_terms(&e.from, &clients);
                        let (to, to_port) = in_block_terms(&e.to, &clients);
                        ConnectionView {
                            from,
                            from_port,
                            to,
                            to_port,
                        }
                    })
                    .collect();
                HostView {
                    name: name.clone(),
                    address: h.host.address.clone(),
                    state: if self.down.contains(name) {
                        "down"
                    } else {
                        "up"
                    },
                    cores: h.host.cores,
                    load: self.scene.loads.get(name).copied().unwrap_or(0),
                    blocks,
                    connections,
                }
            })
            .collect();
        // A host down whose blocks went elsewhere is still drawn, empty and down.
        for host in &self.down {
            if !deployment.hosts.contains_key(host) {
                hosts.push(HostView {
                    name: host.clone(),
                    address: String::new(),
                    state: "down",
                    cores: 0,
                    load: 0,
                    blocks: Vec::new(),
                    connections: Vec::new(),
                });
            }
        }
        let links = deployment
            .links
            .iter()
            .map(|l| {
                let client = l.id.client();
                let ends_running = [&l.from_host, &l.to_host].iter().all(|h| {
                    self.scene
                        .running
                        .get(*h)
                        .is_some_and(|pids| pids.contains_key(&client))
                });
                LinkView {
                    id: l.id.to_string(),
                    from_host: l.from_host.clone(),
                    to_host: l.to_host.clone(),
                    state: if self.given_up.contains(&client) {
                        "failed"
                    } else if self.starved.contains(&l.id) {
                        "starved"
                    } else if ends_running {
                        "up"
                    } else {
                        "starting"
                    },
                    rtt_ms: self.rtt.get(&l.id).copied(),
                    wires: l.wires.len(),
                    channels: l.channels,
                }
            })
            .collect();
        View {
            orchestra: deployment.orchestra.clone(),
            hosts,
            links,
            log: self.log.iter().cloned().collect(),
        }
    }

    /// `block`'s controls. Block and host params choose among the orchestra's own.
    fn params_of(&self, block: &str) -> Vec<ParamView> {
        let Some(params) = self.scene.params.get(block) else {
            return Vec::new();
        };
        params
            .iter()
            .map(|param| {
                let choices = match param.spec.kind {
                    ParamKind::Block => Some(self.scene.params.keys().cloned().collect()),
                    ParamKind::Host => Some(self.scene.deployment.hosts.keys().cloned().collect()),
                    _ => param.spec.choices.clone(),
                };
                param_view(param, choices)
            })
            .collect()
    }

    fn state(&self, client: &ClientName, pid: Option<u32>) -> &'static str {
        if self.given_up.contains(client) {
            "failed"
        } else if pid.is_some() {
            "playing"
        } else if self.exited.contains(client) {
            "restarting"
        } else {
            "starting"
        }
    }
}

/// The control of one param; `choices` (those a select offers) get its value when they lack
/// it, so that the control always shows what plays.
fn param_view(param: &BlockParam, choices: Option<Vec<String>>) -> ParamView {
    let spec = &param.spec;
    let choices = choices.map(|mut choices| {
        if let Some(value) = param.value.as_str() {
            if !choices.iter().any(|c| c == value) {
                choices.push(value.to_string());
            }
        }
        choices
    });
    let (min, max, step) = match spec.kind {
        ParamKind::Number | ParamKind::Integer => {
            let (min, max, step) = slider(param);
            (Some(min), Some(max), step)
        }
        _ => (None, None, None),
    };
    ParamView {
        name: param.name.clone(),
        kind: spec.kind,
        value: param.value.clone(),
        min,
        max,
        step,
        unit: spec.unit.clone(),
        choices,
    }
}

/// A number's slider: the manifest's `min`, `max` and `step` where it declares them. Without a
/// bound, 0 to twice the default (or the value, if further out; 0 to 1 for a default of 0);
/// without a step, 1 for integers, else none: a derived step would snap the slider off the
/// value that plays (`every` from 0.01 in steps of 0.1 cannot show 1), so the page rounds
/// what it sends instead.
pub fn slider(param: &BlockParam) -> (f64, f64, Option<f64>) {
    let spec = &param.spec;
    let default = spec.default.as_f64().unwrap_or(0.0);
    let value = param.value.as_f64().unwrap_or(default);
    let min = spec
        .min
        .unwrap_or_else(|| (2.0 * default).min(2.0 * value).min(0.0));
    let max = spec
        .max
        .unwrap_or_else(|| (2.0 * default).max(2.0 * value).max(0.0));
    let max = if max > min { max } else { min + 1.0 };
    let step = spec
        .step
        .or((spec.kind == ParamKind::Integer).then_some(1.0));
    (min, max, step)
}

/// How the page colours a happening's line: `error`, `warning`, `reload`, `applied` or
/// `info`, by what it is (never by its words).
fn kind_of(happening: &Happening) -> &'static str {
    match happening {
        Happening::ReloadStarted { .. } | Happening::Planned { .. } => "reload",
        Happening::Applied { .. } | Happening::Unchanged { .. } => "applied",
        Happening::Rejected { .. }
        | Happening::RolledBack { .. }
        | Happening::ActionFailed { .. }
        | Happening::GaveUp { .. }
        | Happening::AgentLost { .. }
        | Happening::HostDown { .. }
        | Happening::LinkAvoided { .. }
        | Happening::Error { .. } => "error",
        Happening::Repaired { failures, .. } if !failures.is_empty() => "error",
        Happening::PartlyStarted { .. } => "error",
        Happening::Host { event, .. } => match event {
            Event::Exited { .. } | Event::LinkStarved { .. } | Event::JackFailed { .. } => "error",
            Event::NoRealtime { .. } => "warning",
            _ => "info",
        },
        Happening::Warning { .. }
        | Happening::HostLeftOut { .. }
        | Happening::NotConnected { .. } => "warning",
        _ => "info",
    }
}

/// `osc-0a5c05ef:output1` → (`osc`, `output1`), by the host's clients; other ports
/// (`system:playback_1`) as they are.
fn in_block_terms(port: &PortRef, clients: &BTreeMap<&ClientName, String>) -> (String, String) {
    let owner = clients
        .get(&port.client)
        .cloned()
        .unwrap_or_else(|| port.client.to_string());
    (owner, port.port.clone())
}

/// `HH:MM:SS` in UTC.
fn time_of_day(now: SystemTime) -> String {
    let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() % 86_400;
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::{Deployment, Edge, HostDeployment, ProcessSpec};
    use crate::model::Host;
    use std::sync::Arc;

    fn process(block: &str, module: &str) -> ProcessSpec {
        ProcessSpec::fixture(block, module, &format!("{block}-0000000a"))
    }

    fn scene() -> Scene {
        let host = Host {
            name: "localhost".into(),
            address: "127.0.0.1".into(),
            user: None,
            port: 22,
            cores: 4,
            identity: None,
            local: true,
            jack: Default::default(),
            location: None,
        };
        let edges = [Edge {
            from: "osc-0000000a:output1".into(),
            to: "system:playback_1".into(),
        }];
        let deployment = Deployment {
            orchestra: "song".into(),
            hosts: BTreeMap::from([(
                "localhost".to_string(),
                HostDeployment {
                    host,
                    processes: BTreeMap::from([
                        ("osc".to_string(), process("osc", "sine")),
                        ("filt".to_string(), process("filt", "lp")),
                    ]),
                    edges: edges.into_iter().collect(),
                },
            )]),
            ..Default::default()
        };
        Scene {
            deployment: Arc::new(deployment),
            loads: BTreeMap::from([("localhost".to_string(), 2)]),
            running: BTreeMap::from([(
                "localhost".to_string(),
                BTreeMap::from([("osc-0000000a".into(), 4242)]),
            )]),
            params: BTreeMap::new(),
        }
    }

    fn states(view: &View) -> Vec<(String, &'static str, Option<u32>)> {
        view.hosts[0]
            .blocks
            .iter()
            .map(|b| (b.name.clone(), b.state, b.pid))
            .collect()
    }

    #[test]
    fn blocks_start_play_restart_and_fail_as_the_scene_and_happenings_say() {
        let mut model = ViewModel::default();
        model.set_scene(scene());
        let view = model.view();
        assert_eq!(view.orchestra, "song");
        assert_eq!((view.hosts[0].load, view.hosts[0].cores), (2, 4));
        assert_eq!(
            states(&view),
            [
                ("filt".to_string(), "starting", None),
                ("osc".to_string(), "playing", Some(4242))
            ]
        );
        assert_eq!(
            view.hosts[0].connections,
            [ConnectionView {
                from: "osc".into(),
                from_port: "output1".into(),
                to: "system".into(),
                to_port: "playback_1".into(),
            }]
        );
        let exited = Happening::Host {
            host: "localhost".into(),
            event: Event::Exited {
                block: "osc".into(),
                client: "osc-0000000a".into(),
                code: None,
                signal: Some(9),
                log_tail: String::new(),
            },
        };
        model.tell(&exited);
        assert_eq!(states(&model.view())[1], ("osc".into(), "restarting", None));
        // The next report has it running again, under a new pid.
        let mut again = scene();
        again
            .running
            .get_mut("localhost")
            .unwrap()
            .insert("osc-0000000a".into(), 4300);
        model.set_scene(again);
        assert_eq!(
            states(&model.view())[1],
            ("osc".into(), "playing", Some(4300))
        );
        model.tell(&Happening::GaveUp {
            client: "filt-0000000a".into(),
            exits: 5,
            window_s: 30,
        });
        assert_eq!(states(&model.view())[0], ("filt".into(), "failed", None));
        model.tell(&Happening::ActionFailed {
            action: Action::Start {
                host: "localhost".into(),
                process: Box::new(process("noise", "noise")),
                replaces: None,
            },
            error: "csound: no such file".into(),
            retried: false,
        });
        assert_eq!(states(&model.view())[2], ("noise".into(), "failed", None));
        // The log has the terminal's lines, errors marked as such.
        let log = model.view().log;
        assert_eq!(log.len(), 3);
        assert_eq!(log[0].kind, "error");
        assert!(log[0]
            .text
            .starts_with("error: block `osc` (osc-0000000a) on localhost was killed by signal 9"));
        assert_eq!(
            log[2].text,
            "error: + start noise (noise) on localhost: csound: no such file"
        );
    }

    #[test]
    fn hosts_go_down_and_come_back_and_the_log_keeps_its_last_lines() {
        let mut model = ViewModel::default();
        model.set_scene(scene());
        model.tell(&Happening::HostDown {
            host: "h2".into(),
            why: "it does not answer".into(),
        });
        let view = model.view();
        assert_eq!(
            view.hosts
                .iter()
                .map(|h| (h.name.as_str(), h.state))
                .collect::<Vec<_>>(),
            [("localhost", "up"), ("h2", "down")]
        );
        model.tell(&Happening::HostBack {
            host: "h2".into(),
            down_ms: 1500,
        });
        assert_eq!(model.view().hosts.len(), 1);
        for i in 0..LOG_LINES + 5 {
            model.tell(&Happening::Planned {
                line: format!("+ connect {i}"),
            });
        }
        let log = model.view().log;
        assert_eq!(log.len(), LOG_LINES);
        assert_eq!(
            log.last().unwrap().text,
            format!("  + connect {}", LOG_LINES + 4)
        );
        assert_eq!(log.last().unwrap().kind, "reload");
    }

    #[test]
    fn links_start_come_up_measure_and_starve() {
        let mut model = ViewModel::default();
        let mut scene = scene();
        let mut deployment = (*scene.deployment).clone();
        deployment.links.push(crate::deploy::links::Link {
            id: "link-0a1b2c3d-2".into(),
            from_host: "localhost".into(),
            to_host: "h2".into(),
            channels: 2,
            wires: Vec::new(),
            server_port: 4464,
            client_port: 4465,
        });
        scene.deployment = Arc::new(deployment);
        model.set_scene(scene.clone());
        let link = |model: &ViewModel| {
            let l = model.view().links[0].clone();
            (l.state, l.rtt_ms, l.wires, l.channels)
        };
        assert_eq!(link(&model), ("starting", None, 0, 2));
        for host in ["localhost", "h2"] {
            scene
                .running
                .entry(host.into())
                .or_default()
                .insert("link-0a1b2c3d-2".into(), 77);
        }
        model.set_scene(scene);
        assert_eq!(link(&model), ("up", None, 0, 2));
        let rtt = Happening::Host {
            host: "localhost".into(),
            event: Event::LinkRtt {
                end: "link-0a1b2c3d-2.send".into(),
                peer: "h2".into(),
                rtt_us: 420,
            },
        };
        model.tell(&rtt);
        assert_eq!(link(&model), ("up", Some(0.42), 0, 2));
        model.tell(&Happening::Host {
            host: "h2".into(),
            event: Event::LinkStarved {
                end: "link-0a1b2c3d-2.receive".into(),
                client: "link-0a1b2c3d-2".into(),
                for_ms: 900,
            },
        });
        assert_eq!(link(&model).0, "starved");
        model.tell(&rtt);
        assert_eq!(link(&model).0, "up", "measured again: it carries packets");
        model.tell(&Happening::GaveUp {
            client: "link-0a1b2c3d-2".into(),
            exits: 5,
            window_s: 30,
        });
        assert_eq!(link(&model).0, "failed");
        // Round trips are shown on the link, not logged; the rest is.
        assert_eq!(model.view().log.len(), 2);
    }

    fn param(name: &str, spec: serde_json::Value, value: Value) -> BlockParam {
        BlockParam {
            name: name.into(),
            spec: serde_json::from_value(spec).unwrap(),
            value,
        }
    }

    #[test]
    fn sliders_take_the_manifest_s_range_or_one_derived_from_the_default() {
        let declared = param(
            "freq",
            serde_json::json!({"default": 440, "min": 0, "max": 20000, "unit": "Hz"}),
            660.into(),
        );
        assert_eq!(slider(&declared), (0.0, 20000.0, None));
        let stepped = param(
            "gain",
            serde_json::json!({"default": 1, "min": 0, "max": 10, "step": 0.5}),
            1.into(),
        );
        assert_eq!(slider(&stepped), (0.0, 10.0, Some(0.5)));
        // Undeclared: 0 to twice the default, or twice the value when it went further.
        let free = |default: f64, value: f64| slider(&param("p", default.into(), value.into()));
        assert_eq!(free(0.3, 0.3), (0.0, 0.6, None));
        assert_eq!(free(440.0, 1000.0), (0.0, 2000.0, None));
        assert_eq!(free(-6.0, -6.0), (-12.0, 0.0, None));
        assert_eq!(free(0.0, 0.0), (0.0, 1.0, None));
        let whole = param(
            "bpm",
            serde_json::json!({"default": 120, "type": "integer", "min": 1}),
            120.into(),
        );
        assert_eq!(slider(&whole), (1.0, 240.0, Some(1.0)));
    }

    #[test]
    fn blocks_carry_their_params_as_they_play_with_the_orchestra_s_blocks_to_choose_from() {
        let mut scene = scene();
        scene.params = BTreeMap::from([
            (
                "osc".to_string(),
                vec![param(
                    "freq",
                    serde_json::json!({"default": 440, "min": 0, "max": 20000, "unit": "Hz"}),
                    660.into(),
                )],
            ),
            (
                "ctl".to_string(),
                vec![
                    param(
                        "target",
                        serde_json::json!({"default": "osc", "type": "block"}),
                        "osc".into(),
                    ),
                    param(
                        "mode",
                        serde_json::json!({"default": "lp", "choices": ["lp", "hp"]}),
                        "hp".into(),
                    ),
                    param("on", true.into(), false.into()),
                ],
            ),
        ]);
        let mut model = ViewModel::default();
        model.set_scene(scene);
        let view = model.view();
        let osc = &view.hosts[0]
            .blocks
            .iter()
            .find(|b| b.name == "osc")
            .unwrap();
        assert_eq!(
            serde_json::to_value(&osc.params).unwrap(),
            serde_json::json!([{"name": "freq", "kind": "number", "value": 660, "min": 0.0,
                "max": 20000.0, "step": null, "unit": "Hz", "choices": null}])
        );
        // `ctl` is not in the deployment: params are drawn for the blocks that play.
        assert!(view.hosts[0].blocks.iter().all(|b| b.name != "ctl"));
        let views: Vec<ParamView> = model.params_of("ctl");
        let kinds: Vec<(&str, ParamKind, Option<Vec<String>>, Value)> = views
            .iter()
            .map(|p| (p.name.as_str(), p.kind, p.choices.clone(), p.value.clone()))
            .collect();
        assert_eq!(
            kinds,
            [
                (
                    "target",
                    ParamKind::Block,
                    Some(vec!["ctl".into(), "osc".into()]),
                    "osc".into()
                ),
                (
                    "mode",
                    ParamKind::Text,
                    Some(vec!["lp".into(), "hp".into()]),
                    "hp".into()
                ),
                ("on", ParamKind::Boolean, None, false.into()),
            ]
        );
        assert_eq!(
            model.params_of("filt"),
            [],
            "a block the scene has no params for"
        );
    }
}
