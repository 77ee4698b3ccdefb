//! Fuzzing every decoder of outside input, for a bounded number of cases each (so `cargo test`
//! in CI runs them): OSC packets nested and cut at random, the prototype's JSON formats
//! mangled, and the Lua API called with values of every kind. No input may panic, hang or
//! overflow the stack; each is either accepted or refused with a message.

use cloud_orchestra::modules::ModuleLibrary;
use cloud_orchestra::osc::dispatch::{dispatch, Dispatch};
use cloud_orchestra::script::load_orchestra_in_process;
use cloud_orchestra::script::prototype::{load_slaves, load_synthdef};
use proptest::prelude::*;
use std::collections::BTreeMap;

/// A packet of random structure: messages with random type tags (arrays included) inside
/// bundles nested up to `depth`, encoded by hand so any nesting can be built.
fn packet(depth: u32) -> BoxedStrategy<Vec<u8>> {
    let message = (
        "/(osc|x|orchestra)/[a-z]{0,4}",
        "[ifs\\[\\]TFNI]{0,40}",
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(addr, tags, payload)| {
            let mut bytes = padded(addr.as_bytes());
            bytes.extend(padded(format!(",{tags}").as_bytes()));
            bytes.extend(payload);
            bytes
        });
    if depth == 0 {
        return message.boxed();
    }
    prop_oneof![
        message,
        proptest::collection::vec(packet(depth - 1), 0..4).prop_map(|elements| {
            let mut bytes = b"#bundle\0\0\0\0\0\0\0\0\x01".to_vec();
            for element in elements {
                bytes.extend((element.len() as u32).to_be_bytes());
                bytes.extend(element);
            }
            bytes
        }),
    ]
    .boxed()
}

fn padded(text: &[u8]) -> Vec<u8> {
    let mut bytes = text.to_vec();
    bytes.push(0);
    while !bytes.len().is_multiple_of(4) {
        bytes.push(0);
    }
    bytes
}

fn osc_blocks() -> BTreeMap<String, ()> {
    [("osc".to_string(), ())].into_iter().collect()
}

/// Prototype JSON built from fragments, so the parser's paths (strict, lenient, nested,
/// duplicated keys) are reached far more often than by random bytes.
fn json_text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("1".to_string()),
        Just("-1e999".to_string()),
        Just("\"sine\"".to_string()),
        Just("\"DAC\"".to_string()),
        Just("null".to_string()),
        Just("true".to_string()),
        "\"[a-z:0-9]{0,8}\"",
    ];
    let value = leaf.prop_recursive(40, 200, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4)
                .prop_map(|v| format!("[{}]", v.join(","))),
            proptest::collection::vec(
                (
                    prop_oneof![
                        Just("blocks"),
                        Just("connections"),
                        Just("module"),
                        Just("host"),
                        Just("source"),
                        Just("sink"),
                        Just("hosts"),
                        Just("name"),
                        Just("cores"),
                        Just("osc"),
                    ],
                    inner
                ),
                0..4
            )
            .prop_map(|pairs| {
                let body: Vec<String> =
                    pairs.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect();
                format!("{{{}}}", body.join(", "))
            }),
        ]
    });
    (value, any::<bool>(), 0usize..8).prop_map(|(text, drop_commas, cut)| {
        let text = if drop_commas {
            text.replacen(',', " ", 1)
        } else {
            text
        };
        // Sometimes cut short, as a file saved half-way.
        let keep = text.len().saturating_sub(cut * (cut % 3));
        text[..keep].to_string()
    })
}

/// A Lua expression of any kind the API might be handed.
fn lua_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("nil".to_string()),
        Just("0/0".to_string()),
        Just("math.huge".to_string()),
        Just("-math.huge".to_string()),
        Just("math.maxinteger".to_string()),
        Just("string.rep('x', 100000)".to_string()),
        Just("function() end".to_string()),
        Just("coroutine.create(function() end)".to_string()),
        Just("true".to_string()),
        any::<i32>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|n| format!("{n:?}")
            .replace("inf", "math.huge")
            .replace("NaN", "0/0")),
        "\"[a-z_:/ \\\\\\\"-]{0,12}\"",
    ];
    leaf.prop_recursive(6, 40, 4, |inner| {
        proptest::collection::vec(
            (
                prop_oneof![
                    Just("module"),
                    Just("host"),
                    Just("freq"),
                    Just("amp"),
                    Just("rate"),
                    Just("address"),
                    Just("cores"),
                    Just("queue"),
                    Just("x")
                ],
                inner,
            ),
            0..4,
        )
        .prop_map(|pairs| {
            let body: Vec<String> = pairs.iter().map(|(k, v)| format!("{k} = {v}")).collect();
            format!("{{ {} }}", body.join(", "))
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn osc_packets_of_any_structure_are_dispatched_without_panic(bytes in packet(12), cut in 0usize..16) {
        let keep = bytes.len().saturating_sub(cut);
        if let Dispatch::Forward(out) = dispatch(&bytes[..keep], &osc_blocks()) {
            for forwarded in out {
                prop_assert!(rosc::decoder::decode_udp(&forwarded.bytes).is_ok());
            }
        }
    }

    #[test]
    fn prototype_json_of_any_shape_is_read_or_refused_in_one_line(text in json_text()) {
        let dir = tempfile::tempdir().unwrap();
        let synthdef = dir.path().join("synthdef.json");
        std::fs::write(&synthdef, &text).unwrap();
        if let Err(e) = load_synthdef(&synthdef) {
            let message = e.to_string();
            prop_assert!(message.starts_with(&synthdef.display().to_string()), "{message}");
            prop_assert!(!message.contains('\n'), "{message}");
        }
        let slaves = dir.path().join("slaves.json");
        std::fs::write(&slaves, &text).unwrap();
        if let Err(e) = load_slaves(&slaves, &mut Vec::new()) {
            prop_assert!(!e.to_string().contains('\n'), "{e}");
        }
    }

    #[test]
    fn the_lua_api_refuses_any_wrong_argument_with_a_location(
        function in prop_oneof![Just("block"), Just("host"), Just("connect"), Just("audio"), Just("network"), Just("require")],
        first in lua_value(),
        second in lua_value(),
        curried in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("song.lua");
        let call = if curried {
            format!("{function}({first})({second})")
        } else {
            format!("{function}({first}, {second})")
        };
        std::fs::write(&script, format!("local ok = true\n{call}\n")).unwrap();
        match load_orchestra_in_process(&script, None) {
            Ok(orchestra) => {
                // Whatever was accepted still resolves or is refused with a message.
                let _ = cloud_orchestra::resolve::resolve(&orchestra, &ModuleLibrary::builtin());
            }
            Err(e) => {
                let message = e.to_string();
                prop_assert!(message.contains("song.lua:2:") || message.contains("song.lua:"), "{call}: {message}");
                prop_assert!(message.len() < 600, "{call}: a short message, not {} bytes", message.len());
            }
        }
    }
}
