//! Meters and listening, on the controller's side: what the pages want of the hosts' taps
//! ([`Wanted`]: meters while any page is open, each listened target while anyone listens),
//! what that asks of each host ([`requests`], a pure function of the deployment), and the
//! [`TapsHub`] that carries the hosts' levels and sound to every page — one stream per target
//! whatever the number of listeners.

use crate::deploy::Deployment;
use base64::Engine as _;
use orchestra_protocol::wire::{Event, Level, ListenTap, Taps};
use orchestra_protocol::PortRef;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::{broadcast, watch};

/// What a listener asks for to hear the DAC (a block's name is the other choice: no block
/// name holds a `:`).
pub const DAC_TARGET: &str = orchestra_protocol::wire::DAC;

/// What the pages want now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wanted {
    /// Pages open (each wants the meters).
    pub pages: usize,
    /// Target → how many pages listen to it.
    pub listeners: BTreeMap<String, usize>,
}

/// What to ask of each host's taps for `wanted` under `deployment`: the meters on every host
/// while a page is open; each listened block on its host (the mean of its outputs), and the
/// DAC on the first host whose blocks play into `system:playback_N`. A target no host has (a
/// block removed) is not asked of anyone.
pub fn requests(wanted: &Wanted, deployment: &Deployment) -> BTreeMap<String, Taps> {
    let meters = wanted.pages > 0;
    let mut listen: BTreeMap<&str, Vec<ListenTap>> = BTreeMap::new();
    for target in wanted.listeners.keys() {
        let found = if target == DAC_TARGET {
            deployment.hosts.iter().find_map(|(host, h)| {
                let mut ports: Vec<PortRef> = h
                    .edges
                    .iter()
                    .filter(|e| e.to.dac_channel().is_some())
                    .map(|e| e.to.clone())
                    .collect();
                ports.sort();
                ports.dedup();
                (!ports.is_empty()).then_some((host.as_str(), ports))
            })
        } else {
            deployment.hosts.iter().find_map(|(host, h)| {
                let process = h.processes.get(target)?;
                (process.module != "jacktrip" && !process.outputs.is_empty())
                    .then(|| (host.as_str(), process.outputs.clone()))
            })
        };
        if let Some((host, ports)) = found {
            listen.entry(host).or_default().push(ListenTap {
                target: target.clone(),
                ports,
            });
        }
    }
    deployment
        .hosts
        .keys()
        .map(|host| {
            let request = Taps {
                meters,
                listen: listen.remove(host.as_str()).unwrap_or_default(),
            };
            (host.clone(), request)
        })
        .collect()
}

/// One host's levels, as the pages get them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HostLevels {
    pub host: String,
    /// The CPU of the host's taps (their process callback), in percent of a core.
    pub cpu_percent: f32,
    pub levels: Vec<Level>,
}

/// A piece of a listened target's sound: 16-bit mono samples, the first heard at `at_ms`.
#[derive(Debug, Clone)]
pub struct SoundPiece {
    pub target: String,
    pub rate: u32,
    pub at_ms: u64,
    pub pcm: Vec<u8>,
}

/// Where the pages say what they want and hear what the taps send.
#[derive(Clone)]
pub struct TapsHub {
    wanted: Arc<watch::Sender<Wanted>>,
    levels: broadcast::Sender<Arc<HostLevels>>,
    sound: broadcast::Sender<Arc<SoundPiece>>,
}

impl Default for TapsHub {
    fn default() -> Self {
        TapsHub {
            wanted: Arc::new(watch::channel(Wanted::default()).0),
            // A page that falls behind skips levels (the next ones say the same) and sound
            // (its player fills the gap).
            levels: broadcast::channel(64).0,
            sound: broadcast::channel(64).0,
        }
    }
}

/// A page's hold on the meters (and on what it listens to): given back when dropped, so a
/// page that goes, however it goes, stops costing the hosts anything.
pub struct PageHold {
    hub: TapsHub,
    listening: Option<String>,
}

impl TapsHub {
    /// What the pages want, for the play loop.
    pub fn wanted(&self) -> watch::Receiver<Wanted> {
        self.wanted.subscribe()
    }

    /// A page opened: the meters are on while it stays.
    pub fn open_page(&self) -> PageHold {
        self.wanted.send_modify(|w| w.pages += 1);
        PageHold {
            hub: self.clone(),
            listening: None,
        }
    }

    pub fn levels(&self) -> broadcast::Receiver<Arc<HostLevels>> {
        self.levels.subscribe()
    }

    pub fn sound(&self) -> broadcast::Receiver<Arc<SoundPiece>> {
        self.sound.subscribe()
    }

    /// Take a host's taps event to the pages; any other event is given back.
    pub fn take(&self, host: &str, event: Event) -> Option<Event> {
        match event {
            Event::Levels {
                levels,
                cpu_percent,
            } => {
                let _ = self.levels.send(Arc::new(HostLevels {
                    host: host.to_string(),
                    cpu_percent,
                    levels,
                }));
                None
            }
            Event::Sound {
                target,
                rate,
                at_ms,
                pcm,
            } => {
                match base64::engine::general_purpose::STANDARD.decode(pcm) {
                    Ok(pcm) => {
                        let _ = self.sound.send(Arc::new(SoundPiece {
                            target,
                            rate,
                            at_ms,
                            pcm,
                        }));
                    }
                    Err(e) => tracing::debug!("sound from {host} unreadable: {e}"),
                }
                None
            }
            other => Some(other),
        }
    }
}

impl PageHold {
    /// Listen to `target` (or nothing), instead of what the page listened to before.
    pub fn listen(&mut self, target: Option<String>) {
        if self.listening == target {
            return;
        }
        let before = std::mem::replace(&mut self.listening, target.clone());
        self.hub.wanted.send_modify(|w| {
            if let Some(before) = before {
                forget_listener(w, &before);
            }
            if let Some(target) = target {
                *w.listeners.entry(target).or_default() += 1;
            }
        });
    }

    pub fn listening(&self) -> Option<&str> {
        self.listening.as_deref()
    }
}

fn forget_listener(wanted: &mut Wanted, target: &str) {
    if let Some(n) = wanted.listeners.get_mut(target) {
        *n -= 1;
        if *n == 0 {
            wanted.listeners.remove(target);
        }
    }
}

impl Drop for PageHold {
    fn drop(&mut self) {
        let listening = self.listening.take();
        self.hub.wanted.send_modify(|w| {
            w.pages = w.pages.saturating_sub(1);
            if let Some(target) = listening {
                forget_listener(w, &target);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::{Edge, HostDeployment, ProcessSpec};
    use crate::model::Host;

    fn process(block: &str, module: &str, outputs: &[&str]) -> ProcessSpec {
        ProcessSpec {
            outputs: outputs.iter().map(|s| (*s).into()).collect(),
            ..ProcessSpec::fixture(block, module, &format!("{block}-00000000"))
        }
    }

    fn host(name: &str, processes: Vec<ProcessSpec>, edges: &[(&str, &str)]) -> HostDeployment {
        HostDeployment {
            host: Host {
                name: name.into(),
                ..Host::localhost()
            },
            processes: processes
                .into_iter()
                .map(|p| (p.block.to_string(), p))
                .collect(),
            edges: edges
                .iter()
                .map(|(from, to)| Edge {
                    from: (*from).into(),
                    to: (*to).into(),
                })
                .collect(),
        }
    }

    fn deployment() -> Deployment {
        let mut d = Deployment::default();
        d.hosts.insert(
            "a".into(),
            host(
                "a",
                vec![process("tone", "sine", &["tone-00000000:out"])],
                &[],
            ),
        );
        d.hosts.insert(
            "b".into(),
            host(
                "b",
                vec![process(
                    "mix",
                    "mixer",
                    &["mix-00000000:left", "mix-00000000:right"],
                )],
                &[
                    ("mix-00000000:left", "system:playback_1"),
                    ("mix-00000000:right", "system:playback_2"),
                ],
            ),
        );
        d
    }

    fn taps(requests: &BTreeMap<String, Taps>, host: &str) -> (bool, Vec<ListenTap>) {
        let taps = &requests[host];
        (taps.meters, taps.listen.clone())
    }

    #[test]
    fn no_page_asks_nothing_of_any_host() {
        let asked = requests(&Wanted::default(), &deployment());
        assert_eq!(taps(&asked, "a"), (false, vec![]));
        assert_eq!(taps(&asked, "b"), (false, vec![]));
    }

    #[test]
    fn a_listened_block_and_the_dac_are_asked_of_the_hosts_they_play_on() {
        let wanted = Wanted {
            pages: 2,
            listeners: [("tone".to_string(), 2), (DAC_TARGET.to_string(), 1)].into(),
        };
        let asked = requests(&wanted, &deployment());
        assert_eq!(
            taps(&asked, "a"),
            (
                true,
                vec![ListenTap {
                    target: "tone".into(),
                    ports: vec!["tone-00000000:out".into()]
                }]
            )
        );
        assert_eq!(
            taps(&asked, "b"),
            (
                true,
                vec![ListenTap {
                    target: DAC_TARGET.into(),
                    ports: vec!["system:playback_1".into(), "system:playback_2".into()]
                }]
            )
        );
    }

    #[test]
    fn a_page_that_goes_gives_back_its_meters_and_its_listening() {
        let hub = TapsHub::default();
        let wanted = hub.wanted();
        let mut first = hub.open_page();
        let mut second = hub.open_page();
        first.listen(Some("tone".into()));
        second.listen(Some("tone".into()));
        second.listen(Some(DAC_TARGET.into()));
        assert_eq!(wanted.borrow().pages, 2);
        assert_eq!(
            wanted.borrow().listeners,
            [("tone".to_string(), 1), (DAC_TARGET.to_string(), 1)].into()
        );
        drop(first);
        drop(second);
        assert_eq!(*wanted.borrow(), Wanted::default());
    }

    #[test]
    fn levels_and_sound_go_to_the_pages_and_the_rest_is_given_back() {
        let hub = TapsHub::default();
        let mut levels = hub.levels();
        let mut sound = hub.sound();
        let kept = hub.take(
            "a",
            Event::Levels {
                levels: vec![],
                cpu_percent: 0.03,
            },
        );
        assert_eq!(kept, None);
        assert_eq!(levels.try_recv().expect("levels").cpu_percent, 0.03);
        hub.take(
            "a",
            Event::Sound {
                target: "tone".into(),
                rate: 48000,
                at_ms: 5,
                pcm: base64::engine::general_purpose::STANDARD.encode([1u8, 0, 2, 0]),
            },
        );
        assert_eq!(sound.try_recv().expect("sound").pcm, vec![1, 0, 2, 0]);
        let other = Event::FirstSound { after_ms: 1 };
        assert_eq!(hub.take("a", other.clone()), Some(other));
    }
}
