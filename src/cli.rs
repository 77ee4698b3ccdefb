//! The command line (clap): `run`, `plan`, `check`, `status`, `down`, `trust`, `analyze`.

use crate::hosts::fleet::ConnectOptions;
use crate::osc::server::OscOptions;
use crate::placement::{Options as PlacementOptions, Placement, Weights};
use crate::runtime::{self, RunOptions, Source};
use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "orchestra",
    version,
    about = "Play a cloud orchestra: synths placed, deployed and wired across machines from a Lua script"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct SourceArgs {
    /// The orchestra: a Lua script, or the prototype's synthdef.json.
    script: PathBuf,
    /// Hosts file: Lua `host "name" { … }` entries or the prototype's slaves.json.
    /// Without it the orchestra runs on this machine.
    #[arg(long)]
    hosts: Option<PathBuf>,
    /// A folder of extra modules (`<dir>/<name>/manifest.json`); may shadow built-ins.
    #[arg(long = "modules", value_name = "DIR")]
    modules: Vec<PathBuf>,
    /// Price of one core of overflow in the placement.
    #[arg(long, default_value_t = 100.0)]
    alpha: f64,
    /// Price of moving one block away from its previous host.
    #[arg(long, default_value_t = 1.0)]
    beta: f64,
    /// Time budget of the placement search, in milliseconds.
    #[arg(long, default_value_t = 200)]
    time_limit: u64,
    /// How long evaluating the script (and each live change) may take, in seconds; past it
    /// the evaluation is stopped and nothing changes.
    #[arg(long, value_name = "SECONDS", default_value_t = 2.0)]
    eval_timeout: f64,
    /// Refuse a placement whose worst path to a dac exceeds `latency { max_ms }` (without
    /// it, a warning).
    #[arg(long)]
    strict: bool,
}

impl SourceArgs {
    fn source(&self) -> Source {
        crate::script::bounded::set_timeout(std::time::Duration::from_secs_f64(
            self.eval_timeout.clamp(0.05, 600.0),
        ));
        Source {
            script: self.script.clone(),
            hosts: self.hosts.clone(),
            modules: self.modules.clone(),
            placement: PlacementOptions {
                weights: Weights {
                    alpha: self.alpha,
                    beta: self.beta,
                },
                time_limit: std::time::Duration::from_millis(self.time_limit),
            },
            strict: self.strict,
        }
    }
}

#[derive(Args, Clone)]
struct SshArgs {
    /// known_hosts file to check host keys against (default: ~/.ssh/known_hosts).
    #[arg(long, value_name = "FILE")]
    known_hosts: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Start the orchestra and keep it playing until Ctrl-C; then stop everything it started.
    Run {
        #[command(flatten)]
        source: SourceArgs,
        /// Where to keep state (default: `.orchestra/` beside the script).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Write what reaches the DAC to this WAV file (hear a machine with no sound card).
        #[arg(long, value_name = "FILE.wav")]
        record: Option<PathBuf>,
        /// Stop after this many seconds.
        #[arg(long)]
        seconds: Option<f64>,
        #[command(flatten)]
        ssh: SshArgs,
        /// Play on the hosts that answer when some are unreachable (the others are left
        /// out of the placement).
        #[arg(long)]
        skip_unreachable: bool,
        /// While playing: a host that does not answer within this long (its agent for half of
        /// it, then the host itself) is down, and its blocks go to the hosts that remain.
        #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
        host_grace: f64,
        /// Remove every edge of the orchestra's synths the plan did not ask for, even one to
        /// a program that is not the orchestra's (by default a recorder, meter or DAW you
        /// connect stays).
        #[arg(long)]
        exclusive: bool,
        /// Do not reload when the script, its required files, the hosts file or a module
        /// folder changes.
        #[arg(long)]
        no_watch: bool,
        /// Print the plans (the first, then one per saved change) without starting or
        /// changing anything.
        #[arg(long)]
        dry_run: bool,
        /// Where the OSC control server and router listen (default 127.0.0.1:7770).
        #[arg(long, value_name = "ADDR")]
        osc: Option<std::net::SocketAddr>,
        /// Networks besides loopback that may send OSC (needed to listen beyond loopback).
        #[arg(long = "osc-allow", value_name = "CIDR", num_args = 1..)]
        osc_allow: Vec<ipnet::IpNet>,
        /// Networks besides loopback that may also send `/orchestra/…` commands (change the
        /// orchestra, run live code); `--osc-allow` alone lets them only play blocks.
        #[arg(long = "osc-control-allow", value_name = "CIDR", num_args = 1..)]
        osc_control_allow: Vec<ipnet::IpNet>,
        /// No OSC control server or router.
        #[arg(long, conflicts_with_all = ["osc", "osc_allow", "osc_control_allow"])]
        no_osc: bool,
        /// Where the browser page is served (default 127.0.0.1:7780; port 0: one the system
        /// chooses, printed at start).
        #[arg(long, value_name = "ADDR")]
        web: Option<std::net::SocketAddr>,
        /// Networks besides this machine that may open the page (needed to serve it beyond
        /// loopback; then every request needs the token printed in the page's address).
        #[arg(long = "web-allow", value_name = "CIDR", num_args = 1..)]
        web_allow: Vec<ipnet::IpNet>,
        /// No browser page.
        #[arg(long, conflicts_with_all = ["web", "web_allow"])]
        no_web: bool,
    },
    /// Show what `run` would do: placement, cost and the ordered actions.
    Plan {
        #[command(flatten)]
        source: SourceArgs,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        /// A previous `plan --format json` output whose placement to start from.
        #[arg(long, value_name = "PLAN.json")]
        previous: Option<PathBuf>,
        /// Per host: load against cores, cut connections, and why blocks sit where they do.
        #[arg(long)]
        explain: bool,
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Check the orchestra (script, hosts, modules, ports) without starting anything.
    Check {
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Stop what a previous `run` of this script left playing, on every host.
    Down {
        script: PathBuf,
        #[arg(long)]
        state_dir: Option<PathBuf>,
        #[command(flatten)]
        ssh: SshArgs,
    },
    /// What plays now, from another terminal: hosts up or down, each block's state and pid,
    /// the links, the live layer. Read only.
    Status {
        script: PathBuf,
        #[arg(long)]
        state_dir: Option<PathBuf>,
        #[command(flatten)]
        ssh: SshArgs,
    },
    /// Show the SSH host keys of the hosts in a hosts file and record them in known_hosts:
    /// the explicit way to accept a new host.
    Trust {
        /// Hosts file (Lua or slaves.json).
        #[arg(long)]
        hosts: PathBuf,
        #[command(flatten)]
        ssh: SshArgs,
    },
    /// Measure a recording: frequency, level, dropouts.
    Analyze {
        wav: PathBuf,
        /// Channel to analyze (1-based).
        #[arg(long, default_value_t = 1)]
        channel: usize,
    },
}

pub async fn main(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run {
            source,
            state_dir,
            record,
            seconds,
            ssh,
            skip_unreachable,
            host_grace,
            exclusive,
            no_watch,
            dry_run,
            osc,
            osc_allow,
            osc_control_allow,
            no_osc,
            web,
            web_allow,
            no_web,
        } => {
            // Installed before anything starts: a signal during start-up is not lost.
            let shutdown = runtime::shutdown_on_signals()?;
            runtime::run(
                RunOptions {
                    source: source.source(),
                    state_dir,
                    record,
                    seconds,
                    connect: ConnectOptions {
                        grace: Duration::from_secs_f64(host_grace.clamp(0.05, 60.0)),
                        ..ConnectOptions::new(ssh.known_hosts, skip_unreachable)
                    },
                    watch: !no_watch,
                    dry_run,
                    osc: (!no_osc).then(|| OscOptions {
                        bind: osc.unwrap_or(([127, 0, 0, 1], 7770).into()),
                        // Whoever may control may also play.
                        allow: osc_allow
                            .iter()
                            .chain(&osc_control_allow)
                            .copied()
                            .collect(),
                        control_allow: osc_control_allow,
                    }),
                    osc_explicit: osc.is_some(),
                    exclusive,
                    web: (!no_web).then(|| crate::web::WebOptions {
                        bind: web.unwrap_or(crate::web::DEFAULT_ADDR.into()),
                        allow: web_allow,
                    }),
                    web_explicit: web.is_some(),
                },
                shutdown,
            )
            .await
        }
        Command::Plan {
            source,
            format,
            previous,
            explain,
            state_dir,
        } => plan(source.source(), format, previous, explain, state_dir),
        Command::Check { source } => {
            let loaded = runtime::load(&source.source())?;
            let desired = runtime::desire(
                &loaded,
                None,
                &Default::default(),
                &source.source().placement,
                &Default::default(),
            )?;
            for warning in runtime::judgement(&loaded, &desired, source.strict)? {
                eprintln!("warning: {warning}");
            }
            println!(
                "{}: ok ({} blocks, {} connections, {} host(s))",
                source.script.display(),
                loaded.resolved.blocks.len(),
                loaded.resolved.connections.len(),
                loaded.resolved.hosts.len()
            );
            Ok(())
        }
        Command::Status {
            script,
            state_dir,
            ssh,
        } => {
            let connect = ConnectOptions::new(ssh.known_hosts, true);
            crate::status::status(&script, state_dir.as_deref(), &connect).await
        }
        Command::Down {
            script,
            state_dir,
            ssh,
        } => {
            let connect = ConnectOptions::new(ssh.known_hosts, false);
            runtime::down(&script, state_dir.as_deref(), &connect).await
        }
        Command::Trust { hosts, ssh } => {
            let connect = ConnectOptions::new(ssh.known_hosts, false);
            runtime::trust(&hosts, &connect).await
        }
        Command::Analyze { wav, channel } => {
            let (samples, rate) = crate::analysis::read_channel(&wav, channel.saturating_sub(1))?;
            let report = crate::analysis::analyze(&samples, rate);
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
    }
}

/// How many of the worst paths `plan --explain` lists.
const WORST_PATHS_SHOWN: usize = 5;

fn plan(
    source: Source,
    format: Format,
    previous: Option<PathBuf>,
    explain: bool,
    state_dir: Option<PathBuf>,
) -> Result<()> {
    let dir = crate::state::state_dir(&source.script, state_dir.as_deref());
    let (layer, unreadable) = crate::script::layer::LiveLayer::load_or_warn(
        &dir,
        &crate::script::orchestra_name(&source.script),
    );
    if let Some(warning) = unreadable {
        eprintln!("warning: {warning}");
    }
    let mut loaded = runtime::load_with(&source, &layer)?;
    for warning in &loaded.orchestra.warnings {
        eprintln!("warning: {warning}");
    }
    loaded.round_trips = crate::state::load_round_trips(&dir, &loaded.resolved.name);
    // The UDP ports bound on this machine, for its hosts: a new OSC port is chosen as `run`
    // will choose it (its agents say which are bound), and the plan names the same clients.
    let here = orchestra_agent::udp_ports::in_use();
    for host in loaded.resolved.hosts.iter().filter(|h| h.local) {
        loaded.ports_in_use.insert(host.name.clone(), here.clone());
    }
    let applied = crate::state::load(&dir, &loaded.resolved.name)?;
    let previous_placement = match &previous {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
            let value: serde_json::Value = serde_json::from_str(&text).with_context(|| {
                format!("{}: not a `plan --format json` output", path.display())
            })?;
            let placement: Placement = serde_json::from_value(value["placement"].clone())
                .with_context(|| format!("{}: no `placement` map", path.display()))?;
            for (block, host) in &placement.0 {
                if !loaded.resolved.blocks.contains_key(block) {
                    eprintln!(
                        "note: {}: block `{block}` (on {host}) is not in the orchestra; ignored",
                        path.display()
                    );
                } else if !loaded.resolved.hosts.iter().any(|h| &h.name == host) {
                    eprintln!("note: {}: host `{host}` (of `{block}`) is not in the hosts; `{block}` counts as moved", path.display());
                }
            }
            Some(placement)
        }
        None => applied.as_ref().map(|a| a.placement.clone()),
    };
    let current = applied.map(|a| a.deployment).unwrap_or_default();
    let desired = runtime::desire(
        &loaded,
        previous_placement.as_ref(),
        &current,
        &source.placement,
        &Default::default(),
    )?;
    let actions = crate::plan::diff(&current, &desired.deployment);
    for line in &desired.adapted {
        eprintln!("warning: {line}");
    }
    let over_latency = crate::pipeline::latency_verdict(&loaded, &desired, source.strict)?;
    if let Some(over) = &over_latency {
        eprintln!("warning: {over}");
    }
    match format {
        Format::Json => {
            let out = json!({
                "placement": desired.placement,
                "cost": desired.cost,
                "optimal": desired.optimal,
                "actions": actions.actions.iter().map(|a| a.to_json()).collect::<Vec<_>>(),
                "crossfades": actions.crossfades(),
                "links": desired.deployment.links,
                "osc": desired.deployment.osc,
                "audio": loaded.resolved.audio,
                "latency": desired.latency.paths.iter().map(|p| json!({
                    "blocks": p.blocks,
                    "hosts": p.hosts,
                    "links": p.links,
                    "ms": p.ms,
                })).collect::<Vec<_>>(),
                "live_layer": layer.ops,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Format::Text => {
            if let Some(overflow) = crate::pipeline::overflow_warning(&loaded, &desired) {
                eprintln!("warning: {overflow}");
            }
            if explain {
                let solution = crate::placement::Solution {
                    placement: desired.placement.clone(),
                    cost: desired.cost,
                    optimal: desired.optimal,
                };
                print!(
                    "{}",
                    crate::placement::explain::explain(
                        &loaded.resolved,
                        &solution,
                        previous_placement.as_ref()
                    )
                );
                print!(
                    "{}",
                    desired.latency.explain(
                        &loaded.resolved,
                        &loaded.round_trips,
                        WORST_PATHS_SHOWN
                    )
                );
                let links = &desired.deployment.links;
                if !links.is_empty() {
                    let wires: usize = links.iter().map(|l| l.wires.len()).sum();
                    let channels: u32 = links.iter().map(|l| l.channels).sum();
                    println!(
                        "network: the cut's {} connection(s) are {wires} wire(s) between hosts, carried on {} link(s) (one per pair of hosts and direction) with {channels} channel(s) in all",
                        desired.cost.cut,
                        links.len()
                    );
                }
            } else {
                println!("placement:");
                for (block, host) in &desired.placement.0 {
                    println!("  {block} → {host}");
                }
                let c = desired.cost;
                println!(
                    "cost: {} (overflow {}, cut {}, moved {}){}",
                    c.total,
                    c.overflow,
                    c.cut,
                    c.moved,
                    if desired.optimal {
                        ", proven optimal"
                    } else {
                        ""
                    }
                );
            }
            if !layer.is_empty() {
                println!("live layer (changes made over OSC, until /orchestra/reset):");
                for op in &layer.ops {
                    println!("  {op}");
                }
            }
            if !desired.deployment.osc.is_empty() {
                println!("OSC blocks:");
            }
            for (block, e) in &desired.deployment.osc {
                println!("  {block} on {} at {}:{}", e.host, e.address, e.port);
            }
            if !desired.deployment.links.is_empty() {
                println!("network links (jacktrip, one per pair of hosts and direction):");
            }
            for l in &desired.deployment.links {
                println!(
                    "  {}: {} (udp {}) → {} (udp {}), {}",
                    l.id,
                    l.from_host,
                    l.client_port,
                    l.to_host,
                    l.server_port,
                    l.fill()
                );
                for w in &l.wires {
                    println!("    {}: {} → {}", w.channel, w.from_port, w.to_port);
                }
            }
            println!("actions:");
            print!("{}", actions.to_text());
        }
    }
    Ok(())
}
