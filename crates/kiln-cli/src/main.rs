//! `kiln`: the Kiln render farm's command line.

/// Prints a line for the user: on stdout, or on stderr with `--output json`
/// (stdout then holds only JSON). Output piped into a reader that stopped
/// early (`kiln jobs | head`) is dropped instead of panicking like println!.
macro_rules! say {
    ($($arg:tt)*) => {{
        crate::output::say_line(format_args!($($arg)*));
    }};
}

mod bundle;
mod bundle_submit;
mod cli;
mod connect;
mod controls;
mod dev;
mod error;
mod exit_code;
mod format;
mod generated_docs;
mod job_bundle;
mod jobs;
mod login;
mod logs;
mod output;
mod outputs;
mod pages;
mod profiles;
mod render;
mod report;
mod scene_probe;
mod tokens;
mod variants;
mod watch;
mod webhooks;
mod workers;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{BundleCommand, Cli, Command};
use crate::error::CliError;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version land here too, and succeed.
        Err(err) if !err.use_stderr() => {
            let _ = err.print();
            return ExitCode::from(exit_code::OK);
        }
        Err(err) => {
            let args: Vec<String> = std::env::args().collect();
            let env = std::env::var("KILN_OUTPUT").ok();
            if output::asked_for_json(&args, env.as_deref()) {
                report::usage(&err.render().to_string());
            } else {
                let _ = err.print();
            }
            return ExitCode::from(exit_code::USAGE);
        }
    };
    output::init(cli.output);
    connect::set_profile(cli.profile.clone());
    let _telemetry = match kiln_telemetry::init("kiln", &cli.telemetry) {
        Ok(telemetry) => telemetry,
        Err(err) => {
            eprintln!("error: {err:#}");
            return ExitCode::from(exit_code::FAILURE);
        }
    };
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            report::error(&err);
            ExitCode::from(exit_code::for_error(&err))
        }
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let profile = cli.profile.as_deref();
    match cli.command {
        Command::Login(args) => login::login(args, profile).await?,
        Command::Logout => login::logout(profile)?,
        Command::Completions(args) => generated_docs::completions(args)?,
        Command::Man(args) => generated_docs::man(args)?,
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
