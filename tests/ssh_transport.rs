//! The SSH transport (`hosts::ssh`) against real sshds in a lab of hosts: host key checking,
//! parallel connects, argument quoting, binary upload, an agent over a channel. Needs root.

#[path = "lab/mod.rs"]
mod lab;

use cloud_orchestra::hosts::ssh::{self, SshError, SshHost};
use cloud_orchestra::model::Host;
use cloud_orchestra::protocol::wire::{self, RequestLine};
use lab::{wait_until, Lab};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

const TIMEOUT: Duration = Duration::from_secs(5);

/// The orchestra host for a lab host, logging in with the lab's key.
fn host(lab: &Lab, name: &str) -> Host {
    let h = lab.host(name);
    Host {
        name: h.name.clone(),
        address: h.address.clone(),
        user: Some(h.user.clone()),
        port: h.port,
        cores: 1,
        identity: Some(lab.user_key().display().to_string()),
        local: false,
        jack: Default::default(),
        location: None,
    }
}

/// Run `f` to completion on a single-threaded runtime living in the lab's controller namespace.
fn in_controller<T: Send, F: Future<Output = T>>(lab: &Lab, f: impl FnOnce() -> F + Send) -> T {
    lab.in_controller_thread(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(300), f())
                    .await
                    .expect("the test's async part hung")
            })
    })
}

async fn connected(lab: &Lab, name: &str) -> SshHost {
    ssh::connect(&host(lab, name), &lab.known_hosts(), TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("connect to {name}: {e}"))
}

/// `SHA256:…` of a host's key as `ssh-keygen -lf` prints it.
fn keygen_fingerprint(lab: &Lab, name: &str) -> String {
    let public = lab
        .dir()
        .join(format!("host-{name}"))
        .join("ssh_host_ed25519_key.pub");
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(&public)
        .output()
        .unwrap();
    assert!(out.status.success(), "ssh-keygen -lf {public:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let fingerprint = text.split_whitespace().nth(1).unwrap().to_string();
    assert!(fingerprint.starts_with("SHA256:"), "{text}");
    fingerprint
}

/// How many logins `name`'s sshd has accepted so far.
fn accepted_logins(lab: &Lab, name: &str) -> usize {
    std::fs::read_to_string(lab.host(name).sshd_log())
        .unwrap_or_default()
        .matches("Accepted publickey")
        .count()
}

/// A fresh ed25519 key pair in `dir`; returns (private key path, public key blob).
fn fresh_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&path)
        .status()
        .unwrap()
        .success();
    assert!(ok, "ssh-keygen {name}");
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    (path, public.split_whitespace().nth(1).unwrap().to_string())
}

/// Await an agent read for at most 10 s.
async fn within<T>(read: impl Future<Output = std::io::Result<T>>, what: &str) -> T {
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .unwrap_or_else(|_| panic!("waited 10 s for {what}"))
        .unwrap_or_else(|e| panic!("reading {what}: {e}"))
}

/// Inode, mtime, size and mode of a file on the host.
async fn stat(host: &SshHost, path: &str) -> String {
    host.run(&["stat", "-c", "%i %Y %s %a", path])
        .await
        .unwrap()
        .stdout_text()
}

#[test]
fn three_hosts_at_once_and_arguments_arrive_verbatim() {
    let lab = Lab::build("sshpar", &["h1", "h2", "h3"]);
    let hosts: Vec<Host> = ["h1", "h2", "h3"].iter().map(|n| host(&lab, n)).collect();
    let nasty = [
        "a b",
        "c'd",
        "$HOME ${USER}",
        "`id` $(id)",
        "x;y && z || w",
        "a|b&c>d<e",
        "new\nline",
        "\ttab ",
        "\"double\"",
        "",
        "*",
        "~",
        "back\\slash\\n",
        "ünïcødé",
        "-n",
        "'",
        "''",
        "!event",
        "#hash",
    ];
    in_controller(&lab, || async {
        let results = ssh::connect_all(&hosts, &lab.known_hosts(), TIMEOUT).await;
        let names: Vec<&str> = results.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["h1", "h2", "h3"]);
        for (name, result) in results {
            let host = result.unwrap_or_else(|e| panic!("connect to {name}: {e}"));
            assert_eq!(host.name(), name);
            let out = host.run(&["hostname"]).await.unwrap();
            assert!(out.success(), "{out:?}");
            assert_eq!(out.stdout_text().trim(), name);

            // Each word through printf, NUL-terminated, comes back byte for byte.
            let mut argv = vec!["printf", "%s\\0"];
            argv.extend(nasty);
            let out = host.run(&argv).await.unwrap();
            assert!(out.success(), "{out:?}");
            let expected: Vec<u8> = nasty.iter().flat_map(|w| w.bytes().chain([0])).collect();
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&expected)
            );
            // And as positional parameters of `sh -c`.
            let mut argv = vec!["sh", "-c", r#"printf '%s|' "$0" "$@""#];
            argv.extend(nasty);
            let out = host.run(&argv).await.unwrap();
            let expected: String = nasty.iter().map(|w| format!("{w}|")).collect();
            assert_eq!(out.stdout_text(), expected);

            // Exit status and stderr are reported, not turned into errors.
            let out = host
                .run(&["sh", "-c", "echo to stderr >&2; exit 3"])
                .await
                .unwrap();
            assert_eq!(out.exit_status, Some(3));
            assert!(!out.success());
            assert_eq!(out.stderr_text(), "to stderr\n");
            let out = host.run(&["sh", "-c", "kill -TERM $$"]).await.unwrap();
            assert_eq!(
                (out.exit_status, out.exit_signal.as_deref()),
                (None, Some("TERM"))
            );
            assert_eq!(host.arch().await.unwrap(), std::env::consts::ARCH);
            assert_eq!(host.home().await.unwrap(), "/root");
        }
    });
}

#[test]
fn host_keys_unknown_changed_probed_and_trusted() {
    let lab = Lab::build("sshkeys", &["h1", "h2"]);
    let known = lab.known_hosts();
    in_controller(&lab, || async {
        // h2's key forgotten: refused before logging in, naming the key's fingerprint.
        lab.forget_key("h2");
        let logins = accepted_logins(&lab, "h2");
        let err = ssh::connect(&host(&lab, "h2"), &known, TIMEOUT)
            .await
            .expect_err("connected to h2 with its key unknown");
        let expected = keygen_fingerprint(&lab, "h2");
        match &err {
            SshError::UnknownHostKey {
                host,
                address,
                fingerprint,
                known_hosts,
            } => {
                assert_eq!(host, "h2");
                assert_eq!(address, &format!("{}:22", lab.host("h2").address));
                assert_eq!(fingerprint, &expected);
                assert_eq!(known_hosts, &known);
            }
            other => panic!("expected UnknownHostKey, got {other:?}"),
        }
        let message = err.to_string();
        eprintln!("{message}");
        assert!(message.contains(&expected), "{message}");
        assert!(message.contains("orchestra trust"), "{message}");
        assert_eq!(
            accepted_logins(&lab, "h2"),
            logins,
            "something logged in to h2"
        );

        // Probing reads the same key; trusting it appends one line, once.
        let key = ssh::probe_host_key(&host(&lab, "h2"), TIMEOUT)
            .await
            .unwrap();
        assert_eq!(key.host, "h2");
        assert_eq!(key.fingerprint, expected);
        let public =
            std::fs::read_to_string(lab.dir().join("host-h2/ssh_host_ed25519_key.pub")).unwrap();
        let blob = public.split_whitespace().nth(1).unwrap();
        assert_eq!(
            key.known_hosts_line,
            format!("{} ssh-ed25519 {blob}", lab.host("h2").address)
        );
        assert_eq!(ssh::trust(&known, std::slice::from_ref(&key)).unwrap(), 1);
        assert_eq!(ssh::trust(&known, std::slice::from_ref(&key)).unwrap(), 0);
        let text = std::fs::read_to_string(&known).unwrap();
        assert_eq!(text.matches(&key.known_hosts_line).count(), 1, "{text}");
        let h2 = connected(&lab, "h2").await;
        assert!(h2.run(&["true"]).await.unwrap().success());

        // trust() makes a missing file and directory, private.
        let fresh = lab.dir().join("new-dir/known_hosts");
        assert_eq!(ssh::trust(&fresh, std::slice::from_ref(&key)).unwrap(), 1);
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&fresh), 0o600);
        assert_eq!(mode(fresh.parent().unwrap()), 0o700);
        assert_eq!(
            std::fs::read_to_string(&fresh).unwrap(),
            format!("{}\n", key.known_hosts_line)
        );

        // A wrong key for h1 (after a comment line): refused as changed, on the right line.
        let (_, wrong) = fresh_key(lab.dir(), "impostor");
        let h1_address = lab.host("h1").address.clone();
        let mut lines = vec!["# hosts of the lab".to_string()];
        for line in text.lines() {
            if line.split_whitespace().next() == Some(h1_address.as_str()) {
                lines.push(format!("{h1_address} ssh-ed25519 {wrong}"));
            } else {
                lines.push(line.to_string());
            }
        }
        let wrong_line = 1 + lines
            .iter()
            .position(|l| l.contains(&wrong))
            .expect("h1's line");
        std::fs::write(&known, lines.join("\n") + "\n").unwrap();
        let logins = accepted_logins(&lab, "h1");
        let err = ssh::connect(&host(&lab, "h1"), &known, TIMEOUT)
            .await
            .expect_err("connected to h1 with a wrong key on file");
        match &err {
            SshError::ChangedHostKey {
                host,
                fingerprint,
                line,
                ..
            } => {
                assert_eq!(host, "h1");
                assert_eq!(fingerprint, &keygen_fingerprint(&lab, "h1"));
                assert_eq!(*line, wrong_line);
            }
            other => panic!("expected ChangedHostKey, got {other:?}"),
        }
        eprintln!("{err}");
        assert!(err.to_string().contains("man-in-the-middle"), "{err}");
        assert_eq!(accepted_logins(&lab, "h1"), logins);
        // Trusting h1's real key now is refused too: the wrong line must go first.
        let real = ssh::probe_host_key(&host(&lab, "h1"), TIMEOUT)
            .await
            .unwrap();
        let before = std::fs::read_to_string(&known).unwrap();
        let refused = ssh::trust(&known, &[real]);
        assert!(
            matches!(refused, Err(SshError::ChangedHostKey { line, .. }) if line == wrong_line),
            "{refused:?}"
        );
        assert_eq!(std::fs::read_to_string(&known).unwrap(), before);

        // A key the host does not accept: AuthFailed naming what was tried.
        let (other_key, _) = fresh_key(lab.dir(), "stranger");
        let mut stranger = host(&lab, "h2");
        stranger.identity = Some(other_key.display().to_string());
        let err = ssh::connect(&stranger, &known, TIMEOUT)
            .await
            .expect_err("logged in with a key h2 does not know");
        match &err {
            SshError::AuthFailed { host, user, tried } => {
                assert_eq!((host.as_str(), user.as_str()), ("h2", "root"));
                assert_eq!(tried.len(), 1, "{tried:?}");
                assert!(tried[0].contains("stranger"), "{tried:?}");
            }
            other => panic!("expected AuthFailed, got {other:?}"),
        }
        eprintln!("{err}");
    });
}

#[test]
fn unreachable_and_refused_hosts_fail_in_time() {
    let lab = Lab::build("sshdown", &["h1"]);
    in_controller(&lab, || async {
        // Nothing listens on this port: refused at once.
        let mut closed = host(&lab, "h1");
        closed.port = 2222;
        let err = ssh::connect(&closed, &lab.known_hosts(), TIMEOUT)
            .await
            .expect_err("connected to a closed port");
        assert!(
            matches!(&err, SshError::Unreachable { cause, .. } if cause.contains("refused")),
            "{err:?}"
        );
        eprintln!("{err}");

        lab.make_unreachable("h1");
        let timeout = Duration::from_secs(2);
        let started = Instant::now();
        let err = ssh::connect(&host(&lab, "h1"), &lab.known_hosts(), timeout)
            .await
            .expect_err("connected to a host cut off the network");
        let took = started.elapsed();
        eprintln!("{err} (after {took:?})");
        match &err {
            SshError::Unreachable { host, address, .. } => {
                assert_eq!(host, "h1");
                assert_eq!(address, &format!("{}:22", lab.host("h1").address));
            }
            other => panic!("expected Unreachable, got {other:?}"),
        }
        let probed = ssh::probe_host_key(&host(&lab, "h1"), timeout).await;
        assert!(
            matches!(probed, Err(SshError::Unreachable { .. })),
            "{probed:?}"
        );
        lab.make_reachable("h1");
    });
}

#[test]
fn binary_is_uploaded_once_and_serves_an_agent() {
    let lab = Lab::build("sshagent", &["h1"]);
    let local = Path::new(env!("CARGO_BIN_EXE_orchestra-agent"));
    let version = env!("CARGO_PKG_VERSION");
    let sha = Command::new("sha256sum").arg(local).output().unwrap();
    let sha = String::from_utf8(sha.stdout).unwrap();
    let expected_path = format!(
        "/root/.cloud-orchestra/bin/orchestra-agent-{version}-{}",
        &sha[..12]
    );
    in_controller(&lab, || async {
        let h1 = connected(&lab, "h1").await;
        let started = Instant::now();
        let path = h1.ensure_binary(local, version).await.unwrap();
        eprintln!(
            "first ensure_binary ({} MB local) took {:?}",
            std::fs::metadata(local).unwrap().len() / 1_000_000,
            started.elapsed()
        );
        assert_eq!(path, expected_path);
        let first = stat(&h1, &path).await;
        assert!(first.trim().ends_with(" 755"), "{first}");
        let started = Instant::now();
        assert_eq!(h1.ensure_binary(local, version).await.unwrap(), path);
        eprintln!("second ensure_binary took {:?}", started.elapsed());
        assert_eq!(stat(&h1, &path).await, first, "uploaded again");
        let listing = h1
            .run(&["ls", "-a", "/root/.cloud-orchestra/bin"])
            .await
            .unwrap()
            .stdout_text();
        assert_eq!(
            listing.lines().filter(|l| !l.starts_with('.')).count(),
            1,
            "{listing}"
        );
        assert!(!listing.contains(".part"), "{listing}");
        // A new connection finds it too.
        let again = connected(&lab, "h1").await;
        assert_eq!(again.ensure_binary(local, version).await.unwrap(), path);
        assert_eq!(stat(&again, &path).await, first);

        let out = h1.run(&[&path, "--version"]).await.unwrap();
        assert!(out.success(), "{out:?}");
        assert!(out.stdout_text().contains(version), "{out:?}");

        // The agent over a channel: a request goes in, its reply comes out.
        eprintln!("agent command: {}", h1.agent_command(&path).await.unwrap());
        let (mut stdout, mut stdin) = h1.open_agent(&path).await.unwrap();
        let request = serde_json::to_string(&RequestLine {
            id: 1,
            request: wire::Status {}.into(),
        })
        .unwrap();
        assert_eq!(request, r#"{"id":1,"op":"status"}"#);
        stdin
            .write_all(format!("{request}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
        let mut line = String::new();
        within(stdout.read_line(&mut line), "the agent's reply").await;
        let reply: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not a JSON line from the agent ({e}): {line:?}"));
        assert_eq!(reply["id"], 1, "{reply}");
        assert!(
            reply.get("ok").is_some() || reply.get("error").is_some(),
            "{reply}"
        );
        eprintln!("agent replied: {reply}");
        let agents = |lab: &Lab| -> Vec<u32> {
            lab.processes("h1")
                .into_iter()
                .filter(|p| p.args == path)
                .map(|p| p.pid)
                .collect()
        };
        let running = agents(&lab);
        assert_eq!(running.len(), 1, "{:#?}", lab.processes("h1"));

        // Closing stdin ends the agent, and its stdout with it.
        stdin.shutdown().await.unwrap();
        let mut rest = String::new();
        within(
            stdout.read_to_string(&mut rest),
            "the agent's stdout to end",
        )
        .await;
        let gone = wait_until(Duration::from_secs(10), || {
            agents(&lab).is_empty().then_some(())
        });
        assert!(gone.is_some(), "the agent outlived its stdin: {running:?}");

        // Dropping the writer closes stdin too.
        let (mut stdout, stdin) = h1.open_agent(&path).await.unwrap();
        let started = wait_until(Duration::from_secs(10), || {
            (!agents(&lab).is_empty()).then_some(())
        });
        assert!(started.is_some(), "second agent never started");
        drop(stdin);
        let mut rest = String::new();
        within(
            stdout.read_to_string(&mut rest),
            "the agent's stdout to end",
        )
        .await;
        let gone = wait_until(Duration::from_secs(10), || {
            agents(&lab).is_empty().then_some(())
        });
        assert!(gone.is_some(), "the agent outlived its dropped stdin");
        let log = h1
            .run(&["test", "-f", "/root/.cloud-orchestra/agent.log"])
            .await
            .unwrap();
        assert!(log.success(), "no agent.log");

        // Files come back over SFTP, relative to the home or absolute.
        lab.exec_ok("h1", "printf 'RIFF recording' > /root/take.wav");
        let local_copy = lab.dir().join("take.wav");
        h1.download("take.wav", &local_copy).await.unwrap();
        assert_eq!(std::fs::read(&local_copy).unwrap(), b"RIFF recording");
        h1.download("/root/take.wav", &local_copy).await.unwrap();
        let missing = lab.dir().join("missing.wav");
        let err = h1.download("no-such.wav", &missing).await.unwrap_err();
        eprintln!("{err}");
        assert!(!missing.exists());
        assert!(!lab.dir().join("missing.wav.part").exists());
    });
}
