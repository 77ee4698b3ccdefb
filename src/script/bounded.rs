//! The evaluation boundary: every evaluation of the user's Lua (script, hosts file, live
//! layer, `/orchestra/eval`) runs in a worker process (`orchestra eval-worker`) with an
//! address-space limit, and is killed at a wall-clock deadline. Whatever the script does —
//! `pcall` around an endless loop, a loop in `__gc`, a pattern that backtracks for minutes,
//! memory that API functions allocate outside Lua's own limit — it cannot talk its way past
//! a process that is killed, and the controller keeps playing meanwhile.

use super::sandbox;
use crate::model::{AudioSettings, Host, Location, ModelError, Orchestra};
use crate::script::layer::{LiveLayer, LiveOp, Refused};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long one evaluation may take unless `--eval-timeout` says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Address space of the worker: Lua's heap limit, the binary, and room for Rust-side copies.
pub const ADDRESS_SPACE_LIMIT: u64 = 1 << 30;
/// The worker gets this long past its own deadline to report where the script was.
const GRACE: Duration = Duration::from_millis(500);
/// Most of the worker's stderr (the script's `print`s) passed on.
const MAX_PASSED_ON: usize = 64 * 1024;

static TIMEOUT_MS: AtomicU64 = AtomicU64::new(2000);

/// Set the evaluation budget of this process (`--eval-timeout`).
pub fn set_timeout(timeout: Duration) {
    TIMEOUT_MS.store(timeout.as_millis().max(1) as u64, Ordering::Relaxed);
}

pub fn timeout() -> Duration {
    Duration::from_millis(TIMEOUT_MS.load(Ordering::Relaxed))
}

/// What the worker is asked to evaluate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// A script (Lua or the prototype's JSON) with its hosts file, the live layer laid over
    /// it, and new live changes, each of which must apply or is refused.
    Orchestra {
        script: PathBuf,
        hosts: Option<PathBuf>,
        layer: LiveLayer,
        new: Vec<LiveOp>,
        timeout_ms: u64,
    },
    /// A hosts file alone (`orchestra trust`).
    Hosts { path: PathBuf, timeout_ms: u64 },
}

/// Why an evaluation gave no orchestra.
#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize)]
pub enum EvalError {
    /// The user's files are wrong: `file:line: message`.
    #[error("{}{message}", location.as_ref().map(|l| format!("{l}: ")).unwrap_or_default())]
    Script {
        location: Option<Location>,
        message: String,
    },
    /// The boundary stopped it: out of time or memory, or the worker crashed.
    #[error("{0}")]
    Stopped(String),
}

impl From<ModelError> for EvalError {
    fn from(e: ModelError) -> Self {
        EvalError::Script {
            location: e.location,
            message: e.message,
        }
    }
}

/// An orchestra evaluated with new live changes: those that did not apply are left out of it,
/// each refused with why.
#[derive(Debug)]
pub struct Evaluated {
    pub orchestra: Orchestra,
    pub refused: Vec<Refused>,
}

/// An orchestra on the wire: locations are not part of `Orchestra`'s serde form (plans and
/// state files do not want them), but errors after evaluation still need `file:line`.
#[derive(Debug, Serialize, Deserialize)]
struct WireOrchestra {
    orchestra: Orchestra,
    refused: Vec<Refused>,
    block_locations: Vec<Option<Location>>,
    connection_locations: Vec<Option<Location>>,
    host_locations: Vec<Option<Location>>,
    warnings: Vec<String>,
}

impl WireOrchestra {
    fn pack(orchestra: Orchestra, refused: Vec<Refused>) -> WireOrchestra {
        WireOrchestra {
            refused,
            block_locations: orchestra
                .blocks
                .iter()
                .map(|b| b.location.clone())
                .collect(),
            connection_locations: orchestra
                .connections
                .iter()
                .map(|c| c.location.clone())
                .collect(),
            host_locations: orchestra.hosts.iter().map(|h| h.location.clone()).collect(),
            warnings: orchestra.warnings.clone(),
            orchestra,
        }
    }

    fn unpack(self) -> Evaluated {
        let mut orchestra = self.orchestra;
        for (block, at) in orchestra.blocks.iter_mut().zip(self.block_locations) {
            block.location = at;
        }
        for (connection, at) in orchestra
            .connections
            .iter_mut()
            .zip(self.connection_locations)
        {
            connection.location = at;
        }
        for (host, at) in orchestra.hosts.iter_mut().zip(self.host_locations) {
            host.location = at;
        }
        orchestra.warnings = self.warnings;
        Evaluated {
            orchestra,
            refused: self.refused,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    Orchestra(Box<WireOrchestra>),
    Hosts {
        hosts: Vec<Host>,
        locations: Vec<Option<Location>>,
        audio: Option<AudioSettings>,
        warnings: Vec<String>,
    },
    Failed(EvalError),
}

/// Evaluate a script with its hosts file and the live layer, in the worker.
pub fn load_orchestra(
    script: &Path,
    hosts: Option<&Path>,
    layer: &LiveLayer,
) -> Result<Orchestra, EvalError> {
    let request = orchestra_request(script, hosts, layer, Vec::new());
    match run_worker(&request, script)? {
        Reply::Orchestra(wire) => Ok(wire.unpack().orchestra),
        other => Err(unexpected(other)),
    }
}

/// [`load_orchestra`] with `new` changes laid over the layer, without blocking the async
/// runtime: the controller keeps serving signals, OSC and reconciles while the worker runs,
/// and dropping the future kills it.
pub async fn load_orchestra_async(
    script: PathBuf,
    hosts: Option<PathBuf>,
    layer: LiveLayer,
    new: Vec<LiveOp>,
) -> Result<Evaluated, EvalError> {
    let request = orchestra_request(&script, hosts.as_deref(), &layer, new);
    match run_worker_async(&request, &script).await? {
        Reply::Orchestra(wire) => Ok(wire.unpack()),
        other => Err(unexpected(other)),
    }
}

/// Evaluate a hosts file in the worker.
pub fn load_hosts(
    path: &Path,
    warnings: &mut Vec<String>,
) -> Result<(Vec<Host>, Option<AudioSettings>), EvalError> {
    let request = Request::Hosts {
        path: path.to_path_buf(),
        timeout_ms: timeout().as_millis() as u64,
    };
    match run_worker(&request, path)? {
        Reply::Hosts {
            mut hosts,
            locations,
            audio,
            warnings: more,
        } => {
            for (host, at) in hosts.iter_mut().zip(locations) {
                host.location = at;
            }
            warnings.extend(more);
            Ok((hosts, audio))
        }
        other => Err(unexpected(other)),
    }
}

fn orchestra_request(
    script: &Path,
    hosts: Option<&Path>,
    layer: &LiveLayer,
    new: Vec<LiveOp>,
) -> Request {
    Request::Orchestra {
        script: script.to_path_buf(),
        hosts: hosts.map(Path::to_path_buf),
        layer: layer.clone(),
        new,
        timeout_ms: timeout().as_millis() as u64,
    }
}

fn unexpected(reply: Reply) -> EvalError {
    match reply {
        Reply::Failed(e) => e,
        _ => EvalError::Stopped("the evaluation worker answered another question".into()),
    }
}

fn worker_command() -> Result<std::process::Command, EvalError> {
    let exe = crate::executable::path()
        .map_err(|e| EvalError::Stopped(format!("cannot start the evaluation worker: {e:#}")))?;
    let mut command = std::process::Command::new(exe);
    command
        .arg("eval-worker")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("ORCHESTRA_LOG");
    Ok(command)
}

fn deadline_of(request: &Request) -> Duration {
    let ms = match request {
        Request::Orchestra { timeout_ms, .. } | Request::Hosts { timeout_ms, .. } => *timeout_ms,
    };
    Duration::from_millis(ms) + GRACE
}

fn run_worker(request: &Request, file: &Path) -> Result<Reply, EvalError> {
    let mut child = worker_command()?
        .spawn()
        .map_err(|e| EvalError::Stopped(format!("cannot start the evaluation worker: {e}")))?;
    let input = serde_json::to_vec(request).expect("requests serialize");
    let mut stdin = child.stdin.take().expect("piped");
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    // Readers on threads of their own: a worker blocked on a full pipe would never exit.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = (&mut stderr)
            .take(4 * MAX_PASSED_ON as u64)
            .read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + deadline_of(request);
    let mut pause = Duration::from_micros(200);
    let (status, timed_out) = loop {
        match child.try_wait() {
            Ok(Some(status)) => break (status, false),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                break (child.wait().expect("killed child can be waited"), true);
            }
            Ok(None) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(5));
            }
            Err(e) => return Err(EvalError::Stopped(format!("evaluation worker: {e}"))),
        }
    };
    let _ = writer.join();
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    interpret(request, file, status, timed_out, &stdout, &stderr)
}

/// One worker started ahead for the live loop, waiting for its request on stdin: a reload
/// then does not pay for starting a process (most of the boundary's cost). A spare left
/// behind reads end-of-file when the controller exits, and exits too.
static SPARE: std::sync::Mutex<Option<std::process::Child>> = std::sync::Mutex::new(None);

/// The spare worker if it is still waiting, else a new one.
fn take_worker() -> Result<std::process::Child, EvalError> {
    let spare = still_waiting(SPARE.lock().unwrap_or_else(|p| p.into_inner()).take());
    match spare {
        Some(waiting) => Ok(waiting),
        None => spawn_worker(),
    }
}

/// Start the next spare, off the async runtime, once an evaluation is over: starting it
/// while the evaluation runs would take a core from it.
fn replenish_spare() {
    std::thread::spawn(|| {
        if let Ok(next) = spawn_worker() {
            let old = SPARE
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .replace(next);
            if let Some(mut old) = old {
                let _ = old.kill();
                let _ = old.wait();
            }
        }
    });
}

/// Stop the spare worker, if one waits (the controller is exiting).
pub fn discard_spare() {
    let spare = SPARE.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(mut child) = spare {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A spare that is still waiting for its request (not one that died meanwhile).
fn still_waiting(spare: Option<std::process::Child>) -> Option<std::process::Child> {
    let mut child = spare?;
    matches!(child.try_wait(), Ok(None)).then_some(child)
}

fn spawn_worker() -> Result<std::process::Child, EvalError> {
    worker_command()?
        .spawn()
        .map_err(|e| EvalError::Stopped(format!("cannot start the evaluation worker: {e}")))
}

/// Kills and reaps the worker when its evaluation is dropped (Ctrl-C) or out of time.
struct Reaped(Option<std::process::Child>);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn run_worker_async(request: &Request, file: &Path) -> Result<Reply, EvalError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut child = take_worker()?;
    let pipes = (|| {
        Ok::<_, std::io::Error>((
            tokio::process::ChildStdin::from_std(child.stdin.take().expect("piped"))?,
            tokio::process::ChildStdout::from_std(child.stdout.take().expect("piped"))?,
            tokio::process::ChildStderr::from_std(child.stderr.take().expect("piped"))?,
        ))
    })();
    let mut worker = Reaped(Some(child));
    let (mut stdin, mut stdout, stderr) =
        pipes.map_err(|e| EvalError::Stopped(format!("evaluation worker: {e}")))?;
    let input = serde_json::to_vec(request).expect("requests serialize");
    let exchange = async move {
        let write = async move {
            let _ = stdin.write_all(&input).await;
            // Dropping stdin ends the request.
        };
        let mut out = Vec::new();
        let mut err = Vec::new();
        let mut stderr = stderr.take(4 * MAX_PASSED_ON as u64);
        let (_, _, _) = tokio::join!(
            write,
            stdout.read_to_end(&mut out),
            stderr.read_to_end(&mut err)
        );
        (out, err)
    };
    let exchanged = tokio::time::timeout(deadline_of(request), exchange).await;
    replenish_spare();
    let Ok((out, err)) = exchanged else {
        // `worker` goes with this return: killed and reaped.
        return Err(out_of_time(request, file));
    };
    let mut child = worker.0.take().expect("still held");
    // A complete answer is all we need; the worker is reaped off the runtime meanwhile.
    if let Ok(reply) = serde_json::from_slice::<Reply>(&out) {
        pass_on(&err);
        tokio::task::spawn_blocking(move || child.wait());
        return Ok(reply);
    }
    // Its output has ended: the worker is exiting, so this wait is short.
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .map_err(|e| EvalError::Stopped(format!("evaluation worker: {e}")))?
        .map_err(|e| EvalError::Stopped(format!("evaluation worker: {e}")))?;
    interpret(request, file, status, false, &out, &err)
}

fn out_of_time(request: &Request, file: &Path) -> EvalError {
    EvalError::Stopped(format!(
        "{}: evaluation stopped after {:.1} s: the script runs too long (an endless loop?); nothing changed",
        file.display(),
        (deadline_of(request) - GRACE).as_secs_f64()
    ))
}

/// What the script printed goes to the musician's terminal, as before the boundary.
fn pass_on(stderr: &[u8]) {
    let text = String::from_utf8_lossy(&stderr[..stderr.len().min(MAX_PASSED_ON)]);
    if !text.trim().is_empty() {
        eprintln!("{}", text.trim_end());
    }
}

fn interpret(
    request: &Request,
    file: &Path,
    status: ExitStatus,
    timed_out: bool,
    stdout: &[u8],
    stderr: &[u8],
) -> Result<Reply, EvalError> {
    use std::os::unix::process::ExitStatusExt;
    let stderr_text = String::from_utf8_lossy(&stderr[..stderr.len().min(MAX_PASSED_ON)]);
    if timed_out || status.signal() == Some(libc::SIGXCPU) {
        return Err(out_of_time(request, file));
    }
    if status.success() {
        if let Ok(reply) = serde_json::from_slice::<Reply>(stdout) {
            pass_on(stderr);
            return Ok(reply);
        }
    }
    let out_of_memory = stderr_text.contains("memory allocation of")
        || stderr_text.contains("out of memory")
        || status.signal() == Some(libc::SIGKILL);
    if out_of_memory {
        return Err(EvalError::Stopped(format!(
            "{}: the script needs more memory than an evaluation may use ({} MiB); nothing changed",
            file.display(),
            ADDRESS_SPACE_LIMIT / (1024 * 1024)
        )));
    }
    let last = stderr_text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no message");
    Err(EvalError::Stopped(format!(
        "{}: evaluation failed ({status}): {last}; nothing changed",
        file.display()
    )))
}

/// `orchestra eval-worker`: read one request on stdin, answer on stdout, exit. Runs without
/// the async runtime, with limits on address space, CPU time and core dumps.
pub fn worker_main() -> ! {
    limit_resources();
    // A spare worker waits here for its request: first page in the evaluation's code and
    // data (the Lua VM, the API, JSON), so the request itself finds them warm.
    let _ = super::orchestra_from_text(
        "warm-up.lua",
        "local a = block \"a\" { module = \"sine\" } a >> block \"b\" { module = \"dac\" }",
        None,
    )
    .map(|o| serde_json::to_vec(&WireOrchestra::pack(o, Vec::new())));
    let mut input = Vec::new();
    let read = std::io::stdin()
        .take(64 * 1024 * 1024)
        .read_to_end(&mut input);
    let reply = match read
        .map_err(|e| e.to_string())
        .and_then(|_| serde_json::from_slice::<Request>(&input).map_err(|e| e.to_string()))
    {
        Ok(request) => evaluate(request),
        Err(e) => Reply::Failed(EvalError::Stopped(format!("bad evaluation request: {e}"))),
    };
    let mut stdout = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut stdout, &reply);
    let _ = stdout.flush();
    drop(stdout);
    // The answer is complete: end both pipes now, so the controller need not wait for this
    // process's exit to read it. Then exit without dropping anything (a Lua state's
    // finalizers have had their say already).
    unsafe {
        libc::close(libc::STDOUT_FILENO);
        libc::close(libc::STDERR_FILENO);
    }
    std::process::exit(0)
}

fn evaluate(request: Request) -> Reply {
    match request {
        Request::Orchestra {
            script,
            hosts,
            layer,
            new,
            timeout_ms,
        } => {
            sandbox::set_deadline(Duration::from_millis(timeout_ms));
            let mut orchestra = match super::load_orchestra_in_process(&script, hosts.as_deref()) {
                Ok(o) => o,
                Err(e) => return Reply::Failed(e.into()),
            };
            let base = script.parent().map(Path::to_path_buf).unwrap_or_default();
            layer.apply(&mut orchestra, &base);
            let refused = crate::script::layer::apply_new(&new, &mut orchestra, &base);
            Reply::Orchestra(Box::new(WireOrchestra::pack(orchestra, refused)))
        }
        Request::Hosts { path, timeout_ms } => {
            sandbox::set_deadline(Duration::from_millis(timeout_ms));
            let mut warnings = Vec::new();
            match super::load_hosts_in_process(&path, &mut warnings) {
                Ok((hosts, audio)) => Reply::Hosts {
                    locations: hosts.iter().map(|h| h.location.clone()).collect(),
                    hosts,
                    audio,
                    warnings,
                },
                Err(e) => Reply::Failed(e.into()),
            }
        }
    }
}

fn limit_resources() {
    let set = |resource, value: u64| {
        let limit = libc::rlimit {
            rlim_cur: value as libc::rlim_t,
            rlim_max: value as libc::rlim_t,
        };
        // Best effort: a limit we cannot set still leaves the deadline.
        unsafe { libc::setrlimit(resource, &limit) };
    };
    set(libc::RLIMIT_AS, ADDRESS_SPACE_LIMIT);
    set(libc::RLIMIT_CORE, 0);
    // CPU seconds: a backstop behind the controller's own deadline.
    set(libc::RLIMIT_CPU, 30);
}
