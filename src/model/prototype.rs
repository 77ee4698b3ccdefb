//! The 2015 prototype's formats: `synthdef.json` (blocks, connections, host aliases) and
//! `slaves.json` (hosts). Read leniently, as the prototype's own examples miss commas.

use super::{AudioSettings, Block, Connection, Endpoint, Host, Location, ModelError, Orchestra};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

#[derive(Deserialize)]
struct Synthdef {
    #[serde(default)]
    hosts: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    blocks: BTreeMap<String, SynthdefBlock>,
    #[serde(default)]
    connections: Vec<SynthdefConnection>,
}

#[derive(Deserialize)]
struct SynthdefBlock {
    module: String,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    params: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct SynthdefConnection {
    source: String,
    sink: String,
}

#[derive(Deserialize)]
struct Slave {
    name: String,
    host: String,
    #[serde(default)]
    username: Option<String>,
    #[serde(default = "one")]
    cores: u32,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    identity: Option<String>,
}

fn one() -> u32 {
    1
}

/// Parse strict JSON, or else Hjson (which forgives the missing commas of the prototype's
/// examples) with a warning; on failure report serde_json's `file:line`.
fn read_lenient<T: serde::de::DeserializeOwned>(
    path: &Path,
    warnings: &mut Vec<String>,
) -> Result<T, ModelError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ModelError::at(
            Some(&Location {
                file: file.clone(),
                line: 0,
            }),
            format!("cannot read: {e}"),
        )
    })?;
    match serde_json::from_str::<T>(&text) {
        Ok(v) => Ok(v),
        Err(strict) => match deser_hjson::from_str::<T>(&text) {
            Ok(v) if strict.is_syntax() => {
                warnings.push(format!(
                    "{file}:{}: not strict JSON ({strict}); read leniently, as the prototype did",
                    strict.line()
                ));
                Ok(v)
            }
            _ => Err(ModelError::at(
                Some(&Location {
                    file,
                    line: strict.line() as u32,
                }),
                strict
                    .to_string()
                    .split(" at line")
                    .next()
                    .unwrap_or("")
                    .to_string(),
            )),
        },
    }
}

/// The prototype wrote the system ports as `ADC`/`DAC` modules, or as connection endpoints
/// with no block of that name.
fn implicit_system_block(name: &str) -> Option<&'static str> {
    match name {
        "ADC" | "adc" => Some("adc"),
        "DAC" | "dac" => Some("dac"),
        _ => None,
    }
}

/// `block` or `block:N` (1-based port).
fn parse_endpoint(text: &str) -> Endpoint {
    match text.rsplit_once(':') {
        Some((block, port)) if port.parse::<u32>().is_ok() => Endpoint {
            block: block.to_string(),
            port: port.parse().ok(),
        },
        _ => Endpoint {
            block: text.to_string(),
            port: None,
        },
    }
}

pub fn load_synthdef(path: &Path) -> Result<Orchestra, ModelError> {
    let mut warnings = Vec::new();
    let def: Synthdef = read_lenient(path, &mut warnings)?;
    let at = Some(Location {
        file: path.display().to_string(),
        line: 0,
    });
    let mut blocks: Vec<Block> = def
        .blocks
        .into_iter()
        .map(|(name, b)| Block {
            name,
            module: b.module,
            params: b.params,
            host: b.host,
            location: at.clone(),
        })
        .collect();
    let mut connections = Vec::new();
    for c in def.connections {
        let (from, to) = (parse_endpoint(&c.source), parse_endpoint(&c.sink));
        for end in [&from, &to] {
            if !blocks.iter().any(|b| b.name == end.block) {
                if let Some(module) = implicit_system_block(&end.block) {
                    blocks.push(Block {
                        name: end.block.clone(),
                        module: module.into(),
                        params: Default::default(),
                        host: None,
                        location: at.clone(),
                    });
                }
            }
        }
        connections.push(Connection {
            from,
            to,
            location: at.clone(),
        });
    }
    Ok(Orchestra {
        name: crate::script::orchestra_name(path),
        hosts: Vec::new(),
        blocks,
        connections,
        audio: AudioSettings::default(),
        network: Default::default(),
        host_aliases: def.hosts.into_keys().collect::<BTreeSet<_>>(),
        files: vec![path.to_path_buf()],
        warnings,
    })
}

pub fn load_slaves(path: &Path, warnings: &mut Vec<String>) -> Result<Vec<Host>, ModelError> {
    let slaves: Vec<Slave> = read_lenient(path, warnings)?;
    let at = Location {
        file: path.display().to_string(),
        line: 0,
    };
    Ok(slaves
        .into_iter()
        .map(|s| Host {
            name: s.name,
            address: s.host,
            user: s.username,
            port: s.port.unwrap_or(22),
            cores: s.cores,
            identity: s.identity,
            local: false,
            jack: Default::default(),
            location: Some(at.clone()),
        })
        .collect())
}
