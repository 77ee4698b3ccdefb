//! Network links: each wire between blocks on different hosts becomes a jacktrip pair, the
//! receiving end (`jacktrip -s`) on the sink's host and the sending end (`jacktrip -c`) on
//! the source's host, with UDP ports a link keeps for as long as it exists.
//!
//! A link is named after the wire in block terms (blocks, port numbers, hosts), not after the
//! synths' JACK ports: a block restarted with new params gets new port names but keeps its
//! links, so only the edge into the link changes.

use super::ports::PortPool;
use super::{Edge, ProcessSpec};
use crate::model::{AudioSettings, Host, NetworkSettings};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// One network link carrying one channel from a port on one host to a port on another.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Link {
    /// `link-<hash8>`: the JACK client name of both ends (each on its own host's server).
    pub id: String,
    pub from_host: String,
    /// The source block's output port (full JACK name) on `from_host`.
    pub from_port: String,
    pub to_host: String,
    /// The sink block's input port on `to_host`.
    pub to_port: String,
    /// UDP port the receiving end binds on `to_host`.
    pub server_port: u16,
    /// UDP port the sending end binds on `from_host`.
    pub client_port: u16,
}

/// A link before its ports are allocated.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LinkDraft {
    pub id: String,
    pub from_host: String,
    pub from_port: String,
    pub to_host: String,
    pub to_port: String,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LinkError {
    #[error("host `{host}` has no free UDP port for link {id} in {first}–{last} (network {{ first_port, last_port }} sets the range)")]
    NoFreePort {
        host: String,
        id: String,
        first: u16,
        last: u16,
    },
}

/// The id of the link for a wire `(block, output) → (block, input)` between two hosts.
pub fn link_id(from: (&str, u32), to: (&str, u32), from_host: &str, to_host: &str) -> String {
    let key = format!(
        "{}\u{0}{}\u{0}{}\u{0}{}\u{0}{from_host}\u{0}{to_host}",
        from.0, from.1, to.0, to.1
    );
    format!("link-{}", super::short_digest(key.as_bytes()))
}

/// Give every link its two UDP ports: the ones it had in `previous` when it existed there,
/// otherwise the lowest free port of the range on that host. Deterministic: drafts are
/// taken in id order.
pub fn allocate(
    drafts: &[LinkDraft],
    previous: &[Link],
    network: &NetworkSettings,
) -> Result<Vec<Link>, LinkError> {
    let wanted: BTreeSet<&str> = drafts.iter().map(|d| d.id.as_str()).collect();
    let kept: BTreeMap<&str, &Link> = previous
        .iter()
        .filter(|l| wanted.contains(l.id.as_str()))
        .map(|l| (l.id.as_str(), l))
        .collect();
    // Ports held on each host by every link running now: those that stay, and those that go
    // only once their replacements carry audio (make-before-break runs both at once).
    let mut used = PortPool::default();
    for old in previous {
        used.hold(&old.to_host, old.server_port);
        used.hold(&old.from_host, old.client_port);
    }
    let mut sorted: Vec<&LinkDraft> = drafts.iter().collect();
    sorted.sort();
    let mut links = Vec::with_capacity(drafts.len());
    for draft in sorted {
        let same_ends = kept
            .get(draft.id.as_str())
            .filter(|old| old.to_host == draft.to_host && old.from_host == draft.from_host);
        let (server_port, client_port) = match same_ends {
            Some(old) => (old.server_port, old.client_port),
            None => {
                let server = free_port(&mut used, &draft.to_host, &draft.id, network)?;
                let client = free_port(&mut used, &draft.from_host, &draft.id, network)?;
                (server, client)
            }
        };
        links.push(Link {
            id: draft.id.clone(),
            from_host: draft.from_host.clone(),
            from_port: draft.from_port.clone(),
            to_host: draft.to_host.clone(),
            to_port: draft.to_port.clone(),
            server_port,
            client_port,
        });
    }
    Ok(links)
}

fn free_port(
    used: &mut PortPool,
    host: &str,
    id: &str,
    network: &NetworkSettings,
) -> Result<u16, LinkError> {
    used.take_lowest(host, network.first_port..=network.last_port)
        .ok_or_else(|| LinkError::NoFreePort {
            host: host.to_string(),
            id: id.to_string(),
            first: network.first_port,
            last: network.last_port,
        })
}

/// One end of a link: the jacktrip process on one host (its instance named
/// `<link id>.send` or `.receive`) and the edge that joins it to the block's port there.
pub struct LinkEnd {
    pub host: String,
    pub process: ProcessSpec,
    pub edge: Edge,
}

/// The two ends of `link`: the sending end on the source's host, the receiving end on the
/// sink's host (which the sending end reaches at `receiver.address`).
pub fn ends(
    link: &Link,
    receiver: &Host,
    audio: &AudioSettings,
    network: &NetworkSettings,
) -> [LinkEnd; 2] {
    // Flags: -D no automatic JACK connections (the agent makes every edge), -J the client
    // name, -n one channel per link, -B/-P explicit bind and peer ports so several links
    // share a host, -q the receive queue, --udprt real-time priority for the network threads
    // (without it they run at normal priority while jacktrip's real-time audio thread shares
    // a buffer with them: any busy process delays them into under-runs and clicks), -I 1 its
    // under- and over-run counts printed every second (the agent reports them),
    // --bufstrategy the jitter buffer when the orchestra chose one.
    let buffers = network.buffers(&link.from_host, &link.to_host);
    let common = |bind: u16, peer: u16| -> Vec<String> {
        let mut flags: Vec<String> = [
            "-D",
            "-J",
            &link.id,
            "-n",
            "1",
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
    let send_port = format!("{}:send_1", link.id);
    let receive_port = format!("{}:receive_1", link.id);
    // Each end is its own instance (`<id>.send`, `<id>.receive`): one client name, two hosts.
    let spec = |end: &str, command: Vec<String>| {
        let hash = super::short_digest(
            serde_json::json!({ "command": command, "audio": audio })
                .to_string()
                .as_bytes(),
        );
        let name = format!("{}.{end}", link.id);
        ProcessSpec {
            dir: format!("links/{name}/{hash}"),
            block: name,
            module: "jacktrip".into(),
            client: link.id.clone(),
            command,
            files: BTreeMap::new(),
            spec_hash: hash,
            inputs: vec![send_port.clone()],
            outputs: vec![receive_port.clone()],
            ready_line: None,
            osc_port: None,
        }
    };
    [
        LinkEnd {
            host: link.from_host.clone(),
            process: spec("send", sender),
            edge: Edge {
                from: link.from_port.clone(),
                to: send_port.clone(),
            },
        },
        LinkEnd {
            host: link.to_host.clone(),
            process: spec("receive", receiving),
            edge: Edge {
                from: receive_port.clone(),
                to: link.to_port.clone(),
            },
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(id: &str, from_host: &str, to_host: &str) -> LinkDraft {
        LinkDraft {
            id: id.into(),
            from_host: from_host.into(),
            from_port: "a:output1".into(),
            to_host: to_host.into(),
            to_port: "b:input1".into(),
        }
    }

    #[test]
    fn ids_follow_blocks_and_hosts_not_jack_ports() {
        let a = link_id(("osc", 1), ("filt", 1), "h1", "h2");
        assert_eq!(a, link_id(("osc", 1), ("filt", 1), "h1", "h2"));
        assert!(a.starts_with("link-") && a.len() == 13);
        assert_ne!(a, link_id(("osc", 1), ("filt", 1), "h1", "h3"));
        assert_ne!(a, link_id(("osc", 1), ("filt", 2), "h1", "h2"));
    }

    #[test]
    fn ports_are_lowest_free_per_host_and_kept_while_the_link_lives() {
        let net = NetworkSettings::default();
        let first = allocate(
            &[draft("link-a", "h1", "h2"), draft("link-b", "h1", "h3")],
            &[],
            &net,
        )
        .unwrap();
        assert_eq!((first[0].server_port, first[0].client_port), (4464, 4464));
        // h1 already gave 4464 to link-a's sending end.
        assert_eq!((first[1].server_port, first[1].client_port), (4464, 4465));

        // link-a goes; a new link sorting before link-b must not take link-b's ports, nor
        // link-a's: link-a still plays until link-0 carries audio.
        let second = allocate(
            &[draft("link-0", "h1", "h3"), draft("link-b", "h1", "h3")],
            &first,
            &net,
        )
        .unwrap();
        let b = second.iter().find(|l| l.id == "link-b").unwrap();
        assert_eq!((b.server_port, b.client_port), (4464, 4465));
        let zero = second.iter().find(|l| l.id == "link-0").unwrap();
        assert_eq!((zero.server_port, zero.client_port), (4465, 4466));

        // Once link-a is gone, its ports are free again.
        let third = allocate(
            &[
                draft("link-0", "h1", "h3"),
                draft("link-b", "h1", "h3"),
                draft("link-c", "h1", "h2"),
            ],
            &second,
            &net,
        )
        .unwrap();
        let c = third.iter().find(|l| l.id == "link-c").unwrap();
        assert_eq!((c.server_port, c.client_port), (4464, 4464));
    }

    #[test]
    fn a_full_range_is_a_clear_error() {
        let net = NetworkSettings {
            first_port: 5000,
            last_port: 5000,
            ..Default::default()
        };
        let err = allocate(
            &[draft("link-a", "h1", "h2"), draft("link-b", "h1", "h2")],
            &[],
            &net,
        )
        .unwrap_err();
        assert_eq!(
            err,
            LinkError::NoFreePort {
                host: "h2".into(),
                id: "link-b".into(),
                first: 5000,
                last: 5000
            }
        );
    }

    #[test]
    fn ends_are_a_server_on_the_sink_and_a_client_on_the_source() {
        let link = Link {
            id: "link-a".into(),
            from_host: "h1".into(),
            from_port: "osc-1:output1".into(),
            to_host: "h2".into(),
            to_port: "filt-2:input1".into(),
            server_port: 4470,
            client_port: 4471,
        };
        let mut h2 = Host::localhost();
        h2.address = "10.0.0.12".into();
        let [send, receive] = ends(&link, &h2, &AudioSettings::default(), &Default::default());
        assert_eq!(send.host, "h1");
        assert_eq!(
            send.process.command.join(" "),
            "jacktrip -c 10.0.0.12 -D -J link-a -n 1 -B 4471 -P 4470 -q 4 --udprt -I 1"
        );
        assert_eq!(send.edge.from, "osc-1:output1");
        assert_eq!(send.edge.to, "link-a:send_1");
        assert_eq!(receive.host, "h2");
        assert_eq!(
            receive.process.command.join(" "),
            "jacktrip -s -D -J link-a -n 1 -B 4470 -P 4471 -q 4 --udprt -I 1"
        );
        assert_eq!(receive.edge.from, "link-a:receive_1");
        assert_eq!(receive.edge.to, "filt-2:input1");
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
                id: "link-a".into(),
                from_host: from.into(),
                from_port: "a:out".into(),
                to_host: to.into(),
                to_port: "b:in".into(),
                server_port: 4464,
                client_port: 4464,
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
        let common = "-D -J link-a -n 1 -B 4464 -P 4464";
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
