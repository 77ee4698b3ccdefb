//! The 2015 prototype's formats: `synthdef.json` (blocks, connections, host aliases) and
//! `slaves.json` (hosts). Read leniently, as the prototype's own examples miss commas.

use crate::model::{
    AudioSettings, Block, Connection, Endpoint, Host, Location, ModelError, Orchestra,
};
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
    let text = crate::script::without_bom(&text);
    check_nesting(text, &file)?;
    match serde_json::from_str::<T>(text) {
        Ok(v) => {
            serde_json::from_str::<UniqueKeys>(text).map_err(|e| {
                ModelError::at(
                    Some(&Location {
                        file: file.clone(),
                        line: e.line() as u32,
                    }),
                    e.to_string().split(" at line").next().unwrap_or(""),
                )
            })?;
            Ok(v)
        }
        Err(strict) => match deser_hjson::from_str::<T>(text) {
            Ok(v) if strict.is_syntax() => {
                if let Err(e) = deser_hjson::from_str::<UniqueKeys>(text) {
                    return Err(ModelError::at(
                        Some(&Location { file, line: 0 }),
                        e.to_string(),
                    ));
                }
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

/// How deep objects and arrays may nest: the formats need three levels; a file nested
/// thousands deep would overflow the parser's stack.
pub const MAX_NESTING: usize = 32;

/// Refuse nesting beyond [`MAX_NESTING`] before any recursive parser sees the text.
fn check_nesting(text: &str, file: &str) -> Result<(), ModelError> {
    let (mut depth, mut line, mut in_string, mut escaped) = (0usize, 1u32, false, false);
    for c in text.chars() {
        if c == '\n' {
            line += 1;
        }
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '{' | '[' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(ModelError::at(
                        Some(&Location {
                            file: file.to_string(),
                            line,
                        }),
                        format!("nested more than {MAX_NESTING} levels deep"),
                    ));
                }
            }
            '}' | ']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Any JSON value whose objects name each key once: serde_json keeps the last of two equal
/// keys silently, and a block declared twice is a mistake worth saying.
struct UniqueKeys;

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UniqueKeysVisitor)
    }
}

struct UniqueKeysVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueKeysVisitor {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_i64<E>(self, _: i64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_u64<E>(self, _: u64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_f64<E>(self, _: f64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_str<E>(self, _: &str) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_unit<E>(self) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_none<E>(self) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<UniqueKeys, D::Error> {
        UniqueKeys::deserialize(d)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<UniqueKeys, A::Error> {
        while seq.next_element::<UniqueKeys>()?.is_some() {}
        Ok(UniqueKeys)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<UniqueKeys, A::Error> {
        let mut seen = BTreeSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!(
                    "key `{}` appears twice in one object",
                    crate::names::shown(&key)
                )));
            }
            map.next_value::<UniqueKeys>()?;
        }
        Ok(UniqueKeys)
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
            fade_ms: None,
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
                        fade_ms: None,
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
        latency_max_ms: None,
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
