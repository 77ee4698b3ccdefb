//! Deployment: from a resolved orchestra and its placement, exactly what must exist on each
//! host — processes (each with a spec hash), JACK edges — and the wires that cross hosts.

pub mod jack_ports;
pub mod links;
mod ports;
mod render;

use ports::PortPool;
pub(crate) use render::short_digest;
use render::{build_all, Blocks, Built, Renderer};

use crate::model::{AudioSettings, Host};
use crate::modules::{Engines, ModuleError, ModuleLibrary};
use crate::placement::Placement;
use crate::resolve::Resolved;
use links::{allocate, ends, wire_key, Link, LinkDraft, LinkError};
use orchestra_protocol::{ClientName, Part, PortRef};
pub use orchestra_protocol::{Edge, LiveParam, ProcessSpec};
use serde::{Deserialize, Serialize};
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
    let renderer = Renderer::new(resolved, placement, library);
    let Ports {
        osc,
        blocks,
        prebuilt,
    } = osc_ports(&renderer, previous, in_use, engines)?;
    let mut deployment = Deployment {
        orchestra: resolved.name.clone(),
        audio: resolved.audio,
        osc,
        ..Default::default()
    };
    let ports = processes(
        &renderer,
        &mut deployment,
        previous,
        &blocks,
        prebuilt,
        engines,
    )?;
    wires(&renderer, &mut deployment, previous, &ports)?;
    Ok(deployment)
}

/// Where the OSC blocks listen, every block as templates see it with those ports, and the
/// blocks already rendered to find out.
struct Ports {
    osc: BTreeMap<String, OscEndpoint>,
    blocks: Blocks,
    prebuilt: BTreeMap<String, Built>,
}

/// OSC ports. An instance keeps its port while its spec stays the same; a new instance
/// (replaced or moved) gets a port no running instance holds, because the old one still
/// listens until the new one plays (make-before-break).
fn osc_ports(
    renderer: &Renderer,
    previous: &Deployment,
    in_use: &PortsInUse,
    engines: &mut Engines,
) -> Result<Ports, DeployError> {
    let resolved = renderer.resolved;
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
            resolved.blocks.get(*name).is_some_and(|b| {
                b.module.manifest.osc
                    && renderer.host_of(name).is_ok_and(|host| host.name == e.host)
            })
        })
        .map(|(name, e)| (name.clone(), e.clone()))
        .collect();
    let with_old_ports = renderer.blocks(&kept)?;
    let mut old_keys = renderer.keys(&with_old_ports);
    // Kept blocks rendered with their old ports (when their render key does not already
    // say so), to see whether their spec stays the same.
    let mut prebuilt: BTreeMap<String, Built> = BTreeMap::new();
    let mut osc = BTreeMap::new();
    for block in resolved.blocks.values().filter(|b| b.module.manifest.osc) {
        let host = renderer.host_of(&block.name)?;
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
                    let built = renderer.build(block, &with_old_ports, engines)?;
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
    let blocks = renderer.blocks(&osc)?;
    if blocks.osc_ports != with_old_ports.osc_ports {
        // Some OSC port is new, and a template may read it (`blocks.NAME.osc_port`): the
        // kept blocks are rendered again with the final view. Otherwise (most edits) their
        // first render is the final one.
        prebuilt.clear();
    }
    Ok(Ports {
        osc,
        blocks,
        prebuilt,
    })
}

/// Each block's JACK ports by block name: (inputs, outputs), port 1 first.
type BlockPorts<'a> = BTreeMap<&'a str, (Vec<PortRef>, Vec<PortRef>)>;

/// Each block's instance on its host: one rendered from the same inputs before is the same
/// instance, as it was, and the rest are built (in parallel when there are many). The port
/// names of every block (system blocks have ports but no process), inputs and outputs.
fn processes<'r>(
    renderer: &'r Renderer,
    deployment: &mut Deployment,
    previous: &Deployment,
    blocks: &Blocks,
    mut prebuilt: BTreeMap<String, Built>,
    engines: &mut Engines,
) -> Result<BlockPorts<'r>, DeployError> {
    let resolved = renderer.resolved;
    let mut ports = BTreeMap::new();
    let mut keys = renderer.keys(blocks);
    let mut keyed = Vec::with_capacity(resolved.blocks.len());
    let mut to_build = Vec::new();
    for block in resolved.blocks.values() {
        let host = renderer.host_of(&block.name)?;
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
    let build = |block: &crate::resolve::ResolvedBlock, engines: &mut Engines| {
        renderer.build(block, blocks, engines)
    };
    let mut built_now: BTreeMap<&str, Built> = to_build
        .iter()
        .map(|b| b.name.as_str())
        .zip(build_all(&to_build, &build, engines)?)
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
            ports.insert(
                block.name.as_str(),
                (same.inputs.clone(), same.outputs.clone()),
            );
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
        ports.insert(
            block.name.as_str(),
            (real.inputs.clone(), real.outputs.clone()),
        );
        let Some(command) = real.command else {
            continue;
        };
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
                client: client_name(&block.name, &built.hash),
                command,
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
    Ok(ports)
}

/// Each wire as an edge on its host, or on a network link between its two hosts (links that
/// stay keep their UDP ports), whose jacktrip ends join the processes of their hosts.
fn wires(
    renderer: &Renderer,
    deployment: &mut Deployment,
    previous: &Deployment,
    ports: &BlockPorts,
) -> Result<(), DeployError> {
    let resolved = renderer.resolved;
    let mut drafts = Vec::new();
    for wire in &resolved.wires {
        let from_host = renderer.host_of(&wire.from.0)?.name.clone();
        let to_host = renderer.host_of(&wire.to.0)?.name.clone();
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
        let receiver = renderer.host(&link.to_host);
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
    Ok(())
}
