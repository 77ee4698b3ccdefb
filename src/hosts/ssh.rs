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

/// Where binaries and the agent's log live on a host, relative to the login home.
pub const REMOTE_DIR: &str = ".cloud-orchestra";
/// The SFTP write size for uploads: large writes keep the round trips per megabyte few.
const UPLOAD_BUFFER: usize = 1 << 20;
/// Seconds one SFTP request may take before the upload is given up.
const SFTP_TIMEOUT_SECS: u64 = 120;

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
    /// The host's CPU is not the one this orchestra binary was built for, and no binary for
    /// it was installed by hand.
    #[error(
        "host {host} is {remote_arch} but this orchestra is built for {local_arch}, so it \
         cannot be uploaded; build orchestra {version} on {host} (`cargo install --path .` in \
         its source tree) and copy the binary to ~/{REMOTE_DIR}/bin/orchestra-{version} there"
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

/// A host's public key as read from the host itself, to be shown and (if the musician agrees)
/// written to known_hosts by [`trust`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKey {
    /// The host's name in the hosts file.
    pub host: String,
    /// `SHA256:…`, as `ssh-keygen -lf` and OpenSSH's prompts print it.
    pub fingerprint: String,
    /// The line for known_hosts: `10.77.3.12 ssh-ed25519 AAAA…` (`[addr]:port` when the port
    /// is not 22).
    pub known_hosts_line: String,
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

/// Read `host`'s public key without logging in (nothing is trusted, nothing runs there).
pub async fn probe_host_key(host: &Host, timeout: Duration) -> Result<HostKey, SshError> {
    let key = read_host_key(host, timeout).await?;
    Ok(host_key_of(host, &key))
}

/// Append the lines of `keys` that `known_hosts` does not hold yet; returns how many were
/// added. Creates the file (mode 600) and its directory (mode 700) when missing. Refuses,
/// touching nothing, when the file holds a *different* key of the same type for a host: that
/// line must be removed by hand first (see [`SshError::ChangedHostKey`]).
pub fn trust(known_hosts: &Path, keys: &[HostKey]) -> Result<usize, SshError> {
    let failed = |cause: String| SshError::KnownHosts {
        path: known_hosts.to_path_buf(),
        cause,
    };
    if let Some(dir) = known_hosts.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| failed(format!("cannot create {}: {e}", dir.display())))?;
    }
    let existing = match std::fs::read_to_string(known_hosts) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(failed(format!("cannot read it: {e}"))),
    };
    let mut new_lines: Vec<&str> = Vec::new();
    for key in keys {
        let (name, public) = parse_known_hosts_line(&key.known_hosts_line)
            .ok_or_else(|| failed(format!("bad key line {:?}", key.known_hosts_line)))?;
        let (address, port) = split_known_hosts_name(name);
        let known = known_hosts.exists()
            && russh::keys::check_known_hosts_path(&address, port, &public, known_hosts).map_err(
                |e| match e {
                    russh::keys::Error::KeyChanged { line } => SshError::ChangedHostKey {
                        host: key.host.clone(),
                        address: display_address(&address, port),
                        fingerprint: key.fingerprint.clone(),
                        known_hosts: known_hosts.to_path_buf(),
                        line: real_line(&existing, line),
                    },
                    other => failed(other.to_string()),
                },
            )?;
        if !known && !new_lines.contains(&key.known_hosts_line.as_str()) {
            new_lines.push(&key.known_hosts_line);
        }
    }
    if new_lines.is_empty() {
        return Ok(0);
    }
    let mut text = String::new();
    if !existing.is_empty() && !existing.ends_with('\n') {
        text.push('\n');
    }
    for line in &new_lines {
        text.push_str(line);
        text.push('\n');
    }
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(known_hosts)
        .map_err(|e| failed(format!("cannot open it for writing: {e}")))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| failed(format!("cannot write it: {e}")))?;
    Ok(new_lines.len())
}

/// Quote `word` for a POSIX shell: returned as is when it is made only of characters no shell
/// treats specially, else in single quotes (a `'` inside becomes `'\''`).
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-./,:@%+".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
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

    /// `uname -m` of the host (`x86_64`, `aarch64`, …), asked once per connection.
    pub async fn arch(&self) -> Result<String, SshError> {
        self.arch
            .get_or_try_init(|| async {
                let out = self.checked(&["uname", "-m"]).await?;
                Ok(out.trim().to_string())
            })
            .await
            .cloned()
    }

    /// The login user's home on the host, asked once per connection.
    pub async fn home(&self) -> Result<String, SshError> {
        self.home
            .get_or_try_init(|| async {
                let out = self.exec(r#"printf %s "$HOME""#).await?;
                let home = out.stdout_text();
                if !out.success() || !home.starts_with('/') {
                    return Err(SshError::CommandFailed {
                        host: self.name.clone(),
                        command: "printf %s \"$HOME\"".into(),
                        status: out.status_text(),
                        stderr: format!("no usable $HOME ({home:?}) {}", out.stderr_text()),
                    });
                }
                Ok(home)
            })
            .await
            .cloned()
    }

    /// Make sure the host has this orchestra binary and return its absolute path there:
    /// `~/.cloud-orchestra/bin/orchestra-<version>-<first 12 hex of the sha256 of local>`.
    ///
    /// Nothing is sent when that file is already there and executable. Otherwise, when the
    /// host's CPU matches this build, the binary is uploaded over SFTP (with its debug
    /// sections stripped by `objcopy --strip-debug` when objcopy is available: a debug build
    /// shrinks about eightfold) to a temporary name, made executable and renamed into place,
    /// so a half-uploaded binary is never run. On another CPU, a binary installed by hand as
    /// `~/.cloud-orchestra/bin/orchestra-<version>` is used, else [`SshError::NoBinaryForArch`].
    pub async fn ensure_binary(&self, local: &Path, version: &str) -> Result<String, SshError> {
        if version.is_empty()
            || !version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
        {
            return Err(SshError::LocalFile {
                path: local.to_path_buf(),
                cause: format!("`{version}` is not a usable version string"),
            });
        }
        let digest = file_digest(local).await?;
        let home = self.home().await?;
        let dir = format!("{home}/{REMOTE_DIR}/bin");
        let path = format!("{dir}/orchestra-{version}-{}", &digest[..12]);
        if self.is_executable(&path).await? {
            return Ok(path);
        }
        let remote_arch = self.arch().await?;
        if !same_arch(&remote_arch, std::env::consts::ARCH) {
            let by_hand = format!("{dir}/orchestra-{version}");
            if self.is_executable(&by_hand).await? {
                return Ok(by_hand);
            }
            return Err(SshError::NoBinaryForArch {
                host: self.name.clone(),
                remote_arch,
                local_arch: std::env::consts::ARCH.into(),
                version: version.into(),
            });
        }
        let source = upload_source(local, &digest).await;
        let source_text = source.to_str().ok_or_else(|| SshError::LocalFile {
            path: source.clone(),
            cause: "the path is not UTF-8".into(),
        })?;
        self.checked(&["mkdir", "-p", &dir]).await?;
        let nonce = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let temporary = format!("{path}.part-{}-{nonce}", std::process::id());
        let started = Instant::now();
        let uploaded = self
            .client
            .upload_file(
                source_text,
                temporary.clone(),
                Some(SFTP_TIMEOUT_SECS),
                Some(UPLOAD_BUFFER),
                false,
            )
            .await;
        if let Err(e) = uploaded {
            let _ = self.run(&["rm", "-f", &temporary]).await;
            return Err(self.session_error(&format!("uploading {}", source.display()), e));
        }
        let bytes = std::fs::metadata(&source).map(|m| m.len()).unwrap_or(0);
        tracing::info!(
            host = %self.name,
            bytes,
            seconds = started.elapsed().as_secs_f64(),
            "uploaded the orchestra binary to {path}"
        );
        // Copied, not renamed: the SFTP server may still hold the uploaded file open for a
        // moment after the upload returns, and running a file open for writing fails with
        // ETXTBSY (seen: "bash: …/orchestra-…: Success"). The copy is a new file that `cp`
        // has closed; the rename keeps the install atomic.
        let copy = format!("{temporary}.x");
        let installed = async {
            self.checked(&["cp", &temporary, &copy]).await?;
            self.checked(&["chmod", "755", &copy]).await?;
            self.checked(&["mv", "-f", &copy, &path]).await?;
            self.checked(&["rm", "-f", &temporary]).await
        }
        .await;
        if let Err(e) = installed {
            let _ = self.run(&["rm", "-f", &temporary, &copy]).await;
            return Err(e);
        }
        Ok(path)
    }

    /// Start `<remote_binary> agent` on the host, its stderr appended to
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
            "mkdir -p {} && exec {} agent 2>>{}",
            shell_quote(&dir),
            shell_quote(remote_binary),
            shell_quote(&format!("{dir}/agent.log")),
        ))
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

type BoxedRead = Pin<Box<dyn AsyncRead + Send>>;
type BoxedWrite = Pin<Box<dyn AsyncWrite + Send>>;

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

/// Records the key a server presents and refuses it, ending the handshake there.
struct KeyCatcher {
    key: Arc<Mutex<Option<PublicKey>>>,
}

impl russh::client::Handler for KeyCatcher {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKey) -> Result<bool, Self::Error> {
        *self.key.lock().expect("key lock") = Some(key.clone());
        Ok(false)
    }
}

/// Read the host's key: a handshake that stops at the key check.
async fn read_host_key(host: &Host, timeout: Duration) -> Result<PublicKey, SshError> {
    let seen = Arc::new(Mutex::new(None));
    let catcher = KeyCatcher { key: seen.clone() };
    let address = display_address(&host.address, host.port);
    let unreachable = |cause: String| SshError::Unreachable {
        host: host.name.clone(),
        address: address.clone(),
        cause,
    };
    let attempt = tokio::time::timeout(
        timeout,
        russh::client::connect(
            Arc::new(client_config()),
            (host.address.as_str(), host.port),
            catcher,
        ),
    )
    .await;
    if let Some(key) = seen.lock().expect("key lock").take() {
        return Ok(key);
    }
    Err(match attempt {
        Err(_) => unreachable(format!("no SSH handshake within {timeout:?}")),
        Ok(Err(russh::Error::IO(e))) => unreachable(e.to_string()),
        Ok(Err(e)) => SshError::Session {
            host: host.name.clone(),
            doing: "reading the host key".into(),
            cause: e.to_string(),
        },
        Ok(Ok(_)) => SshError::Session {
            host: host.name.clone(),
            doing: "reading the host key".into(),
            cause: "the handshake ended without a host key".into(),
        },
    })
}

/// Why the host key check failed: read the key and compare it with known_hosts ourselves.
async fn host_key_error(host: &Host, known_hosts: &Path, timeout: Duration) -> SshError {
    let key = match read_host_key(host, timeout).await {
        Ok(key) => key,
        Err(e) => return e,
    };
    let fingerprint = fingerprint(&key);
    let address = display_address(&host.address, host.port);
    match russh::keys::check_known_hosts_path(&host.address, host.port, &key, known_hosts) {
        Ok(false) => SshError::UnknownHostKey {
            host: host.name.clone(),
            address,
            fingerprint,
            known_hosts: known_hosts.to_path_buf(),
        },
        Err(russh::keys::Error::KeyChanged { line }) => {
            let text = std::fs::read_to_string(known_hosts).unwrap_or_default();
            SshError::ChangedHostKey {
                host: host.name.clone(),
                address,
                fingerprint,
                known_hosts: known_hosts.to_path_buf(),
                line: real_line(&text, line),
            }
        }
        Err(e) => SshError::KnownHosts {
            path: known_hosts.to_path_buf(),
            cause: e.to_string(),
        },
        // Trusted in the meantime (another `orchestra trust`?): still, this attempt failed.
        Ok(true) => SshError::Session {
            host: host.name.clone(),
            doing: "checking the host key".into(),
            cause: format!("the key {fingerprint} was refused but is now trusted"),
        },
    }
}

fn host_key_of(host: &Host, key: &PublicKey) -> HostKey {
    let openssh = key.to_openssh().unwrap_or_default();
    // `type base64 [comment]`: known_hosts takes the first two.
    let type_and_blob: Vec<&str> = openssh.split_whitespace().take(2).collect();
    HostKey {
        host: host.name.clone(),
        fingerprint: fingerprint(key),
        known_hosts_line: format!(
            "{} {}",
            known_hosts_name(&host.address, host.port),
            type_and_blob.join(" ")
        ),
    }
}

fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// How known_hosts names a host: `address` for port 22, `[address]:port` otherwise.
fn known_hosts_name(address: &str, port: u16) -> String {
    if port == 22 {
        address.to_string()
    } else {
        format!("[{address}]:{port}")
    }
}

/// The inverse of [`known_hosts_name`].
fn split_known_hosts_name(name: &str) -> (String, u16) {
    if let Some(rest) = name.strip_prefix('[') {
        if let Some((address, port)) = rest.split_once("]:") {
            if let Ok(port) = port.parse() {
                return (address.to_string(), port);
            }
        }
    }
    (name.to_string(), 22)
}

/// `address:port` for messages (`[v6]:port` for IPv6 literals).
fn display_address(address: &str, port: u16) -> String {
    if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

fn parse_known_hosts_line(line: &str) -> Option<(&str, PublicKey)> {
    let mut fields = line.split_whitespace();
    let name = fields.next()?;
    let _kind = fields.next()?;
    let key = russh::keys::parse_public_key_base64(fields.next()?).ok()?;
    Some((name, key))
}

/// russh numbers known_hosts lines without counting `#` comment lines; turn its number into
/// the file's real 1-based line number, so the message points at the right line.
fn real_line(text: &str, russh_line: usize) -> usize {
    let mut counted = 0;
    for (index, line) in text.split('\n').enumerate() {
        if !line.starts_with('#') {
            counted += 1;
            if counted == russh_line {
                return index + 1;
            }
        }
    }
    russh_line
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

/// Whether `uname -m` names the same CPU as Rust's `std::env::consts::ARCH`.
fn same_arch(uname: &str, rust_arch: &str) -> bool {
    match rust_arch {
        "aarch64" => matches!(uname, "aarch64" | "arm64" | "aarch64_be"),
        "x86" => matches!(uname, "i386" | "i486" | "i586" | "i686"),
        other => uname == other,
    }
}

type DigestKey = (PathBuf, u64, Option<SystemTime>);

/// sha256 (hex) of a local file, remembered per (path, size, mtime): connecting to many hosts
/// hashes the ~120 MB binary once.
async fn file_digest(path: &Path) -> Result<String, SshError> {
    static DIGESTS: LazyLock<Mutex<HashMap<DigestKey, String>>> = LazyLock::new(Default::default);
    let failed = |e: io::Error| SshError::LocalFile {
        path: path.to_path_buf(),
        cause: format!("cannot read it: {e}"),
    };
    let meta = std::fs::metadata(path).map_err(failed)?;
    let key = (path.to_path_buf(), meta.len(), meta.modified().ok());
    if let Some(digest) = DIGESTS.lock().expect("digest lock").get(&key) {
        return Ok(digest.clone());
    }
    let remembered = digest_cache_file(&key).ok();
    if let Some(text) = remembered
        .as_ref()
        .and_then(|f| std::fs::read_to_string(f).ok())
    {
        if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            DIGESTS
                .lock()
                .expect("digest lock")
                .insert(key, text.clone());
            return Ok(text);
        }
    }
    let owned = path.to_path_buf();
    let digest = tokio::task::spawn_blocking(move || -> io::Result<String> {
        let mut file = std::fs::File::open(&owned)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect())
    })
    .await
    .map_err(|e| failed(io::Error::other(e)))?
    .map_err(failed)?;
    if let Some(file) = remembered {
        let temporary = file.with_extension(format!("{}", std::process::id()));
        if std::fs::write(&temporary, &digest).is_ok() {
            let _ = std::fs::rename(&temporary, &file);
        }
    }
    DIGESTS
        .lock()
        .expect("digest lock")
        .insert(key, digest.clone());
    Ok(digest)
}

/// What to upload for `local`: a copy without debug sections when objcopy can make one
/// (cached per digest in a private temp directory), else the file itself.
async fn upload_source(local: &Path, digest: &str) -> PathBuf {
    // One strip at a time: hosts come up in parallel, and several objcopy runs writing the
    // same temporary copy at once could hand a host a torn binary.
    static STRIPPING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one_at_a_time = STRIPPING.lock().await;
    let owned = local.to_path_buf();
    let digest = digest.to_string();
    let stripped = tokio::task::spawn_blocking(move || strip_debug(&owned, &digest)).await;
    match stripped {
        Ok(Ok(path)) => path,
        Ok(Err(e)) => {
            tracing::debug!("uploading {} as it is: {e}", local.display());
            local.to_path_buf()
        }
        Err(e) => {
            tracing::debug!("uploading {} as it is: {e}", local.display());
            local.to_path_buf()
        }
    }
}

/// This user's private cache directory (mode 700, checked): stripped binaries and digests.
fn private_cache_dir() -> io::Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let uid = unsafe { libc::geteuid() };
    let dir = std::env::temp_dir().join(format!("cloud-orchestra-{uid}"));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    let meta = std::fs::metadata(&dir)?;
    if meta.uid() != uid || meta.permissions().mode() & 0o077 != 0 {
        return Err(io::Error::other(format!(
            "{} is not private to this user",
            dir.display()
        )));
    }
    Ok(dir)
}

/// Where the digest of a file at this path, size and modification time is remembered
/// between runs: hashing a 200 MB debug build took ~0.4 s of every run's start.
fn digest_cache_file(key: &DigestKey) -> io::Result<PathBuf> {
    let name = Sha256::digest(format!("{}\0{}\0{:?}", key.0.display(), key.1, key.2).as_bytes());
    let name: String = name.iter().take(8).map(|b| format!("{b:02x}")).collect();
    Ok(private_cache_dir()?.join(format!("digest-{name}")))
}

fn strip_debug(local: &Path, digest: &str) -> io::Result<PathBuf> {
    let dir = private_cache_dir()?;
    let stripped = dir.join(format!("orchestra-{}-stripped", &digest[..16]));
    if stripped.is_file() {
        return Ok(stripped);
    }
    let temporary = dir.join(format!(".strip-{}-{}", std::process::id(), &digest[..16]));
    let status = std::process::Command::new("objcopy")
        .arg("--strip-debug")
        .arg(local)
        .arg(&temporary)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()?;
    if !status.success() {
        let _ = std::fs::remove_file(&temporary);
        return Err(io::Error::other(format!("objcopy --strip-debug: {status}")));
    }
    std::fs::rename(&temporary, &stripped)?;
    prune_stripped(&dir, &stripped);
    Ok(stripped)
}

/// Every rebuild leaves a stripped copy (~20 MB): drop those of other builds not made within
/// the last hour (a controller that still wants one strips its binary again).
fn prune_stripped(dir: &Path, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(3600));
        if path != keep && name.starts_with("orchestra-") && name.ends_with("-stripped") && stale {
            let _ = std::fs::remove_file(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_words_stay_as_they_are() {
        for word in ["ls", "-la", "/usr/bin/x", "a.b,c:d@e%f+g_h", "10.0.0.1"] {
            assert_eq!(shell_quote(word), word);
        }
    }

    #[test]
    fn anything_else_is_single_quoted() {
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("c'd"), r"'c'\''d'");
        assert_eq!(shell_quote("$HOME;rm -rf /"), "'$HOME;rm -rf /'");
        assert_eq!(shell_quote("line\nbreak"), "'line\nbreak'");
        assert_eq!(shell_quote("~"), "'~'");
        assert_eq!(shell_quote("a=b"), "'a=b'");
        assert_eq!(shell_quote("'"), r"''\'''");
    }

    #[test]
    fn quoted_words_come_back_verbatim_from_sh() {
        let words = [
            "a b",
            "c'd",
            "$x ${y} `z` $(w)",
            ";|&<>(){}[]*?!#~=",
            "new\nline",
            "tab\there",
            "\"dq\"",
            "",
            "\\back\\slash",
            "ünï",
        ];
        let script = format!(
            "printf '%s\\0' {}",
            words
                .iter()
                .map(|w| shell_quote(w))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let out = std::process::Command::new("sh")
            .args(["-c", &script])
            .output()
            .unwrap();
        assert!(out.status.success());
        let back: Vec<&str> = std::str::from_utf8(&out.stdout)
            .unwrap()
            .split_terminator('\0')
            .collect();
        assert_eq!(back, words);
    }

    #[test]
    fn known_hosts_names_round_trip() {
        assert_eq!(known_hosts_name("10.0.0.1", 22), "10.0.0.1");
        assert_eq!(known_hosts_name("10.0.0.1", 2222), "[10.0.0.1]:2222");
        assert_eq!(
            split_known_hosts_name("[10.0.0.1]:2222"),
            ("10.0.0.1".into(), 2222)
        );
        assert_eq!(
            split_known_hosts_name("h.example"),
            ("h.example".into(), 22)
        );
        assert_eq!(display_address("10.0.0.1", 22), "10.0.0.1:22");
        assert_eq!(display_address("::1", 22), "[::1]:22");
    }

    #[test]
    fn russh_line_numbers_are_mapped_past_comments() {
        let text = "# a comment\na k1\n# another\n\nb k2\n";
        assert_eq!(real_line(text, 1), 2);
        assert_eq!(real_line(text, 2), 4);
        assert_eq!(real_line(text, 3), 5);
    }

    #[test]
    fn arch_names() {
        assert!(same_arch("x86_64", "x86_64"));
        assert!(same_arch("arm64", "aarch64"));
        assert!(!same_arch("aarch64", "x86_64"));
    }
}
