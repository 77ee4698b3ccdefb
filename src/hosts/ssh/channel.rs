//! An agent over SSH: its stdin and stdout as one long-lived channel of the connection.

use super::*;

impl SshHost {
    /// Start `<remote_binary>` (the agent) on the host, its stderr appended to
    /// `~/.cloud-orchestra/agent.log`, and return its stdout (JSON lines from the agent) and
    /// stdin (JSON lines to it). Shutting the writer down — or dropping it — sends EOF, and the
    /// agent exits when its stdin closes. Both halves keep the connection open while they live.
    pub async fn open_agent(
        &self,
        remote_binary: &str,
    ) -> Result<(AgentStdout, AgentStdin), SshError> {
        let command = self.agent_command(remote_binary).await?;
        let mut channel = self
            .client
            .get_channel()
            .await
            .map_err(|e| self.session_error("opening a channel for the agent", e))?;
        channel
            .exec(true, command.as_bytes())
            .await
            .map_err(|e| self.session_error("starting the agent", e))?;
        // Wait for sshd's answer to the exec request; keep any output that comes first.
        let mut early = Vec::new();
        loop {
            match channel.wait().await {
                Some(ChannelMsg::Success) => break,
                Some(ChannelMsg::Data { data }) => early.extend_from_slice(&data),
                Some(ChannelMsg::Failure) => {
                    return Err(SshError::Session {
                        host: self.name.clone(),
                        doing: format!("starting the agent ({command})"),
                        cause: "sshd refused to run the command".into(),
                    })
                }
                Some(_) => {}
                None => {
                    return Err(SshError::Session {
                        host: self.name.clone(),
                        doing: format!("starting the agent ({command})"),
                        cause: "the channel closed at once".into(),
                    })
                }
            }
        }
        let writer = channel.make_writer();
        let reader = AsyncReadExt::chain(std::io::Cursor::new(early), channel.into_stream());
        Ok((
            AgentStdout {
                inner: BufReader::new(Box::pin(reader)),
                _client: self.client.clone(),
            },
            AgentStdin {
                inner: Some(Box::pin(writer)),
                _client: self.client.clone(),
            },
        ))
    }

    /// The exact command line [`SshHost::open_agent`] runs for `remote_binary`.
    pub async fn agent_command(&self, remote_binary: &str) -> Result<String, SshError> {
        let home = self.home().await?;
        let dir = format!("{home}/{REMOTE_DIR}");
        // `exec`: the agent replaces the shell, so EOF on the channel reaches it directly.
        Ok(format!(
            "mkdir -p {} && exec {} 2>>{}",
            shell_quote(&dir),
            shell_quote(remote_binary),
            shell_quote(&format!("{dir}/agent.log")),
        ))
    }
}

pub(super) type BoxedRead = Pin<Box<dyn AsyncRead + Send>>;

pub(super) type BoxedWrite = Pin<Box<dyn AsyncWrite + Send>>;

/// The agent's stdout over SSH: JSON lines from the agent. Ends when the agent exits.
pub struct AgentStdout {
    inner: BufReader<BoxedRead>,
    /// Keeps the connection up while the agent is read.
    _client: Client,
}

impl AsyncRead for AgentStdout {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncBufRead for AgentStdout {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        Pin::new(&mut self.get_mut().inner).poll_fill_buf(cx)
    }

    fn consume(mut self: Pin<&mut Self>, amt: usize) {
        Pin::new(&mut self.inner).consume(amt)
    }
}

/// The agent's stdin over SSH. `shutdown()` sends EOF; so does dropping it (from a task, when
/// inside a tokio runtime), and the agent exits when its stdin closes.
pub struct AgentStdin {
    /// `None` once EOF was sent.
    inner: Option<BoxedWrite>,
    /// Keeps the connection up while the agent is written to.
    _client: Client,
}

impl AsyncWrite for AgentStdin {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.inner.as_mut() {
            Some(inner) => inner.as_mut().poll_write(cx, buf),
            None => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the agent's stdin is closed",
            ))),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.inner.as_mut() {
            Some(inner) => inner.as_mut().poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let result = std::task::ready!(inner.as_mut().poll_shutdown(cx));
        self.inner = None;
        Poll::Ready(result)
    }
}

impl Drop for AgentStdin {
    fn drop(&mut self) {
        if let Some(mut inner) = self.inner.take() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = inner.shutdown().await;
                });
            }
        }
    }
}
