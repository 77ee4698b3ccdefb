//! Bad input: every mistake is one `file:line: message` line, and nothing is started.

use cloud_orchestra::modules::ModuleLibrary;
use cloud_orchestra::resolve::resolve;
use cloud_orchestra::script::load_orchestra;
use std::path::PathBuf;

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Load and resolve; return the error line.
fn error_of(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "song.lua", text);
    let result = load_orchestra(&path, None).and_then(|o| resolve(&o, &ModuleLibrary::builtin()));
    let message = result
        .expect_err("the script should be refused")
        .to_string();
    let shown = message.replace(&dir.path().display().to_string(), "DIR");
    assert_eq!(shown.lines().count(), 1, "one line: {shown}");
    shown
}

#[test]
fn syntax_error_names_file_and_line() {
    let e = error_of("local a = block \"a\" { module = \"sine\" }\nlocal b = = 2\n");
    assert!(e.starts_with("DIR/song.lua:2:"), "{e}");
    assert!(e.contains("unexpected symbol") || e.contains("near"), "{e}");
}

#[test]
fn runtime_error_names_file_and_line_and_suggests() {
    let e = error_of("block \"a\" { module = \"sine\" }\n\nblok \"b\" { module = \"sine\" }\n");
    assert!(e.starts_with("DIR/song.lua:3:"), "{e}");
    assert!(e.contains("did you mean `block`?"), "{e}");
}

#[test]
fn unknown_module_suggests_the_closest() {
    let e = error_of("block \"a\" { module = \"sien\" }\n");
    assert_eq!(
        e,
        "DIR/song.lua:1: block `a`: unknown module `sien` (did you mean `sine`?)"
    );
}

#[test]
fn unknown_param_suggests_the_closest() {
    let e = error_of("\nblock \"a\" { module = \"sine\", frq = 220 }\n");
    assert_eq!(
        e,
        "DIR/song.lua:2: block `a`: module `sine` has no param `frq` (did you mean `freq`?)"
    );
}

#[test]
fn port_out_of_range() {
    let e = error_of(
        "local a = block \"a\" { module = \"sine\" }\nlocal b = block \"b\" { module = \"lp\" }\nconnect(a:out(2), b:input(1))\n",
    );
    assert_eq!(
        e,
        "DIR/song.lua:3: output 2 of `a` (sine) is out of range: it has 1 output"
    );
}

#[test]
fn input_used_as_source() {
    let e = error_of("local a = block \"a\" { module = \"lp\" }\nlocal b = block \"b\" { module = \"lp\" }\nconnect(a:input(1), b)\n");
    assert!(
        e.starts_with("DIR/song.lua:3: connection source must be a block or an output"),
        "{e}"
    );
}

#[test]
fn duplicate_block_names() {
    let e = error_of("block \"a\" { module = \"sine\" }\nblock \"a\" { module = \"noise\" }\n");
    assert_eq!(
        e,
        "DIR/song.lua:2: block `a` is declared twice (first at DIR/song.lua:1)"
    );
}

#[test]
fn invalid_block_name() {
    let e = error_of("block \"a b\" { module = \"sine\" }\n");
    assert_eq!(
        e,
        "DIR/song.lua:1: block name `a b` may only contain letters, digits, `_` and `-`"
    );
}

#[test]
fn pin_to_unknown_host() {
    let e = error_of(
        "host \"h1\" { address = \"10.0.0.1\" }\nhost \"h2\" { address = \"10.0.0.2\" }\nblock \"a\" { module = \"sine\", host = \"h3\" }\n",
    );
    assert_eq!(
        e,
        "DIR/song.lua:3: block `a` is pinned to unknown host `h3` (hosts: h1, h2)"
    );
    let e = error_of("host \"xenakis\" { address = \"10.0.0.1\" }\nblock \"a\" { module = \"sine\", host = \"xenaks\" }\n");
    assert!(
        e.ends_with("unknown host `xenaks` (did you mean `xenakis`?)"),
        "{e}"
    );
}

#[test]
fn runaway_loop_is_stopped() {
    let e = error_of(
        "block \"a\" { module = \"sine\" }\nlocal i = 0\nwhile true do\n  i = i + 1\nend\n",
    );
    assert!(e.starts_with("DIR/song.lua:"), "{e}");
    assert!(e.contains("endless loop"), "{e}");
}

#[test]
fn memory_bomb_is_stopped() {
    let e = error_of("local t = {}\nlocal s = string.rep(\"x\", 1024)\nfor i = 1, 1e9 do\n  t[i] = s .. i\nend\n");
    // The line is where the script was when the limit hit: the loop (3) or its body (4).
    assert!(
        e == "DIR/song.lua:3: script used more than 64 MiB of memory"
            || e == "DIR/song.lua:4: script used more than 64 MiB of memory",
        "{e}"
    );
}

#[test]
fn no_io_no_execute_no_bytecode() {
    for (code, what) in [
        ("io.open(\"/etc/passwd\")", "io"),
        ("os.execute(\"true\")", "execute"),
        ("dofile(\"/etc/passwd\")", "dofile"),
        ("load(string.dump(function() end))", "dump"),
    ] {
        let e = error_of(&format!("\n{code}\n"));
        assert!(e.starts_with("DIR/song.lua:2:"), "{what}: {e}");
    }
    // Binary chunks are refused even when built by hand.
    let e = error_of("local f, err = load(\"\\27Lua\")\nerror(err)\n");
    assert!(e.contains("binary") || e.contains("attempt to load"), "{e}");
}

#[test]
fn bad_host_field_suggests() {
    let e = error_of("host \"h1\" { adress = \"10.0.0.1\" }\n");
    assert!(
        e.starts_with(
            "DIR/song.lua:1: host `h1`: unknown field `adress` (did you mean `address`?)"
        ),
        "{e}"
    );
}

#[test]
fn param_of_the_wrong_kind() {
    let e = error_of("block \"a\" { module = \"sine\", freq = \"440; system(\\\"rm\\\")\" }\n");
    assert!(
        e.starts_with(
            "DIR/song.lua:1: block `a`: param `freq` must be a number (like its default 440)"
        ),
        "{e}"
    );
}

#[test]
fn hosts_file_without_hosts_and_host_without_cores() {
    let dir = tempfile::tempdir().unwrap();
    let script = write(&dir, "song.lua", "block \"a\" { module = \"sine\" }\n");
    let empty = write(&dir, "hosts.lua", "-- nothing yet\n");
    let e = load_orchestra(&script, Some(&empty))
        .unwrap_err()
        .to_string();
    assert!(
        e.ends_with(
            "hosts.lua: declares no hosts (e.g. host \"h1\" { address = \"10.0.0.4\", cores = 2 })"
        ),
        "{e}"
    );
    let e = error_of("host \"h1\" { address = \"10.0.0.1\", cores = 0 }\nblock \"a\" { module = \"sine\", host = \"h1\" }\n");
    assert_eq!(
        e,
        "DIR/song.lua:1: host `h1` has no cores (cores must be at least 1)"
    );
    let e = error_of("host \"h1\" { address = \"10.0.0.1\", cores = -2 }\n");
    assert!(
        e.starts_with(
            "DIR/song.lua:1: host `h1`: `cores` must be a whole number from 0 to 4096, not -2"
        ),
        "{e}"
    );
}

#[test]
fn network_buffers_are_checked_to_the_letter() {
    let hosts =
        "host \"h1\" { address = \"10.0.0.1\" }\nhost \"studio\" { address = \"10.0.0.2\" }\n";
    let cases = [
        (
            "network { queue = 1 }",
            "DIR/song.lua:3: network: `queue` must be a whole number from 2 to 1024",
        ),
        (
            "network { strategy = 7 }",
            "DIR/song.lua:3: network: `strategy` must be a whole number from 0 to 3",
        ),
        (
            "network { stratgy = 1 }",
            "DIR/song.lua:3: network: unknown field `stratgy` (did you mean `strategy`?)",
        ),
        (
            "network { links = { to = \"studio\" } }",
            "DIR/song.lua:3: network: `links` must be a list of tables like { from = \"h1\", to = \"h2\", queue = 8 }",
        ),
        (
            "network { links = { { to = \"studio\", qeue = 8 } } }",
            "DIR/song.lua:3: network: links[1]: unknown field `qeue` (did you mean `queue`?)",
        ),
        (
            "network { links = { { to = \"studio\" } } }",
            "DIR/song.lua:3: network: links[1] sets neither `queue` nor `strategy`",
        ),
        (
            "network { links = { { to = \"studio\", queue = 8 }, { from = \"h1\", queue = 2000 } } }",
            "DIR/song.lua:3: network: links[2]: `queue` must be a whole number from 2 to 1024",
        ),
        (
            "network { links = { { to = \"studoi\", queue = 8 } } }",
            "DIR/song.lua:3: network: links: `to` names no host `studoi` (did you mean `studio`?)",
        ),
        (
            "latency { max_ms = -3 }",
            "DIR/song.lua:3: latency: `max_ms` must be a number of milliseconds above 0",
        ),
        (
            "latency { max = 20 }",
            "DIR/song.lua:3: latency: unknown field `max` (did you mean `max_ms`?)",
        ),
        (
            "latency { }",
            "DIR/song.lua:3: latency: needs `max_ms`, e.g. latency { max_ms = 20 }",
        ),
    ];
    for (line, expected) in cases {
        assert_eq!(error_of(&format!("{hosts}{line}\n")), expected, "{line}");
    }
}

#[test]
fn network_calls_add_up_and_a_rule_applies_to_its_pair_of_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "song.lua",
        "host \"h1\" { address = \"10.0.0.1\" }\nhost \"h2\" { address = \"10.0.0.2\" }\n\
         network { queue = 6 }\nnetwork { strategy = 2, links = { { from = \"h2\", queue = 3 } } }\n\
         latency { max_ms = 12.5 }\n",
    );
    let orchestra = load_orchestra(&path, None).unwrap();
    let resolved = resolve(&orchestra, &ModuleLibrary::builtin()).unwrap();
    let buffers = |from, to| {
        let b = resolved.network.buffers(from, to);
        (b.queue, b.strategy)
    };
    assert_eq!(buffers("h1", "h2"), (6, Some(2)));
    assert_eq!(buffers("h2", "h1"), (3, Some(2)));
    assert_eq!(resolved.latency_max_ms, Some(12.5));
}

#[test]
fn a_fade_out_of_range_or_not_a_number_is_refused_in_one_line() {
    let expected = "DIR/song.lua:2: block `a`: `fade` must be a number of milliseconds from 0 to 10000 (e.g. fade = 20; 0 switches at once)";
    for fade in ["-1", "10001", "\"slow\"", "0/0", "true"] {
        let e = error_of(&format!(
            "\nblock \"a\" {{ module = \"sine\", fade = {fade} }}\n"
        ));
        assert_eq!(e, expected, "fade = {fade}");
    }
}
