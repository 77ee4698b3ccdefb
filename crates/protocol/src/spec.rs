//! What a host runs: a synth process as the controller specifies it, the JACK edges between
//! ports, a live param's value with the packet that sets it, the module files as they travel.

use crate::ids::{ClientName, Part, PortRef};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A block's crossfade when its script does not say, in ms.
pub const DEFAULT_FADE_MS: u32 = 20;

/// A synth process to run: everything that defines it, hashed into `spec_hash`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// What it plays: a block, or one end of a network link.
    pub block: Part,
    pub module: String,
    /// JACK client name, `<block>-<hash8>`: unique per instance, so a replacement can start
    /// beside the old one (make-before-break) without a name clash. Both ends of a link are
    /// the link's id, each on its own host.
    pub client: ClientName,
    /// Working directory relative to the agent's work dir: `blocks/<block>-<module>/<hash8>`.
    pub dir: String,
    pub command: Vec<String>,
    /// Rendered module files, relative path → content (see [`rendered_file`]).
    pub files: BTreeMap<String, String>,
    /// Hash of module, engine, files and command: a block restarts only when it changes.
    pub spec_hash: String,
    pub inputs: Vec<PortRef>,
    pub outputs: Vec<PortRef>,
    /// The engine's "done registering with JACK" log line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_line: Option<String>,
    /// The Debian package of the program, for the error when it is missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
    /// Where an OSC block's instance listens on its host (what it was last told is replayed
    /// there before it is wired in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub osc_port: Option<u16>,
    /// A digest of everything this instance was rendered from (module, engine, the block's
    /// own fields, the audio settings, and where the others run if its templates read that):
    /// the next deployment reuses the instance as it is when its key is the same, instead of
    /// rendering and launching it again.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub render_key: String,
    /// OSC packets sent to the instance once it is ready, before it is wired in (the
    /// engine's `start_messages`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub start_osc: Vec<Vec<u8>>,
    /// The live params' values (outside the spec hash): a change of one alone is sent to the
    /// running instance instead of replacing it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub live: BTreeMap<String, LiveParam>,
    /// How long a replacement of this instance crossfades into it, in ms (the block's
    /// `fade`; 0: switched at once). Outside the spec hash: a change of it alone restarts
    /// nothing.
    #[serde(default = "default_fade_ms")]
    pub fade_ms: u32,
}

fn default_fade_ms() -> u32 {
    DEFAULT_FADE_MS
}

impl ProcessSpec {
    /// A fixture for tests (the `testing` feature): `block` of `module` as client `client`,
    /// with no command, files, ports or params; a test sets what it needs over it.
    #[cfg(feature = "testing")]
    pub fn fixture(block: &str, module: &str, client: &str) -> ProcessSpec {
        ProcessSpec {
            block: block.into(),
            module: module.into(),
            client: client.into(),
            dir: String::new(),
            command: Vec::new(),
            files: BTreeMap::new(),
            spec_hash: String::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            ready_line: None,
            package: None,
            osc_port: None,
            render_key: String::new(),
            start_osc: Vec::new(),
            live: BTreeMap::new(),
            fade_ms: 0,
        }
    }

    /// Whether it is an end of a network link (a jacktrip), not a block's synth.
    pub fn is_link(&self) -> bool {
        self.block.link_end().is_some()
    }
}

/// One JACK connection, from an output port to an input port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Edge {
    pub from: PortRef,
    pub to: PortRef,
}

impl Edge {
    /// Whether either end is a port of `client`.
    pub fn touches(&self, client: &ClientName) -> bool {
        self.from.client == *client || self.to.client == *client
    }
}

impl std::fmt::Display for Edge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} → {}", self.from, self.to)
    }
}

/// A live param of an instance: its value, and the OSC packet that sets the running
/// instance to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveParam {
    pub value: serde_json::Value,
    pub osc: Vec<u8>,
}

/// A module file that is not UTF-8 text (a SuperCollider `.scsyndef`) travels among the
/// rendered files, which are text, as base64 under its path followed by this mark: no real
/// path holds a NUL. The agent writes it back as bytes (see [`rendered_file`]).
pub const BINARY_FILE: &str = "\0base64";

/// A module file that is not text, as it travels among the rendered files: its path marked
/// [`BINARY_FILE`], and its bytes in base64.
pub fn binary_file(path: &str, bytes: &[u8]) -> (String, String) {
    use base64::Engine as _;
    let text = base64::engine::general_purpose::STANDARD.encode(bytes);
    (format!("{path}{BINARY_FILE}"), text)
}

/// A rendered file as the agent writes it: its path and its bytes (binary files decoded).
pub fn rendered_file<'a>(
    path: &'a str,
    content: &'a str,
) -> Result<(&'a str, std::borrow::Cow<'a, [u8]>), String> {
    match path.strip_suffix(BINARY_FILE) {
        Some(path) => {
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(content)
                .map_err(|e| format!("{path}: not base64: {e}"))?;
            Ok((path, bytes.into()))
        }
        None => Ok((path, content.as_bytes().into())),
    }
}
