//! `kiln`: the Kiln render farm's command line.

/// Prints a line for the user. Output piped into a reader that stopped
/// early (`kiln jobs | head`) is dropped instead of panicking like println!.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod bundle;
mod bundle_submit;
mod cli;
mod connect;
mod controls;
mod dev;
mod error;
mod format;
mod job_bundle;
mod jobs;
mod logs;
mod outputs;
mod pages;
mod render;
mod scene_probe;
mod tokens;
mod variants;
mod watch;
mod webhooks;
mod workers;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{BundleCommand, Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One readable line with its causes, never a backtrace.
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let _telemetry = kiln_telemetry::init("kiln", &cli.telemetry)?;
    match cli.command {
        Command::Dev(args) => dev::run(args).await?,
        Command::Render(args) => render::run(args).await?,
        Command::Jobs(args) => jobs::list(args).await?,
        Command::Status(args) => jobs::status(args).await?,
        Command::Cancel(args) => jobs::cancel(args).await?,
        Command::Watch(args) => logs::watch(args).await?,
        Command::Logs(args) => logs::run(args).await?,
        Command::Outputs(args) => jobs::list_outputs(args).await?,
        Command::Pause(args) => controls::pause(args).await?,
        Command::Resume(args) => controls::resume(args).await?,
        Command::Retry(args) => controls::retry(args).await?,
        Command::Priority(args) => controls::priority(args).await?,
        Command::Unblock(args) => controls::unblock(args).await?,
        Command::Token(command) => tokens::run(command).await?,
        Command::Webhooks(command) => webhooks::run(command).await?,
        Command::Workers(command) => workers::run(command).await?,
        Command::Bundle(BundleCommand::Submit(args)) => bundle_submit::submit(args).await?,
    }
    Ok(())
}
