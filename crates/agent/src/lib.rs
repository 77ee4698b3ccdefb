//! The host side of cloud-orchestra: `orchestra-agent` owns one host — its JACK server, the
//! synth processes and the JACK edges — and serves the controller over stdin/stdout, in the
//! protocol of `orchestra-protocol`. What it starts runs detached and outlives it: a later
//! agent adopts it.
//!
//! - [`serve`]: the loop — a request line in, its reply out; upkeep on ticks of its own.
//! - [`agent`]: the agent's state — waiting for the hello, then the host it looks after, with
//!   its JACK server up, lost until it is back, or closed.
//! - [`cmd`]: one file per request: how each is carried out, with its typed reply.
//! - [`supervisor`], [`startup`]: synth processes (started detached, adopted, stopped,
//!   reaped) and the start gate that keeps their JACK registrations apart.
//! - [`jackd`], [`restore`], [`realtime`]: the JACK server (started, adopted, stopped),
//!   bringing the host back when it dies, and real-time scheduling.
//! - [`graph`], [`fader`]: the agent's JACK client — intended edges against the graph — and
//!   crossfades.
//! - [`recorder`], [`taps`]: what reaches the DAC, recorded; meters and listening.
//! - [`link_health`], [`link_rtt`], [`xruns`], [`udp_ports`]: what the host says of its
//!   links, its clean sound and its ports.
//!
//! It depends on the protocol and on JACK: nothing of the controller's (Lua, templates, SSH,
//! the web page) is in the binary uploaded to every host.

pub mod agent;
mod cmd;
pub mod fader;
pub mod graph;
pub mod jackd;
pub mod link_health;
pub mod link_rtt;
pub mod realtime;
pub mod recorder;
pub mod restore;
pub mod serve;
pub mod startup;
pub mod supervisor;
pub mod taps;
pub mod udp_ports;
pub mod xruns;

pub use serve::serve;

/// `orchestra-agent`: serve the controller on stdin/stdout until stdin closes (`--version`
/// says which it is). Logs go to stderr at the level `ORCHESTRA_LOG` names (`warn` unless it
/// says otherwise).
pub fn main() -> ! {
    match std::env::args().nth(1).as_deref() {
        None => {}
        Some("--version" | "-V") => {
            println!("orchestra-agent {}", env!("CARGO_PKG_VERSION"));
            std::process::exit(0)
        }
        Some(other) => {
            eprintln!(
                "orchestra-agent serves its controller on stdin and stdout and takes no arguments, not `{other}` (--version prints its version)"
            );
            std::process::exit(2)
        }
    }
    let level = std::env::var("ORCHESTRA_LOG")
        .ok()
        .and_then(|level| level.parse().ok())
        .unwrap_or(tracing_subscriber::filter::LevelFilter::WARN);
    tracing_subscriber::fmt()
        .with_max_level(level)
        .without_time()
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let result = runtime.block_on(serve());
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => std::process::exit(0),
        Err(error) => {
            eprintln!("{error:#}");
            std::process::exit(1)
        }
    }
}
