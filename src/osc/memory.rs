//! What the router last told each block, per OSC address (a bundle per the addresses in it),
//! so a new instance of the block — moved, replaced, restarted after a crash or a failover —
//! is told the same before it is wired in, and sounds as the performer left it.

use super::dispatch::Forwarded;
use rosc::OscPacket;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Addresses remembered per block; a block told more distinct ones forgets the oldest.
const MAX_ADDRESSES: usize = 256;

/// Shared between the router (which remembers) and the fleet (which replays on start).
#[derive(Debug, Clone, Default)]
pub struct OscMemory(Arc<Mutex<BTreeMap<String, Remembered>>>);

/// One block's last packet per address, and the order they were last sent in.
#[derive(Debug, Default)]
struct Remembered {
    packets: BTreeMap<String, (u64, Vec<u8>)>,
    sent: u64,
}

impl OscMemory {
    /// `packet` went to its block; the block's name back.
    pub fn remember(&self, packet: Forwarded) -> String {
        let Forwarded { block, bytes, key } = packet;
        let mut all = self.0.lock().expect("lock");
        let memory = all.entry(block.clone()).or_default();
        memory.sent += 1;
        let order = memory.sent;
        memory.packets.insert(key, (order, bytes));
        if memory.packets.len() > MAX_ADDRESSES {
            let oldest = memory
                .packets
                .iter()
                .min_by_key(|(_, (order, _))| *order)
                .map(|(key, _)| key.clone());
            if let Some(oldest) = oldest {
                memory.packets.remove(&oldest);
            }
        }
        block
    }

    /// `block` was then set as these packets say (live params the script, `/orchestra/set` or
    /// the page changed): what the router told it at their addresses before is not what a
    /// new instance should be told, since it starts at the live values already.
    pub fn forget<'a>(&self, block: &str, packets: impl IntoIterator<Item = &'a [u8]>) {
        let mut all = self.0.lock().expect("lock");
        let Some(memory) = all.get_mut(block) else {
            return;
        };
        for bytes in packets {
            if let Ok((_, packet)) = rosc::decoder::decode_udp(bytes) {
                memory.packets.remove(&key_of(&packet));
            }
        }
    }

    /// What `block` was last told, in the order it was sent.
    pub fn replay(&self, block: &str) -> Vec<Vec<u8>> {
        let all = self.0.lock().expect("lock");
        let Some(memory) = all.get(block) else {
            return Vec::new();
        };
        let mut packets: Vec<&(u64, Vec<u8>)> = memory.packets.values().collect();
        packets.sort_by_key(|(order, _)| *order);
        packets
            .into_iter()
            .map(|(_, bytes)| bytes.clone())
            .collect()
    }
}

/// What a block's packet is remembered under: a message's address; a bundle's addresses,
/// joined (a later bundle to the same addresses replaces it).
pub fn key_of(packet: &OscPacket) -> String {
    match packet {
        OscPacket::Message(m) => m.addr.clone(),
        OscPacket::Bundle(_) => {
            let mut addresses = Vec::new();
            collect(packet, &mut addresses);
            format!("#bundle {}", addresses.join(" "))
        }
    }
}

fn collect(packet: &OscPacket, into: &mut Vec<String>) {
    match packet {
        OscPacket::Message(m) => into.push(m.addr.clone()),
        // The router refuses packets nested deeper than a few levels before this sees them.
        OscPacket::Bundle(b) => b.content.iter().for_each(|p| collect(p, into)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rosc::{OscMessage, OscType};

    fn message(addr: &str, value: f32) -> Vec<u8> {
        rosc::encoder::encode(&OscPacket::Message(OscMessage {
            addr: addr.into(),
            args: vec![OscType::Float(value)],
        }))
        .unwrap()
    }

    /// What the router hands over after sending `/addr value` to `block`.
    fn sent(block: &str, addr: &str, value: f32) -> Forwarded {
        Forwarded {
            block: block.into(),
            bytes: message(addr, value),
            key: addr.into(),
        }
    }

    #[test]
    fn the_last_value_per_address_is_replayed_in_the_order_sent() {
        let memory = OscMemory::default();
        memory.remember(sent("tone", "/freq", 550.0));
        memory.remember(sent("tone", "/amp", 0.2));
        memory.remember(sent("tone", "/freq", 660.0));
        memory.remember(sent("other", "/freq", 100.0));
        assert_eq!(
            memory.replay("tone"),
            vec![message("/amp", 0.2), message("/freq", 660.0)]
        );
        assert!(memory.replay("nobody").is_empty());
    }

    #[test]
    fn a_live_set_forgets_what_the_router_told_at_its_address() {
        let memory = OscMemory::default();
        memory.remember(sent("tone", "/freq", 880.0));
        memory.remember(sent("tone", "/amp", 0.2));
        let set = message("/freq", 660.0);
        memory.forget("tone", [set.as_slice()]);
        memory.forget("nobody", [set.as_slice()]);
        assert_eq!(memory.replay("tone"), vec![message("/amp", 0.2)]);
    }

    #[test]
    fn a_block_told_too_many_addresses_forgets_the_oldest() {
        let memory = OscMemory::default();
        for i in 0..=MAX_ADDRESSES {
            memory.remember(sent("tone", &format!("/p{i}"), i as f32));
        }
        let replayed = memory.replay("tone");
        assert_eq!(replayed.len(), MAX_ADDRESSES);
        assert_eq!(replayed[0], message("/p1", 1.0));
    }
}
