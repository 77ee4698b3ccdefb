//! The OSC socket: who may send (loopback, plus `--osc-allow` networks), what was received,
//! forwarded, refused and dropped, and the task that serves it. Forwarding happens here, at
//! once; commands go to the control loop and are answered when applied.

use super::dispatch::{dispatch, Command, Dispatch, Routes};
use anyhow::{bail, Context, Result};
use ipnet::IpNet;
use rosc::{OscMessage, OscPacket, OscType};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

/// Where to listen and whom to hear.
#[derive(Debug, Clone)]
pub struct OscOptions {
    pub bind: SocketAddr,
    /// Networks besides loopback whose packets are accepted.
    pub allow: Vec<IpNet>,
}

/// A command for the control loop, and where its answer goes.
pub struct ControlRequest {
    pub command: Command,
    pub reply: oneshot::Sender<Result<String, String>>,
}

/// What the server saw (printed when the run ends).
#[derive(Debug, Default)]
pub struct Counters {
    pub received: AtomicU64,
    pub forwarded: AtomicU64,
    pub commands: AtomicU64,
    pub refused: AtomicU64,
    pub foreign: AtomicU64,
    pub malformed: AtomicU64,
}

impl Counters {
    pub fn line(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "OSC: {} packet(s) received, {} forwarded, {} command(s), {} refused, {} dropped from outside the allowed networks, {} malformed",
            get(&self.received),
            get(&self.forwarded),
            get(&self.commands),
            get(&self.refused),
            get(&self.foreign),
            get(&self.malformed)
        )
    }
}

/// Loopback always; other senders only from an allowed network.
pub fn allowed(from: IpAddr, allow: &[IpNet]) -> bool {
    let from = match from {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    from.is_loopback() || allow.iter().any(|net| net.contains(&from))
}

/// The routing table, shared with the control loop (which rewrites it after each change).
#[derive(Clone, Default)]
pub struct SharedRoutes(pub Arc<RwLock<Routes>>);

impl SharedRoutes {
    pub fn set(&self, routes: Routes) {
        *self.0.write().expect("lock") = routes;
    }
}

pub struct OscServer {
    socket: Arc<UdpSocket>,
    /// Forwarding leaves from a socket of its own: the control socket is usually bound to
    /// loopback, which cannot send to another host.
    forward: Arc<UdpSocket>,
    pub counters: Arc<Counters>,
    allow: Vec<IpNet>,
}

impl OscServer {
    /// Bind. Anything but loopback needs `--osc-allow`: a control port open to a network
    /// lets whoever is on it change the orchestra.
    pub async fn bind(options: &OscOptions) -> Result<OscServer> {
        if !options.bind.ip().is_loopback() && options.allow.is_empty() {
            bail!(
                "--osc {}: listening beyond loopback needs --osc-allow CIDR… (the networks that may control the orchestra)",
                options.bind
            );
        }
        let socket = UdpSocket::bind(options.bind)
            .await
            .with_context(|| format!("cannot listen for OSC on {}", options.bind))?;
        let any: SocketAddr = if options.bind.is_ipv6() {
            "[::]:0".parse().expect("an address")
        } else {
            "0.0.0.0:0".parse().expect("an address")
        };
        let forward = UdpSocket::bind(any)
            .await
            .context("cannot open a socket to forward OSC")?;
        Ok(OscServer {
            socket: Arc::new(socket),
            forward: Arc::new(forward),
            counters: Arc::default(),
            allow: options.allow.clone(),
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    /// Serve until the task is dropped (aborted at teardown).
    pub fn spawn(
        &self,
        routes: SharedRoutes,
        control: mpsc::UnboundedSender<ControlRequest>,
    ) -> tokio::task::JoinHandle<()> {
        let socket = self.socket.clone();
        let forward = self.forward.clone();
        let counters = self.counters.clone();
        let allow = self.allow.clone();
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 65536];
            loop {
                let Ok((len, from)) = socket.recv_from(&mut buffer).await else {
                    continue;
                };
                counters.received.fetch_add(1, Ordering::Relaxed);
                if !allowed(from.ip(), &allow) {
                    counters.foreign.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                // The lock is held only to decide, not across a send.
                let (decision, destinations) = {
                    let table = routes.0.read().expect("lock");
                    let decision = dispatch(&buffer[..len], &table);
                    let destinations: Vec<Option<SocketAddr>> = match &decision {
                        Dispatch::Forward(packets) => {
                            packets.iter().map(|(b, _)| table.get(b).copied()).collect()
                        }
                        _ => Vec::new(),
                    };
                    (decision, destinations)
                };
                match decision {
                    Dispatch::Forward(packets) => {
                        for ((block, bytes), to) in packets.into_iter().zip(destinations) {
                            let Some(to) = to else { continue };
                            match forward.send_to(&bytes, to).await {
                                Ok(_) => {
                                    counters.forwarded.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(e) => tracing::warn!("OSC to `{block}` at {to}: {e}"),
                            }
                        }
                    }
                    Dispatch::Control(command) => {
                        counters.commands.fetch_add(1, Ordering::Relaxed);
                        let (tx, rx) = oneshot::channel();
                        let socket = socket.clone();
                        if control.send(ControlRequest { command, reply: tx }).is_err() {
                            continue;
                        }
                        // Answered once applied; forwarding goes on meanwhile.
                        tokio::spawn(async move {
                            let answer = rx.await.unwrap_or(Err("the runtime is stopping".into()));
                            reply(&socket, from, answer).await;
                        });
                    }
                    Dispatch::Refused(why) => {
                        counters.refused.fetch_add(1, Ordering::Relaxed);
                        reply(&socket, from, Err(why)).await;
                    }
                    Dispatch::Malformed(why) => {
                        tracing::debug!("malformed OSC packet from {from}: {why}");
                        counters.malformed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    }
}

async fn reply(socket: &UdpSocket, to: SocketAddr, answer: Result<String, String>) {
    let (addr, text) = match answer {
        Ok(what) => ("/orchestra/ok", what),
        Err(why) => ("/orchestra/error", why),
    };
    let packet = OscPacket::Message(OscMessage {
        addr: addr.into(),
        args: vec![OscType::String(text)],
    });
    if let Ok(bytes) = rosc::encoder::encode(&packet) {
        let _ = socket.send_to(&bytes, to).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_always_others_only_when_allowed() {
        let lan: IpNet = "10.77.0.0/16".parse().unwrap();
        assert!(allowed("127.0.0.1".parse().unwrap(), &[]));
        assert!(allowed("::1".parse().unwrap(), &[]));
        assert!(!allowed("10.77.1.2".parse().unwrap(), &[]));
        assert!(allowed("10.77.1.2".parse().unwrap(), &[lan]));
        assert!(allowed("::ffff:10.77.1.2".parse().unwrap(), &[lan]));
        assert!(!allowed("10.78.1.2".parse().unwrap(), &[lan]));
    }
}
