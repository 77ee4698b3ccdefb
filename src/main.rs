//! `orchestra`: the command-line entry point.

use clap::Parser;

fn main() {
    let cli = cloud_orchestra::cli::Cli::parse();
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
    if let Err(error) = runtime.block_on(cloud_orchestra::cli::main(cli)) {
        // Errors from the user's files already read `file:line: message`.
        eprintln!("{error:#}");
        std::process::exit(1);
    }
}
