//! Round trips of the links this host sends on, measured while they play: every 2 s a TCP
//! connect to the port the receiving end listens on. jacktrip listens there on UDP only, so
//! the peer's kernel refuses the connect at once (one SYN out, one RST back): a round trip on
//! the path the audio takes, with nothing to run on the peer and nothing logged there.
//! jacktrip's own statistics (`-I`) carry no round trip, and its `-x` needs a loopback server.

use orchestra_protocol::wire::Event;
use orchestra_protocol::LinkEnd;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often each sending end's peer is probed.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);
/// A probe without an answer by then counts as none (a link that carries nothing is reported
/// by `link_health` on the other side).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// The file in a sending end's instance directory holding its last round trip in µs, for
/// `orchestra status` (which reads the run directory, not this agent).
pub const RTT_FILE: &str = "rtt_us";

/// The last round trip (µs) written into an instance directory, if any.
pub fn read(dir: &std::path::Path) -> Option<u64> {
    std::fs::read_to_string(dir.join(RTT_FILE))
        .ok()
        .and_then(|text| text.trim().parse().ok())
}

/// A sending end here: which end it is, its instance directory, and its peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sender {
    pub end: LinkEnd,
    pub dir: PathBuf,
    pub peer: String,
    pub port: u16,
}

impl Sender {
    /// From a sending end's command, `jacktrip -c ADDRESS … -P PORT …` (see deploy::links).
    pub fn from_command(end: &LinkEnd, dir: PathBuf, command: &[String]) -> Option<Sender> {
        let after = |flag: &str| {
            command
                .iter()
                .position(|a| a == flag)
                .and_then(|i| command.get(i + 1))
        };
        Some(Sender {
            end: end.clone(),
            dir,
            peer: after("-c")?.clone(),
            port: after("-P")?.parse().ok()?,
        })
    }
}

/// One round trip to `peer:port`: the time until the connect was refused or accepted.
pub async fn probe(peer: &str, port: u16) -> Result<Duration, String> {
    // Resolve first, so a name lookup is not counted as network time.
    let address: SocketAddr = tokio::net::lookup_host((peer, port))
        .await
        .map_err(|e| e.to_string())?
        .next()
        .ok_or_else(|| format!("{peer} has no address"))?;
    let started = Instant::now();
    match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(address)).await {
        Ok(Ok(_)) => Ok(started.elapsed()),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(started.elapsed()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} ms", PROBE_TIMEOUT.as_millis())),
    }
}

/// The probes of every sending end here, run on a task of their own, and what of them to say.
pub struct RoundTrips {
    senders: Arc<Mutex<Vec<Sender>>>,
    measured: Arc<Mutex<BTreeMap<LinkEnd, Duration>>>,
    /// Per end, the round trip last reported to the controller.
    reported: BTreeMap<LinkEnd, Duration>,
    /// Per end, the round trip last written into its [`RTT_FILE`]: a file is written when a
    /// probe measured something new, not at every upkeep.
    written: BTreeMap<LinkEnd, Duration>,
}

impl RoundTrips {
    /// Start probing (on the current tokio runtime); the task ends with this value.
    pub fn start() -> RoundTrips {
        let senders: Arc<Mutex<Vec<Sender>>> = Default::default();
        let measured: Arc<Mutex<BTreeMap<LinkEnd, Duration>>> = Default::default();
        let (watched, into) = (Arc::downgrade(&senders), measured.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(PROBE_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(senders) = watched.upgrade() else {
                    return;
                };
                let now: Vec<Sender> = senders.lock().expect("lock").clone();
                drop(senders);
                let probes = now.iter().map(|s| probe(&s.peer, s.port));
                let results = futures::future::join_all(probes).await;
                let mut measured = into.lock().expect("lock");
                measured.retain(|block, _| now.iter().any(|s| &s.end == block));
                for (sender, result) in now.iter().zip(results) {
                    if let Ok(rtt) = result {
                        measured.insert(sender.end.clone(), rtt);
                    }
                }
            }
        });
        RoundTrips {
            senders,
            measured,
            reported: BTreeMap::new(),
            written: BTreeMap::new(),
        }
    }

    /// The sending ends now running here (what the next probes go to), and the events for
    /// round trips worth saying: an end's first, and one that moved by half since last said
    /// (and by at least 1 ms: a busy host's scheduling moves a LAN's tenths of a millisecond). Each end's last round trip goes into its [`RTT_FILE`].
    pub fn update(&mut self, senders: Vec<Sender>) -> Vec<Event> {
        let measured = self.measured.lock().expect("lock").clone();
        let mut events = Vec::new();
        for sender in &senders {
            let Some(&rtt) = measured.get(&sender.end) else {
                continue;
            };
            if self.written.get(&sender.end) != Some(&rtt) {
                let _ = std::fs::write(sender.dir.join(RTT_FILE), rtt.as_micros().to_string());
                self.written.insert(sender.end.clone(), rtt);
            }
            if worth_saying(self.reported.get(&sender.end).copied(), rtt) {
                self.reported.insert(sender.end.clone(), rtt);
                events.push(Event::LinkRtt {
                    end: sender.end.clone(),
                    peer: sender.peer.clone(),
                    rtt_us: rtt.as_micros() as u64,
                });
            }
        }
        let running = |block: &LinkEnd| senders.iter().any(|s| &s.end == block);
        self.reported.retain(|block, _| running(block));
        self.written.retain(|block, _| running(block));
        *self.senders.lock().expect("lock") = senders;
        events
    }
}

/// A first round trip, or one that moved by half of the last one said and by 1 ms.
fn worth_saying(said: Option<Duration>, now: Duration) -> bool {
    let Some(said) = said else {
        return true;
    };
    let moved = now.abs_diff(said);
    moved >= Duration::from_millis(1) && moved * 2 >= said
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(text: &str) -> Vec<String> {
        text.split(' ').map(str::to_string).collect()
    }

    #[test]
    fn a_sending_end_names_its_peer_and_port_and_a_receiving_end_is_none() {
        let sender = Sender::from_command(
            &"link-a-2.send".parse().unwrap(),
            PathBuf::from("/w/links/x"),
            &command("jacktrip -c 10.0.0.12 -D -J link-a-2 -n 2 -B 4471 -P 4470 -q 4"),
        );
        assert_eq!(
            sender,
            Some(Sender {
                end: "link-a-2.send".parse().unwrap(),
                dir: PathBuf::from("/w/links/x"),
                peer: "10.0.0.12".into(),
                port: 4470,
            })
        );
        let receiver = command("jacktrip -s -D -J link-a-2 -n 2 -B 4470 -P 4471 -q 4");
        assert_eq!(
            Sender::from_command(
                &"link-a-2.receive".parse().unwrap(),
                PathBuf::new(),
                &receiver
            ),
            None
        );
    }

    #[tokio::test]
    async fn a_port_nobody_listens_on_answers_with_a_refusal_in_one_round_trip() {
        // Bind and drop: a loopback TCP port that is (almost surely) closed now.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let rtt = probe("127.0.0.1", port).await.unwrap();
        assert!(rtt < PROBE_TIMEOUT, "{rtt:?}");
        let listening = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listening.local_addr().unwrap().port();
        assert!(probe("127.0.0.1", port).await.is_ok());
    }

    #[tokio::test]
    async fn an_ends_file_is_written_when_a_probe_measured_something_new() {
        let dir = tempfile::tempdir().unwrap();
        let sender = Sender {
            end: "link-a-2.send".parse().unwrap(),
            dir: dir.path().to_path_buf(),
            peer: "127.0.0.1".into(),
            port: 9,
        };
        let mut trips = RoundTrips::start();
        let measure = |trips: &RoundTrips, us: u64| {
            trips
                .measured
                .lock()
                .unwrap()
                .insert(sender.end.clone(), Duration::from_micros(us));
        };
        measure(&trips, 180);
        assert_eq!(trips.update(vec![sender.clone()]).len(), 1);
        assert_eq!(read(dir.path()), Some(180));
        // The same measurement at the next upkeep: the file is left alone.
        std::fs::remove_file(dir.path().join(RTT_FILE)).unwrap();
        assert!(trips.update(vec![sender.clone()]).is_empty());
        assert_eq!(read(dir.path()), None);
        measure(&trips, 190);
        trips.update(vec![sender.clone()]);
        assert_eq!(read(dir.path()), Some(190));
    }

    #[test]
    fn a_round_trip_is_said_first_and_then_only_when_it_moved_by_half() {
        let ms = |m: f64| Duration::from_secs_f64(m / 1000.0);
        assert!(worth_saying(None, ms(0.05)));
        assert!(!worth_saying(Some(ms(0.05)), ms(0.8)), "under 1 ms");
        assert!(worth_saying(Some(ms(0.05)), ms(1.2)));
        assert!(!worth_saying(Some(ms(20.0)), ms(28.0)), "under half");
        assert!(worth_saying(Some(ms(20.0)), ms(31.0)));
        assert!(worth_saying(Some(ms(20.0)), ms(9.0)));
    }
}
