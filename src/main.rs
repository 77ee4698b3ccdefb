//! `orchestra`: the command-line entry point.

use clap::Parser;

fn main() {
    // The evaluation worker answers one request and exits: no async runtime, no relays.
    if std::env::args().nth(1).as_deref() == Some("eval-worker") {
        cloud_orchestra::script::bounded::worker_main();
    }
    let cli = cloud_orchestra::cli::Cli::parse();
    // Everything writes through relays that survive a reader going away.
    let relay = cloud_orchestra::output::install();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ORCHESTRA_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .without_time()
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let result = runtime.block_on(cloud_orchestra::cli::main(cli));
    // Agents and SSH sessions still held by the runtime go before the relays are flushed.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    cloud_orchestra::script::bounded::discard_spare();
    let code = match result {
        Ok(()) => 0,
        Err(error) => {
            // Errors from the user's files already read `file:line: message`.
            eprintln!("{error:#}");
            1
        }
    };
    relay.finish();
    std::process::exit(code);
}
