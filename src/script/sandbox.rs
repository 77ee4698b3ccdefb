//! The Lua sandbox: which standard libraries a script sees, and the limits that turn a runaway
//! loop or a memory bomb into an error instead of a frozen show. Once a limit trips it stays
//! tripped: `pcall`, `xpcall` and `coroutine.resume` hand the error on instead of swallowing
//! it, so a script cannot catch its way past the limit (the worker process of
//! [`super::bounded`] is the boundary behind this one).

use crate::model::Location;
use mlua::{HookTriggers, Lua, LuaOptions, StdLib, VmState};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::Instant;

/// Instructions a script may run before it is stopped (a normal orchestra needs far fewer).
pub const INSTRUCTION_LIMIT: u64 = 50_000_000;
/// Memory a script may allocate.
pub const MEMORY_LIMIT: usize = 64 * 1024 * 1024;
const HOOK_EVERY: u32 = 1000;

/// When this process's evaluations must be over (set once by the evaluation worker).
static DEADLINE: OnceLock<(Instant, std::time::Duration)> = OnceLock::new();

/// Evaluations in this process stop `budget` from now (the worker sets it at start).
pub fn set_deadline(budget: std::time::Duration) {
    let _ = DEADLINE.set((Instant::now() + budget, budget));
}

/// A Lua 5.4 state with only `string`, `table`, `math`, `utf8`, `coroutine` and the harmless
/// parts of `os`; no `io`, no `os.execute`, no loading of bytecode, no files.
pub fn new_lua() -> mlua::Result<Lua> {
    let libs = StdLib::STRING
        | StdLib::TABLE
        | StdLib::MATH
        | StdLib::UTF8
        | StdLib::COROUTINE
        | StdLib::OS;
    let lua = Lua::new_with(libs, LuaOptions::new())?;
    let globals = lua.globals();
    let os: mlua::Table = globals.get("os")?;
    let safe_os = lua.create_table()?;
    for name in ["time", "clock", "date", "difftime"] {
        safe_os.set(name, os.get::<mlua::Value>(name)?)?;
    }
    globals.set("os", safe_os)?;
    for name in ["dofile", "loadfile", "collectgarbage"] {
        globals.set(name, mlua::Nil)?;
    }
    let string: mlua::Table = globals.get("string")?;
    string.set("dump", mlua::Nil)?;
    // `load` of source text only: bytecode can crash the VM.
    let load: mlua::Function = globals.get("load")?;
    let text_only =
        lua.create_function(
            move |_,
                  (chunk, name, _mode, env): (
                mlua::Value,
                mlua::Value,
                mlua::Value,
                mlua::Value,
            )| { load.call::<mlua::MultiValue>((chunk, name, "t", env)) },
        )?;
    globals.set("load", text_only)?;
    let print = lua.create_function(|_, args: mlua::Variadic<mlua::Value>| {
        let parts: Vec<String> = args
            .iter()
            .map(|v| v.to_string().unwrap_or_else(|_| format!("{v:?}")))
            .collect();
        eprintln!("{}", parts.join("\t"));
        Ok(())
    })?;
    globals.set("print", print)?;
    Ok(lua)
}

/// Replace `pcall`, `xpcall` and `coroutine.resume` with versions that hand a tripped limit
/// on: once the instruction, time or memory budget is spent, no Lua code can catch the error.
/// The wrappers are Lua functions around the originals (kept as upvalues the script cannot
/// reach): a Rust frame between them would add C stack per nested `pcall`, which Lua's own
/// C-stack limit does not see.
fn make_limits_uncatchable(lua: &Lua, tripped: Rc<RefCell<Option<String>>>) -> mlua::Result<()> {
    let pass_on =
        lua.create_function(
            move |_, results: mlua::MultiValue| match tripped.borrow().as_ref() {
                Some(message) => Err(mlua::Error::RuntimeError(message.clone())),
                None => Ok(results),
            },
        )?;
    lua.load(
        r#"
        local pass_on, pcall, xpcall, resume = ...
        _G.pcall = function(...) return pass_on(pcall(...)) end
        _G.xpcall = function(...) return pass_on(xpcall(...)) end
        coroutine.resume = function(...) return pass_on(resume(...)) end
        "#,
    )
    .set_name(format!("={SANDBOX_CHUNK}"))
    .call::<()>((
        pass_on,
        lua.globals().get::<mlua::Function>("pcall")?,
        lua.globals().get::<mlua::Function>("xpcall")?,
        lua.globals()
            .get::<mlua::Table>("coroutine")?
            .get::<mlua::Function>("resume")?,
    ))
}

/// Where the script was when a limit hit, shared between the hook and the error mapping.
#[derive(Clone, Default)]
pub struct LastSeen(Rc<Cell<Option<(u32, u32)>>>, Rc<std::cell::RefCell<String>>);

impl LastSeen {
    pub fn location(&self) -> Option<Location> {
        self.0.get().map(|(line, _)| Location {
            file: self.1.borrow().clone(),
            line,
        })
    }
}

/// The name of the sandbox's own Lua (the `pcall` wrappers): never a location to report.
const SANDBOX_CHUNK: &str = "sandbox";

/// The limit that tripped, if one did; shared by the hook, the `pcall` wrappers and [`trip`].
struct Tripped(Rc<RefCell<Option<String>>>);

/// Trip a limit from Rust (an API function's own budget): from now on nothing in the script
/// can catch it, as with the instruction and time limits.
pub fn trip(lua: &Lua, message: String) -> mlua::Error {
    if let Some(tripped) = lua.app_data_ref::<Tripped>() {
        *tripped.0.borrow_mut() = Some(message.clone());
    }
    mlua::Error::RuntimeError(message)
}

/// Install the instruction budget, the deadline and the memory limit. The hook stays until
/// the state is dropped: finalizers (`__gc`) that run at the end are held to it too.
pub fn limit(lua: &Lua) -> mlua::Result<LastSeen> {
    lua.set_memory_limit(MEMORY_LIMIT)?;
    let seen = LastSeen::default();
    let tripped: Rc<RefCell<Option<String>>> = Rc::default();
    lua.set_app_data(Tripped(tripped.clone()));
    make_limits_uncatchable(lua, tripped.clone())?;
    let hook_seen = seen.clone();
    let count = Cell::new(0u64);
    lua.set_hook(
        HookTriggers::new().every_nth_instruction(HOOK_EVERY),
        move |_, debug| {
            if let Some(message) = tripped.borrow().as_ref() {
                return Err(mlua::Error::RuntimeError(message.clone()));
            }
            let line = debug.curr_line();
            let source = debug.source().short_src.map(|s| s.to_string());
            if line > 0 && source.as_deref() != Some(SANDBOX_CHUNK) {
                hook_seen.0.set(Some((line as u32, 0)));
                if let Some(src) = source {
                    *hook_seen.1.borrow_mut() = src;
                }
            }
            let n = count.get() + HOOK_EVERY as u64;
            count.set(n);
            let at = || {
                hook_seen
                    .location()
                    .map(|l| format!("{l}: "))
                    .unwrap_or_default()
            };
            let over = if n > INSTRUCTION_LIMIT {
                Some(format!(
                    "{}script ran more than {} million instructions: an endless loop?",
                    at(),
                    INSTRUCTION_LIMIT / 1_000_000
                ))
            } else {
                DEADLINE
                    .get()
                    .filter(|(deadline, _)| Instant::now() > *deadline)
                    .map(|(_, budget)| {
                        format!(
                            "{}script ran longer than {:.1} s: an endless loop?",
                            at(),
                            budget.as_secs_f64()
                        )
                    })
            };
            if let Some(message) = over {
                *tripped.borrow_mut() = Some(message.clone());
                return Err(mlua::Error::RuntimeError(message));
            }
            Ok(VmState::Continue)
        },
    );
    Ok(seen)
}

/// The one line worth showing of a Lua error: the innermost message, no traceback.
pub fn first_line(error: &mlua::Error) -> String {
    match error {
        mlua::Error::CallbackError { cause, .. } => first_line(cause),
        mlua::Error::WithContext { cause, .. } => first_line(cause),
        mlua::Error::RuntimeError(m) => m.lines().next().unwrap_or("").to_string(),
        mlua::Error::SyntaxError { message, .. } => {
            message.lines().next().unwrap_or("").to_string()
        }
        mlua::Error::ExternalError(e) => e.to_string(),
        other => other.to_string().lines().next().unwrap_or("").to_string(),
    }
}

/// Where the Lua code that called into Rust is: `level` 1 is the direct caller.
pub fn caller_location(lua: &Lua) -> Option<Location> {
    // Skip frames without a line (C functions, e.g. the `block "x"` returned closure).
    (1..6).find_map(|level| {
        let debug = lua.inspect_stack(level)?;
        let line = debug.curr_line();
        if line <= 0 {
            return None;
        }
        let file = debug.source().short_src?.to_string();
        if file == SANDBOX_CHUNK {
            return None;
        }
        Some(Location {
            file,
            line: line as u32,
        })
    })
}
