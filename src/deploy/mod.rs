//! Deployment: from a resolved orchestra and its placement, exactly what must exist on each
//! host — processes (each with a spec hash), JACK edges — and the wires that cross hosts.

pub mod jack_ports;
pub mod links;
mod ports;

use ports::PortPool;

use crate::model::{AudioSettings, Host};
use crate::modules::{Engines, ModuleError, ModuleLibrary};
use crate::placement::Placement;
use crate::resolve::Resolved;
use links::{allocate, ends, wire_key, Link, LinkDraft, LinkError};
use orchestra_protocol::{ClientName, Part, PortRef};
pub use orchestra_protocol::{Edge, LiveParam, ProcessSpec};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

/// What must exist on one host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostDeployment {
    pub host: Host,
    /// By block name.
    pub processes: BTreeMap<String, ProcessSpec>,
    pub edges: BTreeSet<Edge>,
}

/// What must exist everywhere. The empty deployment is what teardown diffs to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    pub orchestra: String,
    pub audio: AudioSettings,
    pub hosts: BTreeMap<String, HostDeployment>,
    /// Wires between hosts; each link's two jacktrip ends are also among the processes of
    /// its hosts (keyed by the link id), joined to the blocks by edges there.
    #[serde(default)]
    pub links: Vec<Link>,
    /// OSC-capable blocks by name: where each listens now.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub osc: BTreeMap<String, OscEndpoint>,
}

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("block `{block}`: {error}")]
    Module { block: String, error: ModuleError },
    #[error("block `{0}` has no host in the placement")]
    Unplaced(String),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("no free OSC port left on {host} (osc_first_port {first} … osc_last_port {last}); widen the range in `network {{ }}`")]
    OscPorts { host: String, first: u16, last: u16 },
}

/// What one render of a block gives.
struct Built {
    files: BTreeMap<String, String>,
    hash: String,
    /// How the engine launches the instance (`command` is `None` for system blocks: `dac`,
    /// `adc` have ports, no process).
    launch: crate::modules::Launch,
}

/// Every block as templates see it, and the OSC ports that view was made with.
struct Blocks {
    view: minijinja::Value,
    osc_ports: BTreeMap<String, u16>,
}

/// Each module's fingerprint (its files, manifest and engine source), digested once per
/// deployment: part of every instance's spec hash and render key.
struct Fingerprints(BTreeMap<String, String>);

impl Fingerprints {
    fn new(resolved: &Resolved, library: &ModuleLibrary) -> Fingerprints {
        let mut map = BTreeMap::new();
        for block in resolved.blocks.values() {
            let module = &block.module;
            map.entry(module.name().to_string()).or_insert_with(|| {
                let engine = library.engine_source(&module.manifest.synth).unwrap_or("");
                full_digest(format!("{}{engine}", module.fingerprint()).as_bytes())
            });
        }
        Fingerprints(map)
    }

    fn of(&self, module: &crate::modules::Module) -> &str {
        &self.0[module.name()]
    }
}

/// The render keys of one deployment's blocks (see [`ProcessSpec::render_key`]): what is
/// the same for every block (the view of where every block and host is) digested once.
struct RenderKeys<'a> {
    resolved: &'a Resolved,
    fingerprints: &'a Fingerprints,
    blocks: &'a Blocks,
    hosts: &'a minijinja::Value,
    others: Option<String>,
}

impl<'a> RenderKeys<'a> {
    fn of(
        &mut self,
        block: &'a crate::resolve::ResolvedBlock,
        host: &str,
        osc_port: Option<u16>,
    ) -> Result<String, DeployError> {
        let module = &block.module;
        let reads_others = module.reads_others().map_err(|error| DeployError::Module {
            block: block.name.clone(),
            error,
        })?;
        let mut key = json!({
            "module": self.fingerprints.of(module), "block": block.name, "host": host,
            "inputs": block.inputs, "outputs": block.outputs, "params": block.params,
            "osc_port": osc_port, "audio": self.resolved.audio,
        });
        if reads_others {
            let (blocks, hosts) = (&self.blocks.view, self.hosts);
            let others = self
                .others
                .get_or_insert_with(|| full_digest(format!("{blocks}{hosts}").as_bytes()));
            key["others"] = json!(others);
        }
        // The whole digest: two different inputs must never pass for the same.
        Ok(full_digest(key.to_string().as_bytes()))
    }
}

/// Where an OSC-capable block listens: what the router forwards to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OscEndpoint {
    pub host: String,
    pub address: String,
    pub port: u16,
}

/// The longest JACK client name every engine accepts: csound silently falls back to
/// `csound6` for a name of 32 bytes or more.
pub const MAX_CLIENT_NAME: usize = 31;

/// `<block>-<hash8>`, the block name cut so the whole fits `MAX_CLIENT_NAME`. The hash covers
/// the full block name, so two long names with one prefix still get distinct clients.
pub fn client_name(block: &str, hash: &str) -> ClientName {
    let room = MAX_CLIENT_NAME - hash.len() - 1;
    let prefix: String = block.chars().take(room).collect();
    format!("{prefix}-{hash}")
        .parse()
        .expect("a block name and a hash make a client name")
}

fn short_hash(parts: &serde_json::Value) -> String {
    short_digest(parts.to_string().as_bytes())
}

/// SHA-256 in hex.
fn full_digest(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Eight hex digits of SHA-256: the spec hashes and link ids in client names.
pub(crate) fn short_digest(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

/// Below this many blocks to build, one thread builds them: a thread of its own needs a Lua
/// state of its own, which costs about as much as building a hundred blocks.
const PARALLEL_FROM: usize = 256;

/// Build `blocks` (render, hash, ask the engine), in their order. Many are built on a few
/// threads, each with its engines in a Lua state of its own (a Lua state is not shared
/// between threads); what those engines adapted joins `engines`. Every build is pure, so
/// the result is the same however the work is split.
fn build_all(
    blocks: &[&crate::resolve::ResolvedBlock],
    build: &(dyn Fn(&crate::resolve::ResolvedBlock, &mut Engines) -> Result<Built, DeployError>
          + Sync),
    engines: &mut Engines,
) -> Result<Vec<Built>, DeployError> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4);
    if blocks.len() < PARALLEL_FROM || threads < 2 {
        return blocks.iter().map(|b| build(b, engines)).collect();
    }
    let chunk = blocks.len().div_ceil(threads);
    // Each worker's builds, and what its engines adapted (a Lua state stays on its thread).
    type Done = (Result<Vec<Built>, DeployError>, Vec<String>);
    let done: Vec<Done> = std::thread::scope(|scope| {
        let workers: Vec<_> = blocks
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    let mut own = Engines::new();
                    let built = part.iter().map(|b| build(b, &mut own)).collect();
                    (built, own.adapted().map(str::to_string).collect())
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a deploy worker panicked"))
            .collect()
    });
    let mut all = Vec::with_capacity(blocks.len());
    for (built, adapted) in done {
        engines.absorb(adapted);
        all.extend(built?);
    }
    Ok(all)
}

/// UDP ports bound on each host, by host name: what a new OSC port must not be.
pub type PortsInUse = BTreeMap<String, BTreeSet<u16>>;

/// Derive the deployment. Pure: the same inputs give the same deployment, hashes included.
pub fn deploy(
    resolved: &Resolved,
    placement: &Placement,
    library: &ModuleLibrary,
    engines: &mut Engines,
) -> Result<Deployment, DeployError> {
    redeploy(
        resolved,
        placement,
        library,
        engines,
        &Deployment::default(),
    )
}

/// [`deploy`] while `previous` plays: links that stay keep their UDP ports.
pub fn redeploy(
    resolved: &Resolved,
    placement: &Placement,
    library: &ModuleLibrary,
    engines: &mut Engines,
    previous: &Deployment,
) -> Result<Deployment, DeployError> {
    redeploy_around(
        resolved,
        placement,
        library,
        engines,
        previous,
        &PortsInUse::new(),
    )
}

/// [`redeploy`] on hosts where `in_use` ports are bound by others: a new instance's OSC port
/// is none of them (an instance that stays keeps its own, which is among them).
pub fn redeploy_around(
    resolved: &Resolved,
    placement: &Placement,
    library: &ModuleLibrary,
    engines: &mut Engines,
    previous: &Deployment,
    in_use: &PortsInUse,
) -> Result<Deployment, DeployError> {
    let hosts_by_name: BTreeMap<&str, &Host> = resolved
        .hosts
        .iter()
        .map(|h| (h.name.as_str(), h))
        .collect();
    let host_of = |block: &str| -> Result<&Host, DeployError> {
        placement
            .host_of(block)
            .and_then(|h| hosts_by_name.get(h).copied())
            .ok_or_else(|| DeployError::Unplaced(block.to_string()))
    };
    // Every host and every block as templates see them (`hosts.NAME.…`, `blocks.NAME.…`):
    // built once and shared by every block's context (a copy per block made a 2000-block
    // plan quadratic).
    let hosts_context = minijinja::Value::from_serialize(
        resolved
            .hosts
            .iter()
            .map(|h| {
                (
                    h.name.as_str(),
                    json!({"address": h.address, "cores": h.cores}),
                )
            })
            .collect::<BTreeMap<&str, serde_json::Value>>(),
    );
    let blocks_context = |osc: &BTreeMap<String, OscEndpoint>| {
        resolved
            .blocks
            .values()
            .map(|b| {
                let host = host_of(&b.name)?;
                Ok((
                    b.name.clone(),
                    json!({"host": host.name, "address": host.address, "module": b.module.name(),
                           "osc_port": osc.get(&b.name).map(|e| e.port)}),
                ))
            })
            .collect::<Result<BTreeMap<String, serde_json::Value>, DeployError>>()
            .map(|blocks| Blocks {
                view: minijinja::Value::from_serialize(&blocks),
                osc_ports: osc.iter().map(|(b, e)| (b.clone(), e.port)).collect(),
            })
    };
    let fingerprints = Fingerprints::new(resolved, library);
    // A block's rendered files, its spec hash and how its engine launches it.
    let build = |block: &crate::resolve::ResolvedBlock,
                 blocks: &Blocks,
                 engines: &mut Engines|
     -> Result<Built, DeployError> {
        let host = host_of(&block.name)?;
        let fail = |error| DeployError::Module {
            block: block.name.clone(),
            error,
        };
        let osc_port = blocks.osc_ports.get(&block.name);
        // The block's files rendered with these params.
        let render = |params: &BTreeMap<String, serde_json::Value>| {
            let context = minijinja::context! {
                block => minijinja::Value::from_serialize(json!({
                    "name": block.name, "module": block.module.name(), "host": host.name,
                    "inputs": block.inputs, "outputs": block.outputs, "params": params,
                    "osc_port": osc_port})),
                params => minijinja::Value::from_serialize(params),
                audio => minijinja::Value::from_serialize(
                    json!({"rate": resolved.audio.rate, "period": resolved.audio.period})),
                blocks => blocks.view.clone(),
                hosts => hosts_context.clone(),
            };
            block.module.render(&context).map_err(fail)
        };
        let mut files = render(&block.params)?;
        // Live params are sent to a running instance, so the hash is made as if each were at
        // its default: a change of one alone keeps the instance. (The instance's files have
        // the real values: a replacement starts where the old one was.)
        let masked = block.module.manifest.without_live_values(&block.params);
        let masked_files = if masked == block.params {
            None
        } else {
            Some(render(&masked)?)
        };
        // Hash what defines the process: what the engine is given (its files, params, ports
        // and audio) and the engine itself (in the module's fingerprint). The client name
        // carries the hash, so the engine is asked once, with that name.
        let hash = short_hash(&json!({
            "block": block.name, "module": fingerprints.of(&block.module),
            "files": masked_files.as_ref().unwrap_or(&files),
            "params": masked, "ports": [block.inputs, block.outputs], "audio": resolved.audio,
        }));
        let mut launch = engines
            .launch(
                library,
                &block.module,
                client_name(&block.name, &hash).as_str(),
                (block.inputs, block.outputs),
                &resolved.audio,
                &block.params,
                &files,
                osc_port.copied(),
            )
            .map_err(fail)?;
        engines.note_adapted(block.module.name(), &launch.notes);
        // The engine's own flags taken out of the module's CsOptions: the instance runs that.
        if let Some((main, text)) = launch.main_rewritten.take() {
            files.insert(main, text);
        }
        Ok(Built {
            files,
            hash,
            launch,
        })
    };

    // OSC ports. An instance keeps its port while its spec stays the same; a new instance
    // (replaced or moved) gets a port no running instance holds, because the old one still
    // listens until the new one plays (make-before-break).
    let mut taken = PortPool::default();
    for endpoint in previous.osc.values() {
        taken.hold(&endpoint.host, endpoint.port);
    }
    for (host, ports) in in_use {
        for port in ports {
            taken.hold(host, *port);
        }
    }
    let kept: BTreeMap<String, OscEndpoint> = previous
        .osc
        .iter()
        .filter(|(name, e)| {
            resolved
                .blocks
                .get(*name)
                .is_some_and(|b| b.module.manifest.osc && placement.host_of(name) == Some(&e.host))
        })
        .map(|(name, e)| (name.clone(), e.clone()))
        .collect();
    let with_old_ports = blocks_context(&kept)?;
    let mut old_keys = RenderKeys {
        resolved,
        fingerprints: &fingerprints,
        blocks: &with_old_ports,
        hosts: &hosts_context,
        others: None,
    };
    // Kept blocks rendered with their old ports (when their render key does not already
    // say so), to see whether their spec stays the same.
    let mut prebuilt: BTreeMap<String, Built> = BTreeMap::new();
    let mut osc = BTreeMap::new();
    for block in resolved.blocks.values().filter(|b| b.module.manifest.osc) {
        let host = host_of(&block.name)?;
        let unchanged = match kept.get(&block.name) {
            Some(old) => {
                let before = previous
                    .hosts
                    .get(&old.host)
                    .and_then(|h| h.processes.get(&block.name));
                let key = old_keys.of(block, &host.name, Some(old.port))?;
                if before.is_some_and(|p| p.render_key == key) {
                    true
                } else {
                    let built = build(block, &with_old_ports, engines)?;
                    let same = before.is_some_and(|p| p.spec_hash == built.hash);
                    prebuilt.insert(block.name.clone(), built);
                    same
                }
            }
            None => false,
        };
        let port = match (unchanged, kept.get(&block.name)) {
            (true, Some(old)) => old.port,
            _ => {
                let range = resolved.network.osc_first_port..=resolved.network.osc_last_port;
                taken
                    .take_lowest(&host.name, range)
                    .ok_or_else(|| DeployError::OscPorts {
                        host: host.name.clone(),
                        first: resolved.network.osc_first_port,
                        last: resolved.network.osc_last_port,
                    })?
            }
        };
        osc.insert(
            block.name.clone(),
            OscEndpoint {
                host: host.name.clone(),
                address: host.address.clone(),
                port,
            },
        );
    }
    let blocks = blocks_context(&osc)?;
    if blocks.osc_ports != with_old_ports.osc_ports {
        // Some OSC port is new, and a template may read it (`blocks.NAME.osc_port`): the
        // kept blocks are rendered again with the final view. Otherwise (most edits) their
        // first render is the final one.
        prebuilt.clear();
    }

    let mut deployment = Deployment {
        orchestra: resolved.name.clone(),
        audio: resolved.audio,
        osc,
        ..Default::default()
    };
    // Port names per block (system blocks have ports but no process).
    let mut ports: BTreeMap<&str, (Vec<PortRef>, Vec<PortRef>)> = BTreeMap::new();
    let mut keys = RenderKeys {
        resolved,
        fingerprints: &fingerprints,
        blocks: &blocks,
        hosts: &hosts_context,
        others: None,
    };
    // Each block's render key; those rendered from the same inputs before are the same
    // instance, as it was, and the rest are built (in parallel when there are many).
    let mut keyed = Vec::with_capacity(resolved.blocks.len());
    let mut to_build = Vec::new();
    for block in resolved.blocks.values() {
        let host = host_of(&block.name)?;
        let osc_port = deployment.osc.get(&block.name).map(|e| e.port);
        let render_key = keys.of(block, &host.name, osc_port)?;
        let same = previous
            .hosts
            .get(&host.name)
            .and_then(|h| h.processes.get(&block.name))
            .filter(|p| p.render_key == render_key);
        if same.is_none() && !prebuilt.contains_key(&block.name) {
            to_build.push(block);
        }
        keyed.push((block, host, osc_port, render_key, same));
    }
    let mut built_now: BTreeMap<&str, Built> = to_build
        .iter()
        .map(|b| b.name.as_str())
        .zip(build_all(&to_build, &|b, e| build(b, &blocks, e), engines)?)
        .collect();
    for (block, host, osc_port, render_key, same) in keyed {
        let host_deployment = deployment
            .hosts
            .entry(host.name.clone())
            .or_insert_with(|| HostDeployment {
                host: host.clone(),
                processes: BTreeMap::new(),
                edges: BTreeSet::new(),
            });
        if let Some(same) = same {
            ports.insert(&block.name, (same.inputs.clone(), same.outputs.clone()));
            let same = ProcessSpec {
                fade_ms: block.fade_ms,
                ..same.clone()
            };
            host_deployment.processes.insert(block.name.clone(), same);
            continue;
        }
        let built = match prebuilt.remove(&block.name) {
            Some(built) => built,
            None => built_now
                .remove(block.name.as_str())
                .expect("every block without an instance was built"),
        };
        let real = built.launch;
        if real.command.is_none() {
            ports.insert(&block.name, (real.inputs, real.outputs));
            continue;
        }
        let client = client_name(&block.name, &built.hash);
        ports.insert(&block.name, (real.inputs.clone(), real.outputs.clone()));
        host_deployment.processes.insert(
            block.name.clone(),
            ProcessSpec {
                block: Part::Block(block.name.parse().expect("resolve checked the name")),
                module: block.module.name().to_string(),
                dir: format!(
                    "blocks/{}-{}/{}",
                    block.name,
                    block.module.name(),
                    built.hash
                ),
                client,
                command: real.command.unwrap_or_default(),
                files: built.files,
                spec_hash: built.hash,
                inputs: real.inputs,
                outputs: real.outputs,
                ready_line: real.ready_line,
                package: real.package,
                osc_port,
                render_key,
                start_osc: real.start_osc,
                live: real.live,
                fade_ms: block.fade_ms,
            },
        );
    }
    let mut drafts = Vec::new();
    for wire in &resolved.wires {
        let from_host = host_of(&wire.from.0)?.name.clone();
        let to_host = host_of(&wire.to.0)?.name.clone();
        let from_port = ports[wire.from.0.as_str()].1[wire.from.1 as usize - 1].clone();
        let to_port = ports[wire.to.0.as_str()].0[wire.to.1 as usize - 1].clone();
        if from_host == to_host {
            deployment
                .hosts
                .get_mut(&from_host)
                .expect("host of a placed block")
                .edges
                .insert(Edge {
                    from: from_port,
                    to: to_port,
                });
        } else {
            drafts.push(LinkDraft {
                wire: wire_key((&wire.from.0, wire.from.1), (&wire.to.0, wire.to.1)),
                from_host,
                from_port,
                to_host,
                to_port,
            });
        }
    }
    deployment.links = allocate(&drafts, &previous.links, &resolved.network)?;
    for link in &deployment.links {
        let receiver = hosts_by_name[link.to_host.as_str()];
        for end in ends(link, receiver, &resolved.audio, &resolved.network) {
            let host = deployment
                .hosts
                .get_mut(&end.host)
                .expect("host of a placed block");
            host.edges.extend(end.edges);
            host.processes
                .insert(end.process.block.to_string(), end.process);
        }
    }
    Ok(deployment)
}
