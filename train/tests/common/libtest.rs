//! libtest's command line for a test binary without the libtest harness (`kill.rs`), so that
//! `cargo test -p train --test kill -- ARGS` means what it means for any other test binary:
//! filters, `--skip`, `--exact`, `--list`, `--format`, `--test-threads` and the rest. An option
//! it does not know is an error (exit code 101, as libtest's), never a run of nothing.
//!
//! The tests run one at a time whatever `--test-threads` says (each is several processes that
//! use every core), and print what they print themselves (`--nocapture` is how they run).
#![allow(dead_code)] // each test binary uses its own share

use std::fmt::Write as _;
use std::panic::{self, AssertUnwindSafe};
use std::time::Instant;

/// libtest's exit code for a failed test or a bad command line.
pub const ERROR_EXIT: i32 = 101;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Pretty,
    Terse,
    /// JSON lines, as nightly libtest's `--format json` writes them.
    Json,
}

/// Which tests by their `#[ignore]`: none of these is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// The default: tests that are not ignored (all of them).
    Exclude,
    /// `--ignored`: only ignored tests (none).
    Only,
    /// `--include-ignored`: all.
    Include,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub filters: Vec<String>,
    pub skip: Vec<String>,
    pub exact: bool,
    pub list: bool,
    pub format: Format,
    pub ignored: Ignored,
    /// `--bench`: benchmarks only (there are none).
    pub bench_only: bool,
    pub test_threads: Option<usize>,
    pub help: bool,
}

impl Default for Args {
    fn default() -> Self {
        Self {
            filters: Vec::new(),
            skip: Vec::new(),
            exact: false,
            list: false,
            format: Format::Pretty,
            ignored: Ignored::Exclude,
            bench_only: false,
            test_threads: None,
            help: false,
        }
    }
}

pub const USAGE: &str = "\
Usage: TEST-BINARY [OPTIONS] [FILTERS...]

A test binary without the libtest harness; it takes libtest's options:
    FILTERS             run the tests whose names contain one of these
    --skip FILTER       skip the tests whose names contain FILTER (repeatable)
    --exact             filters and --skip match whole names
    --list              list the tests instead of running them
    --format pretty|terse|json
    -q, --quiet         --format terse
    --ignored           run only the ignored tests (none is)
    --include-ignored   run the ignored tests too
    --test-threads N    accepted; the tests run one at a time (each uses every core)
    --nocapture, --no-capture, --show-output
                        accepted; the tests' output is never captured
    --color auto|always|never, -Z unstable-options, --test
                        accepted, without effect
    --bench             run only benchmarks (there are none)
    -h, --help          this text";

/// The options whose value follows them (`--opt V` or `--opt=V`).
const WITH_VALUE: [&str; 5] = ["--test-threads", "--format", "--skip", "--color", "-Z"];

/// Parses libtest's arguments (without the program name).
pub fn parse<I, S>(args: I) -> Result<Args, String>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut parsed = Args::default();
    let mut args = args.into_iter().map(Into::into);
    let mut only_filters = false;
    while let Some(arg) = args.next() {
        if only_filters || !arg.starts_with('-') || arg == "-" {
            parsed.filters.push(arg);
            continue;
        }
        if arg == "--" {
            only_filters = true;
            continue;
        }
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) if name.starts_with("--") => {
                (name.to_string(), Some(value.to_string()))
            }
            _ => match arg.strip_prefix("-Z").filter(|v| !v.is_empty()) {
                Some(value) => ("-Z".to_string(), Some(value.to_string())),
                None => (arg.clone(), None),
            },
        };
        let value = if WITH_VALUE.contains(&name.as_str()) {
            match inline {
                Some(v) => Some(v),
                None => Some(
                    args.next()
                        .ok_or_else(|| format!("argument to option '{name}' missing"))?,
                ),
            }
        } else if inline.is_some() {
            return Err(format!("option '{name}' does not take a value"));
        } else {
            None
        };
        let value = value.unwrap_or_default();
        match name.as_str() {
            "--test-threads" => match value.parse::<usize>() {
                Ok(0) => return Err("argument for --test-threads must not be 0".into()),
                Ok(n) => parsed.test_threads = Some(n),
                Err(e) => {
                    return Err(format!(
                        "argument for --test-threads must be a number > 0 (error: {e})"
                    ))
                }
            },
            "--format" => {
                parsed.format = match value.as_str() {
                    "pretty" => Format::Pretty,
                    "terse" => Format::Terse,
                    "json" => Format::Json,
                    other => {
                        return Err(format!(
                            "argument for --format must be pretty, terse or json (was {other})"
                        ))
                    }
                }
            }
            "--skip" => parsed.skip.push(value),
            "--color" => {
                if !["auto", "always", "never"].contains(&value.as_str()) {
                    return Err(format!(
                        "argument for --color must be auto, always, or never (was {value})"
                    ));
                }
            }
            "-Z" => {
                if value != "unstable-options" {
                    return Err(format!("unknown -Z option: {value}"));
                }
            }
            "--exact" => parsed.exact = true,
            "--list" => parsed.list = true,
            "-q" | "--quiet" => parsed.format = Format::Terse,
            "--ignored" => parsed.ignored = Ignored::Only,
            "--include-ignored" => parsed.ignored = Ignored::Include,
            "--bench" => parsed.bench_only = true,
            "--nocapture" | "--no-capture" | "--show-output" | "--test" => {}
            "-h" | "--help" => parsed.help = true,
            _ => return Err(format!("unrecognized option: '{arg}'")),
        }
    }
    Ok(parsed)
}

impl Args {
    fn matches(&self, name: &str, pattern: &str) -> bool {
        if self.exact {
            name == pattern
        } else {
            name.contains(pattern)
        }
    }

    /// The tests these arguments choose, in `names`' order.
    pub fn select<'a>(&self, names: &[&'a str]) -> Vec<&'a str> {
        if self.ignored == Ignored::Only || self.bench_only {
            return Vec::new();
        }
        names
            .iter()
            .copied()
            .filter(|name| {
                self.filters.is_empty() || self.filters.iter().any(|f| self.matches(name, f))
            })
            .filter(|name| !self.skip.iter().any(|s| self.matches(name, s)))
            .collect()
    }

    /// What `--list` prints for the chosen tests.
    pub fn listing(&self, chosen: &[&str]) -> String {
        let mut out = String::new();
        match self.format {
            Format::Json => {
                out.push_str("{ \"type\": \"suite\", \"event\": \"discovery\" }\n");
                for name in chosen {
                    let _ = writeln!(
                        out,
                        "{{ \"type\": \"test\", \"event\": \"discovered\", \"name\": {}, \"ignore\": false }}",
                        json_string(name)
                    );
                }
                let n = chosen.len();
                let _ = writeln!(
                    out,
                    "{{ \"type\": \"suite\", \"event\": \"completed\", \"tests\": {n}, \"benchmarks\": 0, \"total\": {n}, \"ignored\": 0 }}"
                );
            }
            Format::Pretty | Format::Terse => {
                for name in chosen {
                    let _ = writeln!(out, "{name}: test");
                }
                if self.format == Format::Pretty {
                    let n = chosen.len();
                    let tests = if n == 1 { "test" } else { "tests" };
                    let _ = writeln!(out, "\n{n} {tests}, 0 benchmarks");
                }
            }
        }
        out
    }
}

/// `text` as a JSON string.
pub fn json_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Parses this process's arguments and lists or runs `tests` as they say; exits with 101 on a
/// bad command line or a failed test, as libtest does.
pub fn main(tests: &[(&'static str, fn())]) {
    let args = match parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(err) => {
            eprintln!("error: {err}\n\n{USAGE}");
            std::process::exit(ERROR_EXIT);
        }
    };
    if args.help {
        println!("{USAGE}");
        return;
    }
    let names: Vec<&str> = tests.iter().map(|(name, _)| *name).collect();
    let chosen = args.select(&names);
    if args.list {
        print!("{}", args.listing(&chosen));
        return;
    }
    let filtered_out = names.len() - chosen.len();
    let started = Instant::now();
    let n = chosen.len();
    match args.format {
        Format::Json => {
            println!("{{ \"type\": \"suite\", \"event\": \"started\", \"test_count\": {n} }}")
        }
        _ => println!("\nrunning {n} test{}", if n == 1 { "" } else { "s" }),
    }
    let mut failed = Vec::new();
    for (name, test) in tests.iter().filter(|(name, _)| chosen.contains(name)) {
        let one = Instant::now();
        match args.format {
            Format::Json => println!(
                "{{ \"type\": \"test\", \"event\": \"started\", \"name\": {} }}",
                json_string(name)
            ),
            Format::Pretty => println!("test {name} ..."),
            Format::Terse => {}
        }
        let ok = panic::catch_unwind(AssertUnwindSafe(test)).is_ok();
        if !ok {
            failed.push(*name);
        }
        let secs = one.elapsed().as_secs_f64();
        match args.format {
            Format::Json => println!(
                "{{ \"type\": \"test\", \"name\": {}, \"event\": \"{}\", \"exec_time\": {secs} }}",
                json_string(name),
                if ok { "ok" } else { "failed" }
            ),
            Format::Pretty => println!("test {name} ... {}", if ok { "ok" } else { "FAILED" }),
            Format::Terse => print!("{}", if ok { "." } else { "F" }),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let passed = n - failed.len();
    match args.format {
        Format::Json => println!(
            "{{ \"type\": \"suite\", \"event\": \"{}\", \"passed\": {passed}, \"failed\": {}, \"ignored\": 0, \"measured\": 0, \"filtered_out\": {filtered_out}, \"exec_time\": {secs} }}",
            if failed.is_empty() { "ok" } else { "failed" },
            failed.len()
        ),
        _ => {
            if args.format == Format::Terse {
                println!();
            }
            if !failed.is_empty() {
                println!("\nfailures:");
                for name in &failed {
                    println!("    {name}");
                }
            }
            println!(
                "\ntest result: {}. {passed} passed; {} failed; 0 ignored; 0 measured; {filtered_out} filtered out; finished in {secs:.2}s\n",
                if failed.is_empty() { "ok" } else { "FAILED" },
                failed.len()
            );
        }
    }
    if !failed.is_empty() {
        std::process::exit(ERROR_EXIT);
    }
}
