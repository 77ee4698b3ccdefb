//! Rendering a block into what its host runs: its files from its module's templates, its spec
//! hash, and its engine's launch (command, ports, ready line, live packets); the render keys
//! that let an unchanged block keep its instance; many blocks built on a few threads.

use super::{client_name, DeployError, OscEndpoint};
use crate::model::Host;
use crate::modules::{Engines, ModuleLibrary};
use crate::placement::Placement;
use crate::resolve::{Resolved, ResolvedBlock};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// What every block's render of one deployment shares: the orchestra, where each block is
/// placed, the modules, and every host as templates see them (`hosts.NAME.…`), built once
/// (a copy per block made a 2000-block plan quadratic).
pub(super) struct Renderer<'a> {
    pub resolved: &'a Resolved,
    placement: &'a Placement,
    library: &'a ModuleLibrary,
    hosts_by_name: BTreeMap<&'a str, &'a Host>,
    pub hosts: minijinja::Value,
    pub fingerprints: Fingerprints,
}

impl<'a> Renderer<'a> {
    pub fn new(
        resolved: &'a Resolved,
        placement: &'a Placement,
        library: &'a ModuleLibrary,
    ) -> Renderer<'a> {
        let hosts = minijinja::Value::from_serialize(
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
        Renderer {
            resolved,
            placement,
            library,
            hosts_by_name: resolved
                .hosts
                .iter()
                .map(|h| (h.name.as_str(), h))
                .collect(),
            hosts,
            fingerprints: Fingerprints::new(resolved, library),
        }
    }

    /// The host a block is placed on.
    pub fn host_of(&self, block: &str) -> Result<&'a Host, DeployError> {
        self.placement
            .host_of(block)
            .and_then(|h| self.hosts_by_name.get(h).copied())
            .ok_or_else(|| DeployError::Unplaced(block.to_string()))
    }

    /// A host by name (one of the orchestra's).
    pub fn host(&self, name: &str) -> &'a Host {
        self.hosts_by_name[name]
    }

    /// Every block as templates see it (`blocks.NAME.…`) with the OSC ports of `osc`.
    pub fn blocks(&self, osc: &BTreeMap<String, OscEndpoint>) -> Result<Blocks, DeployError> {
        self.resolved
            .blocks
            .values()
            .map(|b| {
                let host = self.host_of(&b.name)?;
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
    }

    /// The render keys of blocks seen as `blocks` shows them.
    pub fn keys(&'a self, blocks: &'a Blocks) -> RenderKeys<'a> {
        RenderKeys {
            resolved: self.resolved,
            fingerprints: &self.fingerprints,
            blocks,
            hosts: &self.hosts,
            others: None,
        }
    }

    /// A block's rendered files, its spec hash and how its engine launches it.
    pub fn build(
        &self,
        block: &ResolvedBlock,
        blocks: &Blocks,
        engines: &mut Engines,
    ) -> Result<Built, DeployError> {
        let resolved = self.resolved;
        let host = self.host_of(&block.name)?;
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
                hosts => self.hosts.clone(),
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
            "block": block.name, "module": self.fingerprints.of(&block.module),
            "files": masked_files.as_ref().unwrap_or(&files),
            "params": masked, "ports": [block.inputs, block.outputs], "audio": resolved.audio,
        }));
        let mut launch = engines
            .launch(
                self.library,
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
    }
}

/// What one render of a block gives.
pub(super) struct Built {
    pub files: BTreeMap<String, String>,
    pub hash: String,
    /// How the engine launches the instance (`command` is `None` for system blocks: `dac`,
    /// `adc` have ports, no process).
    pub launch: crate::modules::Launch,
}

/// Every block as templates see it, and the OSC ports that view was made with.
pub(super) struct Blocks {
    view: minijinja::Value,
    pub osc_ports: BTreeMap<String, u16>,
}

/// Each module's fingerprint (its files, manifest and engine source), digested once per
/// deployment: part of every instance's spec hash and render key.
pub(super) struct Fingerprints(BTreeMap<String, String>);

impl Fingerprints {
    pub fn new(resolved: &Resolved, library: &ModuleLibrary) -> Fingerprints {
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

    pub fn of(&self, module: &crate::modules::Module) -> &str {
        &self.0[module.name()]
    }
}

/// The render keys of one deployment's blocks (see [`ProcessSpec::render_key`]): what is
/// the same for every block (the view of where every block and host is) digested once.
pub(super) struct RenderKeys<'a> {
    pub resolved: &'a Resolved,
    pub fingerprints: &'a Fingerprints,
    pub blocks: &'a Blocks,
    pub hosts: &'a minijinja::Value,
    pub others: Option<String>,
}

impl<'a> RenderKeys<'a> {
    pub fn of(
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

pub(super) fn short_hash(parts: &serde_json::Value) -> String {
    short_digest(parts.to_string().as_bytes())
}

/// SHA-256 in hex.
pub(super) fn full_digest(bytes: &[u8]) -> String {
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
pub(super) fn build_all(
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
