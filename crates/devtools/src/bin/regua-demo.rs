//! `regua-demo`: loads a demo portfolio through the public NATS subjects into a running
//! regua and tells its story (see [`regua_devtools::demo`]). Settings come from the same
//! `REGUA_*` variables (and optional file) as `regua` itself.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use regua_platform::{Config, telemetry};

#[derive(Parser)]
#[command(
    name = "regua-demo",
    about = "Load a demo portfolio through the public NATS subjects and report what happened"
)]
struct Cli {
    /// Optional TOML file; environment variables (REGUA_*) override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    demo: regua_devtools::demo::DemoArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref()).context("configuration")?;
    let _telemetry = telemetry::init("regua-demo", &config)?;
    regua_devtools::demo::run(&config, cli.demo).await
}
