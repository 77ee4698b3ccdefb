//! Resolution: check an `Orchestra` against the module library and expand it for placement.

use crate::model::AudioSettings;
use crate::model::{Host, Location, ModelError, Orchestra};
use crate::modules::{Module, ModuleLibrary};
use crate::names::{did_you_mean, invalid_name_reason, is_valid_name};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A block with everything later stages need: its module, merged params and port counts.
#[derive(Debug, Clone)]
pub struct ResolvedBlock {
    pub name: String,
    pub module: Arc<Module>,
    /// Module defaults overridden by the block's own params.
    pub params: BTreeMap<String, Value>,
    pub inputs: u32,
    pub outputs: u32,
    pub cpu: u32,
    /// Host the block must run on.
    pub pin: Option<String>,
    /// Prototype alias: blocks sharing it run on one host the placement chooses.
    pub group: Option<String>,
    /// How long its replacement crossfades, in ms (see `model::Block::fade_ms`).
    pub fade_ms: u32,
    pub location: Option<Location>,
}

/// One port-to-port audio link: (block, 1-based output) → (block, 1-based input).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Wire {
    pub from: (String, u32),
    pub to: (String, u32),
}

/// A checked orchestra, ready for placement and deployment.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub name: String,
    pub hosts: Vec<Host>,
    pub blocks: BTreeMap<String, ResolvedBlock>,
    /// One (from block, to block) pair per declared connection: what the placement's cut counts.
    pub connections: Vec<(String, String)>,
    pub wires: Vec<Wire>,
    pub audio: AudioSettings,
    pub network: crate::model::NetworkSettings,
    /// `latency { max_ms = … }`, if the script set one.
    pub latency_max_ms: Option<f64>,
}

/// Check names, modules, params, pins and ports; expand block-level connections to wires.
pub fn resolve(orchestra: &Orchestra, library: &ModuleLibrary) -> Result<Resolved, ModelError> {
    let hosts = resolve_hosts(orchestra)?;
    let blocks = resolve_blocks(orchestra, library, &hosts)?;
    check_references(&blocks, &hosts)?;
    check_link_rules(orchestra, &hosts)?;
    let mut connections = Vec::new();
    let mut wires = Vec::new();
    for connection in &orchestra.connections {
        let at = connection.location.as_ref();
        let from = endpoint_block(&blocks, &connection.from.block, at)?;
        let to = endpoint_block(&blocks, &connection.to.block, at)?;
        let pairs: Vec<(u32, u32)> = match (connection.from.port, connection.to.port) {
            (None, None) => {
                let n = from.outputs.min(to.inputs);
                if n == 0 {
                    return Err(ModelError::at(
                        at,
                        format!(
                            "cannot connect `{}` to `{}`: {}",
                            from.name,
                            to.name,
                            if from.outputs == 0 {
                                format!("`{}` ({}) has no outputs", from.name, from.module.name())
                            } else {
                                format!("`{}` ({}) has no inputs", to.name, to.module.name())
                            }
                        ),
                    ));
                }
                (1..=n).map(|i| (i, i)).collect()
            }
            (out, inp) => vec![(out.unwrap_or(1), inp.unwrap_or(1))],
        };
        for (out, inp) in pairs {
            check_port(from, out, "output", from.outputs, at)?;
            check_port(to, inp, "input", to.inputs, at)?;
            let wire = Wire {
                from: (from.name.clone(), out),
                to: (to.name.clone(), inp),
            };
            if !wires.contains(&wire) {
                wires.push(wire);
            }
        }
        connections.push((from.name.clone(), to.name.clone()));
    }
    Ok(Resolved {
        name: orchestra.name.clone(),
        hosts,
        blocks,
        connections,
        wires,
        audio: orchestra.audio,
        network: orchestra.network.clone(),
        latency_max_ms: orchestra.latency_max_ms,
    })
}

/// Each `network { links = … }` rule names hosts of the orchestra.
fn check_link_rules(orchestra: &Orchestra, hosts: &[Host]) -> Result<(), ModelError> {
    for rule in &orchestra.network.links {
        for (side, host) in [("from", &rule.from), ("to", &rule.to)] {
            let Some(host) = host else { continue };
            if !hosts.iter().any(|h| &h.name == host) {
                return Err(ModelError::at(
                    rule.location.as_ref(),
                    format!(
                        "network: links: `{side}` names no host `{}`{}",
                        crate::names::shown(host),
                        did_you_mean(host, hosts.iter().map(|h| h.name.as_str()))
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn resolve_hosts(orchestra: &Orchestra) -> Result<Vec<Host>, ModelError> {
    if orchestra.hosts.is_empty() {
        return Ok(vec![Host::localhost()]);
    }
    for host in &orchestra.hosts {
        let at = host.location.as_ref();
        if !is_valid_name(&host.name) {
            return Err(ModelError::at(at, invalid_name_reason("host", &host.name)));
        }
        if host.cores == 0 {
            return Err(ModelError::at(
                at,
                format!(
                    "host `{}` has no cores (cores must be at least 1)",
                    host.name
                ),
            ));
        }
        if host.address.trim().is_empty() {
            return Err(ModelError::at(
                at,
                format!("host `{}` has no address", host.name),
            ));
        }
    }
    Ok(orchestra.hosts.clone())
}

/// Param `key` = `value` of block `block` (declared `at`) as its module takes it, or why not.
/// Params are pasted into synth code: a value must be of its param's kind and within its
/// range, so text cannot smuggle code where a number belongs and a level cannot reach the DAC
/// at a billion.
pub fn check_param(
    block: &str,
    module: &crate::modules::Module,
    at: Option<&crate::model::Location>,
    key: &str,
    value: &serde_json::Value,
) -> Result<serde_json::Value, ModelError> {
    let Some(spec) = module.manifest.params.get(key) else {
        return Err(ModelError::at(
            at,
            format!(
                "block `{block}`: module `{}` has no param `{key}`{}",
                module.name(),
                did_you_mean(key, module.manifest.params.keys().map(String::as_str))
            ),
        ));
    };
    spec.check(value)
        .map_err(|why| ModelError::at(at, format!("block `{block}`: param `{key}` {why}")))
}

fn resolve_blocks(
    orchestra: &Orchestra,
    library: &ModuleLibrary,
    hosts: &[Host],
) -> Result<BTreeMap<String, ResolvedBlock>, ModelError> {
    let mut blocks: BTreeMap<String, ResolvedBlock> = BTreeMap::new();
    for block in &orchestra.blocks {
        let at = block.location.as_ref();
        if !is_valid_name(&block.name) {
            return Err(ModelError::at(
                at,
                invalid_name_reason("block", &block.name),
            ));
        }
        if block.name.starts_with("link-") {
            return Err(ModelError::at(
                at,
                format!(
                    "block name `{}`: names starting with `link-` are kept for network links",
                    block.name
                ),
            ));
        }
        if let Some(first) = blocks.get(&block.name) {
            return Err(ModelError::at(
                at,
                format!(
                    "block `{}` is declared twice{}",
                    block.name,
                    first
                        .location
                        .as_ref()
                        .map(|l| format!(" (first at {l})"))
                        .unwrap_or_default()
                ),
            ));
        }
        let module = library.get(&block.module).ok_or_else(|| {
            ModelError::at(
                at,
                format!(
                    "block `{}`: unknown module `{}`{}",
                    block.name,
                    block.module,
                    did_you_mean(&block.module, library.names())
                ),
            )
        })?;
        let mut params = module.manifest.defaults();
        for (key, value) in &block.params {
            let value = check_param(&block.name, module, at, key, value)?;
            params.insert(key.clone(), value);
        }
        let count = |what: &str, spec: &crate::modules::PortCount| {
            spec.resolve(&params)
                .map_err(|e| ModelError::at(at, format!("block `{}`: {what}: {e}", block.name)))
        };
        let inputs = count("inputs", &module.manifest.inputs)?;
        let outputs = count("outputs", &module.manifest.outputs)?;
        let (pin, group) = match &block.host {
            None => (None, None),
            Some(h) if hosts.iter().any(|host| &host.name == h) => (Some(h.clone()), None),
            Some(h) if orchestra.host_aliases.contains(h) => (None, Some(h.clone())),
            Some(h) => {
                return Err(ModelError::at(
                    at,
                    format!(
                        "block `{}` is pinned to unknown host `{}`{}",
                        block.name,
                        h,
                        match did_you_mean(h, hosts.iter().map(|h| h.name.as_str())) {
                            hint if hint.is_empty() => format!(
                                " (hosts: {})",
                                hosts
                                    .iter()
                                    .map(|h| h.name.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                            hint => hint,
                        }
                    ),
                ))
            }
        };
        blocks.insert(
            block.name.clone(),
            ResolvedBlock {
                name: block.name.clone(),
                cpu: module.manifest.cpu,
                module: module.clone(),
                params,
                inputs,
                outputs,
                pin,
                group,
                fade_ms: block.fade_ms.unwrap_or(crate::model::DEFAULT_FADE_MS),
                location: block.location.clone(),
            },
        );
    }
    Ok(blocks)
}

/// Params that name another block or a host must name one the orchestra has.
fn check_references(
    blocks: &BTreeMap<String, ResolvedBlock>,
    hosts: &[Host],
) -> Result<(), ModelError> {
    use crate::modules::ParamKind;
    for block in blocks.values() {
        for (key, spec) in &block.module.manifest.params {
            let Some(name) = block.params.get(key).and_then(Value::as_str) else {
                continue;
            };
            let known: Vec<&str> = match spec.kind {
                ParamKind::Block => blocks.keys().map(String::as_str).collect(),
                ParamKind::Host => hosts.iter().map(|h| h.name.as_str()).collect(),
                _ => continue,
            };
            if !known.contains(&name) {
                return Err(ModelError::at(
                    block.location.as_ref(),
                    format!(
                        "block `{}`: param `{key}` names no {} `{name}`{}",
                        block.name,
                        if spec.kind == ParamKind::Block {
                            "block"
                        } else {
                            "host"
                        },
                        did_you_mean(name, known.iter().copied())
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn endpoint_block<'a>(
    blocks: &'a BTreeMap<String, ResolvedBlock>,
    name: &str,
    at: Option<&Location>,
) -> Result<&'a ResolvedBlock, ModelError> {
    blocks.get(name).ok_or_else(|| {
        ModelError::at(
            at,
            format!(
                "connection names unknown block `{name}`{}",
                did_you_mean(name, blocks.keys().map(String::as_str))
            ),
        )
    })
}

fn check_port(
    block: &ResolvedBlock,
    port: u32,
    kind: &str,
    count: u32,
    at: Option<&Location>,
) -> Result<(), ModelError> {
    if port == 0 || port > count {
        let range = match count {
            0 => format!("it has no {kind}s"),
            1 => format!("it has 1 {kind}"),
            n => format!("it has {kind}s 1 to {n}"),
        };
        return Err(ModelError::at(
            at,
            format!(
                "{kind} {port} of `{}` ({}) is out of range: {range}",
                block.name,
                block.module.name()
            ),
        ));
    }
    Ok(())
}
