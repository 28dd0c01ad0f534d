//! The stage end to end on tiny data splits in a temporary artifacts root.

mod common;

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use common::fixture;
use pipeline::atomic::StagingDir;
use pipeline::config::ModelConfig;
use pipeline::data::Reviews;
use pipeline::stamp::StageRun;
use pipeline::tokens::TokenSplit;
use pipeline::{Config, Layout, Split, StageId};
use tokenize::{Outcome, TokensSummary};

const LONG: &str = "A slow, meandering film whose every scene outstays its welcome by minutes.";

struct Setup {
    tmp: tempfile::TempDir,
    config: Config,
    layout: Layout,
}

impl Setup {
    /// A config on a temp root with the tiny BERT fixture (a local folder).
    fn new(model: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let config = Config {
            artifacts: tmp.path().join("artifacts"),
            model: ModelConfig {
                source: fixture(&format!("{model}/base")).display().to_string(),
                max_len: 16,
                ..ModelConfig::default()
            },
            ..Config::default()
        };
        let layout = Layout::new(&config.artifacts);
        Self {
            tmp,
            config,
            layout,
        }
    }

    /// Writes the data stage's outputs as data-prep does, with a stamp.
    fn write_data(&self, sizes: [usize; 3]) {
        let run = StageRun::new(&self.layout, StageId::DataPrep, &self.config, "test");
        let staged = StagingDir::new(&run.dir).unwrap();
        for (split, n) in Split::ALL.into_iter().zip(sizes) {
            let reviews = Reviews {
                ids: (0..n).map(|i| format!("{split}-{i}")).collect(),
                texts: (0..n)
                    .map(|i| {
                        if i % 2 == 0 {
                            LONG.into()
                        } else {
                            format!("Great fun {i}!")
                        }
                    })
                    .collect(),
                labels: (0..n).map(|i| (i % 2) as u8).collect(),
                ratings: vec![None; n],
            };
            reviews
                .write_parquet(&staged.path().join(Layout::data_file(split)))
                .unwrap();
        }
        run.write_stamp(staged.path()).unwrap();
        staged.commit().unwrap();
    }

    fn tokens_dir(&self) -> PathBuf {
        self.layout.stage_dir(StageId::Tokenize)
    }

    fn data_stamp(&self) -> Vec<u8> {
        fs::read(self.layout.stage_dir(StageId::DataPrep).join("stamp.json")).unwrap()
    }
}

fn ran(outcome: Outcome<TokensSummary>) -> (String, TokensSummary) {
    match outcome {
        Outcome::Ran {
            reason, summary, ..
        } => (reason, summary),
        other => panic!("expected a run, got {other:?}"),
    }
}

fn err(config: &Config) -> String {
    format!("{:#}", tokenize::run(config, false).unwrap_err())
}

#[test]
fn tokenizes_every_split_and_is_up_to_date_on_rerun() {
    let s = Setup::new("bert-tiny-lora");
    s.write_data([4, 3, 2]);
    let (_, summary) = ran(tokenize::run(&s.config, false).unwrap());

    let dir = s.tokens_dir();
    for (split, n) in Split::ALL.into_iter().zip([4, 3, 2]) {
        let tokens = TokenSplit::read(&dir.join(Layout::tokens_file(split))).unwrap();
        assert_eq!(
            (tokens.len(), tokens.max_len, tokens.pad_token_id),
            (n, 16, 0)
        );
        assert_eq!(tokens.rows, (0..n as u32).collect::<Vec<_>>());
        assert_eq!(
            tokens.labels,
            (0..n as u32).map(|i| i % 2).collect::<Vec<_>>()
        );
        // Even rows are the long review: full, ending in [SEP]; odd ones are padded.
        let row = |i: usize| &tokens.input_ids[i * 16..(i + 1) * 16];
        assert_eq!((row(0)[0], row(0)[15]), (101, 102));
        assert_eq!(row(1)[15], 0);
        assert_eq!(
            tokens.attention_mask[16..32].iter().sum::<u32>() as usize,
            { row(1).iter().position(|&id| id == 0).unwrap() }
        );
        let split_summary = summary.split(split);
        assert_eq!(split_summary.count, n);
        assert_eq!(split_summary.truncated, n.div_ceil(2));
    }
    let on_disk: TokensSummary =
        serde_json::from_str(&fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(on_disk, summary);
    assert_eq!(summary.train.truncated_share, 0.5);

    let stamp = fs::read(dir.join("stamp.json")).unwrap();
    assert!(matches!(
        tokenize::run(&s.config, false).unwrap(),
        Outcome::UpToDate { .. }
    ));
    assert_eq!(fs::read(dir.join("stamp.json")).unwrap(), stamp);
    let (reason, _) = ran(tokenize::run(&s.config, true).unwrap());
    assert_eq!(reason, "--force");
}

#[test]
fn changing_max_len_reruns_tokenize_only() {
    let mut s = Setup::new("bert-tiny-lora");
    s.write_data([2, 2, 2]);
    ran(tokenize::run(&s.config, false).unwrap());
    let data_stamp = s.data_stamp();

    s.config.model.max_len = 32;
    let (reason, summary) = ran(tokenize::run(&s.config, false).unwrap());
    assert!(reason.contains("model.max_len"), "{reason}");
    assert_eq!((summary.max_len, summary.train.truncated), (32, 0));
    let tokens = TokenSplit::read(&s.tokens_dir().join("train.safetensors")).unwrap();
    assert_eq!(tokens.input_ids.len(), 2 * 32);
    assert_eq!(s.data_stamp(), data_stamp);
    assert!(matches!(
        tokenize::run(&s.config, false).unwrap(),
        Outcome::UpToDate { .. }
    ));
}

#[test]
fn gpt2_is_padded_with_eos_and_records_it() {
    let s = Setup::new("gpt2-tiny-lora");
    s.write_data([2, 1, 1]);
    let (_, summary) = ran(tokenize::run(&s.config, false).unwrap());
    assert_eq!(summary.pad_token_id, 50256);
    let tokens = TokenSplit::read(&s.tokens_dir().join("train.safetensors")).unwrap();
    assert_eq!(tokens.pad_token_id, 50256);
    // No special tokens: the short review starts with its first word and ends in eos padding.
    let short = &tokens.input_ids[16..32];
    assert_eq!(short[15], 50256);
    assert_ne!(short[0], 50256);
}

#[test]
fn missing_or_stale_data_is_refused_naming_data_prep() {
    let mut s = Setup::new("bert-tiny-lora");
    assert!(err(&s.config).contains("just data-prep"));

    s.write_data([2, 2, 2]);
    ran(tokenize::run(&s.config, false).unwrap());
    let before = fs::read(s.tokens_dir().join("train.safetensors")).unwrap();
    s.config.data.train_fraction = 0.5;
    let message = err(&s.config);
    assert!(
        message.contains("just data-prep") && message.contains("data.train_fraction"),
        "{message}"
    );
    // The previous outputs are left as they were.
    assert_eq!(
        fs::read(s.tokens_dir().join("train.safetensors")).unwrap(),
        before
    );
}

/// Only the stage folders of data (and the temp root) exist: no partial tokens.
fn assert_no_tokens(s: &Setup) {
    let names: Vec<_> = fs::read_dir(s.layout.root())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["data"], "{names:?}");
}

#[test]
fn an_empty_split_is_refused_without_output() {
    let s = Setup::new("bert-tiny-lora");
    s.write_data([2, 0, 2]);
    let message = err(&s.config);
    assert!(
        message.contains("validation.parquet holds no reviews"),
        "{message}"
    );
    assert_no_tokens(&s);
}

#[test]
fn a_broken_tokenizer_is_named_without_output() {
    let mut s = Setup::new("bert-tiny-lora");
    s.write_data([2, 2, 2]);
    let model = s.tmp.path().join("model");
    fs::create_dir(&model).unwrap();
    let base = fixture("bert-tiny-lora/base");
    fs::copy(base.join("config.json"), model.join("config.json")).unwrap();
    fs::write(
        model.join("tokenizer.json"),
        "{\"version\": \"1.0\", \"model\": ",
    )
    .unwrap();
    s.config.model.source = model.display().to_string();
    let message = err(&s.config);
    assert!(
        message.contains(&format!("{}", model.join("tokenizer.json").display())),
        "{message}"
    );
    assert_no_tokens(&s);

    fs::remove_file(model.join("tokenizer.json")).unwrap();
    assert!(err(&s.config).contains("has no tokenizer.json"));
}

#[test]
fn the_binary_reports_and_exits_non_zero_on_errors() {
    let s = Setup::new("bert-tiny-lora");
    let config_path = s.tmp.path().join("pipeline.yaml");
    fs::write(
        &config_path,
        format!(
            "artifacts: {}\nmodel:\n  source: {}\n  max_len: 16\n",
            s.config.artifacts.display(),
            s.config.model.source
        ),
    )
    .unwrap();
    let tokenize = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tokenize"))
            .arg("--config")
            .arg(&config_path)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = tokenize(&[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error: tokenize:") && stderr.contains("just data-prep"),
        "{stderr}"
    );

    s.write_data([2, 2, 2]);
    let out = tokenize(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("train: 2 reviews, 1 (50.0%) truncated to 16 tokens"),
        "{stdout}"
    );

    let out = tokenize(&[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let expected = format!("tokenize: up to date ({})", s.tokens_dir().display());
    assert_eq!(stdout.trim(), expected);
}
