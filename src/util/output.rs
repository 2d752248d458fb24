//! Human and machine output: quiet/verbose switches, tables, progress lines.

use std::sync::atomic::{AtomicBool, Ordering};

static QUIET: AtomicBool = AtomicBool::new(false);
/// Set once standard output turned out to be a closed pipe.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes to standard output. When the reader has gone (`syscont images list | head -1`),
/// the rest of the output is dropped quietly and the command still finishes its work;
/// [`stdout_closed`] tells `main` to exit as a Unix tool killed by SIGPIPE would (141).
pub(crate) fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|_| out.flush()) {
        STDOUT_CLOSED.store(true, Ordering::Relaxed);
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("error: writing to standard output: {e}");
        }
    }
}

/// Whether standard output was closed while the command wrote to it.
pub(crate) fn stdout_closed() -> bool {
    STDOUT_CLOSED.load(Ordering::Relaxed)
}

/// `println!` for command output: see [`write_stdout`].
macro_rules! outln {
    () => { $crate::util::output::write_stdout(format_args!("\n")) };
    ($($t:tt)*) => { $crate::util::output::write_stdout(format_args!("{}\n", format_args!($($t)*))) };
}

/// `print!` for command output: see [`write_stdout`].
macro_rules! out {
    ($($t:tt)*) => { $crate::util::output::write_stdout(format_args!($($t)*)) };
}

pub(crate) use {out, outln};

/// Sets `-q`.
pub(crate) fn set_quiet(q: bool) {
    QUIET.store(q, Ordering::Relaxed);
}

/// Whether `-q` was given.
pub(crate) fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// Prints a progress or status line on standard error, unless `-q`. Standard output
/// carries only what a command is asked for (a list, a plan, an ID), so it can be
/// redirected or piped.
pub(crate) fn status(msg: impl AsRef<str>) {
    if !quiet() {
        eprintln!("{}", msg.as_ref());
    }
}

/// Prints a warning on standard error (also with `-q`: a warning is not progress).
pub(crate) fn warn(msg: impl AsRef<str>) {
    eprintln!("warning: {}", msg.as_ref());
}

/// Progress bars for a pull, on a terminal only (and not with `-q`); otherwise `None`, and
/// callers print one plain line per finished step instead.
pub(crate) fn progress() -> Option<indicatif::MultiProgress> {
    use std::io::IsTerminal;
    if quiet() || !std::io::stderr().is_terminal() {
        return None;
    }
    Some(indicatif::MultiProgress::new())
}

/// A byte-count bar under `multi` for one blob.
pub(crate) fn blob_bar(
    multi: &indicatif::MultiProgress,
    label: String,
    total: u64,
) -> indicatif::ProgressBar {
    let bar = multi.add(indicatif::ProgressBar::new(total));
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(label);
    bar
}

/// Renders rows as aligned columns under `headers`.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let n = cells.len();
        for (i, c) in cells.into_iter().enumerate() {
            out.push_str(c);
            if i + 1 < n {
                let pad = widths[i] - c.chars().count() + 3;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
    };
    line(headers.to_vec());
    for r in rows {
        line(r.iter().map(|s| s.as_str()).collect());
    }
    out
}

/// Shortens `s` to `n` characters when `trunc` is set.
pub(crate) fn trunc(s: &str, n: usize, trunc: bool) -> String {
    if trunc && s.chars().count() > n {
        s.chars().take(n).collect()
    } else {
        s.to_string()
    }
}

/// Formats a byte count like `48.6 MB`.
pub(crate) fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < UNITS.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns() {
        let t = table(&["A", "BB"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A     BB\nxyz   1\n");
    }

    #[test]
    fn sizes() {
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(48_550_000), "48.5 MB");
    }
}
