//! The Lua API and its editor annotations agree; the built-in modules are all usable.

use cloud_orchestra::modules::{Engines, ModuleLibrary};
use cloud_orchestra::script::API_FUNCTIONS;

#[test]
fn every_registered_function_is_annotated() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/lua/types/orchestra.d.lua"
    ))
    .unwrap();
    assert!(text.starts_with("---@meta"));
    for name in API_FUNCTIONS {
        assert!(
            text.contains(&format!("\nfunction {name}(")),
            "`{name}` has no annotation"
        );
    }
    for method in ["out", "output", "input"] {
        assert!(
            text.contains(&format!("\nfunction Block:{method}(")),
            "Block:{method}"
        );
    }
}

#[test]
fn every_registered_function_exists_in_a_script() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("probe.lua");
    let checks: Vec<String> = API_FUNCTIONS
        .iter()
        .map(|f| format!("assert(type({f}) == 'function', '{f}')"))
        .collect();
    std::fs::write(&path, checks.join("\n")).unwrap();
    cloud_orchestra::script::load_orchestra(&path, None).unwrap();
}

#[test]
fn built_in_modules_render_and_launch() {
    let library = ModuleLibrary::builtin();
    let names: Vec<&str> = library.names().collect();
    assert_eq!(
        names,
        [
            "adc", "ck_lp", "ck_sine", "dac", "fm", "gain", "lp", "metro", "mixer", "noise",
            "osc_ctl", "pd_lp", "pd_sine", "sc_lp", "sc_sine", "sine", "sine_osc"
        ]
    );
    let mut engines = Engines::new();
    for module in library.modules() {
        let m = &module.manifest;
        let expected_cpu = if m.synth == "system" { 0 } else { 1 };
        assert_eq!(m.cpu, expected_cpu, "{}", m.module);
        let params = m.defaults();
        let inputs = m.inputs.resolve(&params).unwrap();
        let outputs = m.outputs.resolve(&params).unwrap();
        let context = serde_json::json!({
            "block": {"name": "b", "module": m.module, "host": "localhost", "inputs": inputs, "outputs": outputs, "params": params,
                      "osc_port": if m.osc { Some(7800) } else { None }},
            "params": params, "audio": {"rate": 48000, "period": 256},
            // osc_ctl's default target.
            "blocks": {"osc": {"host": "localhost", "address": "127.0.0.1", "osc_port": 7801}},
            "hosts": {},
        });
        let files = module.render(&context).unwrap();
        let audio = Default::default();
        let launch = engines.launch(
            &library,
            module,
            "b-0000",
            (inputs, outputs),
            &audio,
            &params,
            &files,
            m.osc.then_some(7800),
        );
        if m.synth == "chuck" {
            // Debian's chuck cannot be a block (tests/chuck_engine.rs): it renders, and its
            // engine says why instead of a command.
            let error = launch.unwrap_err().to_string();
            assert!(error.contains("cannot run as a block"), "{error}");
            continue;
        }
        let launch = launch.unwrap();
        // Built-ins are written for the orchestra: nothing to override, so their launch
        // command and files (their spec) stay as they are.
        assert_eq!(launch.notes, Vec::<String>::new(), "{}", m.module);
        assert_eq!(launch.main_rewritten, None, "{}", m.module);
        assert_eq!(launch.inputs.len() as u32, inputs);
        assert_eq!(launch.outputs.len() as u32, outputs);
        match m.synth.as_str() {
            "csound" => {
                let main = module.rendered_main().unwrap();
                assert!(files[&main].contains("sr = 48000"), "{}", m.module);
                let command = launch.command.unwrap();
                assert!(
                    command.contains(&"-odac:null".to_string()),
                    "never auto-connect: {command:?}"
                );
                assert_eq!(command.last(), Some(&main));
            }
            "pd" => {
                let main = module.rendered_main().unwrap();
                assert!(main.ends_with(".pd"), "{main}");
                let command = launch.command.unwrap();
                assert!(
                    command.contains(&"-nojackconnect".to_string()),
                    "never auto-connect: {command:?}"
                );
                let no_inputs = command.contains(&"-noadc".to_string());
                assert_eq!(
                    no_inputs,
                    inputs == 0,
                    "input ports only for inputs: {command:?}"
                );
                assert!(command.contains(&"-callback".to_string()), "{command:?}");
                assert_eq!(command.last(), Some(&main));
                assert_eq!(launch.outputs, ["b-0000:output_1"]);
            }
            "supercollider" => {
                let command = launch.command.unwrap();
                // Nothing autoconnected (the JACK defaults emptied), OSC on loopback only, at
                // the instance's port, under the instance's client name.
                for word in [
                    "SC_JACK_DEFAULT_INPUTS=",
                    "SC_JACK_DEFAULT_OUTPUTS=",
                    "scsynth",
                    "127.0.0.1",
                    "7800",
                    "b-0000",
                ] {
                    assert!(command.contains(&word.to_string()), "{word}: {command:?}");
                }
                assert_eq!(launch.outputs, ["b-0000:out_1"]);
                assert_eq!(launch.start_osc.len(), 1, "one /s_new");
            }
            "system" => assert!(launch.command.is_none()),
            "command" => {
                let command = launch.command.unwrap();
                assert_eq!(
                    command[..3],
                    ["jack_metro", "--name", "b-0000"],
                    "{command:?}"
                );
                assert_eq!(launch.outputs, ["b-0000:120_bpm"]);
            }
            other => panic!("unexpected engine {other}"),
        }
    }
}

/// How the Csound engine fits a module written for another setup: the prototype's `lp`
/// (`sr = 44100`, `kr = 441`, `ksmps = 100`, its own CsOptions) at several JACK periods, and
/// a header that sets no ksmps at all.
#[test]
fn the_csound_engine_fits_a_prototype_module_to_the_orchestra() {
    use cloud_orchestra::model::AudioSettings;
    let mut library = ModuleLibrary::builtin();
    let fixtures = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/prototype-modules"
    );
    library.add_dir(std::path::Path::new(fixtures)).unwrap();
    let lp = library.get("lp").unwrap().clone();
    assert!(
        lp.origin.ends_with("prototype-modules/lp"),
        "the fixture shadows the built-in"
    );
    let files = lp.render(&serde_json::json!({})).unwrap();
    let mut engines = Engines::new();
    // (period, ksmps it gets): the largest not above 100 that divides -b = period / 2.
    for (period, ksmps) in [
        (256, 64),
        (128, 64),
        (64, 32),
        (1024, 64),
        (400, 100),
        (16, 8),
    ] {
        let audio = AudioSettings {
            rate: 48000,
            period,
        };
        let launch = engines
            .launch(
                &library,
                &lp,
                "lp-0000",
                (1, 1),
                &audio,
                &Default::default(),
                &files,
                None,
            )
            .unwrap();
        let command = launch.command.unwrap();
        assert!(
            command.contains(&"--sample-rate=48000".to_string()),
            "{command:?}"
        );
        assert!(
            command.contains(&format!("--ksmps={ksmps}")),
            "{period}: {command:?}"
        );
        assert!(command.contains(&"-+jack_client=lp-0000".to_string()));
        let note = if ksmps == 100 {
            "sr 44100 → 48000".to_string()
        } else {
            format!("sr 44100 → 48000, ksmps 100 → {ksmps}")
        };
        assert!(
            launch.notes.join(", ").starts_with(&note),
            "{:?}",
            launch.notes
        );
        let (main, text) = launch.main_rewritten.unwrap();
        assert_eq!(main, "lp.csd");
        assert!(!text.contains("csoundlp") && !text.contains("-iadc") && !text.contains("-b 500"));
        assert!(
            text.contains("sr = 44100"),
            "the header stays; the command line overrides it"
        );
    }
    // No ksmps, no kr: csound would derive ksmps 11 from its default kr; always pass one.
    let bare = files["lp.csd"]
        .replace("\tkr = 441\n", "")
        .replace("\tksmps = 100\n", "")
        .replace("sr = 44100", "sr = 48000");
    let files = std::collections::BTreeMap::from([("lp.csd".to_string(), bare)]);
    let launch = engines
        .launch(
            &library,
            &lp,
            "lp-0000",
            (1, 1),
            &Default::default(),
            &Default::default(),
            &files,
            None,
        )
        .unwrap();
    let command = launch.command.unwrap();
    assert!(
        !command.iter().any(|a| a.starts_with("--sample-rate")),
        "{command:?}"
    );
    assert!(command.contains(&"--ksmps=8".to_string()), "{command:?}");
}

/// A user module of the `command` engine: `{client}` and `{param}` filled into each word of
/// its command and port names, a text param staying one argument whatever it holds, and the
/// manifest's mistakes said in one line.
#[test]
fn the_command_engine_runs_what_the_manifest_names() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, manifest: &str| {
        std::fs::create_dir_all(dir.path().join(name)).unwrap();
        std::fs::write(dir.path().join(name).join("manifest.json"), manifest).unwrap();
    };
    write(
        "tone",
        r#"{"module": "tone", "synth": "command", "inputs": 1, "outputs": 1,
            "command": ["my-synth", "-n", "{client}", "--freq={freq}", "{label}"],
            "ports": {"inputs": ["{client}:in"], "outputs": ["{client}:out_{freq}"]},
            "params": {"freq": 440, "label": "x"}}"#,
    );
    write(
        "typo",
        r#"{"module": "typo", "synth": "command", "inputs": 0, "outputs": 1,
            "command": ["my-synth", "{frq}"], "ports": {"outputs": ["{client}:out"]},
            "params": {"freq": 440, "amp": 0.5}}"#,
    );
    write(
        "portless",
        r#"{"module": "portless", "synth": "command", "inputs": 0, "outputs": 2,
            "command": ["my-synth"], "ports": {"outputs": ["{client}:out"]}}"#,
    );
    write(
        "nothing",
        r#"{"module": "nothing", "synth": "command", "inputs": 0, "outputs": 1}"#,
    );
    let mut library = ModuleLibrary::builtin();
    library.add_dir(dir.path()).unwrap();
    let mut engines = Engines::new();
    let mut launch = |name: &str, params: serde_json::Value| {
        let module = library.get(name).unwrap().clone();
        let m = &module.manifest;
        let mut values = m.defaults();
        for (k, v) in params.as_object().unwrap() {
            values.insert(k.clone(), v.clone());
        }
        let ports = (
            m.inputs.resolve(&values).unwrap(),
            m.outputs.resolve(&values).unwrap(),
        );
        let audio = Default::default();
        engines
            .launch(
                &library,
                &module,
                "b-1234",
                ports,
                &audio,
                &values,
                &Default::default(),
                None,
            )
            .map_err(|e| e.to_string())
    };

    let tone = launch(
        "tone",
        serde_json::json!({"freq": 660.0, "label": "a b; rm -rf /"}),
    )
    .unwrap();
    assert_eq!(
        tone.command.unwrap(),
        ["my-synth", "-n", "b-1234", "--freq=660", "a b; rm -rf /"]
    );
    assert_eq!(tone.inputs, ["b-1234:in"]);
    assert_eq!(tone.outputs, ["b-1234:out_660"]);

    let folder = dir.path().display();
    assert_eq!(
        launch("typo", serde_json::json!({})).unwrap_err(),
        format!("engine `command`: {folder}/typo/manifest.json: \"command\" names {{frq}}, which is not one of {{client}}, {{amp}}, {{freq}}")
    );
    assert_eq!(
        launch("portless", serde_json::json!({})).unwrap_err(),
        format!("engine `command`: {folder}/portless/manifest.json: \"ports\" names 1 outputs, but the module has 2; name each one (e.g. \"{{client}}:out_2\")")
    );
    assert_eq!(
        launch("nothing", serde_json::json!({})).unwrap_err(),
        format!("engine `command`: {folder}/nothing/manifest.json: no \"command\" (the program the command engine runs, e.g. [\"jack_metro\", \"--name\", \"{{client}}\", \"--bpm\", \"{{bpm}}\"])")
    );
}

/// Pd computes audio in JACK's callback only in whole 64-frame blocks: with a shorter period
/// the engine keeps Pd's polling mode, with a ring buffer of two blocks.
#[test]
fn the_pd_engine_polls_when_the_period_is_shorter_than_pd_s_block() {
    let library = ModuleLibrary::builtin();
    let module = library.get("pd_sine").unwrap();
    let params = module.manifest.defaults();
    let command_at = |period: u32| {
        let audio = cloud_orchestra::audio::AudioSettings {
            rate: 48000,
            period,
        };
        let context = serde_json::json!({
            "block": {"name": "b", "osc_port": 7800}, "params": params, "audio": {"rate": 48000, "period": period},
        });
        let files = module.render(&context).unwrap();
        Engines::new()
            .launch(
                &library,
                module,
                "b-0000",
                (0, 1),
                &audio,
                &params,
                &files,
                None,
            )
            .unwrap()
            .command
            .unwrap()
            .join(" ")
    };
    assert!(
        command_at(64).contains(" -callback -send "),
        "{}",
        command_at(64)
    );
    let polling = command_at(32);
    assert!(!polling.contains("-callback"), "{polling}");
    // Two 64-frame blocks at 48 kHz: 2.7 ms, rounded up.
    assert!(polling.contains(" -audiobuf 3 -send "), "{polling}");
}
