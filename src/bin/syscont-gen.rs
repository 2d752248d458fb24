//! Writes syscont's man pages and shell completions, generated from its clap tree.
//!
//! Usage: `syscont-gen DIR`. Creates:
//!
//! - `DIR/man1/`: one page per command and subcommand (`syscont.1`, `syscont-install.1`,
//!   `syscont-containers-update.1`, ...);
//! - `DIR/completions/`: `syscont.bash`, `_syscont` (zsh) and `syscont.fish`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

/// Writes the page of `cmd` and, recursively, of each of its subcommands.
fn write_man_pages(cmd: clap::Command, dir: &Path) -> Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_man_pages(sub.clone(), dir)?;
    }
    let version = cmd.get_version().unwrap_or_default().to_string();
    let page = clap_mangen::Man::new(cmd)
        .source(format!("syscont {version}"))
        .manual("syscont manual");
    let path = dir.join(page.get_filename());
    page.generate_to(dir)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn run(out: &Path) -> Result<()> {
    // No `help` subcommand: it has no page of its own, and `--help` is documented everywhere.
    let mut cmd = syscont::cli::Opt::command().disable_help_subcommand(true);
    // Building sets the display names (syscont-containers-update) that name the pages.
    cmd.build();

    let man = out.join("man1");
    std::fs::create_dir_all(&man).with_context(|| format!("creating {}", man.display()))?;
    write_man_pages(cmd.clone(), &man)?;

    let completions = out.join("completions");
    std::fs::create_dir_all(&completions)
        .with_context(|| format!("creating {}", completions.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, "syscont", &completions)
            .with_context(|| format!("writing the {shell} completion"))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [out] = args.as_slice() else {
        eprintln!("usage: syscont-gen DIR (writes DIR/man1 and DIR/completions)");
        return ExitCode::from(2);
    };
    match run(out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
