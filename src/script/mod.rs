//! Orchestra scripts: evaluate a Lua script (the `block`/`host`/`connect`/`>>` DSL) in the
//! sandbox, or read the prototype's JSON, into an `Orchestra`. Records every file it read.

pub mod bounded;
pub mod layer;
pub mod prototype;
pub mod sandbox;

use crate::deploy::jack_ports;
use crate::model::{
    AudioSettings, Block, Connection, Endpoint, Host, Location, ModelError, NetworkSettings,
    Orchestra,
};
use crate::names::{did_you_mean, is_valid_name};
use mlua::{Lua, MetaMethod, UserData, UserDataMethods, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The global functions a script may call; `lua/types/orchestra.d.lua` annotates each.
pub const API_FUNCTIONS: &[&str] = &[
    "block", "host", "connect", "audio", "network", "latency", "require",
];

/// Read an orchestra: `.json` is the prototype's synthdef, anything else a Lua script.
/// `hosts` is an optional hosts file (Lua or the prototype's slaves.json). Evaluated in the
/// worker process of [`bounded`], so it ends whatever the script does.
pub fn load_orchestra(path: &Path, hosts: Option<&Path>) -> Result<Orchestra, ModelError> {
    bounded::load_orchestra(path, hosts, &Default::default()).map_err(Into::into)
}

/// Read a hosts file (Lua or the prototype's slaves.json), in the worker process.
pub fn load_hosts(
    path: &Path,
    warnings: &mut Vec<String>,
) -> Result<(Vec<Host>, Option<AudioSettings>), ModelError> {
    bounded::load_hosts(path, warnings).map_err(Into::into)
}

impl From<bounded::EvalError> for ModelError {
    fn from(e: bounded::EvalError) -> Self {
        match e {
            bounded::EvalError::Script { location, message } => ModelError { location, message },
            other => ModelError::at(None, other.to_string()),
        }
    }
}

/// [`load_orchestra`] in this process: for the worker itself and for pure unit tests. Only
/// the sandbox's own limits hold here.
pub fn load_orchestra_in_process(
    path: &Path,
    hosts: Option<&Path>,
) -> Result<Orchestra, ModelError> {
    let mut orchestra = if is_json(path) {
        prototype::load_synthdef(path)?
    } else {
        eval_script(path)?
    };
    if let Some(hosts_path) = hosts {
        let (hosts, audio) = load_hosts_in_process(hosts_path, &mut orchestra.warnings)?;
        if hosts.is_empty() {
            let at = Location {
                file: hosts_path.display().to_string(),
                line: 0,
            };
            return Err(ModelError::at(
                Some(&at),
                "declares no hosts (e.g. host \"h1\" { address = \"10.0.0.4\", cores = 2 })",
            ));
        }
        orchestra.add_hosts(hosts)?;
        if let Some(audio) = audio {
            orchestra.audio = audio;
        }
        orchestra.files.push(hosts_path.to_path_buf());
    }
    Ok(orchestra)
}

/// Read a hosts file: `host "h1" { … }` entries in Lua, or the prototype's slaves.json; in
/// this process (see [`load_orchestra_in_process`]).
pub fn load_hosts_in_process(
    path: &Path,
    warnings: &mut Vec<String>,
) -> Result<(Vec<Host>, Option<AudioSettings>), ModelError> {
    if is_json(path) {
        return Ok((prototype::load_slaves(path, warnings)?, None));
    }
    let built = eval_file(path)?;
    if let Some(block) = built.blocks.first() {
        return Err(ModelError::at(
            block.location.as_ref(),
            "a hosts file declares hosts (and audio settings), not blocks",
        ));
    }
    Ok((built.hosts, built.audio))
}

fn is_json(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
}

/// The orchestra's name: the script's file stem, made a valid name.
pub fn orchestra_name(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "orchestra".into());
    let name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(crate::names::MAX_NAME_LEN)
        .collect();
    if name.is_empty() {
        "orchestra".into()
    } else {
        name
    }
}

/// Evaluate a Lua orchestra script.
pub fn eval_script(path: &Path) -> Result<Orchestra, ModelError> {
    let built = eval_file(path)?;
    Ok(orchestra_of(path, built))
}

/// The script stage in memory, for pure tests: `script` (and the hosts file `hosts`, if any)
/// evaluated as if read from files of those names (errors say `song.lua:3: …`), in this
/// process. `require` looks in the current directory.
pub fn orchestra_from_text(
    name: &str,
    script: &str,
    hosts: Option<&str>,
) -> Result<Orchestra, ModelError> {
    let path = Path::new(name);
    let mut orchestra = orchestra_of(path, eval_source(script, path, PathBuf::from("."))?);
    if let Some(hosts) = hosts {
        let built = eval_source(hosts, Path::new("hosts.lua"), PathBuf::from("."))?;
        orchestra.add_hosts(built.hosts)?;
        if let Some(audio) = built.audio {
            orchestra.audio = audio;
        }
    }
    Ok(orchestra)
}

fn orchestra_of(path: &Path, built: Builder) -> Orchestra {
    Orchestra {
        name: orchestra_name(path),
        hosts: built.hosts,
        blocks: built.blocks,
        connections: built.connections,
        audio: built.audio.unwrap_or_default(),
        network: built.network.unwrap_or_default(),
        latency_max_ms: built.latency_max_ms,
        host_aliases: Default::default(),
        files: built.files,
        warnings: Vec::new(),
    }
}

/// Text without the UTF-8 byte order mark some Windows editors write at the start.
pub fn without_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

const LUA_KEYWORDS: &[&str] = &[
    "and", "break", "do", "else", "elseif", "end", "false", "for", "function", "goto", "if", "in",
    "local", "nil", "not", "or", "repeat", "return", "then", "true", "until", "while",
];

/// Lua has no expression statements, but the DSL writes `osc >> filt >> out` on a line of its
/// own. Such a line (it starts with a name, and has `>>` before any `=`) becomes `_ = osc >> …`
/// on the same line, so line numbers in errors stay true.
pub fn desugar_chains(source: &str) -> String {
    let mut out = String::with_capacity(source.len() + 64);
    for line in source.split_inclusive('\n') {
        let body = line.trim_start();
        let first_word: String = body
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let starts_with_name = body.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && !LUA_KEYWORDS.contains(&first_word.as_str());
        let is_chain = starts_with_name
            && body.find(">>").is_some_and(|shr| {
                let before = &body[..shr];
                !before.contains("--") && !assigns_at_top_level(before)
            });
        if is_chain {
            let indent = &line[..line.len() - body.len()];
            out.push_str(indent);
            out.push_str("_ = ");
            out.push_str(body);
        } else {
            out.push_str(line);
        }
    }
    out
}

/// Whether `code` has an assignment `=` outside brackets and strings: `x = a >> b` is already
/// a statement, while in `block "a" { freq = 1 } >> b` the `=` sits inside a table.
fn assigns_at_top_level(code: &str) -> bool {
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    let mut prev = ' ';
    let mut chars = code.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) if c == q && prev != '\\' => quote = None,
            Some(_) => {}
            None => match c {
                '"' | '\'' => quote = Some(c),
                '(' | '{' | '[' => depth += 1,
                ')' | '}' | ']' => depth -= 1,
                '=' if depth == 0 => {
                    let comparison = matches!(prev, '=' | '~' | '<' | '>');
                    if chars.peek() == Some(&'=') {
                        chars.next();
                    } else if !comparison {
                        return true;
                    }
                }
                _ => {}
            },
        }
        prev = c;
    }
    false
}

/// What the DSL functions collect while a script runs.
#[derive(Default)]
struct Builder {
    blocks: Vec<Block>,
    connections: Vec<Connection>,
    hosts: Vec<Host>,
    audio: Option<AudioSettings>,
    network: Option<NetworkSettings>,
    /// `latency { max_ms = … }`.
    latency_max_ms: Option<f64>,
    files: Vec<PathBuf>,
    /// The directory `require` resolves names in: the main script's.
    base_dir: PathBuf,
    /// Results of required files, so each is evaluated once.
    required: BTreeMap<PathBuf, mlua::RegistryKey>,
    /// Bytes the declarations hold on the Rust side, where Lua's memory limit does not look.
    held: usize,
}

/// The longest text a param may carry (a score or a patch fits; a memory bomb does not).
pub const MAX_TEXT_PARAM: usize = 64 * 1024;
/// The longest host field (address, user, key path).
const MAX_HOST_FIELD: usize = 1024;
/// What one declaration costs besides its text, for the budget below.
const DECLARATION_OVERHEAD: usize = 256;

impl Builder {
    /// Count `bytes` against the same budget as the Lua heap: declarations live in Rust memory
    /// that Lua's limit cannot see, and `pcall(block, …)` in a loop must not grow it unbounded.
    fn hold(&mut self, lua: &Lua, bytes: usize) -> mlua::Result<()> {
        self.held = self.held.saturating_add(bytes + DECLARATION_OVERHEAD);
        if self.held > sandbox::MEMORY_LIMIT {
            let at = sandbox::caller_location(lua);
            let message = ModelError::at(
                at.as_ref(),
                format!(
                    "the script declares more than {} MiB of blocks, connections and params",
                    sandbox::MEMORY_LIMIT / (1024 * 1024)
                ),
            );
            return Err(sandbox::trip(lua, message.to_string()));
        }
        Ok(())
    }
}

/// A Lua string as Rust text, refused without copying when it is longer than `max` bytes.
fn bounded_text(lua: &Lua, s: &mlua::String, max: usize, what: &str) -> mlua::Result<String> {
    let bytes = s.as_bytes();
    if bytes.len() > max {
        return Err(script_error(
            lua,
            format!(
                "{what} is {} bytes long; at most {max} are allowed",
                bytes.len()
            ),
        ));
    }
    Ok(s.to_str()?.to_string())
}

fn eval_file(path: &Path) -> Result<Builder, ModelError> {
    let file_location = Location {
        file: path.display().to_string(),
        line: 0,
    };
    let source = std::fs::read_to_string(path)
        .map_err(|e| ModelError::at(Some(&file_location), format!("cannot read: {e}")))?;
    let source = without_bom(&source);
    eval_source(
        source,
        path,
        path.parent().map(Path::to_path_buf).unwrap_or_default(),
    )
}

/// Lua code sent live (`/orchestra/eval`): the blocks and connections it declares, to lay
/// over the script's. `name` stands in for a file name in errors (`name:line: message`);
/// `require` resolves beside the script in `base_dir`.
pub fn eval_snippet(
    code: &str,
    name: &str,
    base_dir: &Path,
) -> Result<(Vec<Block>, Vec<Connection>), ModelError> {
    let built = eval_source(code, Path::new(name), base_dir.to_path_buf())?;
    if !built.hosts.is_empty() || built.audio.is_some() || built.network.is_some() {
        return Err(ModelError::at(
            None,
            format!("{name}: live code declares blocks and connections; hosts, audio and network come from the files"),
        ));
    }
    Ok((built.blocks, built.connections))
}

fn eval_source(source: &str, path: &Path, base_dir: PathBuf) -> Result<Builder, ModelError> {
    let file_location = Location {
        file: path.display().to_string(),
        line: 0,
    };
    let lua = sandbox::new_lua().map_err(|e| ModelError::at(None, e.to_string()))?;
    let builder = Builder {
        files: vec![path.to_path_buf()],
        base_dir,
        ..Default::default()
    };
    lua.set_app_data(builder);
    install_api(&lua).map_err(|e| ModelError::at(None, e.to_string()))?;
    let seen = sandbox::limit(&lua).map_err(|e| ModelError::at(None, e.to_string()))?;
    let result = lua
        .load(desugar_chains(source))
        .set_name(format!("@{}", path.display()))
        .exec();
    // The hook stays installed: finalizers that run when `lua` is dropped are held to it.
    if let Err(error) = result {
        return Err(lua_error(&error, &seen, &file_location));
    }
    let builder = lua
        .remove_app_data::<Builder>()
        .expect("builder installed above");
    Ok(builder)
}

/// Map a Lua error to `file:line: message`.
fn lua_error(error: &mlua::Error, seen: &sandbox::LastSeen, file: &Location) -> ModelError {
    if is_memory_error(error) {
        let at = seen.location().unwrap_or_else(|| file.clone());
        return ModelError::at(
            Some(&at),
            format!(
                "script used more than {} MiB of memory",
                sandbox::MEMORY_LIMIT / (1024 * 1024)
            ),
        );
    }
    let mut line = sandbox::first_line(error);
    // A misspelt DSL function: `blok "x"` → "attempt to call a nil value (global 'blok')".
    if let Some(name) = line
        .split("(global '")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
    {
        line.push_str(&did_you_mean(name, API_FUNCTIONS.iter().copied()));
    }
    // Lua already prefixes `file:line:` to syntax and runtime errors raised in Lua code.
    if line.contains(".lua:") || line.contains(".json:") || line.starts_with(&file.file) {
        ModelError::at(None, line)
    } else {
        ModelError::at(Some(file), line)
    }
}

fn is_memory_error(error: &mlua::Error) -> bool {
    match error {
        mlua::Error::MemoryError(_) => true,
        mlua::Error::CallbackError { cause, .. } | mlua::Error::WithContext { cause, .. } => {
            is_memory_error(cause)
        }
        _ => false,
    }
}

/// An error at the Lua caller's line.
fn script_error(lua: &Lua, message: impl Into<String>) -> mlua::Error {
    let at = sandbox::caller_location(lua);
    mlua::Error::RuntimeError(ModelError::at(at.as_ref(), message).to_string())
}

/// A block handle in Lua: `osc >> filt`, `osc:out(1)`, `filt:input(2)`.
#[derive(Clone)]
struct BlockHandle {
    name: String,
}

#[derive(Clone, Copy, PartialEq)]
enum Direction {
    Output,
    Input,
}

/// One port of a block in Lua, from `:out(i)` or `:input(i)`.
#[derive(Clone)]
struct PortHandle {
    block: String,
    port: u32,
    direction: Direction,
}

fn port_number(lua: &Lua, index: i64) -> mlua::Result<u32> {
    if !(1..=64).contains(&index) {
        return Err(script_error(
            lua,
            format!("port number must be from 1 to 64, not {index}"),
        ));
    }
    Ok(index as u32)
}

impl UserData for BlockHandle {
    fn add_fields<F: mlua::UserDataFields<Self>>(fields: &mut F) {
        fields.add_field_method_get("name", |_, this| Ok(this.name.clone()));
    }

    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        let output = |lua: &Lua, this: &BlockHandle, i: i64| {
            Ok(PortHandle {
                block: this.name.clone(),
                port: port_number(lua, i)?,
                direction: Direction::Output,
            })
        };
        methods.add_method("out", output);
        methods.add_method("output", output);
        methods.add_method("input", |lua, this, i: i64| {
            Ok(PortHandle {
                block: this.name.clone(),
                port: port_number(lua, i)?,
                direction: Direction::Input,
            })
        });
        methods.add_meta_method(MetaMethod::Shr, |lua, this, to: Value| {
            let from = Value::UserData(lua.create_userdata(this.clone())?);
            connect(lua, from, to.clone())?;
            Ok(to)
        });
        methods.add_meta_method(MetaMethod::ToString, |_, this, ()| {
            Ok(format!("block {}", this.name))
        });
    }
}

impl UserData for PortHandle {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_meta_method(MetaMethod::Shr, |lua, this, to: Value| {
            let from = Value::UserData(lua.create_userdata(this.clone())?);
            connect(lua, from, to.clone())?;
            Ok(to)
        });
        methods.add_meta_method(MetaMethod::ToString, |_, this, ()| {
            let kind = if this.direction == Direction::Output {
                "out"
            } else {
                "input"
            };
            Ok(format!("{}:{}({})", this.block, kind, this.port))
        });
    }
}

fn endpoint(lua: &Lua, value: &Value, side: Direction) -> mlua::Result<Endpoint> {
    let where_ = if side == Direction::Output {
        "source"
    } else {
        "destination"
    };
    if let Value::UserData(ud) = value {
        if let Ok(block) = ud.borrow::<BlockHandle>() {
            return Ok(Endpoint {
                block: block.name.clone(),
                port: None,
            });
        }
        if let Ok(port) = ud.borrow::<PortHandle>() {
            if port.direction != side {
                let (want, got) = if side == Direction::Output {
                    ("an output, e.g. `a:out(1)`", "an input")
                } else {
                    ("an input, e.g. `b:input(1)`", "an output")
                };
                return Err(script_error(
                    lua,
                    format!(
                        "connection {where_} must be a block or {want}, not {got} of `{}`",
                        port.block
                    ),
                ));
            }
            return Ok(Endpoint {
                block: port.block.clone(),
                port: Some(port.port),
            });
        }
    }
    if let Value::String(s) = value {
        // `connect("osc", "filt")` by name also works, and `"out:2"` names a port (live code
        // sent over OSC has no handles to the script's blocks).
        let text = bounded_text(
            lua,
            s,
            crate::names::MAX_NAME_LEN + 4,
            &format!("connection {where_}"),
        )?;
        return match text.split_once(':') {
            Some((block, port)) => match port.parse::<i64>() {
                Ok(n) => Ok(Endpoint {
                    block: block.to_string(),
                    port: Some(port_number(lua, n)?),
                }),
                Err(_) => Err(script_error(
                    lua,
                    format!("`{text}`: after `:` comes a port number, e.g. \"out:2\""),
                )),
            },
            None => Ok(Endpoint {
                block: text,
                port: None,
            }),
        };
    }
    Err(script_error(
        lua,
        format!(
            "connection {where_} must be a block (from `block \"name\" {{…}}`), not a {}",
            value.type_name()
        ),
    ))
}

fn connect(lua: &Lua, from: Value, to: Value) -> mlua::Result<()> {
    let from = endpoint(lua, &from, Direction::Output)?;
    let to = endpoint(lua, &to, Direction::Input)?;
    let location = sandbox::caller_location(lua);
    let mut builder = lua.app_data_mut::<Builder>().expect("builder");
    builder.hold(lua, from.block.len() + to.block.len())?;
    builder.connections.push(Connection { from, to, location });
    Ok(())
}

fn param_value(lua: &Lua, block: &str, key: &str, value: Value) -> mlua::Result<serde_json::Value> {
    Ok(match value {
        Value::Integer(i) => serde_json::Value::from(i),
        Value::Number(n) if n.is_finite() => serde_json::Value::from(n),
        Value::Number(n) => {
            return Err(script_error(
                lua,
                format!(
                    "block `{block}`: param `{key}` must be a finite number, not {}",
                    crate::names::lua_number(n)
                ),
            ))
        }
        Value::Boolean(b) => serde_json::Value::from(b),
        Value::String(s) => serde_json::Value::from(bounded_text(
            lua,
            &s,
            MAX_TEXT_PARAM,
            &format!("block `{block}`: param `{key}`"),
        )?),
        other => {
            return Err(script_error(
                lua,
                format!(
                    "block `{block}`: param `{key}` must be a number, string or boolean, not a {}",
                    other.type_name()
                ),
            ))
        }
    })
}

fn define_block(lua: &Lua, name: String, spec: mlua::Table) -> mlua::Result<BlockHandle> {
    let location = sandbox::caller_location(lua);
    let mut module = None;
    let mut host = None;
    let mut fade_ms = None;
    let mut params = BTreeMap::new();
    for pair in spec.pairs::<Value, Value>() {
        let (key, value) = pair?;
        let Value::String(key) = key else {
            return Err(script_error(
                lua,
                format!("block `{name}`: fields must be named, e.g. `freq = 440`"),
            ));
        };
        let key = bounded_text(lua, &key, crate::names::MAX_NAME_LEN, "a field name")?;
        match key.as_str() {
            "module" => match value {
                Value::String(s) => {
                    module = Some(bounded_text(
                        lua,
                        &s,
                        crate::names::MAX_NAME_LEN,
                        "`module`",
                    )?)
                }
                _ => {
                    return Err(script_error(
                        lua,
                        format!("block `{name}`: `module` must be a string"),
                    ))
                }
            },
            "host" => match value {
                Value::String(s) => {
                    host = Some(bounded_text(lua, &s, crate::names::MAX_NAME_LEN, "`host`")?)
                }
                _ => {
                    return Err(script_error(
                        lua,
                        format!("block `{name}`: `host` must be a host name string"),
                    ))
                }
            },
            "fade" => fade_ms = Some(fade_value(lua, &name, value)?),
            _ => {
                let v = param_value(lua, &name, &key, value)?;
                params.insert(key, v);
            }
        }
    }
    let Some(module) = module else {
        return Err(script_error(
            lua,
            format!("block `{name}` has no `module` (e.g. module = \"sine\")"),
        ));
    };
    let text: usize = params
        .iter()
        .map(|(k, v)| k.len() + v.as_str().map_or(16, str::len))
        .sum();
    let mut builder = lua.app_data_mut::<Builder>().expect("builder");
    builder.hold(lua, name.len() + module.len() + text)?;
    builder.blocks.push(Block {
        name: name.clone(),
        module,
        params,
        host,
        fade_ms,
        location,
    });
    Ok(BlockHandle { name })
}

/// `fade = 20`: milliseconds, whole or not (rounded), from 0 to `MAX_FADE_MS`.
fn fade_value(lua: &Lua, block: &str, value: Value) -> mlua::Result<u32> {
    let ms = match value {
        Value::Integer(n) => Some(n as f64),
        Value::Number(n) => Some(n),
        _ => None,
    };
    match ms {
        Some(ms) if (0.0..=f64::from(crate::model::MAX_FADE_MS)).contains(&ms) => {
            Ok(ms.round() as u32)
        }
        _ => Err(script_error(
            lua,
            format!(
                "block `{block}`: `fade` must be a number of milliseconds from 0 to {} (e.g. fade = 20; 0 switches at once)",
                crate::model::MAX_FADE_MS
            ),
        )),
    }
}

const HOST_FIELDS: &[&str] = &[
    "address",
    "user",
    "port",
    "cores",
    "identity",
    "jack_driver",
    "jack_device",
    "jack_ports",
];

fn define_host(lua: &Lua, name: String, spec: mlua::Table) -> mlua::Result<Value> {
    let location = sandbox::caller_location(lua);
    for pair in spec.pairs::<Value, Value>() {
        let (key, _) = pair?;
        let key = match &key {
            Value::String(s) => bounded_text(lua, s, crate::names::MAX_NAME_LEN, "a field name")?,
            other => other.to_string()?,
        };
        if !HOST_FIELDS.contains(&key.as_str()) {
            return Err(script_error(
                lua,
                format!(
                    "host `{name}`: unknown field `{key}`{} (fields: {})",
                    did_you_mean(&key, HOST_FIELDS.iter().copied()),
                    HOST_FIELDS.join(", ")
                ),
            ));
        }
    }
    let text = |field: &str| -> mlua::Result<Option<String>> {
        match spec.get::<Value>(field)? {
            Value::Nil => Ok(None),
            Value::String(s) => Ok(Some(bounded_text(
                lua,
                &s,
                MAX_HOST_FIELD,
                &format!("host `{name}`: `{field}`"),
            )?)),
            _ => Err(script_error(
                lua,
                format!("host `{name}`: `{field}` must be a string"),
            )),
        }
    };
    let number = |field: &str, default: i64, max: i64| -> mlua::Result<i64> {
        match spec.get::<Value>(field)? {
            Value::Nil => Ok(default),
            Value::Integer(i) if (0..=max).contains(&i) => Ok(i),
            other => Err(script_error(
                lua,
                format!(
                    "host `{name}`: `{field}` must be a whole number from 0 to {max}, not {}",
                    other.to_string().unwrap_or_default()
                ),
            )),
        }
    };
    let Some(address) = text("address")? else {
        return Err(script_error(lua, format!("host `{name}` has no `address`")));
    };
    // Passed to jackd as single arguments (never through a shell); still kept plain.
    let plain = |field: &str| -> mlua::Result<Option<String>> {
        let value = text(field)?;
        if let Some(v) = &value {
            if v.is_empty()
                || !v
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ":,._-".contains(c))
            {
                return Err(script_error(
                    lua,
                    format!(
                        "host `{name}`: `{field}` `{v}` may hold only letters, digits and `:,._-`"
                    ),
                ));
            }
        }
        Ok(value)
    };
    let ports = match number("jack_ports", 0, i64::from(jack_ports::MOST))? {
        0 => None,
        n if n < 16 => {
            return Err(script_error(
                lua,
                format!("host `{name}`: `jack_ports` {n} leaves no room for a sound card; give at least 16 (or leave it out: sized to the orchestra)"),
            ))
        }
        n => Some(n as u32),
    };
    let jack = crate::model::JackHost {
        driver: plain("jack_driver")?,
        device: plain("jack_device")?,
        ports,
    };
    let host = Host {
        name: name.clone(),
        address,
        user: text("user")?,
        port: number("port", 22, 65535)? as u16,
        cores: number("cores", 1, 4096)? as u32,
        identity: text("identity")?,
        local: false,
        jack,
        location,
    };
    let mut builder = lua.app_data_mut::<Builder>().expect("builder");
    builder.hold(lua, host.address.len() + name.len())?;
    builder.hosts.push(host);
    Ok(Value::Nil)
}

fn define_audio(lua: &Lua, spec: mlua::Table) -> mlua::Result<()> {
    let mut audio = AudioSettings::default();
    for pair in spec.pairs::<mlua::String, Value>() {
        let (key, value) = pair?;
        let key = bounded_text(lua, &key, crate::names::MAX_NAME_LEN, "a field name")?;
        let n = match value {
            Value::Integer(i) if i > 0 && i <= 384_000 => i as u32,
            _ => {
                return Err(script_error(
                    lua,
                    format!("audio: `{key}` must be a positive whole number"),
                ))
            }
        };
        match key.as_str() {
            "rate" => audio.rate = n,
            "period" => audio.period = n,
            _ => {
                return Err(script_error(
                    lua,
                    format!(
                        "audio: unknown field `{key}`{}",
                        did_you_mean(&key, ["rate", "period"])
                    ),
                ))
            }
        }
    }
    if !audio.period.is_power_of_two() {
        return Err(script_error(
            lua,
            format!("audio: period {} must be a power of two", audio.period),
        ));
    }
    lua.app_data_mut::<Builder>().expect("builder").audio = Some(audio);
    Ok(())
}

/// jacktrip's jitter buffers (`--bufstrategy`) this runtime accepts.
const STRATEGIES: std::ops::RangeInclusive<i64> = 0..=3;

fn define_network(lua: &Lua, spec: mlua::Table) -> mlua::Result<()> {
    // Each call sets what it names; the fields an earlier call set stay.
    let mut network = lua
        .app_data_ref::<Builder>()
        .expect("builder")
        .network
        .clone()
        .unwrap_or_default();
    for pair in spec.pairs::<mlua::String, Value>() {
        let (key, value) = pair?;
        let key = bounded_text(lua, &key, crate::names::MAX_NAME_LEN, "a field name")?;
        let whole = |range: std::ops::RangeInclusive<i64>| {
            whole_in(lua, &format!("network: `{key}`"), &value, range)
        };
        match key.as_str() {
            "queue" => network.queue = whole(QUEUES)? as u32,
            "strategy" => network.strategy = Some(whole(STRATEGIES)? as u8),
            "first_port" => network.first_port = whole(1..=65535)? as u16,
            "last_port" => network.last_port = whole(1..=65535)? as u16,
            "osc_first_port" => network.osc_first_port = whole(1..=65535)? as u16,
            "osc_last_port" => network.osc_last_port = whole(1..=65535)? as u16,
            "links" => network.links = link_rules(lua, value)?,
            _ => {
                return Err(script_error(
                    lua,
                    format!(
                        "network: unknown field `{key}`{}",
                        did_you_mean(
                            &key,
                            [
                                "queue",
                                "strategy",
                                "links",
                                "first_port",
                                "last_port",
                                "osc_first_port",
                                "osc_last_port"
                            ]
                        )
                    ),
                ))
            }
        }
    }
    for (first, last, what) in [
        (network.first_port, network.last_port, ""),
        (network.osc_first_port, network.osc_last_port, "osc_"),
    ] {
        if first > last {
            return Err(script_error(
                lua,
                format!("network: {what}first_port {first} is above {what}last_port {last}"),
            ));
        }
    }
    lua.app_data_mut::<Builder>().expect("builder").network = Some(network);
    Ok(())
}

/// `latency { max_ms = 20 }`: the most a source's sound may take to reach a `dac` (a warning
/// in `plan` and `run` when a placement exceeds it, an error with `--strict`).
fn define_latency(lua: &Lua, spec: mlua::Table) -> mlua::Result<()> {
    let mut max_ms = None;
    for pair in spec.pairs::<mlua::String, Value>() {
        let (key, value) = pair?;
        let key = bounded_text(lua, &key, crate::names::MAX_NAME_LEN, "a field name")?;
        match (key.as_str(), value) {
            ("max_ms", Value::Integer(n)) if n > 0 => max_ms = Some(n as f64),
            ("max_ms", Value::Number(n)) if n.is_finite() && n > 0.0 => max_ms = Some(n),
            ("max_ms", _) => {
                return Err(script_error(
                    lua,
                    "latency: `max_ms` must be a number of milliseconds above 0",
                ))
            }
            _ => {
                return Err(script_error(
                    lua,
                    format!(
                        "latency: unknown field `{key}`{}",
                        did_you_mean(&key, ["max_ms"])
                    ),
                ))
            }
        }
    }
    let Some(max_ms) = max_ms else {
        return Err(script_error(
            lua,
            "latency: needs `max_ms`, e.g. latency { max_ms = 20 }",
        ));
    };
    lua.app_data_mut::<Builder>()
        .expect("builder")
        .latency_max_ms = Some(max_ms);
    Ok(())
}

/// jacktrip's receive queue, in packets (`-q`: it refuses fewer than 2).
const QUEUES: std::ops::RangeInclusive<i64> = 2..=1024;

/// A whole number in `range`, or `what must be a whole number from … to …`.
fn whole_in(
    lua: &Lua,
    what: &str,
    value: &Value,
    range: std::ops::RangeInclusive<i64>,
) -> mlua::Result<i64> {
    match value {
        Value::Integer(i) if range.contains(i) => Ok(*i),
        _ => Err(script_error(
            lua,
            format!(
                "{what} must be a whole number from {} to {}",
                range.start(),
                range.end()
            ),
        )),
    }
}

/// `links = { { from = "h1", to = "h3", queue = 8, strategy = 1 }, … }`: per pair of hosts.
fn link_rules(lua: &Lua, value: Value) -> mlua::Result<Vec<crate::model::LinkRule>> {
    let shape =
        "network: `links` must be a list of tables like { from = \"h1\", to = \"h2\", queue = 8 }";
    let Value::Table(list) = value else {
        return Err(script_error(lua, shape));
    };
    // A rule written without its braces (`links = { to = "h2" }`) is a table, not a list.
    if list.pairs::<Value, Value>().count() != list.raw_len() {
        return Err(script_error(lua, shape));
    }
    let location = sandbox::caller_location(lua);
    let mut rules = Vec::new();
    for (n, item) in list.sequence_values::<Value>().enumerate() {
        let Value::Table(spec) = item? else {
            return Err(script_error(lua, shape));
        };
        let mut rule = crate::model::LinkRule {
            from: None,
            to: None,
            queue: None,
            strategy: None,
            location: location.clone(),
        };
        for pair in spec.pairs::<mlua::String, Value>() {
            let (key, value) = pair?;
            let key = bounded_text(lua, &key, crate::names::MAX_NAME_LEN, "a field name")?;
            let what = format!("network: links[{}]: `{key}`", n + 1);
            match key.as_str() {
                "from" | "to" => {
                    let Value::String(host) = &value else {
                        return Err(script_error(lua, format!("{what} must be a host name")));
                    };
                    let host = bounded_text(lua, host, crate::names::MAX_NAME_LEN, "a host name")?;
                    if key == "from" {
                        rule.from = Some(host);
                    } else {
                        rule.to = Some(host);
                    }
                }
                "queue" => rule.queue = Some(whole_in(lua, &what, &value, QUEUES)? as u32),
                "strategy" => rule.strategy = Some(whole_in(lua, &what, &value, STRATEGIES)? as u8),
                _ => {
                    return Err(script_error(
                        lua,
                        format!(
                            "network: links[{}]: unknown field `{key}`{}",
                            n + 1,
                            did_you_mean(&key, ["from", "to", "queue", "strategy"])
                        ),
                    ))
                }
            }
        }
        if rule.queue.is_none() && rule.strategy.is_none() {
            return Err(script_error(
                lua,
                format!(
                    "network: links[{}] sets neither `queue` nor `strategy`",
                    n + 1
                ),
            ));
        }
        rules.push(rule);
    }
    Ok(rules)
}

/// `name "x" { … }` and `name("x", { … })` both work: with one argument return a function
/// that takes the table.
fn named_constructor<R: mlua::IntoLua + 'static>(
    lua: &Lua,
    kind: &'static str,
    define: fn(&Lua, String, mlua::Table) -> mlua::Result<R>,
) -> mlua::Result<mlua::Function> {
    lua.create_function(move |lua, (name, spec): (Value, Option<mlua::Table>)| {
        let name = match name {
            Value::String(s) if s.as_bytes().len() > crate::names::MAX_NAME_LEN => {
                return Err(script_error(
                    lua,
                    format!(
                        "{kind} name is {} characters long; at most {} are allowed",
                        s.as_bytes().len(),
                        crate::names::MAX_NAME_LEN
                    ),
                ))
            }
            Value::String(s) => s.to_str()?.to_string(),
            other => {
                return Err(script_error(
                    lua,
                    format!(
                        "{kind} needs a name string, e.g. {kind} \"x\" {{…}}, not a {}",
                        other.type_name()
                    ),
                ))
            }
        };
        if !is_valid_name(&name) {
            return Err(script_error(
                lua,
                crate::names::invalid_name_reason(kind, &name),
            ));
        }
        match spec {
            Some(spec) => Ok(mlua::Either::Left(define(lua, name, spec)?)),
            None => {
                let f = lua.create_function(move |lua, spec: Value| match spec {
                    Value::Table(t) => define(lua, name.clone(), t),
                    other => Err(script_error(
                        lua,
                        format!(
                            "{kind} `{name}` needs a table, e.g. {{ module = \"sine\" }}, not a {}",
                            other.type_name()
                        ),
                    )),
                })?;
                Ok(mlua::Either::Right(f))
            }
        }
    })
}

fn install_api(lua: &Lua) -> mlua::Result<()> {
    let g = lua.globals();
    g.set("block", named_constructor(lua, "block", define_block)?)?;
    g.set("host", named_constructor(lua, "host", define_host)?)?;
    g.set(
        "connect",
        lua.create_function(|lua, (a, b): (Value, Value)| connect(lua, a, b))?,
    )?;
    g.set(
        "audio",
        lua.create_function(|lua, spec: mlua::Table| define_audio(lua, spec))?,
    )?;
    g.set(
        "network",
        lua.create_function(|lua, spec: mlua::Table| define_network(lua, spec))?,
    )?;
    g.set(
        "latency",
        lua.create_function(|lua, spec: mlua::Table| define_latency(lua, spec))?,
    )?;
    g.set("require", lua.create_function(require)?)?;
    Ok(())
}

/// `require "name"` loads `name.lua` (dots are folders) or `name/init.lua` beside the script,
/// once, and records the file so a watcher can follow it.
fn require(lua: &Lua, name: mlua::String) -> mlua::Result<Value> {
    let name = bounded_text(lua, &name, 256, "require: the module name")?;
    if name.is_empty()
        || name.starts_with('.')
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
    {
        return Err(script_error(
            lua,
            format!("require: `{name}` is not a module name (letters, digits, `_`, `-`, `.`)"),
        ));
    }
    let base = lua
        .app_data_ref::<Builder>()
        .expect("builder")
        .base_dir
        .clone();
    let rel = name.replace('.', "/");
    let candidates = [
        base.join(format!("{rel}.lua")),
        base.join(&rel).join("init.lua"),
    ];
    let Some(path) = candidates.iter().find(|p| p.is_file()).cloned() else {
        return Err(script_error(
            lua,
            format!(
                "require: no `{}` or `{}`",
                candidates[0].display(),
                candidates[1].display()
            ),
        ));
    };
    if let Some(key) = lua
        .app_data_ref::<Builder>()
        .expect("builder")
        .required
        .get(&path)
    {
        return lua.registry_value(key);
    }
    let source = std::fs::read_to_string(&path)
        .map_err(|e| script_error(lua, format!("require: cannot read {}: {e}", path.display())))?;
    let source = without_bom(&source);
    lua.app_data_mut::<Builder>()
        .expect("builder")
        .files
        .push(path.clone());
    let value: Value = lua
        .load(desugar_chains(source))
        .set_name(format!("@{}", path.display()))
        .call(name)?;
    let value = if value.is_nil() {
        Value::Boolean(true)
    } else {
        value
    };
    let key = lua.create_registry_value(value.clone())?;
    lua.app_data_mut::<Builder>()
        .expect("builder")
        .required
        .insert(path, key);
    Ok(value)
}
