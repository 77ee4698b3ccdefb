//! The live layer: changes sent over OSC or the page (`/orchestra/set`, `connect`, `add`,
//! `eval`, …), laid over the script's orchestra on every load, until `/orchestra/reset`. It
//! holds what differs from the script, not the history of how it came to differ: a set
//! replaces the earlier set of the same param, and a change that a later one undoes goes (see
//! [`LiveLayer::push`]), so a long show does not make every reload longer. It is persisted
//! beside the state so `orchestra plan` shows it.

use crate::model::{Block, Connection, Endpoint, ModelError, Orchestra};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};

/// One change of the live layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum LiveOp {
    Set {
        block: String,
        param: String,
        value: serde_json::Value,
    },
    Connect {
        from: Endpoint,
        to: Endpoint,
    },
    Disconnect {
        from: Endpoint,
        to: Endpoint,
    },
    Add {
        name: String,
        module: String,
        host: Option<String>,
    },
    Remove {
        name: String,
    },
    /// Lua code with the script's API: the blocks it declares replace or join the script's,
    /// its connections are added.
    Eval {
        code: String,
    },
}

impl LiveOp {
    /// Whether this change names block `name` (an eval may, and is not looked into).
    fn is_about(&self, name: &str) -> bool {
        match self {
            LiveOp::Set { block, .. } => block == name,
            LiveOp::Connect { from, to } | LiveOp::Disconnect { from, to } => {
                from.block == name || to.block == name
            }
            LiveOp::Add { name: n, .. } | LiveOp::Remove { name: n } => n == name,
            LiveOp::Eval { .. } => false,
        }
    }
}

impl fmt::Display for LiveOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LiveOp::Set {
                block,
                param,
                value,
            } => write!(f, "set {block}.{param} = {value}"),
            LiveOp::Connect { from, to } => write!(f, "connect {from} → {to}"),
            LiveOp::Disconnect { from, to } => write!(f, "disconnect {from} → {to}"),
            LiveOp::Add { name, module, host } => match host {
                Some(h) => write!(f, "add {name} ({module}) on {h}"),
                None => write!(f, "add {name} ({module})"),
            },
            LiveOp::Remove { name } => write!(f, "remove {name}"),
            LiveOp::Eval { code } => {
                let one_line: String = code.split_whitespace().collect::<Vec<_>>().join(" ");
                let short: String = one_line.chars().take(60).collect();
                write!(f, "eval {short:?}")
            }
        }
    }
}

/// A saved live layer that is not one.
#[derive(Debug, thiserror::Error)]
#[error("the live layer beside the state is unreadable ({0}); ignored")]
pub struct Unreadable(#[source] serde_json::Error);

/// The changes made live that still matter, in the order they came.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LiveLayer {
    pub ops: Vec<LiveOp>,
}

fn layer_file(dir: &Path, orchestra: &str) -> PathBuf {
    dir.join(format!("{orchestra}.live.json"))
}

impl LiveLayer {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The layer of `ops` made one after the other, folded as [`LiveLayer::push`] folds.
    pub fn of(ops: impl IntoIterator<Item = LiveOp>) -> LiveLayer {
        let mut layer = LiveLayer::default();
        for op in ops {
            layer.push(op);
        }
        layer
    }

    /// Add `op`, which has just applied over this layer, dropping what it makes moot: laid
    /// over any script, the folded layer gives the orchestra the whole history would.
    ///
    /// - a set replaces every earlier set of the same param;
    /// - a connection made again, with nothing about its ends between, is kept once;
    /// - a disconnect takes back the connects of the same ends since the last change about
    ///   their blocks, and is kept once (the script may have the connection too);
    /// - removing a block drops every earlier change about it (its `add`s too) back to the
    ///   last `eval`, and is kept once.
    ///
    /// An `eval` is kept whole and is a barrier: what it declares is known only by running it.
    pub fn push(&mut self, op: LiveOp) {
        match &op {
            LiveOp::Set { block, param, .. } => self.ops.retain(|earlier| {
                !matches!(earlier, LiveOp::Set { block: b, param: p, .. } if b == block && p == param)
            }),
            LiveOp::Connect { from, to } => {
                let since = self.since_last_about(&[&from.block, &to.block]);
                if self.ops[since..].contains(&op) {
                    return;
                }
            }
            LiveOp::Disconnect { from, to } => {
                let since = self.since_last_about(&[&from.block, &to.block]);
                let connect = LiveOp::Connect {
                    from: from.clone(),
                    to: to.clone(),
                };
                let mut at = 0;
                self.ops.retain(|earlier| {
                    at += 1;
                    at <= since || *earlier != connect
                });
                if since > 0 && self.ops[since - 1] == op {
                    return;
                }
            }
            LiveOp::Remove { name } => {
                let since = self
                    .ops
                    .iter()
                    .rposition(|earlier| matches!(earlier, LiveOp::Eval { .. }))
                    .map_or(0, |at| at + 1);
                let mut at = 0;
                self.ops.retain(|earlier| {
                    at += 1;
                    at <= since || !earlier.is_about(name)
                });
            }
            LiveOp::Add { .. } | LiveOp::Eval { .. } => {}
        }
        self.ops.push(op);
    }

    /// Where the ops after the last one that may change what `blocks` are or how they are
    /// connected begin: an `eval`, an `add` or `remove` of one of them, a disconnect of theirs.
    fn since_last_about(&self, blocks: &[&str]) -> usize {
        self.ops
            .iter()
            .rposition(|op| match op {
                LiveOp::Eval { .. } => true,
                LiveOp::Set { .. } | LiveOp::Connect { .. } => false,
                LiveOp::Add { .. } | LiveOp::Remove { .. } | LiveOp::Disconnect { .. } => {
                    blocks.iter().any(|b| op.is_about(b))
                }
            })
            .map_or(0, |at| at + 1)
    }

    /// How the layer is made up, for `status` and the log: `3 change(s)`, or with evals
    /// `12 change(s), 2 of them evals (kept whole: …)`.
    pub fn size(&self) -> String {
        let evals = self
            .ops
            .iter()
            .filter(|op| matches!(op, LiveOp::Eval { .. }))
            .count();
        match evals {
            0 => format!("{} change(s)", self.ops.len()),
            n => format!(
                "{} change(s), {n} of them eval(s) (kept whole: what an eval declares is known only by running it)",
                self.ops.len()
            ),
        }
    }

    /// The layer saved beside the state (empty when there is none), folded (one saved by an
    /// older version may hold the whole history); one that cannot be read is an error its
    /// caller says and goes on without.
    pub fn load(dir: &Path, orchestra: &str) -> Result<LiveLayer, Unreadable> {
        match std::fs::read(layer_file(dir, orchestra)) {
            Ok(bytes) => serde_json::from_slice::<LiveLayer>(&bytes)
                .map(|saved| LiveLayer::of(saved.ops))
                .map_err(Unreadable),
            Err(_) => Ok(LiveLayer::default()),
        }
    }

    /// [`LiveLayer::load`], an unreadable layer left out with the warning that says so.
    pub fn load_or_warn(dir: &Path, orchestra: &str) -> (LiveLayer, Option<String>) {
        match LiveLayer::load(dir, orchestra) {
            Ok(layer) => (layer, None),
            Err(e) => (LiveLayer::default(), Some(e.to_string())),
        }
    }

    /// Written atomically; an empty layer removes the file.
    pub fn save(&self, dir: &Path, orchestra: &str) -> std::io::Result<()> {
        let path = layer_file(dir, orchestra);
        if self.ops.is_empty() {
            return match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        std::fs::create_dir_all(dir)?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, &path)
    }

    /// Lay every change over `orchestra`. One that no longer applies (the script dropped its
    /// block, say) is skipped with a warning: a script edit is never refused because of the
    /// layer.
    pub fn apply(&self, orchestra: &mut Orchestra, base_dir: &Path) {
        for op in &self.ops {
            if let Err(e) = apply(op, orchestra, base_dir, Applying::Replayed) {
                orchestra.warnings.push(format!(
                    "live layer: `{op}` no longer applies ({e}); skipped"
                ));
            }
        }
    }
}

fn block_exists(orchestra: &Orchestra, name: &str) -> Result<(), ModelError> {
    if orchestra.blocks.iter().any(|b| b.name == name) {
        return Ok(());
    }
    let names = orchestra.blocks.iter().map(|b| b.name.as_str());
    Err(ModelError::at(
        None,
        format!(
            "no block `{name}`{}",
            crate::names::did_you_mean(name, names)
        ),
    ))
}

/// A new live change that did not apply: its place among the changes asked, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refused {
    pub index: usize,
    pub why: String,
}

/// Apply new changes one after the other; one that does not apply changes nothing and is
/// refused.
pub fn apply_new(changes: &[LiveOp], orchestra: &mut Orchestra, base_dir: &Path) -> Vec<Refused> {
    changes
        .iter()
        .enumerate()
        .filter_map(|(index, op)| {
            let applied = apply_op(op, orchestra, base_dir);
            applied.err().map(|e| Refused {
                index,
                why: format!("{op}: {e}"),
            })
        })
        .collect()
}

/// Apply one new change; an error leaves `orchestra` as it was.
pub fn apply_op(op: &LiveOp, orchestra: &mut Orchestra, base_dir: &Path) -> Result<(), ModelError> {
    apply(op, orchestra, base_dir, Applying::New)
}

/// A change as it is first made, or laid over the script again from the layer.
#[derive(Clone, Copy, PartialEq)]
enum Applying {
    /// It must change something: a disconnect or remove of what is not there is an error.
    New,
    /// It says how the orchestra differs from the script: what it removes being absent
    /// already (the script changed, or the layer was folded) is what it wants.
    Replayed,
}

fn apply(
    op: &LiveOp,
    orchestra: &mut Orchestra,
    base_dir: &Path,
    applying: Applying,
) -> Result<(), ModelError> {
    let absent = |name: &str| !orchestra.blocks.iter().any(|b| b.name == name);
    match op {
        LiveOp::Disconnect { from, to }
            if applying == Applying::Replayed && (absent(&from.block) || absent(&to.block)) =>
        {
            return Ok(())
        }
        LiveOp::Remove { name } if applying == Applying::Replayed && absent(name) => return Ok(()),
        _ => {}
    }
    match op {
        LiveOp::Set {
            block,
            param,
            value,
        } => {
            block_exists(orchestra, block)?;
            let target = orchestra
                .blocks
                .iter_mut()
                .find(|b| b.name == *block)
                .expect("checked above");
            target.params.insert(param.clone(), value.clone());
        }
        LiveOp::Connect { from, to } => {
            block_exists(orchestra, &from.block)?;
            block_exists(orchestra, &to.block)?;
            let exists = orchestra
                .connections
                .iter()
                .any(|c| c.from == *from && c.to == *to);
            if !exists {
                orchestra.connections.push(Connection {
                    from: from.clone(),
                    to: to.clone(),
                    location: None,
                });
            }
        }
        LiveOp::Disconnect { from, to } => {
            block_exists(orchestra, &from.block)?;
            block_exists(orchestra, &to.block)?;
            let covers = |want: &Endpoint, have: &Endpoint| {
                want.block == have.block && (want.port.is_none() || want.port == have.port)
            };
            let before = orchestra.connections.len();
            orchestra
                .connections
                .retain(|c| !(covers(from, &c.from) && covers(to, &c.to)));
            if orchestra.connections.len() == before && applying == Applying::New {
                return Err(ModelError::at(
                    None,
                    format!("no connection {from} → {to} to remove"),
                ));
            }
        }
        LiveOp::Add { name, module, host } => {
            if !crate::names::is_valid_name(name) {
                return Err(ModelError::at(
                    None,
                    format!("`{name}` is not a block name (letters, digits, `_`, `-`)"),
                ));
            }
            if orchestra.blocks.iter().any(|b| b.name == *name) {
                return Err(ModelError::at(
                    None,
                    format!("block `{name}` exists already"),
                ));
            }
            orchestra.blocks.push(Block {
                name: name.clone(),
                module: module.clone(),
                params: Default::default(),
                host: host.clone(),
                fade_ms: None,
                location: None,
            });
        }
        LiveOp::Remove { name } => {
            block_exists(orchestra, name)?;
            orchestra.blocks.retain(|b| b.name != *name);
            orchestra
                .connections
                .retain(|c| c.from.block != *name && c.to.block != *name);
        }
        LiveOp::Eval { code } => {
            let (blocks, connections) = super::eval_snippet(code, "live", base_dir)?;
            let mut next = orchestra.clone();
            for block in blocks {
                next.blocks.retain(|b| b.name != block.name);
                next.blocks.push(block);
            }
            for connection in connections {
                block_exists(&next, &connection.from.block)?;
                block_exists(&next, &connection.to.block)?;
                next.connections.push(connection);
            }
            *orchestra = next;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn orchestra() -> Orchestra {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("song.lua");
        std::fs::write(
            &path,
            "local osc = block \"osc\" { module = \"sine\" }\nlocal out = block \"out\" { module = \"dac\" }\nosc >> out\n",
        )
        .unwrap();
        crate::script::eval_script(&path).unwrap()
    }

    fn end(block: &str) -> Endpoint {
        Endpoint {
            block: block.into(),
            port: None,
        }
    }

    #[test]
    fn set_connect_add_remove_and_eval_change_the_model() {
        let mut o = orchestra();
        let here = Path::new(".");
        apply_op(
            &LiveOp::Set {
                block: "osc".into(),
                param: "freq".into(),
                value: 660.0.into(),
            },
            &mut o,
            here,
        )
        .unwrap();
        assert_eq!(o.blocks[0].params["freq"], 660.0);
        apply_op(
            &LiveOp::Add {
                name: "osc2".into(),
                module: "sine".into(),
                host: None,
            },
            &mut o,
            here,
        )
        .unwrap();
        apply_op(
            &LiveOp::Connect {
                from: end("osc2"),
                to: end("out"),
            },
            &mut o,
            here,
        )
        .unwrap();
        assert_eq!(o.connections.len(), 2);
        apply_op(
            &LiveOp::Disconnect {
                from: end("osc"),
                to: end("out"),
            },
            &mut o,
            here,
        )
        .unwrap();
        assert_eq!(o.connections.len(), 1);
        apply_op(
            &LiveOp::Eval {
                code:
                    "block \"osc3\" { module = \"sine\", freq = 220 }\nconnect(\"osc3\", \"out\")"
                        .into(),
            },
            &mut o,
            here,
        )
        .unwrap();
        assert!(o.blocks.iter().any(|b| b.name == "osc3"));
        apply_op(
            &LiveOp::Remove {
                name: "osc2".into(),
            },
            &mut o,
            here,
        )
        .unwrap();
        assert!(o.connections.iter().all(|c| c.from.block != "osc2"));
    }

    #[test]
    fn a_bad_change_is_an_error_and_changes_nothing() {
        let mut o = orchestra();
        let before = o.clone();
        let here = Path::new(".");
        let err = apply_op(
            &LiveOp::Set {
                block: "oss".into(),
                param: "freq".into(),
                value: 1.into(),
            },
            &mut o,
            here,
        )
        .unwrap_err();
        assert!(err.to_string().contains("did you mean `osc`"), "{err}");
        let err = apply_op(
            &LiveOp::Eval {
                code: "block \"x\" { module = \"sine\" }\nconnect(\"x\", \"nowhere\")".into(),
            },
            &mut o,
            here,
        )
        .unwrap_err();
        assert!(err.to_string().contains("nowhere"), "{err}");
        let err = apply_op(
            &LiveOp::Eval {
                code: "block \"y\" {".into(),
            },
            &mut o,
            here,
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("live:1:"), "{err}");
        assert_eq!(o, before);
    }

    #[test]
    fn the_layer_survives_a_script_that_dropped_its_block_with_a_warning() {
        let mut o = orchestra();
        let layer = LiveLayer {
            ops: vec![LiveOp::Set {
                block: "gone".into(),
                param: "freq".into(),
                value: 1.into(),
            }],
        };
        layer.apply(&mut o, Path::new("."));
        assert!(
            o.warnings[0].contains("no longer applies"),
            "{:?}",
            o.warnings
        );
    }

    /// The orchestra a layer gives over `base`, as a comparable value: its blocks and
    /// connections (their order is the order of the changes, which folding keeps).
    fn laid_over(base: &Orchestra, layer: &LiveLayer) -> (Vec<Block>, Vec<(Endpoint, Endpoint)>) {
        let mut o = base.clone();
        layer.apply(&mut o, Path::new("."));
        let connections = o.connections.into_iter().map(|c| (c.from, c.to)).collect();
        (o.blocks, connections)
    }

    fn script(text: &str) -> Orchestra {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("song.lua");
        std::fs::write(&path, text).unwrap();
        crate::script::eval_script(&path).unwrap()
    }

    fn any_op() -> impl proptest::strategy::Strategy<Value = LiveOp> {
        use proptest::prelude::*;
        let name = prop::sample::select(vec!["a", "b", "out", "n", "m"]);
        let end = (name.clone(), prop::option::of(1u32..2)).prop_map(|(b, port)| Endpoint {
            block: b.to_string(),
            port,
        });
        prop_oneof![
            4 => (name.clone(), prop::sample::select(vec!["freq", "amp"]), 0..4i32).prop_map(
                |(b, p, v)| LiveOp::Set { block: b.into(), param: p.into(), value: v.into() }
            ),
            3 => (end.clone(), end.clone()).prop_map(|(from, to)| LiveOp::Connect { from, to }),
            3 => (end.clone(), end).prop_map(|(from, to)| LiveOp::Disconnect { from, to }),
            2 => name.clone().prop_map(|n| LiveOp::Add { name: n.into(), module: "sine".into(), host: None }),
            2 => name.prop_map(|n| LiveOp::Remove { name: n.into() }),
            1 => prop::sample::select(vec![
                "block \"m\" { module = \"sine\", freq = 3 }",
                "connect(\"a\", \"out\")",
            ])
            .prop_map(|code| LiveOp::Eval { code: code.into() }),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]
        /// Folding never changes what the layer does: over the script it was made on, and over
        /// scripts edited since (a block dropped, one added), the folded layer gives the
        /// orchestra the whole history gives.
        #[test]
        fn the_folded_layer_gives_what_the_whole_history_gives(ops in proptest::collection::vec(any_op(), 0..40)) {
            let base = script(
                "local a = block \"a\" { module = \"sine\" }\nlocal b = block \"b\" { module = \"lp\" }\nlocal out = block \"out\" { module = \"dac\" }\na >> b >> out\n",
            );
            // As the live loop makes it: only what applied over the layer so far joins it.
            let (mut history, mut folded) = (LiveLayer::default(), LiveLayer::default());
            let mut now = base.clone();
            for op in ops {
                if apply_op(&op, &mut now, Path::new(".")).is_ok() {
                    history.ops.push(op.clone());
                    folded.push(op);
                }
            }
            proptest::prop_assert!(folded.ops.len() <= history.ops.len());
            let edited = [
                base.clone(),
                script("local a = block \"a\" { module = \"sine\" }\nlocal out = block \"out\" { module = \"dac\" }\na >> out\n"),
                script("local a = block \"a\" { module = \"sine\" }\nlocal b = block \"b\" { module = \"lp\" }\nlocal n = block \"n\" { module = \"sine\" }\nlocal out = block \"out\" { module = \"dac\" }\na >> b >> out\nn >> out\n"),
            ];
            for script in &edited {
                proptest::prop_assert_eq!(laid_over(script, &folded), laid_over(script, &history), "{:?}", folded.ops);
            }
        }
    }

    #[test]
    fn a_show_of_sets_leaves_one_per_param() {
        let mut layer = LiveLayer::default();
        for i in 0..7200 {
            layer.push(LiveOp::Set {
                block: ["osc", "filt"][i % 2].into(),
                param: ["freq", "amp", "cutoff"][i % 3].into(),
                value: (i as f64).into(),
            });
        }
        assert_eq!(layer.ops.len(), 6);
        assert_eq!(
            layer.ops.last(),
            Some(&LiveOp::Set {
                block: "filt".into(),
                param: "cutoff".into(),
                value: 7199.0.into()
            })
        );
    }

    #[test]
    fn toggled_connections_and_blocks_leave_one_change_each() {
        let mut layer = LiveLayer::default();
        let (from, to) = (end("osc"), end("out"));
        for _ in 0..100 {
            layer.push(LiveOp::Connect {
                from: from.clone(),
                to: to.clone(),
            });
            layer.push(LiveOp::Disconnect {
                from: from.clone(),
                to: to.clone(),
            });
            layer.push(LiveOp::Add {
                name: "pad".into(),
                module: "sine".into(),
                host: None,
            });
            layer.push(LiveOp::Set {
                block: "pad".into(),
                param: "freq".into(),
                value: 1.into(),
            });
            layer.push(LiveOp::Remove { name: "pad".into() });
        }
        assert_eq!(
            layer.ops,
            vec![
                LiveOp::Disconnect { from, to },
                LiveOp::Remove { name: "pad".into() }
            ]
        );
    }

    #[test]
    fn a_connection_made_again_after_a_wider_disconnect_is_kept() {
        let one = |block: &str| Endpoint {
            block: block.into(),
            port: Some(1),
        };
        let mut layer = LiveLayer::default();
        let connect = LiveOp::Connect {
            from: one("osc"),
            to: one("out"),
        };
        layer.push(connect.clone());
        // Every connection from osc to out, the one above among them.
        layer.push(LiveOp::Disconnect {
            from: end("osc"),
            to: end("out"),
        });
        layer.push(connect.clone());
        assert_eq!(layer.ops.last(), Some(&connect), "{:?}", layer.ops);
    }
}
