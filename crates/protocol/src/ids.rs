//! The names that cross the wire, each a type with its text form written once: `Display` makes
//! it, `FromStr` (and serde, through it) reads it back and is the only place that takes one
//! apart. Nothing else splits a port on `:` or a link end on `.`.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Why a text is not the id it was read as.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not {what}: {why}")]
pub struct IdError {
    pub text: String,
    pub what: &'static str,
    pub why: &'static str,
}

fn refuse(text: &str, what: &'static str, why: &'static str) -> IdError {
    IdError {
        text: text.chars().take(80).collect(),
        what,
        why,
    }
}

/// The longest block or host name. JACK client names are limited to 64 bytes and an instance
/// appends a 9-character suffix (`-` + 8 hex digits of its spec hash).
pub const MAX_NAME_LEN: usize = 48;

/// A block or host name is `[A-Za-z0-9_-]+`, at most [`MAX_NAME_LEN`] bytes: safe in a shell
/// argument, a path component and a JACK client name.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $valid:expr, $why:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        /// The text as it is, padded as a format asks (`{:<16}` in a table).
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(text: &str) -> Result<Self, IdError> {
                let valid: fn(&str) -> bool = $valid;
                if valid(text) {
                    Ok($name(text.to_string()))
                } else {
                    Err(refuse(text, $what, $why))
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(text: String) -> Result<Self, IdError> {
                text.parse()
            }
        }

        impl From<$name> for String {
            fn from(name: $name) -> String {
                name.0
            }
        }

        #[cfg(feature = "testing")]
        impl From<&str> for $name {
            fn from(text: &str) -> $name {
                text.parse().unwrap_or_else(|e| panic!("{e}"))
            }
        }

        /// An id reads as the text it is (it is only ever made valid).
        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

name_type!(
    /// A block of the orchestra (`osc`, `filt`).
    BlockName,
    "a block name",
    is_valid_name,
    "letters, digits, `_` and `-`, at most 48"
);

name_type!(
    /// A host of the orchestra, as the hosts file names it (`h1`, `localhost`).
    HostName,
    "a host name",
    is_valid_name,
    "letters, digits, `_` and `-`, at most 48"
);

name_type!(
    /// A JACK client: an instance of a block (`osc-0a5c05ef`), both ends of a network link
    /// (`link-1f2e3d4c-2`, one on each host), or a program that is not ours (`system`).
    ClientName,
    "a JACK client name",
    |text| !text.is_empty() && text.len() <= 64 && !text.contains(':'),
    "1 to 64 bytes without `:`"
);

name_type!(
    /// A network link between two hosts, `link-<hash8>-<channels>`: the JACK client name of
    /// both its ends.
    LinkId,
    "a link id",
    |text| text.strip_prefix("link-").is_some_and(is_valid_name),
    "`link-` then letters, digits, `_` and `-`"
);

impl LinkId {
    /// The JACK client of either end of the link (each on its own host's server).
    pub fn client(&self) -> ClientName {
        ClientName(self.0.clone())
    }

    /// Channel `channel` (from 1) of the link's `side` end: `send_N` takes the sources' audio
    /// in on their host, `receive_N` gives it out on the sinks' host.
    pub fn port(&self, side: Side, channel: u32) -> PortRef {
        self.client().port(format!("{}_{channel}", side.word()))
    }
}

impl ClientName {
    /// The client's port `port`.
    pub fn port(&self, port: impl Into<String>) -> PortRef {
        PortRef {
            client: self.clone(),
            port: port.into(),
        }
    }

    /// The link whose end this client is, when it is one.
    pub fn link(&self) -> Option<LinkId> {
        self.0.parse().ok()
    }
}

/// A JACK port, `client:port` (`osc-0a5c05ef:output1`, `system:playback_1`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PortRef {
    pub client: ClientName,
    /// The port's own name, after the client's.
    pub port: String,
}

impl PortRef {
    /// The DAC's channel `n` (1-based) on a host: `system:playback_N`.
    pub fn playback(n: u32) -> PortRef {
        PortRef {
            client: ClientName("system".into()),
            port: format!("playback_{n}"),
        }
    }

    /// The link channel this port is — its link, which end, and the channel (from 1) — when
    /// it is a port of a link end (see [`LinkId::port`]).
    pub fn link_channel(&self) -> Option<(LinkId, Side, u32)> {
        let link = self.client.link()?;
        let (side, channel) = self.port.split_once('_')?;
        let side = match side {
            "send" => Side::Send,
            "receive" => Side::Receive,
            _ => return None,
        };
        Some((link, side, channel.parse().ok()?))
    }

    /// The DAC's channel this port is (1-based), when it is `system:playback_N`.
    pub fn dac_channel(&self) -> Option<u32> {
        if self.client != "system" {
            return None;
        }
        self.port
            .strip_prefix("playback_")?
            .parse()
            .ok()
            .filter(|n| *n > 0)
    }
}

impl fmt::Display for PortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        padded(f, format_args!("{}:{}", self.client.0, self.port))
    }
}

/// Write `text`, padded when the format asks for a width (as `str` is); at once otherwise.
fn padded(f: &mut fmt::Formatter<'_>, text: fmt::Arguments<'_>) -> fmt::Result {
    match f.width() {
        Some(_) => f.pad(&text.to_string()),
        None => f.write_fmt(text),
    }
}

impl FromStr for PortRef {
    type Err = IdError;
    fn from_str(text: &str) -> Result<PortRef, IdError> {
        let (client, port) = text
            .split_once(':')
            .ok_or_else(|| refuse(text, "a JACK port", "`client:port`"))?;
        if port.is_empty() {
            return Err(refuse(text, "a JACK port", "the port name is empty"));
        }
        Ok(PortRef {
            client: client.parse()?,
            port: port.to_string(),
        })
    }
}

/// A port equals its text (`client:port`).
impl PartialEq<str> for PortRef {
    fn eq(&self, text: &str) -> bool {
        let (client, port) = (self.client.as_str(), self.port.as_str());
        text.len() == client.len() + 1 + port.len()
            && text.starts_with(client)
            && text[client.len()..].starts_with(':')
            && text.ends_with(port)
    }
}

impl PartialEq<&str> for PortRef {
    fn eq(&self, text: &&str) -> bool {
        *self == **text
    }
}

impl TryFrom<String> for PortRef {
    type Error = IdError;
    fn try_from(text: String) -> Result<PortRef, IdError> {
        text.parse()
    }
}

impl From<PortRef> for String {
    fn from(port: PortRef) -> String {
        port.to_string()
    }
}

/// Ports sort as their text does (`client:port`), as they did when they were text: plans,
/// snapshots and state files list them in the same order.
impl Ord for PortRef {
    fn cmp(&self, other: &PortRef) -> std::cmp::Ordering {
        fn text(p: &PortRef) -> impl Iterator<Item = u8> + '_ {
            let client = p.client.0.bytes();
            client.chain(std::iter::once(b':')).chain(p.port.bytes())
        }
        text(self).cmp(text(other))
    }
}

impl PartialOrd for PortRef {
    fn partial_cmp(&self, other: &PortRef) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Fixtures for tests (the `testing` feature): a text taken as the id it must be.
macro_rules! testing_from_str {
    ($($name:ident),*) => {
        $(
            #[cfg(feature = "testing")]
            impl From<&str> for $name {
                fn from(text: &str) -> $name {
                    text.parse().unwrap_or_else(|e| panic!("{e}"))
                }
            }
        )*
    };
}

testing_from_str!(PortRef, LinkEnd, Part);

/// Which end of a link: the sending one on the sources' host, the receiving one on the sinks'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Side {
    Send,
    Receive,
}

impl Side {
    pub fn word(self) -> &'static str {
        match self {
            Side::Send => "send",
            Side::Receive => "receive",
        }
    }
}

/// One end of a network link, `<link id>.send` or `.receive`: the jacktrip process on one host.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LinkEnd {
    pub link: LinkId,
    pub side: Side,
}

impl fmt::Display for LinkEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        padded(f, format_args!("{}.{}", self.link.0, self.side.word()))
    }
}

impl FromStr for LinkEnd {
    type Err = IdError;
    fn from_str(text: &str) -> Result<LinkEnd, IdError> {
        let why = "`<link id>.send` or `<link id>.receive`";
        let (link, side) = text
            .rsplit_once('.')
            .ok_or_else(|| refuse(text, "a link end", why))?;
        let side = match side {
            "send" => Side::Send,
            "receive" => Side::Receive,
            _ => return Err(refuse(text, "a link end", why)),
        };
        Ok(LinkEnd {
            link: link.parse()?,
            side,
        })
    }
}

impl TryFrom<String> for LinkEnd {
    type Error = IdError;
    fn try_from(text: String) -> Result<LinkEnd, IdError> {
        text.parse()
    }
}

impl From<LinkEnd> for String {
    fn from(end: LinkEnd) -> String {
        end.to_string()
    }
}

/// What a process on a host plays: a block of the orchestra, or one end of a network link.
/// Its text is the block's name or the link end's (no block is named `link-…`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Part {
    Block(BlockName),
    Link(LinkEnd),
}

impl Part {
    /// The block, when this is one.
    pub fn block(&self) -> Option<&BlockName> {
        match self {
            Part::Block(block) => Some(block),
            Part::Link(_) => None,
        }
    }

    /// The link end, when this is one.
    pub fn link_end(&self) -> Option<&LinkEnd> {
        match self {
            Part::Link(end) => Some(end),
            Part::Block(_) => None,
        }
    }

    /// The link, when this is an end of one.
    pub fn link(&self) -> Option<&LinkId> {
        self.link_end().map(|end| &end.link)
    }
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Part::Block(block) => block.fmt(f),
            Part::Link(end) => end.fmt(f),
        }
    }
}

impl FromStr for Part {
    type Err = IdError;
    fn from_str(text: &str) -> Result<Part, IdError> {
        if text.starts_with("link-") && text.contains('.') {
            return Ok(Part::Link(text.parse()?));
        }
        Ok(Part::Block(text.parse()?))
    }
}

impl TryFrom<String> for Part {
    type Error = IdError;
    fn try_from(text: String) -> Result<Part, IdError> {
        text.parse()
    }
}

impl From<Part> for String {
    fn from(part: Part) -> String {
        part.to_string()
    }
}

/// Parts sort as their text does.
impl Ord for Part {
    fn cmp(&self, other: &Part) -> std::cmp::Ordering {
        fn text(p: &Part) -> impl Iterator<Item = u8> + '_ {
            let (name, suffix) = match p {
                Part::Block(block) => (block.as_str(), ""),
                Part::Link(end) => (
                    end.link.as_str(),
                    match end.side {
                        Side::Send => ".send",
                        Side::Receive => ".receive",
                    },
                ),
            };
            name.bytes().chain(suffix.bytes())
        }
        text(self).cmp(text(other))
    }
}

impl PartialOrd for Part {
    fn partial_cmp(&self, other: &Part) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl From<BlockName> for Part {
    fn from(block: BlockName) -> Part {
        Part::Block(block)
    }
}

impl From<LinkEnd> for Part {
    fn from(end: LinkEnd) -> Part {
        Part::Link(end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_id_reads_back_what_it_writes() {
        let port: PortRef = "osc-0a5c05ef:output1".parse().unwrap();
        assert_eq!(port.client.as_str(), "osc-0a5c05ef");
        assert_eq!(port.port, "output1");
        assert_eq!(port.to_string(), "osc-0a5c05ef:output1");
        let end: LinkEnd = "link-1f2e3d4c-2.receive".parse().unwrap();
        assert_eq!(end.link.as_str(), "link-1f2e3d4c-2");
        assert_eq!(end.side, Side::Receive);
        assert_eq!(end.to_string(), "link-1f2e3d4c-2.receive");
        assert_eq!(
            "osc".parse::<Part>().unwrap(),
            Part::Block("osc".parse().unwrap())
        );
        assert_eq!(
            "link-1f2e3d4c-2.send".parse::<Part>().unwrap(),
            Part::Link("link-1f2e3d4c-2.send".parse().unwrap())
        );
        let json = serde_json::to_string(&port).unwrap();
        assert_eq!(json, "\"osc-0a5c05ef:output1\"");
        assert_eq!(serde_json::from_str::<PortRef>(&json).unwrap(), port);
    }

    #[test]
    fn what_is_not_an_id_is_refused_with_why() {
        let e = "osc".parse::<PortRef>().unwrap_err();
        assert_eq!(e.to_string(), "`osc` is not a JACK port: `client:port`");
        assert!("a b".parse::<BlockName>().is_err());
        assert!("link-a.sideways".parse::<LinkEnd>().is_err());
        assert!("osc:".parse::<PortRef>().is_err());
        assert!(serde_json::from_str::<BlockName>("\"../x\"").is_err());
    }

    #[test]
    fn link_ports_and_dac_channels_are_read_where_they_are_made() {
        let link: LinkId = "link-1f2e3d4c-2".parse().unwrap();
        let port = link.port(Side::Receive, 2);
        assert_eq!(port.to_string(), "link-1f2e3d4c-2:receive_2");
        assert_eq!(port.link_channel(), Some((link, Side::Receive, 2)));
        assert_eq!(PortRef::playback(2).dac_channel(), Some(2));
        let capture: PortRef = "system:capture_1".parse().unwrap();
        assert_eq!(capture.dac_channel(), None);
        let synth: PortRef = "tone-ab12cd34:out".parse().unwrap();
        assert_eq!((synth.dac_channel(), synth.link_channel()), (None, None));
    }

    #[test]
    fn ids_pad_in_tables_as_text_does() {
        let block: Part = "osc".parse().unwrap();
        let end: Part = "link-a-2.send".parse().unwrap();
        let port: PortRef = "a:out".parse().unwrap();
        assert_eq!(
            format!("[{block:<5}][{end:>14}][{port:<6}]"),
            "[osc  ][ link-a-2.send][a:out ]"
        );
    }

    #[test]
    fn ports_sort_as_their_text() {
        let mut ports: Vec<PortRef> = ["osc:out", "osc-1:out", "os:z"]
            .iter()
            .map(|p| p.parse().unwrap())
            .collect();
        ports.sort();
        let mut texts = vec!["osc:out", "osc-1:out", "os:z"];
        texts.sort();
        assert_eq!(
            ports.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            texts
        );
    }
}
