//! The SSH transport to remote hosts: connect with the host key checked against known_hosts,
//! run shell-quoted commands, install the orchestra binary, open an agent's stdin/stdout as one
//! long-lived channel, and fetch files (recordings) back.
//!
//! Built on async-ssh2-tokio (its `Client` does the connection, authentication, exec and SFTP);
//! russh is used directly only to read a host's key when it is not trusted (so errors can name
//! its fingerprint, as OpenSSH does) and for the raw channel of an agent.
//!
//! Every remote command line is assembled from [`shell_quote`]d words, so it assumes a POSIX
//! login shell on the host (sh, bash, dash, zsh), as OpenSSH's own `ssh host cmd` does.
//!
//! One file a concern: this one connects and runs commands; [`known_hosts`] checks and
//! records host keys; [`quote`] makes shell words; [`install`] puts this binary on a host;
//! [`channel`] is an agent's stdin/stdout over one SSH channel.

use async_ssh2_tokio::client::{AuthMethod, Client, ServerCheckMethod};
use russh::keys::{HashAlg, PublicKey};
use russh::ChannelMsg;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::OnceCell;

use crate::model::Host;

mod channel;
mod install;
mod known_hosts;
mod quote;

pub use channel::{AgentStdin, AgentStdout};
use known_hosts::*;
pub use known_hosts::{probe_host_key, trust, HostKey};
pub use quote::shell_quote;

/// Where binaries and the agent's log live on a host, relative to the login home.
pub const REMOTE_DIR: &str = ".cloud-orchestra";

/// Everything that can go wrong talking to a host, each saying which host and what to do.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// The host answered with a key that known_hosts does not list for it: never accepted
    /// silently; trusting it is the musician's explicit act.
    #[error(
        "host {host} ({address}): its key {fingerprint} is not in {known_hosts}; check the \
         fingerprint and run 'orchestra trust --hosts FILE' to accept it",
        known_hosts = .known_hosts.display()
    )]
    UnknownHostKey {
        /// The host's name in the hosts file.
        host: String,
        /// `address:port` that was dialled.
        address: String,
        /// The key the host presented, `SHA256:…` as `ssh-keygen -lf` prints it.
        fingerprint: String,
        /// The known_hosts file that was consulted.
        known_hosts: PathBuf,
    },
    /// known_hosts lists another key of the same type for this host: possibly an attack.
    #[error(
        "host {host} ({address}): WARNING: ITS HOST KEY HAS CHANGED. Someone could be \
         eavesdropping on you right now (man-in-the-middle attack), or the host key was just \
         changed (reinstalled host?). The host now presents {fingerprint}; line {line} of \
         {known_hosts} has another key. Not connecting. If you know why it changed, delete \
         line {line} of {known_hosts}, check the new fingerprint and run \
         'orchestra trust --hosts FILE'",
        known_hosts = .known_hosts.display()
    )]
    ChangedHostKey {
        /// The host's name in the hosts file.
        host: String,
        /// `address:port` that was dialled.
        address: String,
        /// The key the host presents now, `SHA256:…`.
        fingerprint: String,
        /// The known_hosts file that holds the old key.
        known_hosts: PathBuf,
        /// 1-based line of known_hosts with the key that no longer matches.
        line: usize,
    },
    /// No SSH conversation could be started: timeout, refused, no route, name not resolved.
    #[error(
        "host {host} ({address}) is unreachable: {cause}; check that it is up, that sshd runs \
         there and that the address and port in the hosts file are right"
    )]
    Unreachable {
        /// The host's name in the hosts file.
        host: String,
        /// `address:port` that was dialled.
        address: String,
        /// What the network said (or that it said nothing in time).
        cause: String,
    },
    /// Every authentication method was refused (or none was available).
    #[error(
        "host {host}: cannot log in as `{user}` (tried {tried}); add your public key to \
         ~{user}/.ssh/authorized_keys on {host}, or set `identity` in the hosts file to a key it \
         accepts",
        tried = .tried.join("; ")
    )]
    AuthFailed {
        /// The host's name in the hosts file.
        host: String,
        /// The login user.
        user: String,
        /// Each method tried and why it failed.
        tried: Vec<String>,
    },
    /// The known_hosts file could not be read or written.
    #[error("known_hosts file {}: {cause}; fix or remove the broken line", path.display())]
    KnownHosts {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        cause: String,
    },
    /// The connection failed at some step after login (channel, exec, SFTP).
    #[error(
        "host {host}: {doing} failed: {cause}; check that the host is still up (and that its \
         sshd offers the sftp subsystem), then try again"
    )]
    Session {
        /// The host's name in the hosts file.
        host: String,
        /// The step that failed.
        doing: String,
        /// The underlying error.
        cause: String,
    },
    /// A command that must succeed did not.
    #[error("host {host}: `{command}` failed ({status}): {stderr}")]
    CommandFailed {
        /// The host's name in the hosts file.
        host: String,
        /// The command line as sent.
        command: String,
        /// Its exit status or signal.
        status: String,
        /// The end of what it wrote to stderr.
        stderr: String,
    },
    /// The host's CPU is not the one this agent binary was built for, and no binary for it
    /// was installed by hand.
    #[error(
        "host {host} is {remote_arch} but this orchestra is built for {local_arch}, so its \
         agent cannot be uploaded; build orchestra {version} on {host} (`cargo build --release` \
         in its source tree) and copy target/release/orchestra-agent to \
         ~/{REMOTE_DIR}/bin/orchestra-agent-{version} there"
    )]
    NoBinaryForArch {
        /// The host's name in the hosts file.
        host: String,
        /// `uname -m` on the host.
        remote_arch: String,
        /// The architecture of this machine's build.
        local_arch: String,
        /// The orchestra version wanted.
        version: String,
    },
    /// A local file could not be read or written.
    #[error("{}: {cause}", path.display())]
    LocalFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        cause: String,
    },
}

/// What a remote command did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    /// Everything it wrote to stdout, byte for byte.
    pub stdout: Vec<u8>,
    /// Everything it wrote to stderr.
    pub stderr: Vec<u8>,
    /// Its exit status; `None` when it was killed by a signal.
    pub exit_status: Option<u32>,
    /// The signal that killed it (`TERM`, `KILL`, …), if one did.
    pub exit_signal: Option<String>,
}

impl Output {
    /// True when the command exited with status 0.
    pub fn success(&self) -> bool {
        self.exit_status == Some(0)
    }

    /// stdout as text (invalid UTF-8 replaced).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr as text (invalid UTF-8 replaced).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    fn status_text(&self) -> String {
        match (&self.exit_status, &self.exit_signal) {
            (Some(code), _) => format!("exit status {code}"),
            (None, Some(signal)) => format!("killed by SIG{signal}"),
            (None, None) => "no exit status".into(),
        }
    }
}

/// A logged-in SSH connection to one host. Cheap to share: commands, uploads and agent
/// channels each use a channel of their own on the one connection.
pub struct SshHost {
    /// The host's name in the hosts file: every error names it.
    name: String,
    /// The login user.
    user: String,
    /// `address:port`, for messages.
    address: String,
    client: Client,
    /// The login home, asked once (`printf %s "$HOME"`): remote paths are absolute.
    home: OnceCell<String>,
    /// `uname -m`, asked once.
    arch: OnceCell<String>,
}

impl std::fmt::Debug for SshHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshHost")
            .field("name", &self.name)
            .field("user", &self.user)
            .field("address", &self.address)
            .finish()
    }
}

/// Connect to `host` and log in.
///
/// The host key must be listed for `address` (or `[address]:port`) in `known_hosts`, plain or
/// hashed; otherwise this fails with [`SshError::UnknownHostKey`] or
/// [`SshError::ChangedHostKey`] before anything is sent to the host. Authentication tries the
/// host's `identity` file if it has one; otherwise the ssh-agent (when `SSH_AUTH_SOCK` is set),
/// then `~/.ssh/id_ed25519`, then `~/.ssh/id_rsa`. `timeout` bounds each attempt (TCP connect,
/// handshake and login).
pub async fn connect(
    host: &Host,
    known_hosts: &Path,
    timeout: Duration,
) -> Result<SshHost, SshError> {
    let user = match &host.user {
        Some(user) => user.clone(),
        None => current_user(),
    };
    let address = display_address(&host.address, host.port);
    let known_hosts_text = known_hosts.to_str().ok_or_else(|| SshError::KnownHosts {
        path: known_hosts.to_path_buf(),
        cause: "the path is not UTF-8".into(),
    })?;
    let (methods, mut tried) = auth_methods(host);
    if methods.is_empty() {
        return Err(SshError::AuthFailed {
            host: host.name.clone(),
            user,
            tried,
        });
    }
    for (label, auth) in methods {
        let attempt = tokio::time::timeout(
            timeout,
            Client::connect_with_config(
                (host.address.clone(), host.port),
                &user,
                auth,
                ServerCheckMethod::KnownHostsFile(known_hosts_text.to_string()),
                client_config(),
            ),
        )
        .await;
        let error = match attempt {
            Ok(Ok(client)) => {
                tracing::debug!(host = %host.name, %address, %user, method = %label, "ssh: logged in");
                return Ok(SshHost {
                    name: host.name.clone(),
                    user,
                    address,
                    client,
                    home: OnceCell::new(),
                    arch: OnceCell::new(),
                });
            }
            Ok(Err(e)) => e,
            Err(_) => {
                return Err(SshError::Unreachable {
                    host: host.name.clone(),
                    address,
                    cause: format!("no SSH handshake within {timeout:?}"),
                })
            }
        };
        use async_ssh2_tokio::Error as E;
        match error {
            // The handler refused the key (unknown: Ok(false) → UnknownKey) or could not
            // check it (changed key, unreadable file → ServerCheckFailed). Read the key
            // again to say which, with its fingerprint.
            E::ServerCheckFailed | E::SshError(russh::Error::UnknownKey) => {
                return Err(host_key_error(host, known_hosts, timeout).await);
            }
            E::SshError(russh::Error::IO(e)) => {
                return Err(SshError::Unreachable {
                    host: host.name.clone(),
                    address,
                    cause: e.to_string(),
                });
            }
            E::AddressInvalid(e) => {
                return Err(SshError::Unreachable {
                    host: host.name.clone(),
                    address,
                    cause: format!("cannot resolve the address: {e}"),
                });
            }
            E::KeyAuthFailed
            | E::KeyInvalid(_)
            | E::AgentAuthError(_)
            | E::AgentConnectionFailed
            | E::AgentRequestIdentitiesFailed
            | E::AgentNoIdentities
            | E::AgentAuthenticationFailed => {
                tracing::debug!(host = %host.name, method = %label, "ssh: {error}");
                tried.push(format!("{label}: {}", auth_failure_text(&error)));
            }
            other => {
                return Err(SshError::Session {
                    host: host.name.clone(),
                    doing: "the SSH handshake".into(),
                    cause: other.to_string(),
                })
            }
        }
    }
    Err(SshError::AuthFailed {
        host: host.name.clone(),
        user,
        tried,
    })
}

/// Connect to every host at once; results in the order of `hosts`, each with its host's name.
pub async fn connect_all(
    hosts: &[Host],
    known_hosts: &Path,
    timeout: Duration,
) -> Vec<(String, Result<SshHost, SshError>)> {
    let tasks: Vec<_> = hosts
        .iter()
        .map(|host| {
            let host = host.clone();
            let known_hosts = known_hosts.to_path_buf();
            tokio::spawn(async move { connect(&host, &known_hosts, timeout).await })
        })
        .collect();
    let mut results = Vec::with_capacity(hosts.len());
    for (host, task) in hosts.iter().zip(tasks) {
        let result = task.await.unwrap_or_else(|e| {
            Err(SshError::Session {
                host: host.name.clone(),
                doing: "connecting".into(),
                cause: format!("the connecting task failed: {e}"),
            })
        });
        results.push((host.name.clone(), result));
    }
    results
}

impl SshHost {
    /// The host's name in the hosts file.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The login user.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Run `argv` on the host (every word shell-quoted, so it arrives verbatim) with empty
    /// stdin, and collect its output. A non-zero exit is not an error here: see
    /// [`Output::success`].
    pub async fn run(&self, argv: &[&str]) -> Result<Output, SshError> {
        let command: Vec<String> = argv.iter().map(|word| shell_quote(word)).collect();
        self.exec(&command.join(" ")).await
    }

    /// Copy the host's file `remote` (absolute, or relative to the login home) to `local`
    /// over SFTP. `local` appears complete or not at all (written aside, then renamed).
    pub async fn download(&self, remote: &str, local: &Path) -> Result<(), SshError> {
        let mut partial = local.as_os_str().to_owned();
        partial.push(".part");
        let partial = PathBuf::from(partial);
        if let Err(e) = self.client.download_file(remote, &partial).await {
            let _ = std::fs::remove_file(&partial);
            return Err(self.session_error(&format!("downloading {remote}"), e));
        }
        std::fs::rename(&partial, local).map_err(|e| SshError::LocalFile {
            path: local.to_path_buf(),
            cause: format!("cannot move the download into place: {e}"),
        })
    }

    /// Close the connection (channels still open end with it).
    pub async fn disconnect(&self) {
        let _ = self.client.disconnect().await;
    }

    /// Run one command line as given (already quoted) with empty stdin.
    async fn exec(&self, command: &str) -> Result<Output, SshError> {
        let doing = || format!("running `{command}`");
        let mut channel = self
            .client
            .get_channel()
            .await
            .map_err(|e| self.session_error(&doing(), e))?;
        channel
            .exec(true, command.as_bytes())
            .await
            .map_err(|e| self.session_error(&doing(), e))?;
        channel
            .eof()
            .await
            .map_err(|e| self.session_error(&doing(), e))?;
        let mut out = Output::default();
        while let Some(msg) = channel.wait().await {
            match msg {
                ChannelMsg::Data { data } => out.stdout.extend_from_slice(&data),
                ChannelMsg::ExtendedData { data, ext: 1 } => out.stderr.extend_from_slice(&data),
                ChannelMsg::ExitStatus { exit_status } => out.exit_status = Some(exit_status),
                ChannelMsg::ExitSignal { signal_name, .. } => {
                    out.exit_signal = Some(signal_text(&signal_name))
                }
                ChannelMsg::Failure => {
                    return Err(SshError::Session {
                        host: self.name.clone(),
                        doing: doing(),
                        cause: "sshd refused to run the command".into(),
                    })
                }
                _ => {}
            }
        }
        if out.exit_status.is_none() && out.exit_signal.is_none() {
            return Err(SshError::Session {
                host: self.name.clone(),
                doing: doing(),
                cause: "the channel closed without an exit status (connection lost?)".into(),
            });
        }
        Ok(out)
    }

    /// [`SshHost::run`] that must succeed; returns stdout as text.
    async fn checked(&self, argv: &[&str]) -> Result<String, SshError> {
        let out = self.run(argv).await?;
        if out.success() {
            return Ok(out.stdout_text());
        }
        let stderr = out.stderr_text();
        let tail: String = stderr.trim().chars().rev().take(2000).collect();
        Err(SshError::CommandFailed {
            host: self.name.clone(),
            command: argv
                .iter()
                .map(|w| shell_quote(w))
                .collect::<Vec<_>>()
                .join(" "),
            status: out.status_text(),
            stderr: tail.chars().rev().collect(),
        })
    }

    async fn is_executable(&self, path: &str) -> Result<bool, SshError> {
        Ok(self
            .run(&["test", "-f", path, "-a", "-x", path])
            .await?
            .success())
    }

    fn session_error(&self, doing: &str, e: impl std::fmt::Display) -> SshError {
        SshError::Session {
            host: self.name.clone(),
            doing: doing.into(),
            cause: e.to_string(),
        }
    }
}

fn client_config() -> russh::client::Config {
    russh::client::Config {
        // Agent channels are long-lived and quiet: notice a dead host within about a minute.
        keepalive_interval: Some(Duration::from_secs(15)),
        keepalive_max: 3,
        // JSON lines are small; do not let Nagle hold them back.
        nodelay: true,
        ..Default::default()
    }
}

/// The methods to try, in order, each with a label for messages, and notes on what could not
/// even be tried.
fn auth_methods(host: &Host) -> (Vec<(String, AuthMethod)>, Vec<String>) {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let mut methods = Vec::new();
    let mut notes = Vec::new();
    if let Some(identity) = &host.identity {
        let path = match (identity.strip_prefix("~/"), &home) {
            (Some(rest), Some(home)) => home.join(rest),
            _ => PathBuf::from(identity),
        };
        if path.is_file() {
            methods.push((
                format!("identity {}", path.display()),
                AuthMethod::with_key_file(&path, None),
            ));
        } else {
            notes.push(format!("identity {}: no such file", path.display()));
        }
        return (methods, notes);
    }
    if std::env::var_os("SSH_AUTH_SOCK").is_some() {
        methods.push(("the ssh-agent".into(), AuthMethod::with_agent()));
    } else {
        notes.push("the ssh-agent: SSH_AUTH_SOCK is not set".into());
    }
    for name in ["id_ed25519", "id_rsa"] {
        let Some(home) = &home else { continue };
        let path = home.join(".ssh").join(name);
        if path.is_file() {
            methods.push((
                path.display().to_string(),
                AuthMethod::with_key_file(&path, None),
            ));
        } else {
            notes.push(format!("{}: no such file", path.display()));
        }
    }
    (methods, notes)
}

fn auth_failure_text(error: &async_ssh2_tokio::Error) -> String {
    use async_ssh2_tokio::Error as E;
    match error {
        E::KeyAuthFailed => "refused by the host".into(),
        E::KeyInvalid(e) => format!(
            "cannot load the key ({e}); a key with a passphrase must be added to the ssh-agent"
        ),
        E::AgentNoIdentities => "the agent holds no keys".into(),
        E::AgentAuthenticationFailed => "no agent key was accepted".into(),
        other => other.to_string(),
    }
}

fn current_user() -> String {
    for var in ["USER", "LOGNAME"] {
        if let Ok(user) = std::env::var(var) {
            if !user.is_empty() {
                return user;
            }
        }
    }
    // SAFETY: getpwuid_r writes into the buffers given; the result is read only on success.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 4096];
        let mut result = std::ptr::null_mut();
        if libc::getpwuid_r(
            libc::geteuid(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        ) == 0
            && !result.is_null()
        {
            return std::ffi::CStr::from_ptr(pwd.pw_name)
                .to_string_lossy()
                .into_owned();
        }
    }
    "root".into()
}

fn signal_text(signal: &russh::Sig) -> String {
    match signal {
        russh::Sig::Custom(name) => name.clone(),
        other => format!("{other:?}"),
    }
}
