//! The live layer: changes sent over OSC (`/orchestra/set`, `connect`, `add`, `eval`, …),
//! kept in order and laid over the script's orchestra on every load, until `/orchestra/reset`.
//! It is persisted beside the state so `orchestra plan` shows it.

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

/// The changes made live, in the order they came.
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

    /// The layer saved beside the state, if any (an unreadable one is reported and dropped).
    pub fn load(dir: &Path, orchestra: &str) -> LiveLayer {
        match std::fs::read(layer_file(dir, orchestra)) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                eprintln!("warning: the live layer beside the state is unreadable ({e}); ignored");
                LiveLayer::default()
            }),
            Err(_) => LiveLayer::default(),
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
            if let Err(e) = apply_op(op, orchestra, base_dir) {
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

/// Apply one change; an error leaves `orchestra` as it was.
pub fn apply_op(op: &LiveOp, orchestra: &mut Orchestra, base_dir: &Path) -> Result<(), ModelError> {
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
            if orchestra.connections.len() == before {
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
}
