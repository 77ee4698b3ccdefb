//! Synth modules: manifests, the built-in library, user module folders, per-block template
//! rendering (minijinja) and engines (`lua/engines/<synth>.lua`: launch command and port names).

mod osc_message;
pub mod params;

pub use params::{ParamKind, ParamSpec};

use crate::script::sandbox;
use include_dir::{include_dir, Dir};
use orchestra_protocol::{LiveParam, PortRef};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

static BUILTIN_MODULES: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/modules");
static BUILTIN_ENGINES: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/lua/engines");

#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("{path}: {message}")]
    Manifest { path: String, message: String },
    #[error("{0}")]
    Io(String),
    #[error("module `{module}`: {file}:{line}: {message}")]
    Template {
        module: String,
        file: String,
        line: usize,
        message: String,
    },
    #[error("engine `{engine}`: {message}")]
    Engine { engine: String, message: String },
}

/// How many ports a module has: fixed, or the value of one of its params (`mixer`'s `inputs`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PortCount {
    Fixed(u32),
    Param { param: String },
}

impl PortCount {
    pub fn resolve(&self, params: &BTreeMap<String, Value>) -> Result<u32, String> {
        match self {
            PortCount::Fixed(n) => Ok(*n),
            PortCount::Param { param } => match params.get(param).and_then(Value::as_u64) {
                Some(n) if n <= 64 => Ok(n as u32),
                _ => Err(format!(
                    "param `{param}` must be a whole number from 0 to 64, not {}",
                    params
                        .get(param)
                        .map(|v| v.to_string())
                        .unwrap_or("missing".into())
                )),
            },
        }
    }
}

fn one() -> PortCount {
    PortCount::Fixed(1)
}
fn one_core() -> u32 {
    1
}

/// `manifest.json`: the prototype's `synth`, `main`, `module`, plus ports, cpu and params.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub module: String,
    /// Engine name: `lua/engines/<synth>.lua`.
    pub synth: String,
    /// Main file, relative to the module folder (after rendering, without `.j2`).
    #[serde(default)]
    pub main: Option<String>,
    #[serde(default)]
    pub description: String,
    /// The prototype's modules are mono in, mono out: that is the default.
    #[serde(default = "one")]
    pub inputs: PortCount,
    #[serde(default = "one")]
    pub outputs: PortCount,
    /// Cores it needs; what the placement packs.
    #[serde(default = "one_core")]
    pub cpu: u32,
    /// Each param's default and kind (range, choices, pattern): see [`params`].
    #[serde(default)]
    pub params: BTreeMap<String, ParamSpec>,
    /// Listens for OSC (the runtime allocates a port for it).
    #[serde(default)]
    pub osc: bool,
    /// Free text, as the prototype's manifests sometimes carry.
    #[serde(default)]
    pub comment: Option<String>,
    /// For the `command` engine: the program to run and its arguments, each with `{client}`
    /// and `{<param>}` filled in (see lua/engines/command.lua).
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// For the `command` engine: the JACK ports the program registers, filled in the same way.
    #[serde(default)]
    pub ports: Option<CommandPorts>,
}

/// The port names a `command` module's program registers, port 1 first.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandPorts {
    #[serde(default)]
    pub inputs: Vec<String>,
    #[serde(default)]
    pub outputs: Vec<String>,
}

/// A module: its manifest and every file of its folder.
#[derive(Debug, Clone)]
pub struct Module {
    pub manifest: Manifest,
    /// Relative path → content, manifest excluded.
    pub files: BTreeMap<String, Vec<u8>>,
    /// `built-in` or the folder it was read from, for messages.
    pub origin: String,
    /// The `.j2` files parsed once, on first render: a deployment renders every block of a
    /// module with the same templates (parsing them per block was most of a deploy's time).
    templates: OnceLock<Result<Templates, TemplateFault>>,
}

/// A module's templates, parsed.
#[derive(Debug, Clone)]
struct Templates {
    env: minijinja::Environment<'static>,
    /// Some template reads `blocks` or `hosts` (where other blocks run): its render depends
    /// on the whole placement, not only on its own block.
    reads_others: bool,
}

/// A template that does not parse: (file, line, message), said as a [`ModuleError`].
#[derive(Debug, Clone)]
struct TemplateFault(String, usize, String);

impl Manifest {
    /// The params marked `"live": true`: sent to the running instance, not restarting it.
    pub fn live_params(&self) -> impl Iterator<Item = &str> {
        self.params
            .iter()
            .filter(|(_, spec)| spec.live)
            .map(|(name, _)| name.as_str())
    }

    /// `params` with each live one at its default: what the spec hash and the launch command
    /// are made from, so that a live change leaves both as they are.
    pub fn without_live_values(&self, params: &BTreeMap<String, Value>) -> BTreeMap<String, Value> {
        let mut masked = params.clone();
        for (name, spec) in self.params.iter().filter(|(_, spec)| spec.live) {
            masked.insert(name.clone(), spec.default.clone());
        }
        masked
    }

    /// Every param's default value.
    pub fn defaults(&self) -> BTreeMap<String, Value> {
        self.params
            .iter()
            .map(|(name, spec)| (name.clone(), spec.default.clone()))
            .collect()
    }
}

impl Module {
    pub fn name(&self) -> &str {
        &self.manifest.module
    }

    fn parse(
        origin: String,
        manifest: &[u8],
        files: BTreeMap<String, Vec<u8>>,
    ) -> Result<Module, ModuleError> {
        let manifest: Manifest =
            serde_json::from_slice(manifest).map_err(|e| ModuleError::Manifest {
                path: format!("{origin}/manifest.json:{}", e.line()),
                message: e.to_string(),
            })?;
        if !crate::names::is_valid_name(&manifest.module) {
            return Err(ModuleError::Manifest {
                path: format!("{origin}/manifest.json"),
                message: crate::names::invalid_name_reason("module", &manifest.module),
            });
        }
        let mut manifest = manifest;
        let first_live = manifest.live_params().next().map(str::to_string);
        if let Some(live) = first_live {
            // A live value is an OSC message to a command line's program, which has no port.
            if manifest.synth == "command" {
                return Err(ModuleError::Manifest {
                    path: format!("{origin}/manifest.json"),
                    message: format!(
                        "param `{live}` cannot be \"live\": a `command` module's program takes its params on its command line, so a change restarts it"
                    ),
                });
            }
            // Live values reach the instance over OSC, so it gets a port.
            manifest.osc = true;
        }
        if let Some(main) = &manifest.main {
            if !files.contains_key(main) {
                return Err(ModuleError::Manifest {
                    path: format!("{origin}/manifest.json"),
                    message: format!("main file `{main}` is not in the module folder"),
                });
            }
        }
        Ok(Module {
            manifest,
            files,
            origin,
            templates: OnceLock::new(),
        })
    }

    /// Whether a render of this module reads where other blocks and hosts are (`blocks`,
    /// `hosts`), not only its own block.
    pub fn reads_others(&self) -> Result<bool, ModuleError> {
        Ok(self.templates()?.reads_others)
    }

    /// What the module's files and engine are, as a digest: a render of the same block with
    /// the same fingerprint gives the same files.
    pub fn fingerprint(&self) -> String {
        let mut hasher = sha2::Sha256::new();
        use sha2::Digest;
        hasher.update(self.origin.as_bytes());
        hasher.update(format!("{:?}", self.manifest).as_bytes());
        for (path, bytes) in &self.files {
            hasher.update((path.len() as u64).to_le_bytes());
            hasher.update(path.as_bytes());
            hasher.update((bytes.len() as u64).to_le_bytes());
            hasher.update(bytes);
        }
        format!("{:x}", hasher.finalize())
    }

    /// Every `.j2` file of the module in one environment, each escaping text params for the
    /// language of the file it renders to (see [`params::escape`]).
    fn templates(&self) -> Result<&Templates, ModuleError> {
        let parsed = self.templates.get_or_init(|| {
            let mut env = minijinja::Environment::new();
            env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
            env.set_keep_trailing_newline(true);
            env.set_formatter(|out, state, value| match state.auto_escape() {
                minijinja::AutoEscape::Custom(language) if !value.is_safe() => {
                    let written = match value.as_str() {
                        Some(text) => out.write_str(&params::escape(language, text)),
                        None => write!(out, "{value}"),
                    };
                    written.map_err(|_| {
                        minijinja::Error::new(minijinja::ErrorKind::WriteFailure, "cannot write")
                    })
                }
                _ => minijinja::escape_formatter(out, state, value),
            });
            env.set_auto_escape_callback(|name| {
                match params::escape_language(name.strip_suffix(".j2").unwrap_or(name)) {
                    Some(language) => minijinja::AutoEscape::Custom(language),
                    None => minijinja::AutoEscape::None,
                }
            });
            for (path, bytes) in self.files.iter().filter(|(p, _)| p.ends_with(".j2")) {
                let text = String::from_utf8_lossy(bytes).into_owned();
                env.add_template_owned(path.clone(), text).map_err(|e| {
                    TemplateFault(
                        path.clone(),
                        e.line().unwrap_or(0),
                        e.detail().unwrap_or(&e.to_string()).to_string(),
                    )
                })?;
            }
            let reads_others = env.templates().any(|(_, template)| {
                let names = template.undeclared_variables(false);
                names.contains("blocks") || names.contains("hosts")
            });
            Ok(Templates { env, reads_others })
        });
        parsed
            .as_ref()
            .map_err(|TemplateFault(file, line, message)| ModuleError::Template {
                module: self.name().to_string(),
                file: file.clone(),
                line: *line,
                message: message.clone(),
            })
    }

    /// The main file's name once rendered (`sine.csd.j2` → `sine.csd`).
    pub fn rendered_main(&self) -> Option<String> {
        self.manifest
            .main
            .as_ref()
            .map(|m| m.strip_suffix(".j2").unwrap_or(m).to_string())
    }

    /// Render `.j2` files with `context`; copy the others. Returns relative path → text.
    /// Text values are escaped for the language of the file they land in (a Csound string, a
    /// Pd atom, …; see [`params::escape`]); `{{ x|safe }}` asks for the raw text explicitly.
    /// The context is anything serializable; a `minijinja::Value` passes through without a
    /// copy, so a large shared part (every block, every host) is built once for all blocks.
    pub fn render(
        &self,
        context: &impl serde::Serialize,
    ) -> Result<BTreeMap<String, String>, ModuleError> {
        let mut out = BTreeMap::new();
        for (path, bytes) in &self.files {
            let Ok(text) = std::str::from_utf8(bytes) else {
                if path.ends_with(".j2") {
                    return Err(ModuleError::Manifest {
                        path: format!("{}/{path}", self.origin),
                        message: "a template must be UTF-8 text".into(),
                    });
                }
                let (path, encoded) = orchestra_protocol::spec::binary_file(path, bytes);
                out.insert(path, encoded);
                continue;
            };
            match path.strip_suffix(".j2") {
                Some(rendered) => {
                    let fail = |e: minijinja::Error| ModuleError::Template {
                        module: self.name().to_string(),
                        file: path.clone(),
                        line: e.line().unwrap_or(0),
                        message: e.detail().unwrap_or(&e.to_string()).to_string(),
                    };
                    let template = self.templates()?.env.get_template(path).map_err(fail)?;
                    out.insert(
                        rendered.to_string(),
                        template.render(context).map_err(fail)?,
                    );
                }
                None => {
                    out.insert(path.clone(), text.to_string());
                }
            }
        }
        Ok(out)
    }
}

/// Every module the orchestra may use: built-ins, then user folders that may shadow them.
#[derive(Debug, Clone)]
pub struct ModuleLibrary {
    modules: BTreeMap<String, Arc<Module>>,
    engines: BTreeMap<String, String>,
}

impl ModuleLibrary {
    pub fn builtin() -> ModuleLibrary {
        let mut modules = BTreeMap::new();
        for dir in BUILTIN_MODULES.dirs() {
            let Some(manifest) = dir.get_file(dir.path().join("manifest.json")) else {
                continue;
            };
            let mut files = BTreeMap::new();
            collect_embedded(dir, dir.path(), &mut files);
            let origin = format!("modules/{}", dir.path().display());
            let module = Module::parse(origin, manifest.contents(), files)
                .expect("built-in modules are valid (checked by tests)");
            modules.insert(module.name().to_string(), Arc::new(module));
        }
        let engines = BUILTIN_ENGINES
            .files()
            .filter_map(|f| {
                let name = f.path().file_stem()?.to_str()?.to_string();
                Some((name, f.contents_utf8()?.to_string()))
            })
            .collect();
        ModuleLibrary { modules, engines }
    }

    /// Add every `<dir>/<name>/manifest.json` module; a user module shadows a built-in one.
    /// `<dir>/engines/*.lua` adds engines the same way.
    pub fn add_dir(&mut self, dir: &Path) -> Result<Vec<String>, ModuleError> {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| ModuleError::Io(format!("{}: {e}", dir.display())))?;
        let mut added = Vec::new();
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths {
            if path.file_name().is_some_and(|n| n == "engines") {
                for engine in read_dir_sorted(&path)? {
                    if engine.extension().is_some_and(|e| e == "lua") {
                        let name = engine.file_stem().unwrap().to_string_lossy().to_string();
                        let text = std::fs::read_to_string(&engine)
                            .map_err(|e| ModuleError::Io(format!("{}: {e}", engine.display())))?;
                        self.engines.insert(name, text);
                    }
                }
                continue;
            }
            let manifest = path.join("manifest.json");
            if !manifest.is_file() {
                continue;
            }
            let bytes = std::fs::read(&manifest)
                .map_err(|e| ModuleError::Io(format!("{}: {e}", manifest.display())))?;
            let mut files = BTreeMap::new();
            collect_disk(&path, &path, &mut files)?;
            let module = Module::parse(path.display().to_string(), &bytes, files)?;
            added.push(module.name().to_string());
            self.modules
                .insert(module.name().to_string(), Arc::new(module));
        }
        Ok(added)
    }

    /// A module by name. The prototype wrote `ADC`/`DAC`: names match case-insensitively
    /// when there is no exact match.
    pub fn get(&self, name: &str) -> Option<&Arc<Module>> {
        self.modules.get(name).or_else(|| {
            self.modules
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, m)| m)
        })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.modules.keys().map(String::as_str)
    }

    pub fn modules(&self) -> impl Iterator<Item = &Arc<Module>> {
        self.modules.values()
    }

    pub fn engine_source(&self, engine: &str) -> Option<&str> {
        self.engines.get(engine).map(String::as_str)
    }

    pub fn engine_names(&self) -> impl Iterator<Item = &str> {
        self.engines.keys().map(String::as_str)
    }
}

fn collect_embedded(dir: &Dir<'_>, root: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
    for file in dir.files() {
        let rel = file.path().strip_prefix(root).unwrap_or(file.path());
        if rel != Path::new("manifest.json") {
            out.insert(rel.to_string_lossy().to_string(), file.contents().to_vec());
        }
    }
    for sub in dir.dirs() {
        collect_embedded(sub, root, out);
    }
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, ModuleError> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| ModuleError::Io(format!("{}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    paths.sort();
    Ok(paths)
}

fn collect_disk(
    dir: &Path,
    root: &Path,
    out: &mut BTreeMap<String, Vec<u8>>,
) -> Result<(), ModuleError> {
    for path in read_dir_sorted(dir)? {
        if path.is_dir() {
            collect_disk(&path, root, out)?;
        } else {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            if rel != Path::new("manifest.json") {
                let bytes = std::fs::read(&path)
                    .map_err(|e| ModuleError::Io(format!("{}: {e}", path.display())))?;
                out.insert(rel.to_string_lossy().to_string(), bytes);
            }
        }
    }
    Ok(())
}

/// What an engine says about one block instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    /// argv to run in the instance directory; `None` for port-only engines (`system`).
    pub command: Option<Vec<String>>,
    /// JACK ports, index 0 = port 1.
    pub inputs: Vec<PortRef>,
    pub outputs: Vec<PortRef>,
    /// A line the process writes to its log once it has registered with JACK and looked at
    /// the graph; until then the agent starts nothing else on that server (see `ready_line`
    /// in lua/engines/csound.lua for why).
    pub ready_line: Option<String>,
    /// The main file with the engine's own flags taken out of its `<CsOptions>` (path, text),
    /// when there were any: what the instance must run instead of the module's file.
    pub main_rewritten: Option<(String, String)>,
    /// What the engine changed to make the module fit the orchestra (`sr 44100 → 48000`).
    pub notes: Vec<String>,
    /// The Debian package that provides the engine's program (`puredata-core`): named when
    /// the program is not installed on a host.
    pub package: Option<String>,
    /// OSC packets the agent sends the instance once it is ready, before it is wired in (the
    /// engine's `start_messages`: SuperCollider's `/s_new`, say).
    pub start_osc: Vec<Vec<u8>>,
    /// Each live param's value and the packet that sets it (the engine's `live_message`).
    pub live: BTreeMap<String, LiveParam>,
}

/// Engines loaded into one sandboxed Lua state, evaluated per block at deployment.
pub struct Engines {
    lua: mlua::Lua,
    loaded: BTreeMap<String, mlua::Table>,
    /// What was changed to fit modules to the orchestra, one line per module and change
    /// (`fm: sr 44100 → 48000, ksmps 100 → 64`): said once, however many blocks use it.
    adapted: std::collections::BTreeSet<String>,
}

impl Engines {
    pub fn new() -> Engines {
        Engines {
            lua: sandbox::new_lua().expect("a fresh Lua state"),
            loaded: BTreeMap::new(),
            adapted: Default::default(),
        }
    }

    /// Every module the engines changed to fit the orchestra, and how (see [`Launch::notes`]).
    pub fn adapted(&self) -> impl Iterator<Item = &str> {
        self.adapted.iter().map(String::as_str)
    }

    /// Remember what `launch` said it changed in `module` (a no-op when nothing).
    pub fn note_adapted(&mut self, module: &str, notes: &[String]) {
        if !notes.is_empty() {
            self.adapted
                .insert(format!("{module}: {}", notes.join(", ")));
        }
    }

    /// Take what another set of engines adapted (a deploy worker's, see [`Engines::adapted`]).
    pub fn absorb(&mut self, adapted: Vec<String>) {
        self.adapted.extend(adapted);
    }

    fn table(&mut self, library: &ModuleLibrary, engine: &str) -> Result<mlua::Table, ModuleError> {
        if let Some(t) = self.loaded.get(engine) {
            return Ok(t.clone());
        }
        let fail = |message: String| ModuleError::Engine {
            engine: engine.to_string(),
            message,
        };
        let source = library.engine_source(engine).ok_or_else(|| {
            fail(format!(
                "no lua/engines/{engine}.lua{}",
                crate::names::did_you_mean(engine, library.engine_names())
            ))
        })?;
        let table: mlua::Table = self
            .lua
            .load(source)
            .set_name(format!("@engines/{engine}.lua"))
            .eval()
            .map_err(|e| fail(sandbox::first_line(&e)))?;
        self.loaded.insert(engine.to_string(), table.clone());
        Ok(table)
    }

    /// Ask the module's engine how to launch `client` and what its ports are called.
    /// `files` are the block's rendered files: an engine with `owned_csoptions` sees the
    /// header of a `.csd` main file as `ctx.csd` (see src/csd.rs) and gets those flags taken
    /// out of its `<CsOptions>`.
    #[allow(clippy::too_many_arguments)]
    pub fn launch(
        &mut self,
        library: &ModuleLibrary,
        module: &Module,
        client: &str,
        (inputs, outputs): (u32, u32),
        audio: &crate::audio::AudioSettings,
        params: &BTreeMap<String, Value>,
        files: &BTreeMap<String, String>,
        osc_port: Option<u16>,
    ) -> Result<Launch, ModuleError> {
        let engine = module.manifest.synth.clone();
        let table = self.table(library, &engine)?;
        let fail = |message: String| ModuleError::Engine {
            engine: engine.clone(),
            message,
        };
        let lua_err = |e: mlua::Error| fail(sandbox::first_line(&e));
        let ctx = self.lua.create_table().map_err(lua_err)?;
        ctx.set("client", client).map_err(lua_err)?;
        ctx.set("main", module.rendered_main()).map_err(lua_err)?;
        ctx.set("inputs", inputs).map_err(lua_err)?;
        ctx.set("outputs", outputs).map_err(lua_err)?;
        let audio_t = self.lua.create_table().map_err(lua_err)?;
        audio_t.set("rate", audio.rate).map_err(lua_err)?;
        audio_t.set("period", audio.period).map_err(lua_err)?;
        ctx.set("audio", audio_t).map_err(lua_err)?;
        // The command is made with live params at their defaults (a live change must not
        // change it); the messages below see the real values.
        let masked = module.manifest.without_live_values(params);
        let params_v = mlua::LuaSerdeExt::to_value(&self.lua, &masked).map_err(lua_err)?;
        ctx.set("params", params_v).map_err(lua_err)?;
        ctx.set("osc_port", osc_port).map_err(lua_err)?;
        ctx.set("module", module.name()).map_err(lua_err)?;
        // Where an engine that reads the manifest's own fields says a mistake in them is.
        ctx.set("manifest", format!("{}/manifest.json", module.origin))
            .map_err(lua_err)?;
        if let Some(command) = &module.manifest.command {
            ctx.set("command", command.clone()).map_err(lua_err)?;
        }
        if let Some(ports) = &module.manifest.ports {
            let t = self.lua.create_table().map_err(lua_err)?;
            t.set("inputs", ports.inputs.clone()).map_err(lua_err)?;
            t.set("outputs", ports.outputs.clone()).map_err(lua_err)?;
            ctx.set("ports", t).map_err(lua_err)?;
        }
        let owned = table
            .get::<Option<Vec<String>>>("owned_csoptions")
            .map_err(lua_err)?;
        let mut main_rewritten = None;
        if let (Some(owned), Some(main)) = (owned, module.rendered_main()) {
            if let Some(text) = files.get(&main).filter(|_| main.ends_with(".csd")) {
                // The module's own file (`fm.csd.j2` before rendering), where the user looks.
                let source = module.manifest.main.as_deref().unwrap_or(&main);
                let file = format!("{}/{source}", module.origin);
                let header = crate::csd::read_header(text).map_err(|e| ModuleError::Manifest {
                    path: file.clone(),
                    message: e,
                })?;
                let (rewritten, ignored) = crate::csd::strip_options(text, &owned);
                let csd = self.lua.create_table().map_err(lua_err)?;
                csd.set("file", file).map_err(lua_err)?;
                for (name, setting) in &header {
                    let t = self.lua.create_table().map_err(lua_err)?;
                    t.set("line", setting.line).map_err(lua_err)?;
                    t.set("value", setting.value).map_err(lua_err)?;
                    csd.set(*name, t).map_err(lua_err)?;
                }
                csd.set("ignored", ignored.clone()).map_err(lua_err)?;
                ctx.set("csd", csd).map_err(lua_err)?;
                if !ignored.is_empty() {
                    main_rewritten = Some((main, rewritten));
                }
            }
        }
        let (command, notes) = match table
            .get::<Option<mlua::Function>>("command")
            .map_err(lua_err)?
        {
            Some(f) => f
                .call::<(Option<Vec<String>>, Option<Vec<String>>)>(ctx.clone())
                .map_err(lua_err)?,
            None => (None, None),
        };
        let notes = notes.unwrap_or_default();
        if command.as_ref().is_some_and(|c| c.is_empty()) {
            return Err(fail("command returned an empty list".into()));
        }
        let port = |kind: &str, count: u32| -> Result<Vec<PortRef>, ModuleError> {
            if count == 0 {
                return Ok(Vec::new());
            }
            let f: mlua::Function = table
                .get(kind)
                .map_err(|_| fail(format!("has no `{kind}` function")))?;
            (1..=count)
                .map(|i| {
                    let name = f.call::<String>((ctx.clone(), i)).map_err(lua_err)?;
                    name.parse().map_err(|e| fail(format!("`{kind}` gave {e}")))
                })
                .collect()
        };
        let ready_line = table.get::<Option<String>>("ready_line").map_err(lua_err)?;
        let package = table.get::<Option<String>>("package").map_err(lua_err)?;
        let params_v = mlua::LuaSerdeExt::to_value(&self.lua, params).map_err(lua_err)?;
        ctx.set("params", params_v).map_err(lua_err)?;
        let start_osc = match table
            .get::<Option<mlua::Function>>("start_messages")
            .map_err(lua_err)?
        {
            Some(f) => f
                .call::<Vec<mlua::Table>>(ctx.clone())
                .map_err(lua_err)?
                .iter()
                .map(|m| osc_message::encode(m).map_err(|e| fail(format!("start_messages: {e}"))))
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        let live_message = table
            .get::<Option<mlua::Function>>("live_message")
            .map_err(lua_err)?;
        let mut live = BTreeMap::new();
        for name in module.manifest.live_params() {
            let Some(value) = params.get(name) else {
                continue;
            };
            let osc = match &live_message {
                Some(f) => {
                    let v = mlua::LuaSerdeExt::to_value(&self.lua, value).map_err(lua_err)?;
                    let message = f
                        .call::<mlua::Table>((ctx.clone(), name, v))
                        .map_err(lua_err)?;
                    osc_message::encode(&message).map_err(|e| fail(format!("live_message: {e}")))?
                }
                None => osc_message::set(name, value),
            };
            live.insert(
                name.to_string(),
                LiveParam {
                    value: value.clone(),
                    osc,
                },
            );
        }
        Ok(Launch {
            start_osc,
            live,
            ready_line,
            package,
            main_rewritten,
            notes,
            inputs: port("input_port", inputs)?,
            outputs: port("output_port", outputs)?,
            command,
        })
    }
}

impl Default for Engines {
    fn default() -> Self {
        Engines::new()
    }
}
