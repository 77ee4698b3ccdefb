//! The UDP ports bound on this host (from `/proc/net/udp` and `udp6`), which the agent reports
//! so the controller gives a new instance an OSC port no other program holds.

use std::collections::BTreeSet;

/// Every local UDP port some socket of this host (this network namespace) is bound to.
pub fn in_use() -> BTreeSet<u16> {
    ["/proc/net/udp", "/proc/net/udp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|table| local_ports(&table))
        .collect()
}

/// The local ports of a `/proc/net/udp` table: its second column, `ADDRESS:PORT` in hex.
fn local_ports(table: &str) -> Vec<u16> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let local = line.split_whitespace().nth(1)?;
            let (_, port) = local.rsplit_once(':')?;
            u16::from_str_radix(port, 16).ok()
        })
        .filter(|port| *port != 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_ports_of_a_proc_table_are_read_in_hex() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  412: 0100007F:1E6A 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 123 2 0000000000000000 0
  977: 00000000:1E78 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 456 2 0000000000000000 0
";
        assert_eq!(local_ports(table), vec![7786, 7800]);
    }

    #[test]
    fn a_socket_bound_here_is_seen() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        assert!(in_use().contains(&port));
    }
}
