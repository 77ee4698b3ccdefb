//! cloud-orchestra: play a cloud orchestra of software synthesizers from a Lua script.
//!
//! The one data flow (see DESIGN.md), one module per stage:
//!
//! - [`script`]: evaluate the Lua orchestra in a sandbox (or read the prototype's JSON) →
//!   [`model::Orchestra`], in a worker process killed at a deadline ([`script::bounded`]).
//! - [`model`]: hosts, blocks, connections, as the script declares them; [`resolve`] checks
//!   them against the [`modules`] library and expands connections to port-level wires.
//! - [`modules`]: manifests, built-in modules, template rendering, engines (`lua/engines`);
//!   [`csd`] reads a Csound module's header and options so the engine can fit it.
//! - [`placement`]: block → host, minimizing `alpha·overflow + cut + beta·moved`;
//!   [`latency`]: each source's worst path to a `dac` under a placement and its buffers.
//! - [`deploy`]: per host, the processes (with spec hashes) and JACK edges that must exist;
//!   [`deploy::links`] turns wires between hosts into jacktrip pairs with their UDP ports;
//!   [`deploy::jack_ports`] sizes each host's JACK server to the orchestra.
//! - [`plan`]: `diff(current, desired)` → ordered, make-before-break actions; the crossfades
//!   of a replace; their undo; the repair plan from what agents observe; [`policy`]: restart
//!   and respawn limits as data, going by the [`clock`] (tokio's, paused in tests).
//! - [`executor`]: the one place that carries plans out on hosts (phases, make-before-break
//!   with undo, repair), through the [`executor::Hosts`] trait (the real fleet, or hosts in
//!   memory in tests: `testing::FakeHosts`, with the `testing` feature).
//! - [`conductor`]: the one owner of what plays: every change (first run, live edit, repair,
//!   teardown) converges through it, in play or dry-run mode, and is told as [`events`].
//! - [`protocol`] (the `orchestra-protocol` crate): the wire between the controller and the
//!   agent on each host — ids, what a host runs, requests with their typed replies, events.
//!   The agent itself is the `orchestra-agent` crate and binary.
//! - [`hosts`]: the controller side of agent sessions.
//! - [`pipeline`]: Source → Loaded → Desired, the pure stages every command shares.
//! - [`runtime`]: the commands `run` (connect, bring up, first converge, play, teardown),
//!   `down` and `trust`; [`first_run`] judges what a first run brought up (what failed,
//!   whether it can sound).
//! - [`live`]: the play loop while it plays: reload on change or OSC command (merging those
//!   that come meanwhile), reconcile with the agents; [`commands`]: the OSC and page commands
//!   waiting for their turn, taken as one batch per apply; [`events`]: what it tells the
//!   terminal and any subscriber, as data.
//! - [`state`]: the last applied deployment, persisted beside the script; [`status`]: what
//!   plays now, read from it and the hosts (`orchestra status`).
//! - [`watch`]: which files the orchestra is made of, and when one of them changed.
//! - [`analysis`]: frequency, level and dropouts of a recording; [`xruns`]: what the terminal
//!   says about clean sound (xruns per host, hosts without real-time scheduling).
//! - [`names`]: name validation, "did you mean", and user text as messages quote it.
//! - [`audio`]: the one sample rate and period; [`executable`]: this very binary, as the
//!   agent and the evaluation worker.
//! - [`osc`]: the OSC control server and the router to blocks, which remembers what it told
//!   each block for its new instances ([`osc::memory`]); the live layer its commands edit is
//!   an input of the script stage ([`script::layer`]).
//! - [`web`]: the browser page of a playing orchestra (`run --web`): who may open it
//!   ([`web::access`]), what it shows ([`web::view`], folded from the [`events`]), the server
//!   that pushes every change over a websocket ([`web::server`]), and the page's changes
//!   ([`web::controls`], the same path as `/orchestra/set`); [`taps`]: the meters and listening
//!   the pages want of the hosts, whose agents measure and stream them ([`agent::taps`]).
//! - [`cli`]: the command line; [`output`]: terminal output that survives its reader going.

pub mod analysis;
pub mod audio;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod conductor;
pub mod csd;
pub mod deploy;
pub mod events;
pub mod executable;
pub mod executor;
pub mod first_run;
pub mod hosts;
pub mod latency;
pub mod live;
pub mod model;
pub mod modules;
pub mod names;
pub mod osc;
pub mod output;
pub mod pipeline;
pub mod placement;
pub mod plan;
pub mod policy;
pub mod resolve;
pub mod runtime;
pub mod script;
pub mod state;
pub mod status;
pub mod taps;
#[cfg(feature = "testing")]
pub mod testing;
pub mod watch;
pub mod web;
pub mod xruns;

pub use orchestra_protocol as protocol;
