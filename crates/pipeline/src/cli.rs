//! The command-line surface every stage shares, and its progress reporting.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::Config;
use crate::runner::{self, Stage};

/// Options common to every stage.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArgs {
    /// The pipeline config file.
    #[arg(long, value_name = "PATH", default_value = "pipeline.yaml")]
    pub config: PathBuf,
    /// Override one config key, e.g. `--set training.learning_rate=2e-5` (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Print the effective config (after overrides) and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Run even if the outputs are up to date.
    #[arg(long)]
    pub force: bool,
    /// Progress on stderr: text (a bar on a terminal, else a line every few seconds) or json
    /// (one JSON object per line: stage, done, total, message, elapsed_s), for CI.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// How progress is reported (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The process's `--log-format`, set when a stage's options are loaded.
static LOG_FORMAT: OnceLock<LogFormat> = OnceLock::new();

pub fn log_format() -> LogFormat {
    LOG_FORMAT.get().copied().unwrap_or_default()
}

/// A progress report as `--log-format json` prints it.
pub fn progress_json(stage: &str, done: u64, total: u64, message: &str, elapsed_s: f64) -> String {
    serde_json::json!({
        "stage": stage,
        "done": done,
        "total": total,
        "message": message,
        "elapsed_s": (elapsed_s * 10.0).round() / 10.0,
    })
    .to_string()
}

impl ConfigArgs {
    /// The effective config, or `None` after printing it for `--print-config`.
    pub fn load(&self) -> Result<Option<Config>> {
        let _ = LOG_FORMAT.set(self.log_format);
        let config = Config::load(&self.config, &self.overrides)?;
        if self.print_config {
            print!("{}", config.to_yaml());
            return Ok(None);
        }
        Ok(Some(config))
    }
}

/// Loads the config, runs `stage` with the runner and prints what it did; `make` builds the
/// stage from the config. For a stage binary's `main`, inside [`run_stage`].
pub fn execute<S: Stage>(args: &ConfigArgs, make: impl FnOnce(&Config) -> Result<S>) -> Result<()> {
    let Some(config) = args.load()? else {
        return Ok(());
    };
    let mut stage = make(&config)?;
    let outcome = runner::execute(&mut stage, &config, args.force)?;
    print!("{}", runner::report(&stage, &outcome));
    Ok(())
}

/// The `main` of a stage's command line (its binary and `imdb-lora <stage>`): parses `args`
/// (the first is the program name, as in `std::env::args_os()`) as `C`, makes the stage from
/// the parsed options and runs it; prints the error and exits with status 1 on failure.
pub fn stage_main<C: clap::Parser, S: Stage>(
    name: &str,
    args: impl IntoIterator<Item = impl Into<std::ffi::OsString> + Clone>,
    common: impl FnOnce(&C) -> &ConfigArgs,
    make: impl FnOnce(&C) -> S,
) {
    let cli = C::parse_from(args);
    run_stage(name, || execute(common(&cli), |_| Ok(make(&cli))));
}

/// Runs a stage's body and turns an error into a message and exit code 1.
pub fn run_stage(name: &str, body: impl FnOnce() -> Result<()>) {
    if let Err(err) = body() {
        eprintln!("error: {name}: {err:#}");
        std::process::exit(1);
    }
}

/// `text` safe to print to a terminal: control characters (C0 such as ESC, DEL, C1) and the
/// invisible characters that reorder or hide text (bidi controls, zero-width and line/paragraph
/// separators) are written as `\u{…}`, and a backslash as `\\`, so what is shown is what
/// the text holds and nothing in it can drive the terminal.
pub fn terminal_safe(text: &str) -> std::borrow::Cow<'_, str> {
    fn hidden(c: char) -> bool {
        c.is_control()
            || matches!(c,
                '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
    }
    if !text.chars().any(|c| hidden(c) || c == '\\') {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if hidden(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.into()
}

/// A progress bar on a terminal; plain log lines every few seconds when
/// stderr is not one (CI logs).
pub struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    total: u64,
    done: u64,
    started: Instant,
    last_log: Instant,
}

impl Progress {
    pub fn new(label: &str, total: u64) -> Self {
        let text = log_format() == LogFormat::Text;
        let bar = (text && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:>12} [{bar:30}] {pos}/{len} {msg} ({elapsed} < {eta})",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(label.to_string());
            bar
        });
        Self {
            bar,
            label: label.to_string(),
            total,
            done: 0,
            started: Instant::now(),
            last_log: Instant::now(),
        }
    }

    /// Advances by `n` and shows `message` (e.g. the current loss).
    pub fn advance(&mut self, n: u64, message: &str) {
        self.done += n;
        match &self.bar {
            Some(bar) => {
                bar.set_message(message.to_string());
                bar.inc(n);
            }
            None => {
                if self.last_log.elapsed().as_secs_f64() >= self.log_every()
                    || self.done == self.total
                {
                    self.log(message);
                }
            }
        }
    }

    /// Seconds between log lines without a terminal: JSON consumers want them more often.
    fn log_every(&self) -> f64 {
        match log_format() {
            LogFormat::Text => 10.0,
            LogFormat::Json => 2.0,
        }
    }

    fn log(&mut self, message: &str) {
        self.last_log = Instant::now();
        let elapsed = self.started.elapsed().as_secs_f64();
        match log_format() {
            LogFormat::Text => eprintln!(
                "{}: {}/{} {message} ({elapsed:.0}s)",
                self.label, self.done, self.total
            ),
            LogFormat::Json => eprintln!(
                "{}",
                progress_json(&self.label, self.done, self.total, message, elapsed)
            ),
        }
    }

    /// Shows `message` without advancing (work within a step, such as a validation); without
    /// a terminal, a log line at most every few seconds.
    pub fn message(&mut self, message: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(message.to_string()),
            None => {
                if self.last_log.elapsed().as_secs_f64() >= self.log_every() {
                    self.log(message);
                }
            }
        }
    }

    /// Prints a line without breaking the bar.
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_safe_escapes_what_could_drive_or_fool_a_terminal() {
        assert_eq!(
            terminal_safe("Café, naïve — 9/10 ★"),
            "Café, naïve — 9/10 ★"
        );
        assert_eq!(terminal_safe("\x1b[2Jgone\x07"), "\\u{1b}[2Jgone\\u{7}");
        // Bidi overrides and isolates (Trojan Source), zero-width, C1 (CSI), DEL, tabs.
        assert_eq!(
            terminal_safe("a\u{202E}b\u{2066}c\u{200B}d\u{9b}e\u{7f}f\tg\rh"),
            "a\\u{202e}b\\u{2066}c\\u{200b}d\\u{9b}e\\u{7f}f\\u{9}g\\u{d}h"
        );
        // A backslash is doubled, so an escape in the text cannot pass for one of ours.
        assert_eq!(terminal_safe("\\u{1b}"), "\\\\u{1b}");
    }
}
