//! The pure stages end to end: script → resolve → place → deploy → diff, with plan snapshots.

use cloud_orchestra::deploy::{deploy, Deployment};
use cloud_orchestra::modules::{Engines, ModuleLibrary};
use cloud_orchestra::placement::{place, Options, Placement, Solution};
use cloud_orchestra::plan::{diff, Action};
use cloud_orchestra::resolve::resolve;
use cloud_orchestra::script::{load_orchestra, orchestra_from_text};
use std::path::Path;

fn deployment_of(
    script: &str,
    hosts: Option<&str>,
    previous: Option<&Placement>,
) -> (Deployment, Placement) {
    let orchestra = orchestra_from_text("song.lua", script, hosts).unwrap();
    let library = ModuleLibrary::builtin();
    let resolved = resolve(&orchestra, &library).unwrap();
    let Solution { placement, .. } = place(&resolved, previous, &Options::default()).unwrap();
    let deployment = deploy(&resolved, &placement, &library, &mut Engines::new()).unwrap();
    (deployment, placement)
}

const SINE_LP: &str = r#"
local osc  = block "osc"  { module = "sine", freq = 440 }
local filt = block "filt" { module = "lp", cutoff = 2000 }
local out  = block "out"  { module = "dac" }
osc >> filt >> out
"#;

#[test]
fn first_run_starts_then_connects() {
    let (desired, _) = deployment_of(SINE_LP, None, None);
    let plan = diff(&Deployment::default(), &desired);
    insta::assert_snapshot!(plan.to_text());
}

#[test]
fn applying_the_same_deployment_twice_changes_nothing() {
    let (a, _) = deployment_of(SINE_LP, None, None);
    let (b, _) = deployment_of(SINE_LP, None, None);
    assert_eq!(a, b, "deployment is deterministic");
    let plan = diff(&a, &b);
    assert!(plan.is_empty());
    assert_eq!(plan.to_text(), "nothing to change\n");
}

#[test]
fn param_edit_replaces_only_that_block_make_before_break() {
    let (before, placement) = deployment_of(SINE_LP, None, None);
    let (after, _) = deployment_of(
        &SINE_LP.replace("freq = 440", "freq = 660, phase = 0.5"),
        None,
        Some(&placement),
    );
    let plan = diff(&before, &after);
    insta::assert_snapshot!(plan.to_text());
    let order: Vec<&str> = plan
        .actions
        .iter()
        .map(|a| match a {
            Action::Start { .. } => "start",
            Action::Connect { .. } => "connect",
            Action::Disconnect { .. } => "disconnect",
            Action::Stop { .. } => "stop",
            Action::Set { .. } => "set",
        })
        .collect();
    assert_eq!(order, ["start", "connect", "disconnect", "stop"]);
    assert!(
        plan.actions.iter().all(|a| !a.line().contains("filt (lp)")),
        "filt untouched"
    );
}

#[test]
fn a_live_param_edit_is_one_set_of_the_running_instance_and_its_undo_sets_it_back() {
    let (before, placement) = deployment_of(SINE_LP, None, None);
    let (after, _) = deployment_of(
        &SINE_LP.replace("freq = 440", "freq = 660"),
        None,
        Some(&placement),
    );
    let osc =
        |d: &cloud_orchestra::deploy::Deployment| d.hosts["localhost"].processes["osc"].clone();
    assert_eq!(osc(&after).client, osc(&before).client, "the same instance");
    assert_eq!(osc(&after).spec_hash, osc(&before).spec_hash);
    assert!(
        osc(&after).files["sine.csd"].contains("kfreq init 660"),
        "a replacement would start at 660"
    );
    let plan = diff(&before, &after);
    assert_eq!(plan.to_text(), "= set osc.freq = 660 on localhost (live)\n");
    let Action::Set { port, to, .. } = &plan.actions[0] else {
        panic!("{plan:?}")
    };
    assert_eq!(Some(*port), osc(&before).osc_port);
    let packet = rosc::decoder::decode_udp(&to["freq"].osc).unwrap().1;
    assert_eq!(
        packet,
        rosc::OscPacket::Message(rosc::OscMessage {
            addr: "/freq".into(),
            args: vec![rosc::OscType::Float(660.0)]
        })
    );
    assert_eq!(
        plan.undo().to_text(),
        "= set osc.freq = 440 on localhost (live)\n"
    );
    // A live and a non-live change together: one new instance, already at the new value.
    let (both, _) = deployment_of(
        &SINE_LP.replace("freq = 440", "freq = 660, phase = 0.5"),
        None,
        Some(&placement),
    );
    let plan = diff(&before, &both);
    assert!(
        plan.to_text().starts_with("~ replace osc (sine)"),
        "{}",
        plan.to_text()
    );
    assert_eq!(plan.sets(), 0);
}

#[test]
fn a_new_osc_port_is_none_a_host_says_is_bound_and_a_kept_one_stays() {
    let ports = |d: &Deployment| -> Vec<(String, u16)> {
        d.osc.iter().map(|(b, e)| (b.clone(), e.port)).collect()
    };
    let busy = [("localhost".to_string(), [7800, 7802].into())].into();
    let first = redeployed_around(SINE_LP, &Deployment::default(), &busy);
    assert_eq!(
        ports(&first),
        [("filt".to_string(), 7801), ("osc".to_string(), 7803)]
    );
    // Its own ports now show as bound too: they stay theirs; a replacement takes a free one.
    let now_busy = [("localhost".to_string(), [7800, 7801, 7802, 7803].into())].into();
    let again = redeployed_around(
        &SINE_LP.replace("freq = 440", "freq = 440, phase = 0.5"),
        &first,
        &now_busy,
    );
    assert_eq!(
        ports(&again),
        [("filt".to_string(), 7801), ("osc".to_string(), 7804)]
    );
}

#[test]
fn connection_edit_restarts_nothing() {
    let (before, placement) = deployment_of(SINE_LP, None, None);
    let (after, _) = deployment_of(
        &format!("{SINE_LP}osc:out(1) >> out:input(2)\n"),
        None,
        Some(&placement),
    );
    let plan = diff(&before, &after);
    assert_eq!(plan.actions.len(), 1);
    assert!(
        matches!(&plan.actions[0], Action::Connect { edge, .. } if edge.to == "system:playback_2")
    );
}

#[test]
fn teardown_is_the_diff_to_nothing() {
    let (running, _) = deployment_of(SINE_LP, None, None);
    let plan = diff(&running, &Deployment::default());
    insta::assert_snapshot!(plan.to_text());
    // Applied as a teardown, the stops take the edges with them: no request per edge.
    let (osc, filt) = (
        &running.hosts["localhost"].processes["osc"].client,
        &running.hosts["localhost"].processes["filt"].client,
    );
    assert_eq!(
        plan.without_edges_of_stopped().to_text(),
        format!("- stop filt ({filt}) on localhost\n- stop osc ({osc}) on localhost\n")
    );
    // An edge between clients that stay is still cut.
    let rewired = SINE_LP.replace("osc >> filt >> out", "osc >> out");
    let (bypassed, _) = deployment_of(&rewired, None, None);
    let edit = diff(&running, &bypassed).without_edges_of_stopped();
    assert!(
        edit.to_text().contains(&format!(
            "- disconnect {osc}:output1 → {filt}:input1 on localhost\n"
        )),
        "{}",
        edit.to_text()
    );
}

#[test]
fn prototype_multi_host_example_loads_and_plans_as_it_is() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/prototype");
    let orchestra = load_orchestra(
        &examples.join("synthdef.json"),
        Some(&examples.join("slaves.json")),
    )
    .unwrap();
    assert!(
        orchestra.warnings[0].contains("not strict JSON"),
        "{:?}",
        orchestra.warnings
    );
    let library = ModuleLibrary::builtin();
    let resolved = resolve(&orchestra, &library).unwrap();
    assert_eq!(
        resolved.blocks["dac"].module.name(),
        "dac",
        "DAC is the built-in dac"
    );
    assert_eq!(
        resolved.blocks["lp2"].group.as_deref(),
        Some("bach"),
        "synthdef hosts are aliases"
    );
    let Solution {
        placement, cost, ..
    } = place(&resolved, None, &Options::default()).unwrap();
    for group in [
        ["adc", "dac", "lp2", "lp3"].as_slice(),
        ["fm", "lp", "lp4"].as_slice(),
    ] {
        let hosts: std::collections::BTreeSet<_> = group
            .iter()
            .map(|b| placement.host_of(b).unwrap())
            .collect();
        assert_eq!(
            hosts.len(),
            1,
            "an alias group shares one host: {placement:?}"
        );
    }
    assert_ne!(
        placement.host_of("dac"),
        placement.host_of("fm"),
        "the two aliases are spread"
    );
    assert_eq!(cost.cut, 3);
    let deployment = deploy(&resolved, &placement, &library, &mut Engines::new()).unwrap();
    // Three wires between the two hosts, on one link per direction used.
    let wires: usize = deployment.links.iter().map(|l| l.wires.len()).sum();
    assert_eq!(wires, 3);
    let links = deployment.links.len();
    assert!((1..=2).contains(&links), "{:#?}", deployment.links);
    for link in &deployment.links {
        let sender = &deployment.hosts[&link.from_host];
        let receiver = &deployment.hosts[&link.to_host];
        assert_eq!(
            sender.processes[&format!("{}.send", link.id)].command[1],
            "-c"
        );
        assert_eq!(
            receiver.processes[&format!("{}.receive", link.id)].command[1],
            "-s"
        );
        for wire in &link.wires {
            assert!(sender.edges.iter().any(|e| e.from == wire.from_port));
            assert!(receiver.edges.iter().any(|e| e.to == wire.to_port));
        }
    }
    assert_eq!(
        diff(&Deployment::default(), &deployment).counts()[0],
        5 + 2 * links,
        "five csound blocks and two jacktrip ends per link start"
    );
}

#[test]
fn prototype_implicit_adc_dac_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("synthdef.json");
    std::fs::write(
        &path,
        r#"{"type":"synthdef","blocks":{"fm":{"module":"fm"},"lp4":{"module":"lp"}},
            "connections":[{"source":"fm","sink":"DAC"},{"source":"ADC","sink":"lp4"},{"source":"lp4","sink":"DAC"}]}"#,
    )
    .unwrap();
    let orchestra = load_orchestra(&path, None).unwrap();
    assert!(orchestra.warnings.is_empty());
    let resolved = resolve(&orchestra, &ModuleLibrary::builtin()).unwrap();
    assert_eq!(resolved.blocks["DAC"].module.name(), "dac");
    assert_eq!(resolved.blocks["ADC"].module.name(), "adc");
    assert_eq!(resolved.wires.len(), 3);
}

#[test]
fn broken_json_is_one_line_with_its_line_number() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("synthdef.json");
    std::fs::write(&path, "{\n  \"blocks\": {\n    \"a\": [[[\n").unwrap();
    let e = load_orchestra(&path, None).unwrap_err().to_string();
    assert!(
        e.contains("synthdef.json:") && e.lines().count() == 1,
        "{e}"
    );
}

#[test]
fn every_example_checks() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let library = ModuleLibrary::builtin();
    for script in ["sine-lp.lua", "fm-lp.lua", "pd-sine.lua", "csound-pd.lua"] {
        let o = load_orchestra(&examples.join(script), None).unwrap();
        resolve(&o, &library).unwrap();
    }
    let o = load_orchestra(
        &examples.join("sine-lp.lua"),
        Some(&examples.join("hosts.lua")),
    )
    .unwrap();
    assert_eq!(o.hosts.len(), 3);
    resolve(&o, &library).unwrap();
}

#[test]
fn a_user_module_shadows_a_built_in() {
    let dir = tempfile::tempdir().unwrap();
    let sine = dir.path().join("sine");
    std::fs::create_dir(&sine).unwrap();
    std::fs::write(
        sine.join("manifest.json"),
        r#"{"module": "sine", "synth": "csound", "main": "s.csd", "inputs": 0, "outputs": 2, "params": {"freq": 1}}"#,
    )
    .unwrap();
    std::fs::write(
        sine.join("s.csd"),
        "<CsoundSynthesizer></CsoundSynthesizer>\n",
    )
    .unwrap();
    let mut library = ModuleLibrary::builtin();
    assert_eq!(library.add_dir(dir.path()).unwrap(), ["sine"]);
    let sine = library.get("sine").unwrap();
    assert_eq!(sine.origin, dir.path().join("sine").display().to_string());
    assert_eq!(
        sine.manifest.outputs.resolve(&sine.manifest.defaults()),
        Ok(2)
    );
}

#[test]
fn a_template_error_names_module_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("tpl");
    std::fs::create_dir(&m).unwrap();
    std::fs::write(
        m.join("manifest.json"),
        r#"{"module": "tpl", "synth": "csound", "main": "t.csd.j2", "inputs": 0}"#,
    )
    .unwrap();
    std::fs::write(
        m.join("t.csd.j2"),
        "sr = {{ audio.rate }}\nfreq = {{ params.frq }}\n",
    )
    .unwrap();
    let mut library = ModuleLibrary::builtin();
    library.add_dir(dir.path()).unwrap();
    let path = dir.path().join("song.lua");
    std::fs::write(&path, "block \"t\" { module = \"tpl\" }\n").unwrap();
    let resolved = resolve(&load_orchestra(&path, None).unwrap(), &library).unwrap();
    let Solution { placement, .. } = place(&resolved, None, &Options::default()).unwrap();
    let e = deploy(&resolved, &placement, &library, &mut Engines::new())
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("block `t`: module `tpl`: t.csd.j2:2:"), "{e}");
}

#[test]
fn long_block_names_get_short_distinct_clients() {
    let long_a = "a_rather_long_block_name_for_voice_1";
    let long_b = "a_rather_long_block_name_for_voice_2";
    let script = format!("block \"{long_a}\" {{ module = \"noise\" }}\nblock \"{long_b}\" {{ module = \"noise\" }}\n");
    let (d, _) = deployment_of(&script, None, None);
    let clients: Vec<&str> = d.hosts["localhost"]
        .processes
        .values()
        .map(|p| p.client.as_str())
        .collect();
    assert_eq!(clients.len(), 2);
    assert_ne!(clients[0], clients[1]);
    for c in clients {
        assert!(c.len() <= cloud_orchestra::deploy::MAX_CLIENT_NAME, "{c}");
    }
}

#[test]
fn undo_takes_back_a_change_last_first_and_never_starts_anything() {
    let (desired, _) = deployment_of(SINE_LP, None, None);
    let plan = diff(&Deployment::default(), &desired);
    insta::assert_snapshot!(plan.undo().to_text());
    // Undoing twice gives the disconnects back as connects; stops have no undo.
    assert!(plan
        .undo()
        .undo()
        .actions
        .iter()
        .all(|a| matches!(a, Action::Connect { .. })));
}

#[test]
fn repair_puts_back_edges_stops_leftovers_and_finds_the_dead() {
    use cloud_orchestra::plan::{repair, Observed};
    use std::collections::BTreeMap;
    let (applied, _) = deployment_of(SINE_LP, None, None);
    let host = &applied.hosts["localhost"];
    let osc = &host.processes["osc"];
    let mut edges = host.edges.iter();
    let kept = edges.next().unwrap().clone();
    let stray = cloud_orchestra::deploy::Edge {
        from: osc.client.port("output1"),
        to: "system:playback_2".into(),
    };
    // `filt` died, one intended edge went missing, a stray edge and a leftover instance appeared.
    let observed = Observed {
        processes: vec![
            ("osc".into(), osc.client.clone()),
            ("old".into(), "old-12345678".into()),
        ],
        intended: [kept, stray].into_iter().collect(),
        ..Default::default()
    };
    let found = repair(
        &applied,
        &BTreeMap::from([("localhost".to_string(), observed.clone())]),
    );
    let dead: Vec<String> = found
        .dead
        .iter()
        .map(|(_, p)| p.block.to_string())
        .collect();
    assert_eq!(dead, ["filt"]);
    insta::assert_snapshot!(found.plan.to_text());
    // What matches needs nothing; a host that did not answer is left alone.
    let healthy = Observed {
        processes: host
            .processes
            .values()
            .map(|p| (p.block.clone(), p.client.clone()))
            .collect(),
        intended: host.edges.clone(),
        ..Default::default()
    };
    let calm = repair(
        &applied,
        &BTreeMap::from([("localhost".to_string(), healthy)]),
    );
    assert!(calm.plan.is_empty() && calm.dead.is_empty());
    assert_eq!(repair(&applied, &BTreeMap::new()), Default::default());
}

/// Three voices on h1 into a mixer on h2, pinned: one link h1 → h2 of 4 channels.
const VOICES: &str = r#"
host "h1" { address = "10.9.0.1", cores = 8 }
host "h2" { address = "10.9.0.2", cores = 8 }
local mix = block "mix" { module = "mixer", inputs = 6, host = "h2" }
local out = block "out" { module = "dac", host = "h2" }
mix >> out
for i = 1, 3 do
  block("v" .. i) { module = "sine", freq = 220 * i, host = "h1" }
  connect("v" .. i, "mix:" .. i)
end
"#;

fn redeployed(script: &str, previous: &Deployment) -> Deployment {
    redeployed_around(script, previous, &Default::default())
}

/// [`redeployed`] on hosts where `in_use` UDP ports are bound.
fn redeployed_around(
    script: &str,
    previous: &Deployment,
    in_use: &cloud_orchestra::deploy::PortsInUse,
) -> Deployment {
    let orchestra = orchestra_from_text("song.lua", script, None).unwrap();
    let library = ModuleLibrary::builtin();
    let resolved = resolve(&orchestra, &library).unwrap();
    let Solution { placement, .. } = place(&resolved, None, &Options::default()).unwrap();
    cloud_orchestra::deploy::redeploy_around(
        &resolved,
        &placement,
        &library,
        &mut Engines::new(),
        previous,
        in_use,
    )
    .unwrap()
}

#[test]
fn the_wires_between_two_hosts_travel_on_one_link_and_a_new_one_restarts_nothing() {
    let first = redeployed(VOICES, &Deployment::default());
    assert_eq!(first.links.len(), 1, "{:#?}", first.links);
    let link = &first.links[0];
    assert_eq!((link.wires.len(), link.channels), (3, 4));
    let jacktrips: Vec<String> = first
        .hosts
        .values()
        .flat_map(|h| h.processes.values())
        .filter(|p| p.module == "jacktrip")
        .map(|p| p.block.to_string())
        .collect();
    assert_eq!(
        jacktrips.len(),
        2,
        "one sending and one receiving end: {jacktrips:?}"
    );

    // A fourth wire (v1 into the mixer's 4th input) takes the spare channel: edges only.
    let four = format!("{VOICES}connect(\"v1\", \"mix:4\")\n");
    let second = redeployed(&four, &first);
    let plan = diff(&first, &second);
    assert!(
        plan.actions
            .iter()
            .all(|a| matches!(a, Action::Connect { .. })),
        "{}",
        plan.to_text()
    );
    assert_eq!(
        plan.actions.len(),
        2,
        "into the link on h1, out of it on h2"
    );
    assert_eq!(
        cloud_orchestra::plan::describe(&plan, &first, &second),
        ["+ wire v1:1>mix:4 on link h1 → h2 (channel 4)"]
    );

    // A fifth outgrows it: a link of 8 starts beside the old one, then the old one stops.
    let five = format!("{four}connect(\"v2\", \"mix:5\")\n");
    let third = redeployed(&five, &second);
    assert_eq!(third.links.len(), 1);
    assert_eq!(
        (third.links[0].wires.len(), third.links[0].channels),
        (5, 8)
    );
    assert_ne!(third.links[0].id, link.id);
    let plan = diff(&second, &third);
    let first_stop = plan
        .actions
        .iter()
        .position(|a| matches!(a, Action::Stop { .. }))
        .unwrap();
    let last_start = plan
        .actions
        .iter()
        .rposition(|a| matches!(a, Action::Start { .. }))
        .unwrap();
    assert!(
        last_start < first_stop,
        "make-before-break: {}",
        plan.to_text()
    );
    let v_channels: Vec<(u32, &str)> = third.links[0]
        .wires
        .iter()
        .map(|w| (w.channel, w.wire.as_str()))
        .collect();
    assert_eq!(
        v_channels,
        [
            (1, "v1:1>mix:1"),
            (2, "v2:1>mix:2"),
            (3, "v3:1>mix:3"),
            (4, "v1:1>mix:4"),
            (5, "v2:1>mix:5")
        ],
        "the wires keep their channels"
    );
}

#[test]
fn an_instance_rendered_from_the_same_inputs_is_reused_not_rendered_again() {
    let first = redeployed(VOICES, &Deployment::default());
    // Mark each instance's files: only a reused instance keeps the mark.
    let mut marked = first.clone();
    for host in marked.hosts.values_mut() {
        for p in host.processes.values_mut() {
            p.files.insert("mark".into(), "reused".into());
        }
    }
    let again = redeployed(
        &VOICES.replace("220 * i", "220 * i + (i == 2 and 1 or 0)"),
        &marked,
    );
    let reused: std::collections::BTreeSet<String> = again
        .hosts
        .values()
        .flat_map(|h| h.processes.values())
        .filter(|p| p.module != "jacktrip" && p.files.contains_key("mark"))
        .map(|p| p.block.to_string())
        .collect();
    let expected: std::collections::BTreeSet<String> = ["mix", "v1", "v3"].map(String::from).into();
    assert_eq!(reused, expected, "all but the edited v2");
    // v2's freq is live: rendered again with its new value, but the same instance.
    let v2 = &again.hosts["h1"].processes["v2"];
    assert_eq!(v2.spec_hash, first.hosts["h1"].processes["v2"].spec_hash);
    assert_ne!(
        v2.live["freq"],
        first.hosts["h1"].processes["v2"].live["freq"]
    );
}

#[test]
fn a_block_whose_templates_read_where_others_run_is_rendered_again_when_they_move() {
    let song = |osc_host: &str| {
        format!(
            "host \"h1\" {{ address = \"10.9.0.1\", cores = 8 }}\nhost \"h2\" {{ address = \"10.9.0.2\", cores = 8 }}\n\
             local osc = block \"osc\" {{ module = \"sine_osc\", host = \"{osc_host}\" }}\n\
             local out = block \"out\" {{ module = \"dac\", host = \"h2\" }}\nosc >> out\n\
             block \"ctl\" {{ module = \"osc_ctl\", target = \"osc\", host = \"h2\" }}\n\
             block \"tone\" {{ module = \"sine\", host = \"h2\" }}\n"
        )
    };
    let first = redeployed(&song("h1"), &Deployment::default());
    let mut marked = first.clone();
    for host in marked.hosts.values_mut() {
        for p in host.processes.values_mut() {
            p.files.insert("mark".into(), "reused".into());
        }
    }
    // osc moves to h2: ctl, on h2 all along, sends to another address now.
    let moved = redeployed(&song("h2"), &marked);
    let ctl = &moved.hosts["h2"].processes["ctl"];
    assert!(!ctl.files.contains_key("mark"), "ctl is rendered again");
    assert!(
        ctl.files.values().any(|text| text.contains("10.9.0.2")),
        "ctl sends to osc's new address: {:?}",
        ctl.files
    );
    assert!(
        moved.hosts["h2"].processes["tone"]
            .files
            .contains_key("mark"),
        "tone reads nothing of the others: reused"
    );
}

/// A deployment with enough blocks to be built on several threads gives each block the
/// instance it gets when deployed with nothing else (spec, client, files, command): how the
/// work is split changes nothing.
#[test]
fn many_blocks_built_in_parallel_are_what_each_is_alone() {
    let many = r#"
local out = block "out" { module = "dac" }
for i = 1, 400 do
  block("v" .. i) { module = "fm", freq = 100 + i, amp = 0.001 } >> out
end
"#;
    let (all, _) = deployment_of(many, None, None);
    let processes = &all.hosts["localhost"].processes;
    assert_eq!(processes.len(), 400);
    for i in [1, 137, 255, 256, 400] {
        let alone = format!(
            "block \"v{i}\" {{ module = \"fm\", freq = {}, amp = 0.001 }} >> block \"out\" {{ module = \"dac\" }}\n",
            100 + i
        );
        let (one, _) = deployment_of(&alone, None, None);
        let name = format!("v{i}");
        assert_eq!(
            processes[&name], one.hosts["localhost"].processes[&name],
            "{name}"
        );
    }
}

/// The edges of `fade` as `from → to` with each client's block name for its hash
/// (`osc-1a2b…:out_1` → `osc:out_1`), and whether the instance is the old or the new one.
fn fade_lines(edges: &[cloud_orchestra::deploy::Edge], old: &Deployment) -> Vec<String> {
    let clients: std::collections::BTreeMap<&str, String> = old
        .hosts
        .values()
        .flat_map(|h| h.processes.values())
        .map(|p| (p.client.as_str(), format!("old {}", p.block)))
        .collect();
    let name = |port: &cloud_orchestra::protocol::PortRef| {
        let (client, short) = (port.client.as_str(), &port.port);
        match clients.get(client) {
            Some(old) => format!("{old}:{short}"),
            None if client.contains('-') && !client.starts_with("system") => {
                format!("new {}:{short}", client.rsplit_once('-').unwrap().0)
            }
            None => port.to_string(),
        }
    };
    edges
        .iter()
        .map(|e| format!("{} → {}", name(&e.from), name(&e.to)))
        .collect()
}

/// The change from `before` to `after` crossfades on localhost over 20 ms, one edge in and
/// one out (as [`fade_lines`] reads them).
fn assert_one_fade(before: &Deployment, after: &Deployment, fade_in: &str, fade_out: &str) {
    let fades = diff(before, after).crossfades();
    assert_eq!(fades.len(), 1, "{fades:?}");
    assert_eq!((fades[0].host.as_str(), fades[0].ms), ("localhost", 20));
    // As `plan --format json` prints it.
    let json = serde_json::to_value(&fades[0]).unwrap();
    assert_eq!(json["host"], "localhost");
    assert_eq!(json["ms"], 20);
    assert_eq!(json["fade_in"][0]["to"], fades[0].fade_in[0].to.to_string());
    assert_eq!(
        json["fade_out"][0]["from"],
        fades[0].fade_out[0].from.to_string()
    );
    assert_eq!(fade_lines(&fades[0].fade_in, before), [fade_in]);
    assert_eq!(fade_lines(&fades[0].fade_out, before), [fade_out]);
}

#[test]
fn a_replace_crossfades_its_outputs_into_what_stays_and_nothing_else() {
    let before = redeployed(SINE_LP, &Deployment::default());
    let after = redeployed(
        &SINE_LP.replace("freq = 440", "freq = 440, phase = 0.5"),
        &before,
    );
    assert_one_fade(
        &before,
        &after,
        "new osc:output1 → old filt:input1",
        "old osc:output1 → old filt:input1",
    );

    // Both replaced: only the chain's last edge into what stays (the DAC) fades; the edge
    // between the two new instances is wired as usual.
    let after = redeployed(
        &SINE_LP
            .replace("freq = 440", "freq = 440, phase = 0.5")
            .replace("module = \"lp\", cutoff = 2000", "module = \"gain\""),
        &before,
    );
    assert_one_fade(
        &before,
        &after,
        "new filt:output1 → system:playback_1",
        "old filt:output1 → system:playback_1",
    );

    // A connection edit, a live edit, a new block: nothing replaced, nothing faded.
    for edit in [
        SINE_LP.replace("osc >> filt >> out", "osc >> out"),
        SINE_LP.replace("freq = 440", "freq = 660"),
        format!("{SINE_LP}block \"more\" {{ module = \"sine\" }} connect(\"more\", \"out\")\n"),
    ] {
        let after = redeployed(&edit, &before);
        let plan = diff(&before, &after);
        assert!(!plan.is_empty());
        assert!(plan.crossfades().is_empty(), "{edit}");
    }
}

#[test]
fn fade_sets_the_crossfade_and_zero_switches_at_once_and_a_change_of_it_alone_restarts_nothing() {
    let with_fade = |fade: &str| SINE_LP.replace("freq = 440", &format!("freq = 440, {fade}"));
    let before = redeployed(&with_fade("fade = 150"), &Deployment::default());
    let after = redeployed(&with_fade("fade = 150, phase = 0.5"), &before);
    assert_eq!(diff(&before, &after).crossfades()[0].ms, 150);
    let after = redeployed(&with_fade("fade = 0, phase = 0.5"), &before);
    let plan = diff(&before, &after);
    assert_eq!(plan.counts()[1], 1, "replaced: {}", plan.to_text());
    assert!(plan.crossfades().is_empty(), "fade = 0 switches at once");
    let after = redeployed(&with_fade("fade = 40"), &before);
    assert!(
        diff(&before, &after).is_empty(),
        "a new fade restarts nothing"
    );
    assert_eq!(after.hosts["localhost"].processes["osc"].fade_ms, 40);
}

#[test]
fn a_move_fades_out_where_the_old_instance_ran_and_in_where_the_new_one_runs() {
    let before = redeployed(VOICES, &Deployment::default());
    // v1 moves to h2, beside the mixer: its old path came over the link, which stays for
    // v2 and v3.
    let after = redeployed(
        &VOICES.replace("host = \"h1\" }", "host = i == 1 and \"h2\" or \"h1\" }"),
        &before,
    );
    let plan = diff(&before, &after);
    let v1 = &before.hosts["h1"].processes["v1"].client;
    let mix = &before.hosts["h2"].processes["mix"].client;
    let send = &before.links[0].id;
    let edge = |from: String, to: String| cloud_orchestra::deploy::Edge {
        from: from.as_str().into(),
        to: to.as_str().into(),
    };
    let fades: Vec<(String, Vec<_>, Vec<_>)> = plan
        .crossfades()
        .into_iter()
        .map(|f| (f.host, f.fade_in, f.fade_out))
        .collect();
    assert_eq!(
        fades,
        [
            (
                "h1".to_string(),
                vec![],
                vec![edge(format!("{v1}:output1"), format!("{send}:send_1"))]
            ),
            (
                "h2".to_string(),
                vec![edge(format!("{v1}:output1"), format!("{mix}:input1"))],
                vec![]
            ),
        ],
        "{}",
        plan.to_text()
    );
}
