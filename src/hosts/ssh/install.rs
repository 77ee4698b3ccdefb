//! The agent binary on a host: `orchestra-agent`, built beside this orchestra, stripped of
//! debug sections and uploaded over SFTP when the host has no copy of it (digests cached so a
//! warm start uploads nothing).

use super::*;

/// The SFTP write size for uploads: large writes keep the round trips per megabyte few.
pub(super) const UPLOAD_BUFFER: usize = 1 << 20;

/// Seconds one SFTP request may take before the upload is given up.
pub(super) const SFTP_TIMEOUT_SECS: u64 = 120;

impl SshHost {
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

    /// Make sure the host has this agent binary and return its absolute path there:
    /// `~/.cloud-orchestra/bin/orchestra-agent-<version>-<first 12 hex of the sha256 of local>`.
    ///
    /// Nothing is sent when that file is already there and executable. Otherwise, when the
    /// host's CPU matches this build, the binary is uploaded over SFTP (with its debug
    /// sections stripped by `objcopy --strip-debug` when objcopy is available: a debug build
    /// shrinks about eightfold) to a temporary name, made executable and renamed into place,
    /// so a half-uploaded binary is never run. On another CPU, a binary installed by hand as
    /// `~/.cloud-orchestra/bin/orchestra-agent-<version>` is used, else
    /// [`SshError::NoBinaryForArch`].
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
        let path = format!("{dir}/orchestra-agent-{version}-{}", &digest[..12]);
        if self.is_executable(&path).await? {
            return Ok(path);
        }
        let remote_arch = self.arch().await?;
        if !same_arch(&remote_arch, std::env::consts::ARCH) {
            let by_hand = format!("{dir}/orchestra-agent-{version}");
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
}

/// Whether `uname -m` names the same CPU as Rust's `std::env::consts::ARCH`.
pub(super) fn same_arch(uname: &str, rust_arch: &str) -> bool {
    match rust_arch {
        "aarch64" => matches!(uname, "aarch64" | "arm64" | "aarch64_be"),
        "x86" => matches!(uname, "i386" | "i486" | "i586" | "i686"),
        other => uname == other,
    }
}

pub(super) type DigestKey = (PathBuf, u64, Option<SystemTime>);

/// sha256 (hex) of a local file, remembered per (path, size, mtime): connecting to many hosts
/// hashes the ~120 MB binary once.
pub(super) async fn file_digest(path: &Path) -> Result<String, SshError> {
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
pub(super) async fn upload_source(local: &Path, digest: &str) -> PathBuf {
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
pub(super) fn private_cache_dir() -> io::Result<PathBuf> {
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
pub(super) fn digest_cache_file(key: &DigestKey) -> io::Result<PathBuf> {
    let name = Sha256::digest(format!("{}\0{}\0{:?}", key.0.display(), key.1, key.2).as_bytes());
    let name: String = name.iter().take(8).map(|b| format!("{b:02x}")).collect();
    Ok(private_cache_dir()?.join(format!("digest-{name}")))
}

pub(super) fn strip_debug(local: &Path, digest: &str) -> io::Result<PathBuf> {
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
pub(super) fn prune_stripped(dir: &Path, keep: &Path) {
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
    fn arch_names() {
        assert!(same_arch("x86_64", "x86_64"));
        assert!(same_arch("arm64", "aarch64"));
        assert!(!same_arch("aarch64", "x86_64"));
    }
}
