//! The Lua sandbox: which standard libraries a script sees, and the limits that turn a runaway
//! loop or a memory bomb into an error instead of a frozen show.

use crate::model::Location;
use mlua::{HookTriggers, Lua, LuaOptions, StdLib, VmState};
use std::cell::Cell;
use std::rc::Rc;

/// Instructions a script may run before it is stopped (a normal orchestra needs far fewer).
pub const INSTRUCTION_LIMIT: u64 = 50_000_000;
/// Memory a script may allocate.
pub const MEMORY_LIMIT: usize = 64 * 1024 * 1024;
const HOOK_EVERY: u32 = 1000;

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

/// Install the instruction budget and the memory limit.
pub fn limit(lua: &Lua) -> mlua::Result<LastSeen> {
    lua.set_memory_limit(MEMORY_LIMIT)?;
    let seen = LastSeen::default();
    let hook_seen = seen.clone();
    let count = Cell::new(0u64);
    lua.set_hook(
        HookTriggers::new().every_nth_instruction(HOOK_EVERY),
        move |_, debug| {
            let line = debug.curr_line();
            if line > 0 {
                hook_seen.0.set(Some((line as u32, 0)));
                if let Some(src) = debug.source().short_src {
                    *hook_seen.1.borrow_mut() = src.to_string();
                }
            }
            let n = count.get() + HOOK_EVERY as u64;
            count.set(n);
            if n > INSTRUCTION_LIMIT {
                return Err(mlua::Error::RuntimeError(format!(
                    "{}script ran more than {} million instructions: an endless loop?",
                    hook_seen
                        .location()
                        .map(|l| format!("{l}: "))
                        .unwrap_or_default(),
                    INSTRUCTION_LIMIT / 1_000_000
                )));
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
        Some(Location {
            file,
            line: line as u32,
        })
    })
}
