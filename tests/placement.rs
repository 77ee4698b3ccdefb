//! Placement v0: pins, cores, connections kept together, determinism, stability.

use cloud_orchestra::modules::ModuleLibrary;
use cloud_orchestra::placement::{place, Options, Solution};
use cloud_orchestra::resolve::resolve;
use cloud_orchestra::script::orchestra_from_text;

fn resolved(script: &str, hosts: &str) -> cloud_orchestra::resolve::Resolved {
    resolve(
        &orchestra_from_text("song.lua", script, Some(hosts)).unwrap(),
        &ModuleLibrary::builtin(),
    )
    .unwrap()
}

const HOSTS: &str = "host \"h1\" { address = \"10.9.0.1\", cores = 2 }\nhost \"h2\" { address = \"10.9.0.2\", cores = 2 }\nhost \"h3\" { address = \"10.9.0.3\", cores = 1 }\n";

const CHAINS: &str = r#"
for c = 1, 2 do
  local a = block("a" .. c) { module = "sine" }
  local b = block("b" .. c) { module = "lp" }
  a >> b
end
local out = block "out" { module = "dac", host = "h3" }
"#;

#[test]
fn connected_blocks_share_a_host_and_cores_are_respected() {
    let r = resolved(CHAINS, HOSTS);
    let Solution {
        placement: p, cost, ..
    } = place(&r, None, &Options::default()).unwrap();
    assert_eq!(p.host_of("out"), Some("h3"), "pins hold");
    assert_eq!(p.host_of("a1"), p.host_of("b1"));
    assert_eq!(p.host_of("a2"), p.host_of("b2"));
    assert_ne!(
        p.host_of("a1"),
        p.host_of("a2"),
        "two 2-core chains need two hosts"
    );
    assert_eq!((cost.overflow, cost.cut, cost.moved), (0, 0, 0));
}

#[test]
fn overflow_is_counted_and_still_placed() {
    let hosts = "host \"h1\" { address = \"10.9.0.1\", cores = 1 }\n";
    let r = resolved(
        "for i = 1, 3 do block(\"v\" .. i) { module = \"noise\" } end\n",
        hosts,
    );
    let Solution {
        placement: p, cost, ..
    } = place(&r, None, &Options::default()).unwrap();
    assert_eq!(p.0.len(), 3);
    assert_eq!(cost.overflow, 2);
    assert_eq!(cost.total, 200.0);
}

#[test]
fn deterministic_and_stable_with_a_previous_placement() {
    let r = resolved(CHAINS, HOSTS);
    let Solution {
        placement: first, ..
    } = place(&r, None, &Options::default()).unwrap();
    let Solution {
        placement: again, ..
    } = place(&r, None, &Options::default()).unwrap();
    assert_eq!(first, again);
    let Solution {
        placement: kept,
        cost,
        ..
    } = place(&r, Some(&first), &Options::default()).unwrap();
    assert_eq!(kept, first);
    assert_eq!(cost.moved, 0);
}

#[test]
fn adding_a_block_moves_nothing_else() {
    let r = resolved(CHAINS, HOSTS);
    let Solution {
        placement: before, ..
    } = place(&r, None, &Options::default()).unwrap();
    let r2 = resolved(
        &format!("{CHAINS}block \"extra\" {{ module = \"noise\" }}\n"),
        HOSTS,
    );
    let Solution {
        placement: after,
        cost,
        ..
    } = place(&r2, Some(&before), &Options::default()).unwrap();
    assert_eq!(cost.moved, 0);
    for (block, host) in &before.0 {
        assert_eq!(after.host_of(block), Some(host.as_str()));
    }
}
