//! The orchestra model: hosts, blocks, connections and audio settings, as a script declares them.
//!
//! `Orchestra` is what the script stage produces (Lua or the prototype's JSON);
//! [`crate::resolve`] checks it against the module library and yields a `Resolved` orchestra
//! whose blocks know their module, merged params and port counts, and whose connections are
//! expanded to wires.

pub use crate::audio::AudioSettings;

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Where something was declared, so errors can say `file:line: …`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    pub file: String,
    /// 1-based line; 0 when only the file is known.
    pub line: u32,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}", self.file, self.line)
        } else {
            write!(f, "{}", self.file)
        }
    }
}

/// An error tied to a place in the user's files: displays as `file:line: message`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}{message}", location.as_ref().map(|l| format!("{l}: ")).unwrap_or_default())]
pub struct ModelError {
    pub location: Option<Location>,
    pub message: String,
}

impl ModelError {
    pub fn at(location: Option<&Location>, message: impl Into<String>) -> Self {
        ModelError {
            location: location.cloned(),
            message: message.into(),
        }
    }
}

/// A machine the orchestra may use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Host {
    pub name: String,
    /// Address to reach it by (`127.0.0.1` for the implicit local host).
    pub address: String,
    /// Login user; `None` means the current user.
    pub user: Option<String>,
    pub port: u16,
    /// Cores the placement may fill.
    pub cores: u32,
    /// SSH key file; `None` means the agent, then the default keys.
    pub identity: Option<String>,
    /// True for the implicit host used when no hosts are declared: reached without SSH.
    #[serde(default)]
    pub local: bool,
    /// How to start this host's JACK server when none runs there.
    #[serde(default)]
    pub jack: JackHost,
    #[serde(skip)]
    pub location: Option<Location>,
}

/// A host's own JACK settings (the rate and period are the orchestra's).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JackHost {
    /// jackd's backend: `None` is `dummy` (cloud machines have no sound card); `alsa` plays
    /// through a sound card.
    pub driver: Option<String>,
    /// The backend's device, e.g. `hw:1` for alsa.
    pub device: Option<String>,
    /// How many ports a server the agent starts there holds (`None`: sized to the orchestra,
    /// see [`crate::deploy::jack_ports`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<u32>,
}

impl Host {
    /// The host used when the musician lists none: this machine, all its cores, no SSH.
    pub fn localhost() -> Host {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        Host {
            name: "localhost".into(),
            address: "127.0.0.1".into(),
            user: None,
            port: 22,
            cores,
            identity: None,
            local: true,
            jack: JackHost::default(),
            location: None,
        }
    }
}

/// One synthesizer instance (or a system port group such as `dac`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Block {
    pub name: String,
    pub module: String,
    /// The block's own params; module defaults are merged in by `resolve`.
    pub params: BTreeMap<String, serde_json::Value>,
    /// `host = "h3"`: a hard placement constraint. In the prototype's format this may also be
    /// an alias (see `Orchestra::host_aliases`).
    pub host: Option<String>,
    /// `fade = 20`: how long a replacement crossfades into the running instance, in ms
    /// (`None`: [`DEFAULT_FADE_MS`]; 0: switched at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fade_ms: Option<u32>,
    #[serde(skip)]
    pub location: Option<Location>,
}

/// A block's crossfade when its script does not say (see `Block::fade_ms`).
pub const DEFAULT_FADE_MS: u32 = 20;

/// The longest `fade` a block may ask for, in ms.
pub const MAX_FADE_MS: u32 = 10_000;

/// One side of a connection: a block, or one numbered port of it (1-based).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Endpoint {
    pub block: String,
    pub port: Option<u32>,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}:{}", self.block, p),
            None => write!(f, "{}", self.block),
        }
    }
}

/// `from >> to`: audio from outputs of `from` into inputs of `to`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Connection {
    pub from: Endpoint,
    pub to: Endpoint,
    #[serde(skip)]
    pub location: Option<Location>,
}

/// How network links (jacktrip) carry audio between hosts: settings for the orchestra, and
/// per pair of hosts where `links` says otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSettings {
    /// jacktrip's receive queue in packets (`-q`): more rides out network jitter, fewer is
    /// less latency.
    pub queue: u32,
    /// jacktrip's jitter buffer (`--bufstrategy`); `None` leaves jacktrip's own default.
    #[serde(default)]
    pub strategy: Option<u8>,
    /// UDP ports links may use on each host, first and last included. A link keeps its
    /// ports for as long as it exists.
    pub first_port: u16,
    pub last_port: u16,
    /// UDP ports OSC-capable blocks listen on, first and last included, per host.
    #[serde(default = "default_osc_first_port")]
    pub osc_first_port: u16,
    #[serde(default = "default_osc_last_port")]
    pub osc_last_port: u16,
    /// Per pair of hosts: a queue or strategy of their own (the last rule that matches wins).
    #[serde(default)]
    pub links: Vec<LinkRule>,
}

/// `network { links = { { from = "h1", to = "h3", queue = 8 } } }`: the buffers of the links
/// from `from` to `to` (either may be left out: any host).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkRule {
    pub from: Option<String>,
    pub to: Option<String>,
    pub queue: Option<u32>,
    pub strategy: Option<u8>,
    /// Where the rule was written (its hosts are checked against the hosts file later).
    #[serde(default)]
    pub location: Option<Location>,
}

/// What carries one link's audio: its receive queue and jitter buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkBuffers {
    pub queue: u32,
    pub strategy: Option<u8>,
}

impl NetworkSettings {
    /// The buffers of a link from `from` to `to`: the orchestra's, then each matching rule.
    pub fn buffers(&self, from: &str, to: &str) -> LinkBuffers {
        let mut buffers = LinkBuffers {
            queue: self.queue,
            strategy: self.strategy,
        };
        let matches = |side: &Option<String>, host: &str| side.as_deref().is_none_or(|h| h == host);
        for rule in self
            .links
            .iter()
            .filter(|r| matches(&r.from, from) && matches(&r.to, to))
        {
            buffers.queue = rule.queue.unwrap_or(buffers.queue);
            buffers.strategy = rule.strategy.or(buffers.strategy);
        }
        buffers
    }
}

fn default_osc_first_port() -> u16 {
    NetworkSettings::default().osc_first_port
}

fn default_osc_last_port() -> u16 {
    NetworkSettings::default().osc_last_port
}

impl Default for NetworkSettings {
    fn default() -> Self {
        // 4464 is jacktrip's own default port; 7770 is the runtime's OSC control port, the
        // blocks' come after it.
        NetworkSettings {
            queue: 4,
            strategy: None,
            first_port: 4464,
            last_port: 4963,
            osc_first_port: 7800,
            osc_last_port: 8799,
            links: Vec::new(),
        }
    }
}

/// Everything a script (plus its hosts file) declares.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Orchestra {
    /// Derived from the script's file name; names the state and work directories.
    pub name: String,
    pub hosts: Vec<Host>,
    pub blocks: Vec<Block>,
    pub connections: Vec<Connection>,
    pub audio: AudioSettings,
    #[serde(default)]
    pub network: NetworkSettings,
    /// `latency { max_ms = … }`: the most a source may take to reach a `dac`.
    #[serde(default)]
    pub latency_max_ms: Option<f64>,
    /// The prototype's synthdef `hosts` map: names that group blocks onto one (placed) host
    /// rather than naming a real machine.
    pub host_aliases: BTreeSet<String>,
    /// Every file the orchestra was read from (script, required files, hosts file).
    pub files: Vec<std::path::PathBuf>,
    /// Things worth telling the musician that do not stop the orchestra.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

impl Orchestra {
    /// Add hosts from a hosts file, refusing duplicates.
    pub fn add_hosts(&mut self, hosts: Vec<Host>) -> Result<(), ModelError> {
        for host in hosts {
            if let Some(existing) = self.hosts.iter().find(|h| h.name == host.name) {
                return Err(ModelError::at(
                    host.location.as_ref(),
                    format!(
                        "host `{}` is declared twice{}",
                        host.name,
                        existing
                            .location
                            .as_ref()
                            .map(|l| format!(" (first at {l})"))
                            .unwrap_or_default()
                    ),
                ));
            }
            self.hosts.push(host);
        }
        Ok(())
    }
}
