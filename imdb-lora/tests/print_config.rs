//! `--print-config` prints a config that every stage accepts back unchanged, and the recipes
//! pass `PIPELINE_CONFIG` to every stage as its `--config`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_imdb-lora");
/// The commands that read the pipeline config.
const STAGES: [&str; 7] = [
    "data-prep",
    "tokenize",
    "train",
    "evaluate",
    "report",
    "export",
    "predict",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn run(cwd: &Path, args: &[&str]) -> Output {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "imdb-lora {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn printed_config_is_accepted_back_by_every_stage() {
    let tmp = tempfile::tempdir().unwrap();
    let pipeline_yaml = root().join("pipeline.yaml");
    let overrides = [
        "--set",
        "training.epochs=7",
        "--set",
        "report.formats=[svg]",
        "--set",
        "training.device=cpu",
        "--set",
        "lora.bias=lora_only",
    ];
    for stage in STAGES {
        let mut args = vec![
            stage,
            "--config",
            pipeline_yaml.to_str().unwrap(),
            "--print-config",
        ];
        args.extend(overrides);
        let printed = String::from_utf8(run(tmp.path(), &args).stdout).unwrap();
        assert!(printed.contains("epochs: 7"), "{stage}: {printed}");
        let file = tmp.path().join(format!("{stage}.yaml"));
        fs::write(&file, &printed).unwrap();
        // Every stage reads it back, and prints it back unchanged.
        for reader in STAGES {
            let again = run(
                tmp.path(),
                &[reader, "--config", file.to_str().unwrap(), "--print-config"],
            );
            assert_eq!(
                String::from_utf8(again.stdout).unwrap(),
                printed,
                "{reader} reading what {stage} printed"
            );
        }
    }
    // `status` takes it too (nothing ran in this folder).
    let file = tmp.path().join("train.yaml");
    let out = run(tmp.path(), &["status", "--config", file.to_str().unwrap()]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.matches("not run: no outputs yet").count(), 6, "{text}");
}

#[test]
fn the_recipes_pass_pipeline_config_to_every_stage() {
    let Ok(just) = which("just") else {
        test_support::report_skip(
            "the_recipes_pass_pipeline_config_to_every_stage",
            "`just` is not installed",
        );
        return;
    };
    let config = "/nowhere/my-config.yaml";
    for recipe in STAGES.iter().copied().chain(["status"]) {
        let out = Command::new(&just)
            .args(["--justfile", root().join("justfile").to_str().unwrap()])
            .args(["--dry-run", recipe])
            .env("PIPELINE_CONFIG", config)
            .output()
            .unwrap();
        assert!(out.status.success(), "just {recipe}: {out:?}");
        // The dry run prints each command it would run; the stage's is the last.
        let shown = String::from_utf8_lossy(&out.stderr);
        let last = shown.lines().last().unwrap_or_default();
        assert!(
            last.contains(&format!("--config {config}")),
            "just {recipe} runs: {last}"
        );
    }
}

/// The program `name` on PATH.
fn which(name: &str) -> Result<PathBuf, ()> {
    let path = std::env::var_os("PATH").ok_or(())?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}
