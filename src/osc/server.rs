//! The OSC socket: who may send (loopback, plus `--osc-allow` networks), what was received,
//! forwarded, refused and dropped, and the task that serves it. Forwarding happens here, at
//! once; commands go to the control loop and are answered when applied.

use super::dispatch::{dispatch, Command, Dispatch, Routes};
use super::memory::OscMemory;
use anyhow::{bail, Context, Result};
use ipnet::IpNet;
use rosc::{OscMessage, OscPacket, OscType};
use std::net::UdpSocket;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Where to listen and whom to hear.
#[derive(Debug, Clone)]
pub struct OscOptions {
    pub bind: SocketAddr,
    /// Networks besides loopback whose packets are accepted (routed to blocks).
    pub allow: Vec<IpNet>,
    /// Networks besides loopback that may also send `/orchestra/…` commands, which change the
    /// orchestra and run live code: a narrower right than playing the blocks.
    pub control_allow: Vec<IpNet>,
}

/// A command for the control loop, where it came from, and where its answer goes.
pub struct ControlRequest {
    pub command: Command,
    pub via: Via,
    pub reply: oneshot::Sender<Result<String, String>>,
}

/// Where a command came from, as the log says it (`reload: OSC set …`, `reload: page set …`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Osc,
    Page,
}

impl std::fmt::Display for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Via::Osc => "OSC",
            Via::Page => "page",
        })
    }
}

/// What the server saw (printed when the run ends).
#[derive(Debug, Default)]
pub struct Counters {
    pub received: AtomicU64,
    pub forwarded: AtomicU64,
    pub commands: AtomicU64,
    pub refused: AtomicU64,
    /// Commands from senders allowed to play blocks but not to control the orchestra.
    pub unauthorized: AtomicU64,
    pub foreign: AtomicU64,
    pub malformed: AtomicU64,
}

impl Counters {
    pub fn line(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "OSC: {} packet(s) received, {} forwarded, {} command(s), {} refused, {} command(s) from senders without control rights, {} dropped from outside the allowed networks, {} malformed",
            get(&self.received),
            get(&self.forwarded),
            get(&self.commands),
            get(&self.refused),
            get(&self.unauthorized),
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
    control_allow: Vec<IpNet>,
}

/// The serving thread; stopped (and joined) by `stop` or when dropped.
pub struct Serving {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Serving {
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.halt();
    }
}

/// How often the serving thread looks up from its socket to see whether it should stop.
const STOP_CHECK: Duration = Duration::from_millis(100);

impl OscServer {
    /// Bind. Anything but loopback needs `--osc-allow`: a control port open to a network
    /// lets whoever is on it change the orchestra.
    pub fn bind(options: &OscOptions) -> Result<OscServer> {
        if !options.bind.ip().is_loopback() && options.allow.is_empty() {
            bail!(
                "--osc {}: listening beyond loopback needs --osc-allow CIDR… (the networks that may control the orchestra)",
                options.bind
            );
        }
        let socket = UdpSocket::bind(options.bind)
            .with_context(|| format!("cannot listen for OSC on {}", options.bind))?;
        socket.set_read_timeout(Some(STOP_CHECK))?;
        widen_receive_buffer(&socket);
        let any: SocketAddr = if options.bind.is_ipv6() {
            "[::]:0".parse().expect("an address")
        } else {
            "0.0.0.0:0".parse().expect("an address")
        };
        let forward = UdpSocket::bind(any).context("cannot open a socket to forward OSC")?;
        Ok(OscServer {
            socket: Arc::new(socket),
            forward: Arc::new(forward),
            counters: Arc::default(),
            allow: options.allow.clone(),
            control_allow: options.control_allow.clone(),
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    /// Serve on a thread of its own: a message to a block is forwarded as soon as it arrives,
    /// without waiting for an async scheduler (measured: its wake-ups put the p99 added
    /// latency at 0.3–0.5 ms on a 2-core machine). Commands go to `control`; their answers
    /// are sent from the tokio runtime this is called in, once applied.
    pub fn spawn(
        &self,
        routes: SharedRoutes,
        memory: OscMemory,
        control: mpsc::UnboundedSender<ControlRequest>,
    ) -> Serving {
        let socket = self.socket.clone();
        let forward = self.forward.clone();
        let counters = self.counters.clone();
        let allow = self.allow.clone();
        let control_allow = self.control_allow.clone();
        let runtime = tokio::runtime::Handle::current();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("osc".into())
            .spawn(move || {
                let mut buffer = vec![0u8; 65536];
                while !stopped.load(Ordering::Relaxed) {
                    let Ok((len, from)) = socket.recv_from(&mut buffer) else {
                        continue;
                    };
                    counters.received.fetch_add(1, Ordering::Relaxed);
                    if !allowed(from.ip(), &allow) {
                        counters.foreign.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let decision = {
                        let table = routes.0.read().expect("lock");
                        match dispatch(&buffer[..len], &table) {
                            Dispatch::Forward(packets) => {
                                for packet in packets {
                                    let Some(to) = table.get(&packet.block) else {
                                        continue;
                                    };
                                    let sent = forward.send_to(&packet.bytes, to);
                                    let block = memory.remember(packet);
                                    match sent {
                                        Ok(_) => {
                                            counters.forwarded.fetch_add(1, Ordering::Relaxed);
                                        }
                                        Err(e) => {
                                            tracing::warn!("OSC to `{block}` at {to}: {e}")
                                        }
                                    }
                                }
                                continue;
                            }
                            other => other,
                        }
                    };
                    match decision {
                        Dispatch::Control(_) if !allowed(from.ip(), &control_allow) => {
                            counters.unauthorized.fetch_add(1, Ordering::Relaxed);
                            reply(
                                &socket,
                                from,
                                Err(format!(
                                    "{} may play blocks but not control the orchestra (--osc-control-allow)",
                                    from.ip()
                                )),
                            );
                        }
                        Dispatch::Control(command) => {
                            counters.commands.fetch_add(1, Ordering::Relaxed);
                            let (tx, rx) = oneshot::channel();
                            if control.send(ControlRequest { command, via: Via::Osc, reply: tx }).is_err() {
                                continue;
                            }
                            // Answered once applied; forwarding goes on meanwhile.
                            let socket = socket.clone();
                            runtime.spawn(async move {
                                let answer =
                                    rx.await.unwrap_or(Err("the runtime is stopping".into()));
                                reply(&socket, from, answer);
                            });
                        }
                        Dispatch::Refused(why) => {
                            counters.refused.fetch_add(1, Ordering::Relaxed);
                            reply(&socket, from, Err(why));
                        }
                        Dispatch::Malformed(why) => {
                            tracing::debug!("malformed OSC packet from {from}: {why}");
                            counters.malformed.fetch_add(1, Ordering::Relaxed);
                        }
                        // Sent above, while the routes were at hand.
                        Dispatch::Forward(_) => {}
                    }
                }
            })
            .expect("a thread for OSC");
        Serving {
            stop,
            thread: Some(thread),
        }
    }
}

/// How much the OSC socket may hold while its thread is busy: at 20 000 packets a second, the
/// default (about 200 KB) dropped 1415 of them in 40 s.
const RECEIVE_BUFFER: libc::c_int = 4 << 20;

/// Ask the kernel for [`RECEIVE_BUFFER`]: beyond its limit for users when run as root (the
/// forced variant), else up to that limit. Best effort: the default still works, only sooner
/// full.
fn widen_receive_buffer(socket: &UdpSocket) {
    use std::os::fd::AsRawFd;
    let size = RECEIVE_BUFFER;
    for option in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        let set = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if set == 0 {
            return;
        }
    }
}

/// `/orchestra/ok ,s what` or `/orchestra/error ,s why` to the sender.
fn reply(socket: &UdpSocket, to: SocketAddr, answer: Result<String, String>) {
    let (addr, text) = match answer {
        Ok(what) => ("/orchestra/ok", what),
        Err(why) => ("/orchestra/error", why),
    };
    let packet = OscPacket::Message(OscMessage {
        addr: addr.into(),
        args: vec![OscType::String(text)],
    });
    if let Ok(bytes) = rosc::encoder::encode(&packet) {
        let _ = socket.send_to(&bytes, to);
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
