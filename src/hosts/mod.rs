//! The controller's side of agents: a session per host speaking the JSON-lines protocol.
//! Local hosts run `orchestra agent` as a child process; remote hosts run it over an SSH
//! channel ([`ssh`]). The protocol is the same.

pub mod fleet;
pub mod ssh;

use anyhow::{anyhow, bail, Context, Result};
use orchestra_protocol::wire::{read_reply, AgentLine, Ask, Event, Request, RequestLine};
use serde_json::Value;
use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};

/// Callers waiting for replies, by request id; `None` once the agent's output has ended, so
/// no caller can start waiting for a reply that will never come.
type Pending = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<Result<Value>>>>>>;

/// Longer than any request takes (`WaitEdges` brings its own, shorter, timeout).
const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// One live agent: send requests, await replies; events go to the channel given at start.
pub struct AgentSession {
    pub host: String,
    stdin: tokio::sync::Mutex<Writer>,
    pending: Pending,
    next_id: std::sync::atomic::AtomicU64,
    /// Ends when the agent's output ends (it exited, or its SSH channel closed).
    reader: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The local agent process, reaped at close.
    child: Option<tokio::sync::Mutex<Child>>,
}

impl AgentSession {
    /// Start `orchestra agent` on this machine. Its own process group keeps Ctrl-C in the
    /// terminal from reaching it: the controller decides when and how it ends.
    pub async fn spawn_local(
        host: &str,
        events: mpsc::UnboundedSender<(String, Event)>,
    ) -> Result<AgentSession> {
        let exe = agent_executable()?;
        let mut command = Command::new(&exe);
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .kill_on_drop(false);
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start the agent {}", exe.display()))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let mut session = AgentSession::over(host, stdout, stdin, events);
        session.child = Some(tokio::sync::Mutex::new(child));
        Ok(session)
    }

    /// A session over an agent's output and input, wherever it runs (a child process, an
    /// SSH channel).
    pub fn over(
        host: &str,
        output: impl AsyncRead + Send + Unpin + 'static,
        input: impl AsyncWrite + Send + Unpin + 'static,
        events: mpsc::UnboundedSender<(String, Event)>,
    ) -> AgentSession {
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let reader_pending = pending.clone();
        let host_name = host.to_string();
        let reader = tokio::spawn(async move {
            let mut lines = BufReader::new(output).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<AgentLine>(&line) {
                    Ok(AgentLine::Reply { id, ok, error }) => {
                        let waiter = reader_pending
                            .lock()
                            .expect("lock")
                            .as_mut()
                            .and_then(|p| p.remove(&id));
                        if let Some(tx) = waiter {
                            let _ = tx.send(match error {
                                Some(e) => Err(anyhow!(e)),
                                None => Ok(ok.unwrap_or(Value::Null)),
                            });
                        }
                    }
                    Ok(AgentLine::Event { event }) => {
                        let _ = events.send((host_name.clone(), event));
                    }
                    Err(e) => tracing::warn!("agent on {host_name}: unreadable line ({e}): {line}"),
                }
            }
            // The agent is gone: fail whoever still waits, and whoever comes later.
            let waiting = reader_pending.lock().expect("lock").take();
            for (_, tx) in waiting.into_iter().flatten() {
                let _ = tx.send(Err(anyhow!("the agent on {host_name} exited")));
            }
        });
        AgentSession {
            host: host.to_string(),
            stdin: tokio::sync::Mutex::new(Box::new(input)),
            pending,
            next_id: 1.into(),
            reader: tokio::sync::Mutex::new(Some(reader)),
            child: None,
        }
    }

    /// Ask the agent `request` and wait for its reply, read as the type the request names.
    pub async fn ask<A: Ask>(&self, request: A) -> Result<A::Reply> {
        let reply = self.call(request.into()).await?;
        read_reply::<A>(reply).with_context(|| {
            format!(
                "the agent on {} answered in a form this controller does not read",
                self.host
            )
        })
    }

    /// Send one request and wait for its reply, as it came.
    async fn call(&self, request: Request) -> Result<Value> {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        match self.pending.lock().expect("lock").as_mut() {
            Some(pending) => pending.insert(id, tx),
            None => bail!("the agent on {} exited", self.host),
        };
        let mut line = serde_json::to_string(&RequestLine { id, request })?;
        line.push('\n');
        {
            let mut stdin = self.stdin.lock().await;
            if let Err(e) = stdin.write_all(line.as_bytes()).await {
                if let Some(pending) = self.pending.lock().expect("lock").as_mut() {
                    pending.remove(&id);
                }
                bail!("the agent on {} is gone: {e}", self.host);
            }
            stdin.flush().await?;
        }
        tokio::time::timeout(REPLY_TIMEOUT, rx)
            .await
            .map_err(|_| {
                anyhow!(
                    "the agent on {} did not answer within {REPLY_TIMEOUT:?}",
                    self.host
                )
            })?
            .map_err(|_| anyhow!("the agent on {} exited", self.host))?
            .with_context(|| format!("on {}", self.host))
    }

    /// Send one request without waiting for its reply (nobody waits for its id: the reader
    /// drops it), giving up if the agent's input does not take it within `within` (a host cut
    /// off the network).
    pub async fn tell<A: Ask>(&self, request: A, within: std::time::Duration) -> Result<()> {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut line = serde_json::to_string(&RequestLine {
            id,
            request: request.into(),
        })?;
        line.push('\n');
        tokio::time::timeout(within, async {
            let mut stdin = self.stdin.lock().await;
            stdin.write_all(line.as_bytes()).await?;
            stdin.flush().await
        })
        .await
        .map_err(|_| anyhow!("the agent on {} takes nothing", self.host))?
        .with_context(|| format!("the agent on {} is gone", self.host))
    }

    /// Let go of an agent on a host that is down: nothing more is read from it (no late
    /// event of an old agent is taken for news), and nothing is waited for.
    pub fn abandon(self) {
        if let Some(reader) = self.reader.into_inner() {
            reader.abort();
        }
        if let Some(child) = self.child {
            let _ = child.into_inner().start_kill();
        }
    }

    /// Close the session: the agent exits when its input closes.
    pub async fn close(self) {
        let grace = std::time::Duration::from_secs(5);
        let _ = self.stdin.lock().await.shutdown().await;
        drop(self.stdin);
        if let Some(reader) = self.reader.lock().await.take() {
            let _ = tokio::time::timeout(grace, reader).await;
        }
        if let Some(child) = &self.child {
            let _ = tokio::time::timeout(grace, child.lock().await.wait()).await;
        }
    }
}

/// The binary to run as the agent (see [`crate::executable`]).
pub(crate) fn agent_executable() -> Result<std::path::PathBuf> {
    crate::executable::agent()
}
