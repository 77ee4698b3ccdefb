//! The Lua DSL: blocks, chains, port-level connections, loops, functions and `require`.

use cloud_orchestra::modules::ModuleLibrary;
use cloud_orchestra::resolve::{resolve, Wire};
use cloud_orchestra::script::{desugar_chains, load_orchestra, orchestra_from_text};

fn wire(a: &str, o: u32, b: &str, i: u32) -> Wire {
    Wire {
        from: (a.into(), o),
        to: (b.into(), i),
    }
}

#[test]
fn chain_connects_output_i_to_input_i() {
    let orchestra = orchestra_from_text(
        "song.lua",
        r#"
local osc  = block "osc"  { module = "sine", freq = 440 }
local filt = block "filt" { module = "lp", cutoff = 2000 }
local out  = block "out"  { module = "dac" }   -- a comment with >> in it
osc >> filt >> out
connect(osc, filt)
"#,
        None,
    )
    .unwrap();
    assert_eq!(orchestra.name, "song");
    assert_eq!(orchestra.blocks.len(), 3);
    assert_eq!(orchestra.blocks[0].params["freq"], serde_json::json!(440));
    let resolved = resolve(&orchestra, &ModuleLibrary::builtin()).unwrap();
    // osc → filt twice (chain and connect) is one wire; filt has 1 output → dac input 1 only.
    assert_eq!(
        resolved.wires,
        vec![wire("osc", 1, "filt", 1), wire("filt", 1, "out", 1)]
    );
    assert_eq!(
        resolved.connections.len(),
        3,
        "each declared connection counts for the cut"
    );
    assert_eq!(resolved.hosts[0].name, "localhost");
}

#[test]
fn loops_functions_ports_and_require() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("lib")).unwrap();
    std::fs::write(
        dir.path().join("lib/voices.lua"),
        "local M = {}\nfunction M.voice(name, f)\n  return block(name) { module = \"sine\", freq = f, amp = 0.1 }\nend\nreturn M\n",
    )
    .unwrap();
    let path = dir.path().join("main.lua");
    std::fs::write(
        &path,
        r#"
local voices = require "lib.voices"
local mix = block "mix" { module = "mixer", inputs = 3 }
for i = 1, 3 do
  voices.voice("v" .. i, 110 * i):out(1) >> mix:input(i)
end
mix >> block "dac" { module = "dac" }
audio { rate = 44100, period = 512 }
"#,
    )
    .unwrap();
    let orchestra = load_orchestra(&path, None).unwrap();
    assert_eq!(
        orchestra.files.len(),
        2,
        "the required file is recorded for the watcher"
    );
    assert_eq!(orchestra.audio.rate, 44100);
    let resolved = resolve(&orchestra, &ModuleLibrary::builtin()).unwrap();
    assert_eq!(resolved.blocks["mix"].inputs, 3);
    assert!(resolved.wires.contains(&wire("v3", 1, "mix", 3)));
    assert!(resolved.wires.contains(&wire("mix", 1, "dac", 1)));
}

#[test]
fn hosts_and_pins() {
    let orchestra = orchestra_from_text(
        "song.lua",
        "block \"out\" { module = \"dac\", host = \"h3\" }\n",
        Some("host \"h1\" { address = \"10.1.0.1\", user = \"ubuntu\", cores = 2, port = 2222, identity = \"~/.ssh/id_ed25519\" }\nhost \"h3\" { address = \"10.1.0.3\" }\n"),
    )
    .unwrap();
    let h1 = &orchestra.hosts[0];
    assert_eq!(
        (h1.name.as_str(), h1.port, h1.cores, h1.user.as_deref()),
        ("h1", 2222, 2, Some("ubuntu"))
    );
    let resolved = resolve(&orchestra, &ModuleLibrary::builtin()).unwrap();
    assert_eq!(resolved.blocks["out"].pin.as_deref(), Some("h3"));
}

#[test]
fn desugar_only_touches_chain_statements() {
    let src = "osc >> filt\n  a:out(1) >> b:input(2) >> c\nlocal x = a >> b\nif a >> b then end\n-- a >> b\nprint(a >> b)\n";
    let out = desugar_chains(src);
    assert_eq!(
        out,
        "_ = osc >> filt\n  _ = a:out(1) >> b:input(2) >> c\nlocal x = a >> b\nif a >> b then end\n-- a >> b\n_ = print(a >> b)\n"
    );
    // A block made on the spot starts a chain too; `=` inside its table is no assignment.
    let src = "block \"a\" { freq = 1, name = \"x=y\" } >> mix\nt[1] = a >> b\nx.y = a >> b\nf(a == b) >> c\n";
    assert_eq!(
        desugar_chains(src),
        "_ = block \"a\" { freq = 1, name = \"x=y\" } >> mix\nt[1] = a >> b\nx.y = a >> b\n_ = f(a == b) >> c\n"
    );
}

#[test]
fn hosts_carry_their_own_jack_driver() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts.lua");
    std::fs::write(
        &hosts,
        "host \"stage\" { address = \"10.0.0.9\", jack_driver = \"alsa\", jack_device = \"hw:1\" }\nhost \"cloud\" { address = \"10.0.0.10\" }\n",
    )
    .unwrap();
    let mut warnings = Vec::new();
    let (list, _) = cloud_orchestra::script::load_hosts(&hosts, &mut warnings).unwrap();
    assert_eq!(list[0].jack.driver.as_deref(), Some("alsa"));
    assert_eq!(list[0].jack.device.as_deref(), Some("hw:1"));
    assert_eq!(list[1].jack, Default::default());

    std::fs::write(
        &hosts,
        "host \"stage\" { address = \"10.0.0.9\", jack_device = \"hw:1; rm -rf /\" }\n",
    )
    .unwrap();
    let err = cloud_orchestra::script::load_hosts(&hosts, &mut warnings)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("hosts.lua:1:") && err.contains("jack_device"),
        "{err}"
    );
    std::fs::write(
        &hosts,
        "host \"small\" { address = \"10.0.0.11\", jack_ports = 512 }\nhost \"tiny\" { address = \"10.0.0.12\", jack_ports = 8 }\n",
    )
    .unwrap();
    let err = cloud_orchestra::script::load_hosts(&hosts, &mut warnings)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!("{}:2: host `tiny`: `jack_ports` 8 leaves no room for a sound card; give at least 16 (or leave it out: sized to the orchestra)", hosts.display())
    );
    std::fs::write(
        &hosts,
        "host \"small\" { address = \"10.0.0.11\", jack_ports = 512 }\n",
    )
    .unwrap();
    let (list, _) = cloud_orchestra::script::load_hosts(&hosts, &mut warnings).unwrap();
    assert_eq!(list[0].jack.ports, Some(512));
}
