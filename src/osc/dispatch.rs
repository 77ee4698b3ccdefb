//! Decode and dispatch one OSC packet, with no sockets involved (so it is fuzzed): a command
//! for the orchestra (`/orchestra/…`), messages to forward to blocks (`/BLOCK/rest` becomes
//! `/rest` at the block's address), or a reason to drop it.

use crate::model::Endpoint;
use crate::script::layer::LiveOp;
use rosc::{OscBundle, OscMessage, OscPacket, OscType};
use std::collections::{BTreeMap, BTreeSet};

/// What `/orchestra/…` asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// A change to lay over the script (kept until reset).
    Change(LiveOp),
    /// Read the files again, as a save would.
    Reload,
    /// Drop the live layer.
    Reset,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Dispatch {
    Control(Command),
    /// A control message that cannot be right (arguments, unknown verb): answered with
    /// `/orchestra/error`, nothing changes.
    Refused(String),
    /// Packets to send, per block (addresses rewritten, bundle timetags kept).
    Forward(Vec<Forwarded>),
    /// Not OSC, or not OSC we can handle: counted and dropped, never answered.
    Malformed(String),
}

/// One packet for one block.
#[derive(Debug, Clone, PartialEq)]
pub struct Forwarded {
    pub block: String,
    pub bytes: Vec<u8>,
    /// What the router remembers it under (see [`super::memory`]).
    pub key: String,
}

const CONTROL: &str = "/orchestra";
const VERBS: [&str; 8] = [
    "set",
    "connect",
    "disconnect",
    "add",
    "remove",
    "reload",
    "eval",
    "reset",
];

/// Deepest nesting of bundles in a packet, and of arrays in a message, that we decode: the
/// decoder, the encoder and even dropping a packet recurse once per level, and a packet of
/// 40 KB nested 2000 deep overflowed the OSC thread's stack.
pub const MAX_NESTING: usize = 8;

/// Why `bytes` nest too deep, found without recursion before anything decodes them.
pub fn nesting_refusal(bytes: &[u8]) -> Option<String> {
    // (start, end, depth) of each packet still to look at.
    let mut pending = vec![(0usize, bytes.len(), 1usize)];
    while let Some((start, end, depth)) = pending.pop() {
        let part = &bytes[start..end];
        if !part.starts_with(b"#bundle\0") {
            match array_depth(part) {
                Some(arrays) if arrays > MAX_NESTING => {
                    return Some(format!("arrays nested more than {MAX_NESTING} deep"))
                }
                _ => continue,
            }
        }
        if depth > MAX_NESTING {
            return Some(format!("bundles nested more than {MAX_NESTING} deep"));
        }
        // `#bundle\0`, an 8-byte timetag, then elements: a 4-byte size and that many bytes.
        let mut at = start + 16;
        while at + 4 <= end {
            let size = u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
            let from = at + 4;
            let Some(to) = from.checked_add(size).filter(|to| *to <= end) else {
                break;
            };
            pending.push((from, to, depth + 1));
            at = to;
        }
    }
    None
}

/// How deep the arrays in a message's type tags nest (`,i[[f]]` is 2).
fn array_depth(message: &[u8]) -> Option<usize> {
    let address_end = message.iter().position(|b| *b == 0)?;
    let tags_start = (address_end + 4) & !3;
    let tags = message.get(tags_start..)?;
    let (mut depth, mut deepest) = (0usize, 0usize);
    for byte in tags.iter().take_while(|b| **b != 0) {
        match byte {
            b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Some(deepest)
}

/// Decode `bytes` and decide; `blocks` are the blocks that listen for OSC now (their keys).
pub fn dispatch<V>(bytes: &[u8], blocks: &BTreeMap<String, V>) -> Dispatch {
    if let Some(why) = nesting_refusal(bytes) {
        return Dispatch::Malformed(why);
    }
    let packet = match rosc::decoder::decode_udp(bytes) {
        Ok((_, packet)) => packet,
        Err(e) => return Dispatch::Malformed(format!("{e:?}")),
    };
    if let OscPacket::Message(message) = &packet {
        if message.addr == CONTROL || message.addr.starts_with("/orchestra/") {
            return match control(message) {
                Ok(command) => Dispatch::Control(command),
                Err(e) => Dispatch::Refused(e),
            };
        }
    }
    let mut targets = BTreeSet::new();
    if let Err(e) = collect_targets(&packet, blocks, &mut targets) {
        return e;
    }
    let mut out = Vec::new();
    for block in targets {
        let Some(rewritten) = for_block(&packet, &block) else {
            continue;
        };
        match rosc::encoder::encode(&rewritten) {
            Ok(bytes) => out.push(Forwarded {
                key: super::memory::key_of(&rewritten),
                block,
                bytes,
            }),
            Err(e) => return Dispatch::Malformed(format!("{e:?}")),
        }
    }
    if out.is_empty() {
        return Dispatch::Malformed("an empty bundle".into());
    }
    Dispatch::Forward(out)
}

/// `/osc/freq` → (`osc`, `/freq`).
fn split(addr: &str) -> Option<(&str, &str)> {
    let rest = addr.strip_prefix('/')?;
    let (block, tail) = rest.split_once('/')?;
    if block.is_empty() || tail.is_empty() {
        return None;
    }
    Some((block, &addr[block.len() + 1..]))
}

fn collect_targets<V>(
    packet: &OscPacket,
    blocks: &BTreeMap<String, V>,
    targets: &mut BTreeSet<String>,
) -> Result<(), Dispatch> {
    match packet {
        OscPacket::Message(m) => {
            if m.addr.starts_with("/orchestra/") {
                return Err(Dispatch::Refused(
                    "control messages go alone, not inside a bundle".into(),
                ));
            }
            let Some((block, _)) = split(&m.addr) else {
                return Err(Dispatch::Refused(format!(
                    "`{}`: address a block as /BLOCK/path (e.g. /osc/freq)",
                    m.addr
                )));
            };
            if !blocks.contains_key(block) {
                return Err(Dispatch::Refused(format!(
                    "no OSC block `{block}`{}",
                    crate::names::did_you_mean(block, blocks.keys().map(String::as_str))
                )));
            }
            targets.insert(block.to_string());
        }
        OscPacket::Bundle(b) => {
            for p in &b.content {
                collect_targets(p, blocks, targets)?;
            }
        }
    }
    Ok(())
}

/// The part of `packet` addressed to `block`, its addresses without the block segment.
fn for_block(packet: &OscPacket, block: &str) -> Option<OscPacket> {
    match packet {
        OscPacket::Message(m) => {
            let (target, rest) = split(&m.addr)?;
            (target == block).then(|| {
                OscPacket::Message(OscMessage {
                    addr: rest.to_string(),
                    args: m.args.clone(),
                })
            })
        }
        OscPacket::Bundle(b) => {
            let content: Vec<OscPacket> = b
                .content
                .iter()
                .filter_map(|p| for_block(p, block))
                .collect();
            (!content.is_empty()).then_some(OscPacket::Bundle(OscBundle {
                timetag: b.timetag,
                content,
            }))
        }
    }
}

fn string(args: &[OscType], i: usize, what: &str) -> Result<String, String> {
    match args.get(i) {
        Some(OscType::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!("{what} must be a string, not {other:?}")),
        None => Err(format!("missing {what}")),
    }
}

fn endpoint(text: &str) -> Result<Endpoint, String> {
    let (block, port) = match text.split_once(':') {
        Some((block, port)) => {
            let port: u32 = port
                .parse()
                .ok()
                .filter(|p| *p >= 1)
                .ok_or_else(|| format!("`{text}`: the port after `:` is a number from 1"))?;
            (block, Some(port))
        }
        None => (text, None),
    };
    if !crate::names::is_valid_name(block) {
        return Err(format!("`{block}` is not a block name"));
    }
    Ok(Endpoint {
        block: block.to_string(),
        port,
    })
}

fn arity(args: &[OscType], min: usize, max: usize, usage: &str) -> Result<(), String> {
    if args.len() < min || args.len() > max {
        return Err(format!("usage: {usage}"));
    }
    Ok(())
}

fn control(message: &OscMessage) -> Result<Command, String> {
    let verb = message.addr.strip_prefix("/orchestra/").unwrap_or_default();
    let args = &message.args;
    let command = match verb {
        "set" => {
            arity(args, 3, 3, "/orchestra/set ,ss[f|i|s] block param value")?;
            let value = match &args[2] {
                OscType::Float(f) => serde_json::Number::from_f64(*f as f64)
                    .map(serde_json::Value::Number)
                    .ok_or("the value must be a finite number")?,
                OscType::Double(f) => serde_json::Number::from_f64(*f)
                    .map(serde_json::Value::Number)
                    .ok_or("the value must be a finite number")?,
                OscType::Int(i) => (*i).into(),
                OscType::Long(i) => (*i).into(),
                OscType::String(s) => s.clone().into(),
                other => return Err(format!("the value must be f, i or s, not {other:?}")),
            };
            LiveOp::Set {
                block: string(args, 0, "the block")?,
                param: string(args, 1, "the param")?,
                value,
            }
        }
        "connect" | "disconnect" => {
            arity(args, 2, 2, &format!("/orchestra/{verb} ,ss from to"))?;
            let from = endpoint(&string(args, 0, "the source")?)?;
            let to = endpoint(&string(args, 1, "the destination")?)?;
            if verb == "connect" {
                LiveOp::Connect { from, to }
            } else {
                LiveOp::Disconnect { from, to }
            }
        }
        "add" => {
            arity(args, 2, 3, "/orchestra/add ,ss[s] name module [host]")?;
            LiveOp::Add {
                name: string(args, 0, "the name")?,
                module: string(args, 1, "the module")?,
                host: if args.len() == 3 {
                    Some(string(args, 2, "the host")?)
                } else {
                    None
                },
            }
        }
        "remove" => {
            arity(args, 1, 1, "/orchestra/remove ,s name")?;
            LiveOp::Remove {
                name: string(args, 0, "the name")?,
            }
        }
        "eval" => {
            arity(args, 1, 1, "/orchestra/eval ,s \"lua code\"")?;
            LiveOp::Eval {
                code: string(args, 0, "the code")?,
            }
        }
        "reload" => {
            arity(args, 0, 0, "/orchestra/reload")?;
            return Ok(Command::Reload);
        }
        "reset" => {
            arity(args, 0, 0, "/orchestra/reset")?;
            return Ok(Command::Reset);
        }
        other => {
            return Err(format!(
                "unknown command `/orchestra/{other}`{}",
                crate::names::did_you_mean(other, VERBS)
            ))
        }
    };
    Ok(Command::Change(command))
}

/// Where each OSC block listens, for the router: block → address.
pub type Routes = BTreeMap<String, std::net::SocketAddr>;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rosc::OscTime;

    fn blocks() -> BTreeMap<String, ()> {
        [("osc".to_string(), ()), ("pad".to_string(), ())].into()
    }

    fn encode(packet: OscPacket) -> Vec<u8> {
        rosc::encoder::encode(&packet).unwrap()
    }

    fn message(addr: &str, args: Vec<OscType>) -> OscPacket {
        OscPacket::Message(OscMessage {
            addr: addr.into(),
            args,
        })
    }

    #[test]
    fn a_block_message_is_forwarded_without_the_block_segment() {
        let d = dispatch(
            &encode(message("/osc/freq", vec![OscType::Float(660.0)])),
            &blocks(),
        );
        let Dispatch::Forward(out) = d else {
            panic!("{d:?}")
        };
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].block, "osc");
        assert_eq!(out[0].key, "/freq");
        let (_, packet) = rosc::decoder::decode_udp(&out[0].bytes).unwrap();
        assert_eq!(packet, message("/freq", vec![OscType::Float(660.0)]));
    }

    #[test]
    fn a_bundle_is_split_per_block_and_keeps_its_timetag() {
        let timetag = OscTime {
            seconds: 3_900_000_000,
            fractional: 42,
        };
        let bundle = OscPacket::Bundle(OscBundle {
            timetag,
            content: vec![
                message("/osc/freq", vec![OscType::Float(550.0)]),
                message("/pad/amp", vec![OscType::Float(0.1)]),
                message("/osc/amp", vec![OscType::Float(0.2)]),
            ],
        });
        let Dispatch::Forward(out) = dispatch(&encode(bundle), &blocks()) else {
            panic!()
        };
        let to_osc = out.iter().find(|f| f.block == "osc").unwrap();
        let (_, packet) = rosc::decoder::decode_udp(&to_osc.bytes).unwrap();
        assert_eq!(
            packet,
            OscPacket::Bundle(OscBundle {
                timetag,
                content: vec![
                    message("/freq", vec![OscType::Float(550.0)]),
                    message("/amp", vec![OscType::Float(0.2)]),
                ]
            })
        );
        assert!(out.iter().any(|f| f.block == "pad"));
    }

    #[test]
    fn control_messages_become_commands() {
        let set = dispatch(
            &encode(message(
                "/orchestra/set",
                vec![
                    OscType::String("osc".into()),
                    OscType::String("freq".into()),
                    OscType::Int(660),
                ],
            )),
            &blocks(),
        );
        assert_eq!(
            set,
            Dispatch::Control(Command::Change(LiveOp::Set {
                block: "osc".into(),
                param: "freq".into(),
                value: 660.into()
            }))
        );
        let connect = dispatch(
            &encode(message(
                "/orchestra/connect",
                vec![
                    OscType::String("osc:1".into()),
                    OscType::String("out".into()),
                ],
            )),
            &blocks(),
        );
        assert!(matches!(
            connect,
            Dispatch::Control(Command::Change(LiveOp::Connect { .. }))
        ));
        let reset = dispatch(&encode(message("/orchestra/reset", vec![])), &blocks());
        assert_eq!(reset, Dispatch::Control(Command::Reset));
    }

    #[test]
    fn wrong_control_and_unknown_blocks_are_refused_with_a_reason() {
        let refused = |packet| match dispatch(&encode(packet), &blocks()) {
            Dispatch::Refused(why) => why,
            other => panic!("{other:?}"),
        };
        assert!(refused(message("/orchestra/sett", vec![])).contains("did you mean `set`"));
        assert!(refused(message("/orchestra/set", vec![OscType::Int(1)])).contains("usage"));
        assert!(refused(message("/oss/freq", vec![])).contains("did you mean `osc`"));
        assert!(refused(message("/freq", vec![])).contains("/BLOCK/path"));
    }

    #[test]
    fn packets_nested_thousands_deep_are_refused_without_recursion() {
        // Bundles in bundles, 2000 deep (40 KB), built by hand: the encoder itself recurses.
        let mut packet = encode(message("/osc/freq", vec![OscType::Float(1.0)]));
        for _ in 0..2000 {
            let mut outer = b"#bundle\0\0\0\0\0\0\0\0\x01".to_vec();
            outer.extend((packet.len() as u32).to_be_bytes());
            outer.extend(packet);
            packet = outer;
        }
        assert_eq!(
            dispatch(&packet, &blocks()),
            Dispatch::Malformed("bundles nested more than 8 deep".into())
        );
        let mut deep_arrays = b"/osc/freq\0\0\0".to_vec();
        deep_arrays.extend(format!(",{}{}", "[".repeat(3000), "]".repeat(3000)).bytes());
        deep_arrays.extend([0u8; 4]);
        deep_arrays.truncate(deep_arrays.len() / 4 * 4);
        assert_eq!(
            dispatch(&deep_arrays, &blocks()),
            Dispatch::Malformed("arrays nested more than 8 deep".into())
        );
        // Up to the limit, a bundle still reaches its block.
        let mut shallow = encode(message("/osc/freq", vec![OscType::Float(1.0)]));
        for _ in 0..MAX_NESTING {
            let mut outer = b"#bundle\0\0\0\0\0\0\0\0\x01".to_vec();
            outer.extend((shallow.len() as u32).to_be_bytes());
            outer.extend(shallow);
            shallow = outer;
        }
        assert!(matches!(
            dispatch(&shallow, &blocks()),
            Dispatch::Forward(_)
        ));
    }

    #[test]
    fn garbage_is_malformed() {
        assert!(matches!(
            dispatch(b"hello", &blocks()),
            Dispatch::Malformed(_)
        ));
        assert!(matches!(dispatch(&[], &blocks()), Dispatch::Malformed(_)));
    }

    proptest! {
        // The decode-and-dispatch path over arbitrary bytes, and over bytes that start like
        // OSC: never a panic, and whatever is forwarded decodes again.
        #[test]
        fn any_bytes_are_dispatched_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Dispatch::Forward(out) = dispatch(&bytes, &blocks()) {
                for forwarded in out {
                    prop_assert!(rosc::decoder::decode_udp(&forwarded.bytes).is_ok());
                }
            }
        }

        #[test]
        fn osc_shaped_bytes_are_dispatched_without_panic(
            addr in "/(osc|pad|orchestra|x)/[a-z]{0,6}",
            tail in proptest::collection::vec(any::<u8>(), 0..128),
        ) {
            let mut bytes = encode(message(&addr, vec![OscType::Float(1.0)]));
            let cut = tail.len() % (bytes.len() + 1);
            bytes.truncate(bytes.len() - cut);
            bytes.extend(tail);
            let _ = dispatch(&bytes, &blocks());
        }
    }
}
