//! `kiln completions` and `kiln man`, generated from the clap definitions so
//! they never drift from the commands.

use std::io::Write as _;
use std::path::PathBuf;

use clap::CommandFactory as _;
use serde::Serialize;

use crate::cli::{Cli, CompletionsArgs, ManArgs};
use crate::error::CliError;
use crate::output;

pub fn completions(args: CompletionsArgs) -> Result<(), CliError> {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "kiln", &mut script);
    print_document(
        &script,
        |text| serde_json::json!({"shell": args.shell.to_string(), "script": text}),
    );
    Ok(())
}

pub fn man(args: ManArgs) -> Result<(), CliError> {
    let command = Cli::command();
    let Some(dir) = args.dir else {
        let mut page = Vec::new();
        clap_mangen::Man::new(command)
            .render(&mut page)
            .map_err(CliError::io("kiln.1"))?;
        print_document(&page, |text| serde_json::json!({"page": text}));
        return Ok(());
    };
    std::fs::create_dir_all(&dir).map_err(CliError::io(&dir))?;
    let mut written = Vec::new();
    write_pages(command, &dir, &mut written)?;
    for path in &written {
        say!("{}", path.display());
    }
    #[derive(Serialize)]
    struct Pages {
        files: Vec<PathBuf>,
    }
    output::emit(&Pages { files: written });
    Ok(())
}

/// kiln.1, then kiln-COMMAND.1 for each command and subcommand (named by
/// the whole command once clap has built it, e.g. kiln-workers-list.1), as
/// `clap_mangen::generate_to` does, keeping the paths it wrote.
fn write_pages(
    command: clap::Command,
    dir: &std::path::Path,
    written: &mut Vec<PathBuf>,
) -> Result<(), CliError> {
    let mut command = command.disable_help_subcommand(true);
    command.build();
    write_built(command, dir, written)
}

fn write_built(
    command: clap::Command,
    dir: &std::path::Path,
    written: &mut Vec<PathBuf>,
) -> Result<(), CliError> {
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_built(sub.clone(), dir, written)?;
    }
    let path = clap_mangen::Man::new(command)
        .generate_to(dir)
        .map_err(CliError::io(dir))?;
    written.push(path);
    Ok(())
}

/// The document as it is in text mode, inside a JSON object in JSON mode.
fn print_document(bytes: &[u8], json: impl FnOnce(&str) -> serde_json::Value) {
    if output::is_json() {
        output::emit(&json(&String::from_utf8_lossy(bytes)));
    } else {
        let _ = std::io::stdout().write_all(bytes);
    }
}
