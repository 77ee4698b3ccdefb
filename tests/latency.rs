//! What a placement costs in latency, as the user sees it: `plan --explain` lists the worst
//! paths, `plan --format json` carries them, and `latency { max_ms }` is a warning — or with
//! `--strict` an error that plans nothing (`plan`, `check`).

use std::path::Path;
use std::process::{Command, Output};

const HOSTS: &str = r#"
host "h1" { address = "10.9.0.1", cores = 2 }
host "h2" { address = "10.9.0.2", cores = 2 }
host "h3" { address = "10.9.0.3", cores = 2 }
"#;

const CHAIN: &str = r#"
local osc  = block "osc"  { module = "sine", host = "h1" }
local filt = block "filt" { module = "lp", host = "h2" }
local out  = block "out"  { module = "dac", host = "h3" }
osc >> filt >> out
"#;

fn orchestra(dir: &Path, script: &str, args: &[&str]) -> Output {
    std::fs::write(dir.join("song.lua"), script).unwrap();
    std::fs::write(dir.join("hosts.lua"), HOSTS).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_orchestra"));
    cmd.args(args)
        .arg(dir.join("song.lua"))
        .arg("--hosts")
        .arg(dir.join("hosts.lua"));
    if args[0] == "plan" {
        cmd.arg("--state-dir").arg(dir.join("state"));
    }
    cmd.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn explain_lists_the_worst_path_with_what_it_is_made_of() {
    let dir = tempfile::tempdir().unwrap();
    // 512 frames at 51200 Hz: 10 ms a period. Links into h3 queue 6 packets, others 4.
    let script = format!(
        "{CHAIN}audio {{ rate = 51200, period = 512 }}\nnetwork {{ links = {{ {{ to = \"h3\", queue = 6 }} }} }}\n"
    );
    let out = orchestra(dir.path(), &script, &["plan", "--explain"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Three hosts (30 ms), a queue of 4 into h2 (40 ms) and of 6 into h3 (60 ms).
    assert!(
        stdout.contains(
            "latency: worst 130.0 ms from a source to a dac (period 512 at 51200 Hz = 10.0 ms per host crossed; a link adds its queue of periods: queue 4, 6 from any host to h3)\n  130.0 ms: osc (h1) → filt (h2) → out (h3)\n"
        ),
        "{stdout}"
    );

    let out = orchestra(dir.path(), &script, &["plan", "--format", "json"]);
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        plan["latency"],
        serde_json::json!([{
            "blocks": ["osc", "filt", "out"],
            "hosts": ["h1", "h2", "h3"],
            "links": 2,
            "ms": 130.0,
        }])
    );
}

#[test]
fn over_the_budget_is_a_warning_and_with_strict_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let script =
        format!("{CHAIN}audio {{ rate = 51200, period = 512 }}\nlatency {{ max_ms = 100 }}\n");
    let warning = "the path osc (h1) → filt (h2) → out (h3) takes about 110.0 ms, over latency { max_ms = 100 }: it crosses 2 link(s) (fewer hosts on the way, a smaller period or queue cost less)";

    let out = orchestra(dir.path(), &script, &["plan"]);
    assert!(out.status.success());
    assert!(
        text(&out.stderr).contains(&format!("warning: {warning}\n")),
        "{}",
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("actions:"));

    for command in ["plan", "check"] {
        let out = orchestra(dir.path(), &script, &[command, "--strict"]);
        assert_eq!(out.status.code(), Some(1), "{command}");
        assert_eq!(
            text(&out.stderr),
            format!("refused (--strict): {warning}\n"),
            "{command}"
        );
        assert_eq!(text(&out.stdout), "", "{command} plans nothing");
    }

    // Within the budget, --strict has nothing to say.
    let within = script.replace("max_ms = 100", "max_ms = 110");
    let out = orchestra(dir.path(), &within, &["check", "--strict"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "");
}
