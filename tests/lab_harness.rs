//! The test lab itself (tests/lab): hosts that are separate where it matters (address, sshd,
//! host key, /dev/shm and JACK server, /tmp, home), a jacktrip link between two of them that
//! carries sound, strict host keys, unreachable hosts, nothing left after a lab is dropped, and
//! labs built side by side that never meet. Needs root.

#[path = "lab/mod.rs"]
mod lab;

use lab::{wait_until, Lab};
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Start `cmd` on `host`, detached, its output in `log` on that host.
fn start_detached(lab: &Lab, host: &str, cmd: &str, log: &str) {
    lab.ssh_ok(
        host,
        &format!("setsid nohup {cmd} >{log} 2>&1 </dev/null &"),
    );
}

/// The JACK ports of `host`'s server, or None while it has no server.
fn jack_ports(lab: &Lab, host: &str) -> Option<Vec<String>> {
    let out = lab.ssh(host, "JACK_NO_START_SERVER=1 jack_lsp");
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    })
}

fn wait_for_ports(lab: &Lab, host: &str, wanted: &[&str]) -> Vec<String> {
    let mut seen = None;
    let found = wait_until(Duration::from_secs(15), || {
        seen = jack_ports(lab, host);
        seen.clone()
            .filter(|ports| wanted.iter().all(|w| ports.iter().any(|p| p == w)))
    });
    found.unwrap_or_else(|| {
        panic!("{host}: ports {wanted:?} never appeared; last jack_lsp: {seen:?}")
    })
}

/// The frequency of a tone from the median distance between its rising zero crossings.
fn median_frequency(samples: &[f32], rate: u32) -> f64 {
    let crossings: Vec<usize> = (1..samples.len())
        .filter(|&i| samples[i - 1] < 0.0 && samples[i] >= 0.0)
        .collect();
    let mut periods: Vec<usize> = crossings.windows(2).map(|w| w[1] - w[0]).collect();
    periods.sort_unstable();
    match periods.get(periods.len() / 2) {
        Some(&p) if p > 0 => rate as f64 / p as f64,
        _ => 0.0,
    }
}

#[test]
fn three_hosts_are_separate_machines_joined_by_jacktrip() {
    let started = Instant::now();
    let lab = Lab::build("harness", &["h1", "h2", "h3"]);
    eprintln!("lab of 3 hosts built in {:?}", started.elapsed());

    // Each host answers ssh (lab key, strict known_hosts) on its own address, with its own name.
    for h in lab.hosts() {
        let out = lab.ssh_ok(&h.name, "hostname; hostname -I; ip -4 -o addr show");
        let mut lines = out.lines();
        assert_eq!(
            lines.next(),
            Some(h.name.as_str()),
            "hostname on {}: {out}",
            h.name
        );
        let ips: Vec<&str> = lines
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        assert_eq!(ips, [h.address.as_str()], "addresses of {}: {out}", h.name);
        assert!(out.contains(&format!("inet {}/24", h.address)), "{out}");
        for other in lab.hosts().iter().filter(|o| o.name != h.name) {
            assert!(
                !out.contains(&other.address),
                "{} has {}'s address: {out}",
                h.name,
                other.name
            );
        }
        // exec reaches the same host without ssh.
        assert_eq!(lab.exec_ok(&h.name, "hostname").trim(), h.name);
    }

    // The hosts file is one the project reads back as written.
    let hosts_file = lab.dir().join("hosts.lua");
    lab.write_hosts_file(&hosts_file, 4);
    let (hosts, _) = cloud_orchestra::script::load_hosts(&hosts_file, &mut Vec::new())
        .unwrap_or_else(|e| {
            panic!(
                "hosts file does not load: {e}\n{}",
                std::fs::read_to_string(&hosts_file).unwrap()
            )
        });
    assert_eq!(hosts.len(), 3);
    for (read, h) in hosts.iter().zip(lab.hosts()) {
        assert_eq!(read.name, h.name);
        assert_eq!(read.address, h.address);
        assert_eq!(read.user.as_deref(), Some("root"));
        assert_eq!(read.port, 22);
        assert_eq!(read.cores, 4);
        assert_eq!(
            read.identity.as_deref(),
            Some(lab.user_key().to_str().unwrap())
        );
    }
    let known = std::fs::read_to_string(lab.known_hosts()).unwrap();
    assert!(
        known.starts_with(&format!("{} ssh-ed25519 AAAA", lab.host("h1").address)),
        "{known}"
    );

    // /dev/shm, /tmp and home are each host's own.
    let marker = format!("lab-marker-{}", std::process::id());
    let dirs = ["/dev/shm", "/tmp", "/root"];
    let paths: Vec<String> = dirs.iter().map(|d| format!("{d}/{marker}")).collect();
    let all = paths.join(" ");
    // Prints the paths that exist on the host it runs on.
    let visible = format!("for p in {all}; do [ -e $p ] && echo $p; done; true");
    lab.ssh_ok("h1", &format!("touch {all}"));
    let listed = |out: String| out.lines().map(str::to_string).collect::<Vec<_>>();
    assert_eq!(listed(lab.ssh_ok("h1", &visible)), paths, "over ssh on h1");
    assert_eq!(
        listed(lab.exec_ok("h1", &visible)),
        paths,
        "with exec on h1"
    );
    for other in ["h2", "h3"] {
        let seen = listed(lab.ssh_ok(other, &visible));
        assert!(
            seen.is_empty(),
            "h1's files are visible on {other}: {seen:?}"
        );
    }
    for path in &paths {
        assert!(
            !Path::new(path).exists(),
            "{path} is visible outside the lab"
        );
    }
    assert_eq!(lab.ssh_ok("h2", "echo ~").trim(), "/root");

    // Each host runs a JACK server of its own.
    assert_eq!(
        jack_ports(&lab, "h1"),
        None,
        "h1 has a JACK server before we started one"
    );
    for h in ["h1", "h2"] {
        start_detached(&lab, h, "jackd -d dummy -r 48000 -p 256", "/tmp/jackd.log");
    }
    for h in ["h1", "h2"] {
        wait_for_ports(&lab, h, &["system:playback_1", "system:capture_1"]);
    }
    assert_eq!(
        jack_ports(&lab, "h3"),
        None,
        "h3 sees a JACK server it never started"
    );

    // A jacktrip link between h1 (server end) and h2 (client end).
    let h1 = lab.host("h1").address.clone();
    start_detached(&lab, "h1", "jacktrip -s -D -J srv", "/tmp/jacktrip.log");
    start_detached(
        &lab,
        "h2",
        &format!("jacktrip -c {h1} -D -J cli"),
        "/tmp/jacktrip.log",
    );
    let on_h1 = wait_for_ports(
        &lab,
        "h1",
        &["srv:send_1", "srv:send_2", "srv:receive_1", "srv:receive_2"],
    );
    let on_h2 = wait_for_ports(
        &lab,
        "h2",
        &["cli:send_1", "cli:send_2", "cli:receive_1", "cli:receive_2"],
    );
    assert!(
        !on_h1.iter().any(|p| p.starts_with("cli:")),
        "h1 sees h2's ports: {on_h1:?}"
    );
    assert!(
        !on_h2.iter().any(|p| p.starts_with("srv:")),
        "h2 sees h1's ports: {on_h2:?}"
    );
    // The ports exist from the start; the peers meeting is what the logs tell.
    for h in ["h1", "h2"] {
        let mut log = String::new();
        let met = wait_until(Duration::from_secs(15), || {
            log = lab.ssh_ok(h, "cat /tmp/jacktrip.log");
            log.contains("Received Connection from Peer!").then_some(())
        });
        assert!(met.is_some(), "jacktrip on {h} never met its peer:\n{log}");
    }

    // Sound goes through it: jack_simple_client's 240 Hz sine (48000 / 200) into srv:send_1
    // on h1 comes out of cli:receive_1 on h2.
    start_detached(&lab, "h1", "jack_simple_client", "/tmp/simple.log");
    wait_for_ports(&lab, "h1", &["jack_simple_client:output1"]);
    lab.ssh_ok("h1", "jack_connect jack_simple_client:output1 srv:send_1");
    lab.ssh_ok("h2", "jack_rec -f /root/link.wav -d 2 cli:receive_1");
    let wav = lab.exec("h2", "cat /root/link.wav");
    assert!(
        wav.status.success() && wav.stdout.len() > 44,
        "no recording on h2"
    );
    let local = lab.dir().join("link.wav");
    std::fs::write(&local, &wav.stdout).unwrap();
    let (samples, rate) = cloud_orchestra::analysis::read_channel(&local, 0).unwrap();
    let report = cloud_orchestra::analysis::analyze(&samples, rate);
    eprintln!("through jacktrip: {report:?}");
    assert!(report.rms > 0.05, "silence through the link: {report:?}");
    // The median period, not analyze's average: a dropout on a loaded machine (a jacktrip
    // matter, not the lab's) stretches the average but leaves the median alone.
    let hz = median_frequency(&samples, rate);
    assert!(
        (hz - 240.0).abs() < 2.0,
        "wrong tone through the link: {hz} Hz, {report:?}"
    );

    // processes() sees what runs on a host; stopping it by pid leaves only sshd.
    let running = lab.processes("h1");
    for comm in ["sshd", "jackd", "jacktrip", "jack_simple_cli"] {
        assert!(
            running.iter().any(|p| p.comm == comm),
            "no {comm} on h1: {running:#?}"
        );
    }
    assert!(
        !lab.processes("h3").iter().any(|p| p.comm == "jackd"),
        "h3 lists a jackd"
    );
    for h in ["h1", "h2"] {
        lab.stop_all_but_sshd(h);
        lab.wait_until_only_sshd(h, Duration::from_secs(1));
    }
    assert_eq!(lab.processes("h1").len(), 1, "{:#?}", lab.processes("h1"));

    // A host whose key is not in known_hosts is refused; the others are still trusted.
    lab.forget_key("h3");
    let out = lab.ssh("h3", "true");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(255),
        "ssh to h3 without its key: {err}"
    );
    assert!(err.contains("Host key verification failed"), "{err}");
    lab.ssh_ok("h1", "true");

    // An unreachable host does not answer; made reachable again, it does.
    let h2: SocketAddr = format!("{}:22", lab.host("h2").address).parse().unwrap();
    let connect = |timeout| {
        lab.in_controller_thread(move || TcpStream::connect_timeout(&h2, timeout).map(drop))
    };
    connect(Duration::from_secs(5)).expect("h2 unreachable before make_unreachable");
    lab.make_unreachable("h2");
    let refused = connect(Duration::from_secs(1));
    assert!(refused.is_err(), "h2 answered while cut off");
    eprintln!(
        "connecting to an unreachable host: {}",
        refused.unwrap_err()
    );
    lab.make_reachable("h2");
    let back = wait_until(Duration::from_secs(15), || {
        lab.ssh("h2", "true").status.success().then_some(())
    });
    assert!(back.is_some(), "h2 stayed unreachable");

    // The controller namespace: a command and a thread in it reach the hosts.
    let mut ip = Command::new("ip");
    ip.args(["-4", "-o", "addr", "show"]);
    let out = lab.in_controller(&mut ip).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("inet {}/24", lab.controller_address())),
        "{text}"
    );
    let target: SocketAddr = format!("{h1}:22").parse().unwrap();
    let banner = lab.in_controller_thread(move || {
        let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(5)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 8];
        stream.read_exact(&mut buf).unwrap();
        buf
    });
    assert_eq!(&banner, b"SSH-2.0-");

    // Dropped, the lab is gone: namespaces, processes, directory.
    let footprint = lab.footprint();
    assert!(
        footprint
            .processes()
            .iter()
            .filter(|p| p.comm == "sshd")
            .count()
            >= 3
    );
    let namespaces = lab.namespaces();
    let dropping = Instant::now();
    drop(lab);
    eprintln!("lab torn down in {:?}", dropping.elapsed());
    assert_eq!(footprint.leftovers(), Vec::<String>::new());
    let listed = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    for ns in &namespaces {
        assert!(
            !listed.contains(ns.as_str()),
            "{ns} still listed:\n{listed}"
        );
    }
}

#[test]
fn labs_built_at_once_never_meet() {
    let started = Instant::now();
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| Lab::build("para-a", &["h1", "h2"]));
        let b = s.spawn(|| Lab::build("para-b", &["h1", "h2"]));
        (a.join().unwrap(), b.join().unwrap())
    });
    eprintln!(
        "two labs of 2 hosts built at once in {:?}",
        started.elapsed()
    );
    assert_ne!(a.subnet(), b.subnet());
    for ns in a.namespaces() {
        assert!(!b.namespaces().contains(&ns), "{ns} is in both labs");
    }
    for lab in [&a, &b] {
        for h in lab.hosts() {
            let out = lab.ssh_ok(&h.name, "hostname -I");
            assert_eq!(out.trim(), h.address);
        }
    }
    // A's controller has no way to B's hosts.
    let mut nc = Command::new("ssh");
    let b_h1 = b.host("h1").address.clone();
    nc.args([
        "-F",
        "/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=2",
        &b_h1,
        "true",
    ]);
    let out = a.in_controller(&mut nc).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Network is unreachable"),
        "lab a reached lab b's h1: {err}"
    );

    let (fa, fb) = (a.footprint(), b.footprint());
    std::thread::scope(|s| {
        s.spawn(move || drop(a));
        s.spawn(move || drop(b));
    });
    assert_eq!(fa.leftovers(), Vec::<String>::new());
    assert_eq!(fb.leftovers(), Vec::<String>::new());
}

#[test]
fn a_lab_left_by_a_dead_process_is_removed() {
    // A namespace named like a lab of a process that is gone, with a process still inside.
    // The process makes the namespace first, then it is named: another test's Lab::build may
    // clean it up at any moment, and that must not make this test fail.
    let mut gone = Command::new("true").spawn().unwrap();
    let dead_pid = gone.id();
    gone.wait().unwrap();
    let ns = format!("orl-stale-{dead_pid}-0-h1");
    let mut inside = Command::new("unshare")
        .args(["-n", "sleep", "600"])
        .spawn()
        .unwrap();
    let own = std::fs::read_link("/proc/self/ns/net").unwrap();
    let moved = wait_until(Duration::from_secs(5), || {
        let net = std::fs::read_link(format!("/proc/{}/ns/net", inside.id())).ok()?;
        let exe = std::fs::read_link(format!("/proc/{}/exe", inside.id())).ok()?;
        (net != own && exe.ends_with("sleep")).then_some(())
    });
    assert!(
        moved.is_some(),
        "unshare -n sleep never got a namespace of its own"
    );
    let pid = inside.id().to_string();
    let attached = Command::new("ip")
        .args(["netns", "attach", &ns, &pid])
        .status()
        .unwrap();
    assert!(attached.success(), "ip netns attach {ns} {pid}");

    let lab = Lab::build("stale", &["h1"]);
    assert!(
        !lab::lab_namespaces().contains(&ns),
        "{ns} survived Lab::build"
    );
    let ended = wait_until(Duration::from_secs(5), || inside.try_wait().unwrap());
    assert!(ended.is_some(), "the process in {ns} survived Lab::build");
    drop(lab);
}
