//! The combined executable's front door: no command or an unknown one is a usage error (exit
//! 2, the usage on stderr, nothing on stdout), `help`/`--help` list every command, `--version`
//! names the version, and each command is reached (its own `--help` names it).

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_imdb-lora");

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every command the usage lists, read from `imdb-lora --help`.
fn listed_commands() -> Vec<String> {
    let out = run(&["--help"]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    help.split_once("Commands:\n")
        .unwrap_or_else(|| panic!("no command list in:\n{help}"))
        .1
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

#[test]
fn no_command_or_an_unknown_one_is_a_usage_error() {
    for args in [&[][..], &["trian"][..], &["--frobnicate"][..]] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}: {}", text(&out.stdout));
        let err = text(&out.stderr);
        assert!(
            err.contains("Usage: imdb-lora <COMMAND>"),
            "{args:?}: {err}"
        );
        if let Some(name) = args.first() {
            assert!(
                err.contains(&format!("unknown command \"{name}\"")),
                "{args:?}: {err}"
            );
        }
    }
}

#[test]
fn help_lists_every_command_and_version_names_the_version() {
    let listed = listed_commands();
    for stage in [
        "data-prep",
        "tokenize",
        "train",
        "evaluate",
        "report",
        "export",
    ] {
        assert!(listed.iter().any(|c| c == stage), "{stage} in {listed:?}");
    }
    for args in [["help"], ["-h"]] {
        let out = run(&args);
        assert!(out.status.success(), "{args:?}");
        assert_eq!(text(&out.stdout), text(&run(&["--help"]).stdout));
    }
    for flag in ["--version", "-V"] {
        let out = run(&[flag]);
        assert!(out.status.success(), "{flag}");
        assert_eq!(
            text(&out.stdout).trim(),
            format!("imdb-lora {}", env!("CARGO_PKG_VERSION"))
        );
    }
}

/// Each listed command reaches its own parser: `imdb-lora <command> --help` succeeds, names
/// `imdb-lora <command>` as its program, and differs from every other command's help once the
/// program names are set aside (a command dispatched to another's parser would repeat its help).
#[test]
fn every_listed_command_is_dispatched_to_its_own_parser() {
    let listed = listed_commands();
    assert!(listed.len() >= 10, "{listed:?}");
    let mut seen: Vec<(String, String)> = Vec::new();
    for command in &listed {
        let out = run(&[command, "--help"]);
        let help = text(&out.stdout);
        assert!(
            out.status.success(),
            "{command} --help: {}",
            text(&out.stderr)
        );
        let program = format!("imdb-lora {command}");
        assert!(
            help.contains(&program),
            "{command} --help does not name its program:\n{help}"
        );
        let body = help.replace(&program, "imdb-lora <COMMAND>");
        if let Some((other, _)) = seen.iter().find(|(_, b)| *b == body) {
            panic!("{command} --help is {other}'s: dispatched to the wrong parser?\n{help}");
        }
        seen.push((command.clone(), body));
    }
}
