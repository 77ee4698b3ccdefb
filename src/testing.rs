//! Hosts in memory, for tests (the `testing` feature): what they run is a map per host, each
//! action is carried out on it at once, and failures are injected by the test — starts that
//! fail, edges whose ports never appear, agents lost or busy, hosts cut off the network. The
//! conductor, the executor and the play loop run over them as over the real fleet.

use crate::deploy::{Deployment, Edge};
use crate::executor::{Acted, Hosts, Reached, Unanswered};
use crate::model::Host;
use crate::plan::{Action, Observed};
use futures::future::BoxFuture;
use futures::FutureExt;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// What one fake host runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FakeHost {
    /// client → block
    pub processes: BTreeMap<String, String>,
    pub edges: BTreeSet<Edge>,
}

/// Hosts in memory, with failures to inject; clones share the same hosts, so a test keeps
/// one while the conductor owns another.
#[derive(Clone)]
pub struct FakeHosts(pub Arc<Inner>);

pub struct Inner {
    pub hosts: Mutex<BTreeMap<String, FakeHost>>,
    /// Clients whose start fails (a compile error, say).
    pub fail_start: Mutex<BTreeSet<String>>,
    /// Edges an agent holds but whose ports never appear.
    pub never_appear: Mutex<BTreeSet<Edge>>,
    /// Whether a connect answers that its edge exists at once (its ports were there).
    pub made_at_once: AtomicBool,
    /// The hosts asked to wait for edges, with how many, in order.
    pub waits: Mutex<Vec<(String, usize)>>,
    /// Hosts whose agent does not answer (a new agent does not help while `stay_lost`).
    pub lost: Mutex<BTreeSet<String>>,
    pub stay_lost: AtomicBool,
    /// Every action carried out, in order.
    pub log: Mutex<Vec<String>>,
    /// Hosts whose agent was replaced, in order.
    pub respawned: Mutex<Vec<String>>,
    /// Hosts cut off the network: they answer nothing.
    pub cut_off: Mutex<BTreeSet<String>>,
    /// Hosts whose agent is too busy to answer in time.
    pub busy: Mutex<BTreeSet<String>>,
    /// Hosts whose agent the conductor dropped as down, in order.
    pub forgotten: Mutex<Vec<String>>,
    /// Actions wait while this is false (an apply in progress, held open by the test).
    pub open: watch::Sender<bool>,
}

impl FakeHosts {
    pub fn with_hosts(names: &[&str]) -> FakeHosts {
        let hosts = names
            .iter()
            .map(|name| (name.to_string(), FakeHost::default()))
            .collect();
        FakeHosts(Arc::new(Inner {
            hosts: Mutex::new(hosts),
            fail_start: Mutex::default(),
            never_appear: Mutex::default(),
            made_at_once: AtomicBool::new(false),
            waits: Mutex::default(),
            lost: Mutex::default(),
            stay_lost: AtomicBool::new(false),
            log: Mutex::default(),
            respawned: Mutex::default(),
            cut_off: Mutex::default(),
            busy: Mutex::default(),
            forgotten: Mutex::default(),
            open: watch::Sender::new(true),
        }))
    }

    pub fn snapshot(&self) -> BTreeMap<String, FakeHost> {
        self.0.hosts.lock().unwrap().clone()
    }

    pub fn edit(&self, host: &str, change: impl FnOnce(&mut FakeHost)) {
        change(self.0.hosts.lock().unwrap().get_mut(host).unwrap());
    }

    pub fn log(&self) -> Vec<String> {
        self.0.log.lock().unwrap().clone()
    }
}

impl Hosts for FakeHosts {
    fn act<'a>(&'a self, action: &'a Action) -> BoxFuture<'a, anyhow::Result<Acted>> {
        async move {
            let mut open = self.0.open.subscribe();
            open.wait_for(|open| *open).await?;
            self.0.log.lock().unwrap().push(action.line());
            let mut hosts = self.0.hosts.lock().unwrap();
            let host = hosts
                .get_mut(action.host())
                .ok_or_else(|| anyhow::anyhow!("no agent on {}", action.host()))?;
            match action {
                Action::Start { process, .. } => {
                    if self
                        .0
                        .fail_start
                        .lock()
                        .unwrap()
                        .contains(process.client.as_str())
                    {
                        anyhow::bail!("csound exited (code 1) while starting");
                    }
                    host.processes
                        .insert(process.client.to_string(), process.block.to_string());
                }
                Action::Stop { client, .. } => {
                    host.processes.remove(client.as_str());
                }
                Action::Connect { edge, .. } => {
                    host.edges.insert(edge.clone());
                    if self.0.made_at_once.load(Ordering::SeqCst)
                        && !self.0.never_appear.lock().unwrap().contains(edge)
                    {
                        return Ok(Acted::Connected);
                    }
                }
                Action::Disconnect { edge, .. } => {
                    host.edges.remove(edge);
                }
                Action::Set { client, .. } => {
                    if !host.processes.contains_key(client.as_str()) {
                        anyhow::bail!("no instance `{client}` runs here to tell");
                    }
                }
            }
            Ok(Acted::Done)
        }
        .boxed()
    }

    fn missing_edges<'a>(
        &'a self,
        host: &'a str,
        edges: Vec<Edge>,
        _timeout: Duration,
    ) -> BoxFuture<'a, anyhow::Result<Vec<Edge>>> {
        async move {
            self.0
                .waits
                .lock()
                .unwrap()
                .push((host.to_string(), edges.len()));
            let never = self.0.never_appear.lock().unwrap();
            Ok(edges.into_iter().filter(|e| never.contains(e)).collect())
        }
        .boxed()
    }

    fn observe<'a>(&'a self, host: &'a str) -> BoxFuture<'a, anyhow::Result<Observed>> {
        async move {
            if self.0.lost.lock().unwrap().contains(host) {
                anyhow::bail!("the agent's channel closed");
            }
            if self.0.busy.lock().unwrap().contains(host) {
                return Err(Unanswered(Duration::from_millis(500)).into());
            }
            let hosts = self.0.hosts.lock().unwrap();
            let seen = &hosts[host];
            Ok(Observed {
                processes: seen
                    .processes
                    .iter()
                    .map(|(client, block)| (block.as_str().into(), client.as_str().into()))
                    .collect(),
                intended: seen.edges.clone(),
                ..Default::default()
            })
        }
        .boxed()
    }

    fn names(&self) -> Vec<String> {
        let forgotten = self.0.forgotten.lock().unwrap();
        self.0
            .hosts
            .lock()
            .unwrap()
            .keys()
            .filter(|h| !forgotten.contains(h))
            .cloned()
            .collect()
    }

    fn reach<'a>(
        &'a mut self,
        hosts: Vec<Host>,
        _running: &'a Deployment,
    ) -> BoxFuture<'a, anyhow::Result<Reached>> {
        async move {
            let mut known = self.0.hosts.lock().unwrap();
            for host in &hosts {
                known.entry(host.name.clone()).or_default();
                self.0.forgotten.lock().unwrap().retain(|h| *h != host.name);
                self.0.lost.lock().unwrap().remove(&host.name);
            }
            Ok(Reached::all(hosts))
        }
        .boxed()
    }

    fn answers<'a>(&'a self, host: &'a Host) -> BoxFuture<'a, bool> {
        async move { !self.0.cut_off.lock().unwrap().contains(&host.name) }.boxed()
    }

    fn forget(&mut self, host: &str) {
        self.0.lost.lock().unwrap().insert(host.to_string());
        self.0.forgotten.lock().unwrap().push(host.to_string());
    }

    fn respawn<'a>(
        &'a mut self,
        host: &'a Host,
        _running: &'a Deployment,
    ) -> BoxFuture<'a, anyhow::Result<usize>> {
        async move {
            self.0.respawned.lock().unwrap().push(host.name.clone());
            if !self.0.stay_lost.load(Ordering::SeqCst) {
                self.0.lost.lock().unwrap().remove(&host.name);
            }
            Ok(self.0.hosts.lock().unwrap()[&host.name].processes.len())
        }
        .boxed()
    }
}
