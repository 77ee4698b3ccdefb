//! The pure pipeline every command shares: Source → Loaded (evaluate the script in the
//! worker, lay the live layer over it, resolve against the modules) → Desired (place and
//! deploy). `run`, each reload, `plan`, `check`, `--dry-run` and OSC commands all go through
//! it; nothing here starts or contacts anything.

use crate::deploy::{redeploy_around, Deployment};
use crate::latency::Latency;
use crate::model::Orchestra;
use crate::modules::{Engines, ModuleLibrary};
use crate::placement::{place_without, Cost, Options as PlacementOptions, Placement};
use crate::resolve::{resolve, Resolved};
use crate::script::bounded::Evaluated;
use crate::script::layer::Refused;
use crate::script::layer::{LiveLayer, LiveOp};
use anyhow::{anyhow, Result};
use std::collections::BTreeSet;
use std::path::PathBuf;

/// Where the orchestra comes from and how to place it.
#[derive(Debug, Clone)]
pub struct Source {
    pub script: PathBuf,
    pub hosts: Option<PathBuf>,
    pub modules: Vec<PathBuf>,
    pub placement: PlacementOptions,
    /// `--strict`: a placement over `latency { max_ms }` is an error, not a warning.
    pub strict: bool,
}

/// An orchestra read, checked and resolved against its modules.
#[derive(Clone)]
pub struct Loaded {
    pub orchestra: Orchestra,
    pub library: ModuleLibrary,
    pub resolved: Resolved,
    /// Round trips measured between its hosts while it last played (none until then): the
    /// latency estimate adds half of each link's.
    pub round_trips: crate::latency::RoundTrips,
    /// UDP ports the hosts say are bound (by other programs, or by what plays): a new OSC
    /// port is none of them.
    pub ports_in_use: crate::deploy::PortsInUse,
}

/// Read and check everything; nothing runs yet. Errors are one `file:line: message` line.
pub fn load(source: &Source) -> Result<Loaded> {
    load_with(source, &LiveLayer::default())
}

/// [`load`], with the live layer laid over the script (its changes only warn when they no
/// longer apply). The Lua is evaluated in the worker process of [`crate::script::bounded`].
pub fn load_with(source: &Source, layer: &LiveLayer) -> Result<Loaded> {
    let orchestra =
        crate::script::bounded::load_orchestra(&source.script, source.hosts.as_deref(), layer)
            .map_err(|e| anyhow!("{e}"))?;
    finish_load(source, orchestra)
}

/// [`load_with`] for the live loop, with `new` changes laid over the layer (each must apply:
/// those that do not are left out and refused, with why): the worker runs while the
/// controller goes on serving signals and reconciles, and dropping the future stops it.
pub async fn load_with_async(
    source: Source,
    layer: LiveLayer,
    new: Vec<LiveOp>,
) -> Result<(Loaded, Vec<Refused>)> {
    let started = std::time::Instant::now();
    let Evaluated { orchestra, refused } = crate::script::bounded::load_orchestra_async(
        source.script.clone(),
        source.hosts.clone(),
        layer,
        new,
    )
    .await
    .map_err(|e| anyhow!("{e}"))?;
    let evaluated = started.elapsed();
    let loaded = finish_load(&source, orchestra);
    tracing::debug!(
        "evaluated in {} µs, resolved in {} µs",
        evaluated.as_micros(),
        (started.elapsed() - evaluated).as_micros()
    );
    Ok((loaded?, refused))
}

/// New live changes laid over the orchestra that loaded last, in this process: changes that
/// run no Lua (all but `eval`) need no new evaluation of the script, and the modules are the
/// ones it loaded with (a change of the script or of a module is a reload of its own). Those
/// that do not apply are refused as the worker refuses them.
pub fn load_changes(
    source: &Source,
    last: &Loaded,
    changes: &[LiveOp],
) -> Result<(Loaded, Vec<Refused>)> {
    debug_assert!(!changes.iter().any(|op| matches!(op, LiveOp::Eval { .. })));
    let mut orchestra = last.orchestra.clone();
    // Said when it loaded.
    orchestra.warnings.clear();
    let base = source.script.parent().unwrap_or(std::path::Path::new(""));
    let refused = crate::script::layer::apply_new(changes, &mut orchestra, base);
    let resolved = resolve(&orchestra, &last.library)?;
    let loaded = Loaded {
        orchestra,
        library: last.library.clone(),
        resolved,
        round_trips: Default::default(),
        ports_in_use: Default::default(),
    };
    Ok((loaded, refused))
}

/// Modules and resolution of an evaluated orchestra (Rust only: bounded by construction).
fn finish_load(source: &Source, orchestra: Orchestra) -> Result<Loaded> {
    let mut library = ModuleLibrary::builtin();
    for dir in &source.modules {
        library.add_dir(dir)?;
    }
    let resolved = resolve(&orchestra, &library)?;
    Ok(Loaded {
        orchestra,
        library,
        resolved,
        round_trips: Default::default(),
        ports_in_use: Default::default(),
    })
}

/// Placement and deployment of a loaded orchestra.
pub struct Desired {
    pub placement: Placement,
    pub cost: Cost,
    /// The placement is proven optimal.
    pub optimal: bool,
    pub deployment: Deployment,
    /// Modules the engines changed to fit the orchestra, and how (one line per module).
    pub adapted: Vec<String>,
    /// Each source's worst path to a `dac`.
    pub latency: Latency,
}

/// Place and deploy on the orchestra's hosts but those `left_out` (they do not answer);
/// `running` is what plays now (links that stay keep their ports).
pub fn desire(
    loaded: &Loaded,
    previous: Option<&Placement>,
    running: &Deployment,
    options: &PlacementOptions,
    left_out: &BTreeSet<String>,
) -> Result<Desired> {
    let solution = place_without(&loaded.resolved, previous, options, left_out)?;
    let (placement, cost, optimal) = (solution.placement, solution.cost, solution.optimal);
    let mut engines = Engines::new();
    let deployment = redeploy_around(
        &loaded.resolved,
        &placement,
        &loaded.library,
        &mut engines,
        running,
        &loaded.ports_in_use,
    )?;
    let latency = crate::latency::estimate(&loaded.resolved, &placement, &loaded.round_trips);
    Ok(Desired {
        placement,
        cost,
        optimal,
        deployment,
        adapted: engines.adapted().map(str::to_string).collect(),
        latency,
    })
}

/// A placement whose worst path exceeds `latency { max_ms }`: the warning to give, or with
/// `strict` the error that refuses it.
pub fn latency_verdict(loaded: &Loaded, desired: &Desired, strict: bool) -> Result<Option<String>> {
    match crate::latency::over_limit(&loaded.resolved, &desired.latency) {
        Some(over) if strict => Err(anyhow!("refused (--strict): {over}")),
        over => Ok(over),
    }
}

/// What to warn of before acting on a placement: what the script itself warned of, cores it
/// lacks, modules adapted (a module written for another setup: `fm: sr 44100 → 48000, ksmps
/// 100 → 64`), a path over the latency limit (an error with `strict`). Each a line without
/// its `warning: `.
pub fn judgement(loaded: &Loaded, desired: &Desired, strict: bool) -> Result<Vec<String>> {
    let mut warnings = loaded.orchestra.warnings.clone();
    warnings.extend(overflow_warning(loaded, desired));
    warnings.extend(desired.adapted.iter().cloned());
    warnings.extend(latency_verdict(loaded, desired, strict)?);
    Ok(warnings)
}

/// When the blocks need more cores than the hosts have (it still runs), what to say.
pub fn overflow_warning(loaded: &Loaded, desired: &Desired) -> Option<String> {
    if desired.cost.overflow > 0 {
        let loads = crate::placement::host_loads(&loaded.resolved, &desired.placement);
        let detail: Vec<String> = loaded
            .resolved
            .hosts
            .iter()
            .filter(|h| loads.get(&h.name).copied().unwrap_or(0) > h.cores as u64)
            .map(|h| format!("{} needs {} of {} cores", h.name, loads[&h.name], h.cores))
            .collect();
        return Some(format!(
            "the orchestra needs {} more core(s) than the hosts have ({}); running anyway",
            desired.cost.overflow,
            detail.join(", ")
        ));
    }
    None
}
