//! Writes syscont's man pages and shell completions, generated from its clap tree.
//!
//! Usage: `syscont-gen DIR`. Creates:
//!
//! - `DIR/man1/`: one page per command and subcommand (`syscont.1`, `syscont-install.1`,
//!   `syscont-containers-update.1`, ...), with the sections of `syscont::manual` (exit
//!   status, environment, files, examples), which `--help` shows too;
//! - `DIR/man5/syscont-host.toml.5`: the host file format;
//! - `DIR/completions/`: `syscont.bash`, `_syscont` (zsh) and `syscont.fish`, which also
//!   complete installed container names and stored image names where a command takes
//!   them (by asking `syscont containers list -aq` and `syscont images list`).
//!
//! The pages are in section 1, as podman's and systemctl's: syscont lives in /usr/bin and
//! every user runs it for their own rootless containers; Debian keeps section 8 for
//! administration commands that only root runs, from /usr/sbin.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap_complete::Shell;

/// Escapes text for roff (a leading `.` or `'`, and backslashes).
fn roff_text(s: &str) -> String {
    let s = s.replace('\\', "\\e").replace('-', "\\-");
    if s.starts_with('.') || s.starts_with('\'') {
        format!("\\&{s}")
    } else {
        s
    }
}

/// The sections of `syscont::manual` for the command at `path`, as roff.
fn manual_sections(path: &str) -> String {
    let mut out = String::new();
    for s in syscont::cli::manual::sections(path) {
        out.push_str(&format!(".SH \"{}\"\n", s.title));
        for (term, text) in &s.entries {
            if s.title == "EXAMPLES" {
                out.push_str(&format!(
                    ".PP\n{}\n.PP\n.RS 4\n.nf\n{}\n.fi\n.RE\n",
                    roff_text(term),
                    roff_text(text)
                ));
            } else {
                out.push_str(&format!(
                    ".TP\n\\fB{}\\fR\n{}\n",
                    roff_text(term),
                    roff_text(text)
                ));
            }
        }
    }
    out
}

/// Writes the page of `cmd` and, recursively, of each of its subcommands.
fn write_man_pages(cmd: clap::Command, path: &str, dir: &Path) -> Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let p = if path.is_empty() {
            sub.get_name().to_string()
        } else {
            format!("{path} {}", sub.get_name())
        };
        write_man_pages(sub.clone(), &p, dir)?;
    }
    let version = cmd.get_version().unwrap_or_default().to_string();
    let has_subcommands = cmd.get_subcommands().any(|s| !s.is_hide_set());
    let has_args = cmd.get_arguments().any(|a| !a.is_hide_set());
    let page = clap_mangen::Man::new(cmd)
        .source(format!("syscont {version}"))
        .manual("syscont manual");
    let mut roff = Vec::new();
    page.render_title(&mut roff)?;
    page.render_name_section(&mut roff)?;
    page.render_synopsis_section(&mut roff)?;
    page.render_description_section(&mut roff)?;
    if has_args {
        page.render_options_section(&mut roff)?;
    }
    if has_subcommands {
        page.render_subcommands_section(&mut roff)?;
    }
    roff.extend_from_slice(manual_sections(path).as_bytes());
    page.render_version_section(&mut roff)?;
    let file = dir.join(page.get_filename());
    std::fs::write(&file, roff).with_context(|| format!("writing {}", file.display()))?;
    Ok(())
}

/// Completion of container and image names, added to each shell's generated script.
const BASH_NAMES: &str = r#"
# Installed containers and stored images, where a command takes them.
_syscont_names() {
    local words="${COMP_WORDS[*]:1:COMP_CWORD-1}" cur="${COMP_WORDS[COMP_CWORD]}"
    case "$cur" in -*) return 1 ;; esac
    case " $words " in
        *" uninstall "*|*" stop "*|*" containers update "*|*" containers rollback "*|*" containers verify "*|*" run "*|*" mount "*)
            mapfile -t COMPREPLY < <(compgen -W "$(syscont containers list --all -q 2>/dev/null)" -- "$cur") ;;
        *" images "*|*" install "*)
            mapfile -t COMPREPLY < <(compgen -W "$(syscont images list --format '{{.name}}' 2>/dev/null)" -- "$cur") ;;
        *) return 1 ;;
    esac
    [ ${#COMPREPLY[@]} -gt 0 ]
}
_syscont_with_names() { _syscont_names || _syscont "$@"; }
complete -F _syscont_with_names -o nosort -o bashdefault -o default syscont
"#;

const FISH_NAMES: &str = r#"
# Installed containers and stored images, where a command takes them.
complete -c syscont -n '__fish_seen_subcommand_from uninstall stop rollback verify mount; or __fish_seen_subcommand_from run; or __fish_seen_subcommand_from update' -f -a '(syscont containers list --all -q 2>/dev/null)'
complete -c syscont -n '__fish_seen_subcommand_from images install' -f -a '(syscont images list --format "{{.name}}" 2>/dev/null)'
"#;

const ZSH_NAMES: &str = r#"
# Installed containers and stored images, where a command takes them.
_syscont_containers() { compadd -- ${(f)"$(syscont containers list --all -q 2>/dev/null)"} }
_syscont_images() { compadd -- ${(f)"$(syscont images list --format '{{.name}}' 2>/dev/null)"} }
"#;

/// zsh: the generated script completes NAME, IMAGE and TARGET arguments with `_default`;
/// make those ask syscont instead.
fn zsh_with_names(script: &str) -> String {
    let mut out = String::new();
    for line in script.lines() {
        let l = if line.contains("':name -- ") || line.contains("':target -- ") {
            line.replace(":_default'", ":_syscont_containers'")
        } else if line.contains("':image -- ") || line.contains("'*::images -- ") {
            line.replace(":_default'", ":_syscont_images'")
        } else {
            line.to_string()
        };
        out.push_str(&l);
        out.push('\n');
    }
    // The functions must exist before compdef runs the completion.
    match out.find("#compdef syscont\n") {
        Some(i) => {
            let at = i + "#compdef syscont\n".len();
            format!("{}{ZSH_NAMES}{}", &out[..at], &out[at..])
        }
        None => format!("{ZSH_NAMES}{out}"),
    }
}

fn run(out: &Path) -> Result<()> {
    // No `help` subcommand: it has no page of its own, and `--help` is documented everywhere.
    let mut cmd = syscont::cli::command().disable_help_subcommand(true);
    // Building sets the display names (syscont-containers-update) that name the pages.
    cmd.build();

    let man = out.join("man1");
    std::fs::create_dir_all(&man).with_context(|| format!("creating {}", man.display()))?;
    write_man_pages(cmd.clone(), "", &man)?;
    let man5 = out.join("man5");
    std::fs::create_dir_all(&man5).with_context(|| format!("creating {}", man5.display()))?;
    std::fs::write(
        man5.join("syscont-host.toml.5"),
        syscont::cli::manual::HOST_TOML_PAGE,
    )
    .context("writing syscont-host.toml.5")?;

    let completions = out.join("completions");
    std::fs::create_dir_all(&completions)
        .with_context(|| format!("creating {}", completions.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let path = clap_complete::generate_to(shell, &mut cmd, "syscont", &completions)
            .with_context(|| format!("writing the {shell} completion"))?;
        let script = std::fs::read_to_string(&path)?;
        let script = match shell {
            Shell::Bash => format!("{script}{BASH_NAMES}"),
            Shell::Fish => format!("{script}{FISH_NAMES}"),
            _ => zsh_with_names(&script),
        };
        std::fs::write(&path, script).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [out] = args.as_slice() else {
        eprintln!("usage: syscont-gen DIR (writes DIR/man1, DIR/man5 and DIR/completions)");
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
