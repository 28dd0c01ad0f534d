//! `--log-format json`: the train binary's progress on stderr is JSON lines (stage, done,
//! total, message, elapsed_s) that a CI can parse, up to each epoch's last step.

mod common;

use std::process::Command;

use common::*;

#[test]
fn progress_is_json_lines_with_log_format_json() {
    let (tmp, c) = setup(|_| {});
    let config = tmp.path().join("pipeline.yaml");
    std::fs::write(&config, c.to_yaml()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_train"))
        .arg("--config")
        .arg(&config)
        .args(["--log-format", "json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert!(!lines.is_empty(), "no JSON progress in: {stderr}");
    for line in &lines {
        let (done, total) = (
            line["done"].as_u64().unwrap(),
            line["total"].as_u64().unwrap(),
        );
        assert!(done <= total && line["stage"].is_string(), "{line}");
        assert!(line["elapsed_s"].as_f64().is_some() && line["message"].is_string());
    }
    let finished = lines
        .iter()
        .filter(|l| l["done"] == l["total"] && l["stage"].as_str().unwrap().starts_with("epoch"))
        .count();
    assert_eq!(
        finished, c.training.epochs,
        "each epoch's last step is reported"
    );
}
