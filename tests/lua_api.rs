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
