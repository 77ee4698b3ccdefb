//! Host keys: read a host's key, check it against known_hosts (plain or hashed names), say
//! which key a refusal is about, and record the keys the musician trusts.

use super::*;

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

/// Records the key a server presents and refuses it, ending the handshake there.
pub(super) struct KeyCatcher {
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
pub(super) async fn read_host_key(host: &Host, timeout: Duration) -> Result<PublicKey, SshError> {
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
pub(super) async fn host_key_error(host: &Host, known_hosts: &Path, timeout: Duration) -> SshError {
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

pub(super) fn host_key_of(host: &Host, key: &PublicKey) -> HostKey {
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

pub(super) fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// How known_hosts names a host: `address` for port 22, `[address]:port` otherwise.
pub(super) fn known_hosts_name(address: &str, port: u16) -> String {
    if port == 22 {
        address.to_string()
    } else {
        format!("[{address}]:{port}")
    }
}

/// The inverse of [`known_hosts_name`].
pub(super) fn split_known_hosts_name(name: &str) -> (String, u16) {
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
pub(super) fn display_address(address: &str, port: u16) -> String {
    if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

pub(super) fn parse_known_hosts_line(line: &str) -> Option<(&str, PublicKey)> {
    let mut fields = line.split_whitespace();
    let name = fields.next()?;
    let _kind = fields.next()?;
    let key = russh::keys::parse_public_key_base64(fields.next()?).ok()?;
    Some((name, key))
}

/// russh numbers known_hosts lines without counting `#` comment lines; turn its number into
/// the file's real 1-based line number, so the message points at the right line.
pub(super) fn real_line(text: &str, russh_line: usize) -> usize {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
