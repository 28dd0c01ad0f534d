//! The kill test binary (`kill.rs`, no libtest harness) takes libtest's command line: the
//! parser it shares with this file (`common/libtest.rs`) on what `cargo test -- ARGS` passes,
//! and the binary itself, run with `--list`, when it was built beside this one.

#[path = "common/libtest.rs"]
mod libtest;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use libtest::{parse, Format, Ignored, ERROR_EXIT};

/// Test names shaped like kill.rs's.
const NAMES: [&str; 4] = [
    "resumes_after_a_kill_as_if_never_stopped",
    "resume_skips_a_checkpoint_with_non_finite_state",
    "kills_inside_writes_lose_nothing",
    "a_second_run_on_a_held_root_is_refused",
];

fn chosen(args: &[&str]) -> Vec<&'static str> {
    parse(args.iter().copied()).unwrap().select(&NAMES)
}

fn error(args: &[&str]) -> String {
    parse(args.iter().copied()).unwrap_err()
}

#[test]
fn options_that_choose_nothing_run_everything() {
    for args in [
        &[][..],
        &["--test-threads", "1"],
        &["--test-threads=4"],
        &["--format", "json", "-Z", "unstable-options"],
        &["--format=terse", "-Zunstable-options"],
        &[
            "--nocapture",
            "--no-capture",
            "--show-output",
            "--color",
            "never",
        ],
        &[
            "-q",
            "--test",
            "--include-ignored",
            "--quiet",
            "--color=always",
        ],
    ] {
        assert_eq!(chosen(args), NAMES, "{args:?}");
    }
    let args = parse(["--test-threads", "3", "--format=json", "--list"]).unwrap();
    assert_eq!(
        (args.test_threads, args.format, args.list),
        (Some(3), Format::Json, true)
    );
    assert_eq!(parse(["-q"]).unwrap().format, Format::Terse);
    assert_eq!(parse(["--ignored"]).unwrap().ignored, Ignored::Only);
}

#[test]
fn filters_skip_and_exact_as_libtest() {
    assert_eq!(
        chosen(&["resume"]),
        [
            "resumes_after_a_kill_as_if_never_stopped",
            "resume_skips_a_checkpoint_with_non_finite_state"
        ]
    );
    // Several filters: any of them.
    assert_eq!(
        chosen(&["held", "kills_inside"]),
        [
            "kills_inside_writes_lose_nothing",
            "a_second_run_on_a_held_root_is_refused"
        ]
    );
    assert_eq!(
        chosen(&["--skip", "resumes", "--skip=held"]),
        [
            "resume_skips_a_checkpoint_with_non_finite_state",
            "kills_inside_writes_lose_nothing"
        ]
    );
    assert_eq!(
        chosen(&["resume", "--skip", "non_finite"]),
        ["resumes_after_a_kill_as_if_never_stopped"]
    );
    // --exact: whole names, for filters and --skip alike.
    assert_eq!(
        chosen(&["--exact", "kills_inside_writes_lose_nothing"]),
        ["kills_inside_writes_lose_nothing"]
    );
    assert!(chosen(&["--exact", "kills_inside"]).is_empty());
    assert_eq!(chosen(&["--exact", "--skip", "resume"]), NAMES);
    assert_eq!(
        chosen(&["--skip", "kills_inside_writes_lose_nothing", "--exact"]).len(),
        3
    );
    // After `--`, everything is a filter.
    assert_eq!(
        chosen(&["--", "--skip"]),
        Vec::<&str>::new(),
        "no name holds `--skip`"
    );
    // No test is ignored: --ignored runs none; --bench, benchmarks only (none).
    assert!(chosen(&["--ignored"]).is_empty());
    assert!(chosen(&["--bench"]).is_empty());
}

#[test]
fn listings_as_libtest_prints_them() {
    let args = parse(["--list", "--skip", "resume"]).unwrap();
    let names = args.select(&NAMES);
    assert_eq!(
        args.listing(&names),
        "kills_inside_writes_lose_nothing: test\n\
         a_second_run_on_a_held_root_is_refused: test\n\n2 tests, 0 benchmarks\n"
    );
    let args = parse([
        "--list",
        "-q",
        "--exact",
        "kills_inside_writes_lose_nothing",
    ])
    .unwrap();
    assert_eq!(
        args.listing(&args.select(&NAMES)),
        "kills_inside_writes_lose_nothing: test\n"
    );
    let args = parse(["--list", "--format", "json", "held"]).unwrap();
    assert_eq!(
        args.listing(&args.select(&NAMES)),
        "{ \"type\": \"suite\", \"event\": \"discovery\" }\n\
         { \"type\": \"test\", \"event\": \"discovered\", \"name\": \"a_second_run_on_a_held_root_is_refused\", \"ignore\": false }\n\
         { \"type\": \"suite\", \"event\": \"completed\", \"tests\": 1, \"benchmarks\": 0, \"total\": 1, \"ignored\": 0 }\n"
    );
    assert_eq!(
        libtest::json_string("a\"b\\c\n\u{1}"),
        r#""a\"b\\c\n\u0001""#
    );
}

#[test]
fn unknown_options_and_bad_values_are_errors() {
    assert_eq!(
        error(&["--frobnicate"]),
        "unrecognized option: '--frobnicate'"
    );
    assert_eq!(error(&["-x"]), "unrecognized option: '-x'");
    assert!(error(&["--shuffle"]).contains("unrecognized option"));
    assert_eq!(error(&["--skip"]), "argument to option '--skip' missing");
    assert_eq!(
        error(&["--test-threads"]),
        "argument to option '--test-threads' missing"
    );
    assert_eq!(
        error(&["--test-threads", "0"]),
        "argument for --test-threads must not be 0"
    );
    assert!(error(&["--test-threads=many"]).contains("must be a number > 0"));
    assert!(error(&["--format", "junit"]).contains("pretty, terse or json"));
    assert!(error(&["--color", "blue"]).contains("auto, always, or never"));
    assert!(error(&["-Z", "something"]).contains("unknown -Z option"));
    assert_eq!(
        error(&["--exact=yes"]),
        "option '--exact' does not take a value"
    );
}

/// The kill test binary built beside this one (`target/<profile>/deps/kill-<hash>`), if it
/// is there and newer than its sources: `cargo test -p train` builds both, while
/// `cargo test -p train --test kill_args` builds only this one.
fn kill_binary() -> Result<PathBuf, String> {
    let me = std::env::current_exe().unwrap();
    let deps = me.parent().unwrap();
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let newest = std::fs::read_dir(deps)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.strip_prefix("kill-")
                .is_some_and(|hash| hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()))
        })
        .filter_map(|p| Some((modified(&p)?, p)))
        .max();
    let Some((built, path)) = newest else {
        return Err(format!("no kill test binary in {}", deps.display()));
    };
    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    for source in ["kill.rs", "common/libtest.rs", "common/mod.rs"] {
        if modified(&tests.join(source)).is_some_and(|m| m > built) {
            return Err(format!(
                "{} is older than tests/{source}: `cargo test -p train` rebuilds it",
                path.display()
            ));
        }
    }
    Ok(path)
}

fn run(kill: &Path, args: &[&str]) -> Output {
    let out = Command::new(kill).args(args).output().unwrap();
    assert!(
        out.status.success() || !args.contains(&"--list"),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The names a `--list` in libtest's pretty or terse format gives.
fn listed(out: &Output) -> Vec<String> {
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_suffix(": test").map(str::to_string))
        .collect()
}

#[test]
fn the_kill_binary_takes_libtests_command_line() {
    let kill = match kill_binary() {
        Ok(path) => path,
        Err(why) => {
            test_support::report_platform_skip("the_kill_binary_takes_libtests_command_line", &why);
            return;
        }
    };
    let all = listed(&run(&kill, &["--list"]));
    assert!(all.len() >= 3, "{all:?}");
    assert!(all
        .iter()
        .any(|n| n == "resumes_after_a_kill_as_if_never_stopped"));
    let names: Vec<&str> = all.iter().map(String::as_str).collect();
    // What the parser chooses from the binary's own names, the binary lists.
    let expect = |args: &[&str]| -> Vec<String> {
        let parsed = parse(args.iter().copied()).unwrap();
        parsed
            .select(&names)
            .iter()
            .map(|s| s.to_string())
            .collect()
    };

    assert_eq!(listed(&run(&kill, &["--list", "--test-threads", "1"])), all);
    let pretty = String::from_utf8(run(&kill, &["--list"]).stdout).unwrap();
    assert!(
        pretty.ends_with(&format!("\n\n{} tests, 0 benchmarks\n", all.len())),
        "{pretty}"
    );

    let json = run(&kill, &["--list", "--format", "json"]);
    let discovered: Vec<String> = String::from_utf8(json.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == "discovered")
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(discovered, all);

    let skipped = listed(&run(&kill, &["--list", "--skip", "resumes"]));
    assert_eq!(skipped, expect(&["--skip", "resumes"]));
    assert!(!skipped.is_empty() && skipped.len() < all.len());
    assert!(skipped.iter().all(|n| !n.contains("resumes")));

    let exact = listed(&run(&kill, &["--list", "--exact", &all[1]]));
    assert_eq!(exact, [all[1].clone()]);
    assert!(listed(&run(&kill, &["--list", "--exact", "resume"])).is_empty());
    assert_eq!(
        listed(&run(&kill, &["--list", "--format=terse", "resume"])),
        expect(&["resume"])
    );
    assert!(listed(&run(&kill, &["--list", "--ignored"])).is_empty());
    assert_eq!(
        listed(&run(&kill, &["--list", "--include-ignored", "-q"])),
        all
    );

    // An option it does not know: an error, not a run of nothing.
    let out = run(&kill, &["--no-such-option"]);
    assert_eq!(out.status.code(), Some(ERROR_EXIT));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unrecognized option: '--no-such-option'")
    );
    assert!(out.stdout.is_empty(), "nothing ran");
    // Nothing selected: runs nothing, and says so.
    let out = run(&kill, &["--exact", "no_such_test"]);
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("running 0 tests")
            && stdout.contains(&format!(
                "0 passed; 0 failed; 0 ignored; 0 measured; {} filtered out",
                all.len()
            )),
        "{stdout}"
    );
}
