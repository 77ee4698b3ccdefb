//! Network links: one jacktrip link per pair of hosts and direction, carrying every wire
//! from blocks on one host to blocks on the other, one channel each (`-n`). The receiving end
//! (`jacktrip -s`) runs on the sinks' host, the sending end (`jacktrip -c`) on the sources'
//! host, with UDP ports the link keeps for as long as it exists.
//!
//! A link has spare channels (its channel count is rounded up), so a wire added between two
//! hosts that already have a link takes a free channel and restarts nothing; only edges
//! change. A link that must grow (or has shrunk to a quarter) is a new link with its own
//! name and ports, started beside the old one (make-before-break). A wire is known by its
//! block terms (blocks, port numbers), not by the synths' JACK ports: a block restarted with
//! new params gets new port names but keeps its channel.

use super::ports::PortPool;
use super::{Edge, ProcessSpec};
use crate::model::{AudioSettings, Host, NetworkSettings};
use orchestra_protocol::{LinkEnd, LinkId, Part, PortRef, Side};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// One network link from one host to another, carrying `wires` on `channels` channels.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Link {
    /// `link-<hash8>-<channels>`: the JACK client name of both ends (each on its own host's
    /// server); the hash is of the two hosts.
    pub id: LinkId,
    pub from_host: String,
    pub to_host: String,
    /// Channels the link carries (jacktrip's `-n`): at least its wires, rounded up.
    #[serde(default = "one")]
    pub channels: u32,
    /// The wires it carries, by channel.
    #[serde(default)]
    pub wires: Vec<LinkWire>,
    /// UDP port the receiving end binds on `to_host`.
    pub server_port: u16,
    /// UDP port the sending end binds on `from_host`.
    pub client_port: u16,
}

fn one() -> u32 {
    1
}

impl Link {
    /// `1 of 2 channels`: how full the link is.
    pub fn fill(&self) -> String {
        format!("{} of {} channels", self.wires.len(), self.channels)
    }
}

/// One wire on a link: a source block's output port into a channel, out of it into a sink
/// block's input port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LinkWire {
    /// 1-based.
    pub channel: u32,
    /// The wire in block terms, `osc:1>filt:1`: what keeps its channel across restarts.
    pub wire: String,
    /// The source block's output port on `from_host`.
    pub from_port: PortRef,
    /// The sink block's input port on `to_host`.
    pub to_port: PortRef,
}

/// A wire between two hosts, before it has a link and a channel.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LinkDraft {
    /// `osc:1>filt:1` (see [`wire_key`]).
    pub wire: String,
    pub from_host: String,
    pub from_port: PortRef,
    pub to_host: String,
    pub to_port: PortRef,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LinkError {
    #[error("host `{host}` has no free UDP port for link {id} in {first}–{last} (network {{ first_port, last_port }} sets the range)")]
    NoFreePort {
        host: String,
        id: LinkId,
        first: u16,
        last: u16,
    },
}

/// A wire `(block, output) → (block, input)` in block terms.
pub fn wire_key(from: (&str, u32), to: (&str, u32)) -> String {
    format!("{}:{}>{}:{}", from.0, from.1, to.0, to.1)
}

/// The id of the link from `from_host` to `to_host` with `channels` channels.
pub fn link_id(from_host: &str, to_host: &str, channels: u32) -> LinkId {
    let key = format!("{from_host}\u{0}{to_host}");
    format!("link-{}-{channels}", super::short_digest(key.as_bytes()))
        .parse()
        .expect("a digest and a count make a link id")
}

/// Channels for `wires` wires: room to grow (the next power of two, at least 2).
fn channels_for(wires: usize) -> u32 {
    (wires.max(2) as u32).next_power_of_two()
}

/// One link per pair of hosts and direction for `drafts`, each with its UDP ports and a
/// channel per wire. What `previous` had stays where it fits: a link keeps its id, ports and
/// channel count while its wires fit and fill more than a quarter of it, and a wire keeps its
/// channel. Deterministic: pairs and wires are taken in order.
pub fn allocate(
    drafts: &[LinkDraft],
    previous: &[Link],
    network: &NetworkSettings,
) -> Result<Vec<Link>, LinkError> {
    let mut pairs: BTreeMap<(&str, &str), Vec<&LinkDraft>> = BTreeMap::new();
    for draft in drafts {
        pairs
            .entry((draft.from_host.as_str(), draft.to_host.as_str()))
            .or_default()
            .push(draft);
    }
    // Ports held on each host by every link running now: those that stay, and those that go
    // only once their replacements carry audio (make-before-break runs both at once).
    let mut used = PortPool::default();
    for old in previous {
        used.hold(&old.to_host, old.server_port);
        used.hold(&old.from_host, old.client_port);
    }
    let mut links = Vec::with_capacity(pairs.len());
    for ((from_host, to_host), mut wires) in pairs {
        wires.sort();
        let before = previous
            .iter()
            .find(|l| l.from_host == from_host && l.to_host == to_host);
        let needed = channels_for(wires.len());
        let kept = before.filter(|l| {
            l.channels >= wires.len() as u32
                && needed * 4 > l.channels
                && l.id == link_id(from_host, to_host, l.channels)
        });
        let (id, channels, server_port, client_port) = match kept {
            Some(l) => (l.id.clone(), l.channels, l.server_port, l.client_port),
            None => {
                let id = link_id(from_host, to_host, needed);
                let server = free_port(&mut used, to_host, &id, network)?;
                let client = free_port(&mut used, from_host, &id, network)?;
                (id, needed, server, client)
            }
        };
        let channels_before: BTreeMap<&str, u32> = before
            .map(|l| {
                l.wires
                    .iter()
                    .map(|w| (w.wire.as_str(), w.channel))
                    .collect()
            })
            .unwrap_or_default();
        // Wires that had a channel keep it where it exists; the others take the lowest free.
        let mut taken = BTreeSet::new();
        let mut channel_of: BTreeMap<&str, u32> = BTreeMap::new();
        for draft in &wires {
            if let Some(&c) = channels_before.get(draft.wire.as_str()) {
                if c <= channels && taken.insert(c) {
                    channel_of.insert(&draft.wire, c);
                }
            }
        }
        let mut free = (1..=channels).filter(|c| !taken.contains(c));
        let mut link_wires: Vec<LinkWire> = wires
            .iter()
            .map(|draft| LinkWire {
                channel: match channel_of.get(draft.wire.as_str()) {
                    Some(&c) => c,
                    None => free.next().expect("a link has a channel per wire"),
                },
                wire: draft.wire.clone(),
                from_port: draft.from_port.clone(),
                to_port: draft.to_port.clone(),
            })
            .collect();
        link_wires.sort();
        links.push(Link {
            id,
            from_host: from_host.to_string(),
            to_host: to_host.to_string(),
            channels,
            wires: link_wires,
            server_port,
            client_port,
        });
    }
    Ok(links)
}

fn free_port(
    used: &mut PortPool,
    host: &str,
    id: &LinkId,
    network: &NetworkSettings,
) -> Result<u16, LinkError> {
    used.take_lowest(host, network.first_port..=network.last_port)
        .ok_or_else(|| LinkError::NoFreePort {
            host: host.to_string(),
            id: id.clone(),
            first: network.first_port,
            last: network.last_port,
        })
}

/// One end of a link: the jacktrip process on one host (its instance named
/// `<link id>.send` or `.receive`) and the edges that join its channels to the blocks' ports
/// there.
pub struct EndOnHost {
    pub host: String,
    pub process: ProcessSpec,
    pub edges: Vec<Edge>,
}

/// The two ends of `link`: the sending end on the sources' host, the receiving end on the
/// sinks' host (which the sending end reaches at `receiver.address`).
pub fn ends(
    link: &Link,
    receiver: &Host,
    audio: &AudioSettings,
    network: &NetworkSettings,
) -> [EndOnHost; 2] {
    // Flags: -D no automatic JACK connections (the agent makes every edge), -J the client
    // name, -n the link's channels, -B/-P explicit bind and peer ports so several links
    // share a host, -q the receive queue, --udprt real-time priority for the network threads
    // (without it they run at normal priority while jacktrip's real-time audio thread shares
    // a buffer with them: any busy process delays them into under-runs and clicks), -I 1 its
    // under- and over-run counts printed every second (the agent reports them),
    // --bufstrategy the jitter buffer when the orchestra chose one. The wires are not in the
    // command: adding one to a link with a spare channel changes only edges.
    let buffers = network.buffers(&link.from_host, &link.to_host);
    let common = |bind: u16, peer: u16| -> Vec<String> {
        let mut flags: Vec<String> = [
            "-D",
            "-J",
            link.id.as_str(),
            "-n",
            &link.channels.to_string(),
            "-B",
            &bind.to_string(),
            "-P",
            &peer.to_string(),
            "-q",
            &buffers.queue.to_string(),
            "--udprt",
            "-I",
            "1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(strategy) = buffers.strategy {
            flags.extend(["--bufstrategy".to_string(), strategy.to_string()]);
        }
        flags
    };
    let mut sender = vec![
        "jacktrip".to_string(),
        "-c".into(),
        receiver.address.clone(),
    ];
    sender.extend(common(link.client_port, link.server_port));
    let mut receiving = vec!["jacktrip".to_string(), "-s".into()];
    receiving.extend(common(link.server_port, link.client_port));
    let client = link.id.client();
    let all = |side: Side| {
        (1..=link.channels)
            .map(|c| link.id.port(side, c))
            .collect::<Vec<_>>()
    };
    // Each end is its own instance (`<id>.send`, `<id>.receive`): one client name, two hosts.
    let spec = |end: Side, command: Vec<String>| {
        let hash = super::short_digest(
            serde_json::json!({ "command": command, "audio": audio })
                .to_string()
                .as_bytes(),
        );
        let end = LinkEnd {
            link: link.id.clone(),
            side: end,
        };
        ProcessSpec {
            dir: format!("links/{end}/{hash}"),
            block: Part::Link(end),
            module: "jacktrip".into(),
            client: client.clone(),
            command,
            files: BTreeMap::new(),
            spec_hash: hash,
            inputs: all(Side::Send),
            outputs: all(Side::Receive),
            ready_line: None,
            package: None,
            osc_port: None,
            render_key: String::new(),
            start_osc: Vec::new(),
            live: Default::default(),
            fade_ms: 0,
        }
    };
    [
        EndOnHost {
            host: link.from_host.clone(),
            process: spec(Side::Send, sender),
            edges: link
                .wires
                .iter()
                .map(|w| Edge {
                    from: w.from_port.clone(),
                    to: link.id.port(Side::Send, w.channel),
                })
                .collect(),
        },
        EndOnHost {
            host: link.to_host.clone(),
            process: spec(Side::Receive, receiving),
            edges: link
                .wires
                .iter()
                .map(|w| Edge {
                    from: link.id.port(Side::Receive, w.channel),
                    to: w.to_port.clone(),
                })
                .collect(),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(wire: &str, from_host: &str, to_host: &str) -> LinkDraft {
        LinkDraft {
            wire: wire.into(),
            from_host: from_host.into(),
            from_port: format!("{wire}:output1").as_str().into(),
            to_host: to_host.into(),
            to_port: format!("{wire}:input1").as_str().into(),
        }
    }

    fn channels(link: &Link) -> Vec<(u32, &str)> {
        link.wires
            .iter()
            .map(|w| (w.channel, w.wire.as_str()))
            .collect()
    }

    #[test]
    fn ids_follow_the_pair_of_hosts_and_the_channels() {
        let a = link_id("h1", "h2", 2);
        assert_eq!(a, link_id("h1", "h2", 2));
        assert!(
            a.starts_with("link-") && a.ends_with("-2") && a.len() == 15,
            "{a}"
        );
        assert_ne!(a, link_id("h2", "h1", 2), "each direction its own link");
        assert_ne!(a, link_id("h1", "h2", 4), "a grown link is another one");
        assert!(link_id("h1", "h2", 64).len() <= super::super::MAX_CLIENT_NAME);
    }

    #[test]
    fn the_wires_between_two_hosts_share_one_link_with_room_to_grow() {
        let net = NetworkSettings::default();
        let links = allocate(
            &[
                draft("a", "h1", "h2"),
                draft("b", "h1", "h2"),
                draft("c", "h1", "h2"),
                draft("d", "h2", "h1"),
            ],
            &[],
            &net,
        )
        .unwrap();
        assert_eq!(links.len(), 2, "h1 → h2 and h2 → h1");
        let there = &links[0];
        assert_eq!(
            (there.from_host.as_str(), there.to_host.as_str()),
            ("h1", "h2")
        );
        assert_eq!(there.channels, 4, "3 wires round up to 4");
        assert_eq!(channels(there), [(1, "a"), (2, "b"), (3, "c")]);
        assert_eq!((there.server_port, there.client_port), (4464, 4464));
        let back = &links[1];
        assert_eq!(back.channels, 2, "at least 2");
        assert_eq!(channels(back), [(1, "d")]);
        assert_eq!((back.server_port, back.client_port), (4465, 4465));
    }

    #[test]
    fn a_wire_added_or_removed_keeps_the_link_and_the_other_wires_channels() {
        let net = NetworkSettings::default();
        let first = allocate(
            &[
                draft("a", "h1", "h2"),
                draft("b", "h1", "h2"),
                draft("c", "h1", "h2"),
            ],
            &[],
            &net,
        )
        .unwrap();
        // b goes, z comes (sorting before the others): a and c stay where they were.
        let second = allocate(
            &[
                draft("a", "h1", "h2"),
                draft("c", "h1", "h2"),
                draft("z", "h1", "h2"),
            ],
            &first,
            &net,
        )
        .unwrap();
        assert_eq!(second[0].id, first[0].id);
        assert_eq!(
            (second[0].server_port, second[0].client_port),
            (first[0].server_port, first[0].client_port)
        );
        assert_eq!(channels(&second[0]), [(1, "a"), (2, "z"), (3, "c")]);
        // Four wires still fit four channels.
        let third = allocate(
            &[
                draft("a", "h1", "h2"),
                draft("c", "h1", "h2"),
                draft("y", "h1", "h2"),
                draft("z", "h1", "h2"),
            ],
            &second,
            &net,
        )
        .unwrap();
        assert_eq!(third[0].id, first[0].id);
        assert_eq!(
            channels(&third[0]),
            [(1, "a"), (2, "z"), (3, "c"), (4, "y")]
        );
    }

    #[test]
    fn a_link_that_must_grow_is_a_new_one_on_new_ports_keeping_channels() {
        let net = NetworkSettings::default();
        let two = [draft("a", "h1", "h2"), draft("b", "h1", "h2")];
        let first = allocate(&two, &[], &net).unwrap();
        assert_eq!(first[0].channels, 2);
        let mut three = two.to_vec();
        three.push(draft("c", "h1", "h2"));
        let grown = allocate(&three, &first, &net).unwrap();
        assert_eq!(grown.len(), 1);
        assert_eq!(grown[0].channels, 4);
        assert_ne!(
            grown[0].id, first[0].id,
            "beside the old one (make-before-break)"
        );
        assert_eq!(
            (grown[0].server_port, grown[0].client_port),
            (4465, 4465),
            "the old link holds its ports until it stops"
        );
        assert_eq!(channels(&grown[0]), [(1, "a"), (2, "b"), (3, "c")]);
        // Down to one wire: 2 channels would do, and 4 is not above a quarter filled — it
        // stays. A link of 16 with one wire shrinks.
        let shrunk = allocate(&three[..1], &grown, &net).unwrap();
        assert_eq!(shrunk[0].id, grown[0].id);
        let many: Vec<LinkDraft> = (0..9)
            .map(|i| draft(&format!("w{i}"), "h1", "h2"))
            .collect();
        let sixteen = allocate(&many, &[], &net).unwrap();
        assert_eq!(sixteen[0].channels, 16);
        let one = allocate(&many[..1], &sixteen, &net).unwrap();
        assert_eq!(one[0].channels, 2);
        assert_eq!(channels(&one[0]), [(1, "w0")]);
    }

    #[test]
    fn a_full_range_is_a_clear_error() {
        let net = NetworkSettings {
            first_port: 5000,
            last_port: 5000,
            ..Default::default()
        };
        let err = allocate(
            &[
                draft("a", "h1", "h2"),
                draft("b", "h1", "h3"),
                draft("c", "h3", "h1"),
            ],
            &[],
            &net,
        )
        .unwrap_err();
        // h1 → h2 takes port 5000 on both; h1 → h3 finds none left on h1.
        assert_eq!(
            err,
            LinkError::NoFreePort {
                host: "h1".into(),
                id: link_id("h1", "h3", 2),
                first: 5000,
                last: 5000
            }
        );
    }

    fn two_wire_link() -> Link {
        Link {
            id: "link-a-2".into(),
            from_host: "h1".into(),
            to_host: "h2".into(),
            channels: 2,
            wires: vec![
                LinkWire {
                    channel: 1,
                    wire: "osc:1>filt:1".into(),
                    from_port: "osc-1:output1".into(),
                    to_port: "filt-2:input1".into(),
                },
                LinkWire {
                    channel: 2,
                    wire: "fm:1>mix:2".into(),
                    from_port: "fm-1:output1".into(),
                    to_port: "mix-2:input2".into(),
                },
            ],
            server_port: 4470,
            client_port: 4471,
        }
    }

    #[test]
    fn ends_are_a_server_on_the_sinks_host_and_a_client_on_the_sources_host() {
        let link = two_wire_link();
        let mut h2 = Host::localhost();
        h2.address = "10.0.0.12".into();
        let [send, receive] = ends(&link, &h2, &AudioSettings::default(), &Default::default());
        assert_eq!(send.host, "h1");
        assert_eq!(
            send.process.command.join(" "),
            "jacktrip -c 10.0.0.12 -D -J link-a-2 -n 2 -B 4471 -P 4470 -q 4 --udprt -I 1"
        );
        let edge = |from: &str, to: &str| Edge {
            from: from.into(),
            to: to.into(),
        };
        assert_eq!(
            send.edges,
            [
                edge("osc-1:output1", "link-a-2:send_1"),
                edge("fm-1:output1", "link-a-2:send_2")
            ]
        );
        assert_eq!(receive.host, "h2");
        assert_eq!(
            receive.process.command.join(" "),
            "jacktrip -s -D -J link-a-2 -n 2 -B 4470 -P 4471 -q 4 --udprt -I 1"
        );
        assert_eq!(
            receive.edges,
            [
                edge("link-a-2:receive_1", "filt-2:input1"),
                edge("link-a-2:receive_2", "mix-2:input2")
            ]
        );
        // The wires are not in the processes: another wire on a spare channel restarts nothing.
        let mut fewer = link.clone();
        fewer.wires.pop();
        let [send_fewer, receive_fewer] =
            ends(&fewer, &h2, &AudioSettings::default(), &Default::default());
        assert_eq!(send_fewer.process, send.process);
        assert_eq!(receive_fewer.process, receive.process);
    }

    #[test]
    fn a_pair_of_hosts_may_have_buffers_of_its_own_and_the_last_rule_wins() {
        use crate::model::LinkRule;
        let rule = |from: Option<&str>, to: Option<&str>, queue, strategy| LinkRule {
            from: from.map(str::to_string),
            to: to.map(str::to_string),
            queue,
            strategy,
            location: None,
        };
        let network = NetworkSettings {
            queue: 6,
            strategy: Some(1),
            links: vec![
                rule(None, Some("h3"), Some(12), None),
                rule(Some("h1"), Some("h3"), None, Some(2)),
            ],
            ..Default::default()
        };
        let flags = |from: &str, to: &str| {
            let link = Link {
                from_host: from.into(),
                to_host: to.into(),
                server_port: 4464,
                client_port: 4464,
                ..two_wire_link()
            };
            let [send, receive] = ends(
                &link,
                &Host::localhost(),
                &AudioSettings::default(),
                &network,
            );
            assert_eq!(send.process.command[3..], receive.process.command[2..]);
            receive.process.command[2..].join(" ")
        };
        let common = "-D -J link-a-2 -n 2 -B 4464 -P 4464";
        assert_eq!(
            flags("h1", "h2"),
            format!("{common} -q 6 --udprt -I 1 --bufstrategy 1")
        );
        assert_eq!(
            flags("h2", "h3"),
            format!("{common} -q 12 --udprt -I 1 --bufstrategy 1")
        );
        assert_eq!(
            flags("h1", "h3"),
            format!("{common} -q 12 --udprt -I 1 --bufstrategy 2")
        );
    }
}
