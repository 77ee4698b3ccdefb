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
        ["adc", "dac", "fm", "gain", "lp", "mixer", "noise", "osc_ctl", "sine", "sine_osc"]
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
        let launch = engines
            .launch(
                &library,
                module,
                "b-0000",
                (inputs, outputs),
                &audio,
                &params,
                &files,
            )
            .unwrap();
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
            "system" => assert!(launch.command.is_none()),
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
        )
        .unwrap();
    let command = launch.command.unwrap();
    assert!(
        !command.iter().any(|a| a.starts_with("--sample-rate")),
        "{command:?}"
    );
    assert!(command.contains(&"--ksmps=8".to_string()), "{command:?}");
}
