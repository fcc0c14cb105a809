//! `kiln`: the Kiln render farm's command line.

mod cli;
mod connect;
mod dev;
mod error;
mod format;
mod jobs;
mod outputs;
mod render;
mod scene_probe;
mod watch;

use clap::Parser;

use crate::cli::{Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = kiln_telemetry::init("kiln", &cli.telemetry)?;
    match cli.command {
        Command::Dev(args) => dev::run(args).await?,
        Command::Render(args) => render::run(args).await?,
        Command::Jobs(args) => jobs::list(args).await?,
        Command::Status(args) => jobs::status(args).await?,
        Command::Cancel(args) => jobs::cancel(args).await?,
        Command::Outputs(args) => jobs::list_outputs(args).await?,
    }
    Ok(())
}
