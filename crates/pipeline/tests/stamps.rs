//! Stage stamps: freshness, damaged outputs, upstream checks and hostile stamp files.

use std::fs;
use std::path::Path;

use pipeline::stamp::{hash_file, Freshness, StageRun, Stamp, STAMP_FILE};
use pipeline::upstream::verify_current;
use pipeline::{Config, Layout, StageId};
fn setup() -> (tempfile::TempDir, Layout, Config) {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        artifacts: dir.path().join("artifacts"),
        ..Config::default()
    };
    let layout = Layout::new(&config.artifacts);
    (dir, layout, config)
}

fn produce(run: &StageRun, files: &[(&str, &str)]) {
    let staged = pipeline::atomic::StagingDir::new(&run.dir).unwrap();
    for (name, content) in files {
        fs::write(staged.path().join(name), content).unwrap();
    }
    run.write_stamp(staged.path()).unwrap();
    staged.commit().unwrap();
}

#[test]
fn a_stage_is_fresh_until_its_config_or_inputs_change() {
    let (tmp, layout, mut config) = setup();
    let source = tmp.path().join("source.txt");
    fs::write(&source, "reviews").unwrap();
    let make = |config: &Config| {
        let mut run = StageRun::new(&layout, StageId::DataPrep, config, "code");
        run.input_file("source", &source).unwrap();
        run
    };
    let run = make(&config);
    assert!(matches!(run.freshness().unwrap(), Freshness::Stale(_)));
    produce(&run, &[("train.parquet", "rows")]);
    assert_eq!(make(&config).freshness().unwrap(), Freshness::UpToDate);

    // A key this stage does not read changes nothing.
    config.training.epochs = 7;
    assert_eq!(make(&config).freshness().unwrap(), Freshness::UpToDate);

    config.data.train_fraction = 0.5;
    match make(&config).freshness().unwrap() {
        Freshness::Stale(why) => assert!(why.contains("data.train_fraction"), "{why}"),
        f => panic!("{f:?}"),
    }
    config.data.train_fraction = 0.1;
    fs::write(&source, "other reviews").unwrap();
    assert!(matches!(
        make(&config).freshness().unwrap(),
        Freshness::Stale(_)
    ));
}

#[test]
fn damaged_outputs_make_a_stage_stale() {
    let (_tmp, layout, config) = setup();
    let run = StageRun::new(&layout, StageId::DataPrep, &config, "code");
    produce(&run, &[("train.parquet", "rows")]);
    fs::write(run.dir.join("train.parquet"), "edited").unwrap();
    assert!(matches!(run.freshness().unwrap(), Freshness::Stale(_)));
    fs::remove_file(run.dir.join("train.parquet")).unwrap();
    assert!(matches!(run.freshness().unwrap(), Freshness::Stale(_)));
}

/// Rewrites the stamp in `dir` through `edit` on its JSON.
fn edit_stamp(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join(STAMP_FILE);
    let mut json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut json);
    fs::write(&path, json.to_string()).unwrap();
}

/// data-prep and tokenize, both current.
fn two_stages() -> (tempfile::TempDir, Layout, Config) {
    let (tmp, layout, config) = setup();
    let data = StageRun::new(&layout, StageId::DataPrep, &config, "code");
    produce(&data, &[("train.parquet", "rows")]);
    let mut tok = StageRun::new(&layout, StageId::Tokenize, &config, "code");
    tok.upstream(&layout, &config, StageId::DataPrep, &["train.parquet"])
        .unwrap();
    produce(&tok, &[("train.safetensors", "ids")]);
    verify_current(&layout, &config, StageId::Tokenize).unwrap();
    (tmp, layout, config)
}

/// What a train stage reading the tokens gets: an error, and no train folder.
fn train_on_tokens_err(layout: &Layout, config: &Config) -> String {
    let mut train = StageRun::new(layout, StageId::Train, config, "code");
    let err = train
        .upstream(layout, config, StageId::Tokenize, &["train.safetensors"])
        .unwrap_err();
    assert!(!layout.stage_dir(StageId::Train).exists());
    format!("{err:#}")
}

#[test]
fn an_upstream_cycle_is_an_error_naming_the_stamp() {
    let (_tmp, layout, config) = two_stages();
    let tokens = layout.stage_dir(StageId::Tokenize);
    // A stage naming itself.
    edit_stamp(&tokens, |j| j["upstream"] = serde_json::json!(["tokenize"]));
    let err = train_on_tokens_err(&layout, &config);
    let stamp = tokens.join(STAMP_FILE).display().to_string();
    assert!(
        err.contains(&format!(
            "{stamp}: upstream stage `tokenize` leads back to `tokenize` (a cycle)"
        )) && err.contains("just tokenize"),
        "{err}"
    );
    // Two stages naming each other.
    edit_stamp(&tokens, |j| {
        j["upstream"] = serde_json::json!(["data-prep"])
    });
    let data = layout.stage_dir(StageId::DataPrep);
    edit_stamp(&data, |j| j["upstream"] = serde_json::json!(["tokenize"]));
    let err = train_on_tokens_err(&layout, &config);
    assert!(
        err.contains(&format!(
            "{}: upstream stage `tokenize` leads back to `data-prep` (a cycle)",
            data.join(STAMP_FILE).display()
        )),
        "{err}"
    );
}

#[test]
fn outputs_outside_the_stage_folder_or_none_are_refused() {
    let (tmp, layout, config) = two_stages();
    let tokens = layout.stage_dir(StageId::Tokenize);
    let stamp = tokens.join(STAMP_FILE).display().to_string();
    let outside = tmp.path().join("outside.txt");
    fs::write(&outside, "x").unwrap();
    let hash = hash_file(&outside).unwrap();
    for (key, message) in [
        (
            "../../outside.txt",
            "is not a relative path inside the stage folder",
        ),
        (
            outside.to_str().unwrap(),
            "is not a relative path inside the stage folder",
        ),
        ("", "is not a relative path inside the stage folder"),
        (
            "./train.safetensors",
            "is not a relative path inside the stage folder",
        ),
    ] {
        edit_stamp(&tokens, |j| {
            j["outputs"] = serde_json::json!({ key: hash });
        });
        let err = train_on_tokens_err(&layout, &config);
        assert!(
            err.contains(&stamp) && err.contains(message) && err.contains("just tokenize"),
            "{key}: {err}"
        );
        // The stage itself is not up to date: it reruns.
        let run = StageRun::new(&layout, StageId::Tokenize, &config, "code");
        match run.freshness().unwrap() {
            Freshness::Stale(why) => assert!(why.contains(message), "{why}"),
            f => panic!("{key}: {f:?}"),
        }
    }
    edit_stamp(&tokens, |j| j["outputs"] = serde_json::json!({}));
    let err = train_on_tokens_err(&layout, &config);
    assert!(err.contains(&format!("{stamp}: lists no outputs")), "{err}");
    let mut run = StageRun::new(&layout, StageId::Tokenize, &config, "code");
    run.upstream(&layout, &config, StageId::DataPrep, &["train.parquet"])
        .unwrap();
    assert!(matches!(run.freshness().unwrap(), Freshness::Stale(_)));
}

#[test]
fn a_stamp_of_another_stage_or_unknown_upstream_is_refused() {
    let (_tmp, layout, config) = two_stages();
    let tokens = layout.stage_dir(StageId::Tokenize);
    edit_stamp(&tokens, |j| j["upstream"] = serde_json::json!(["fetch"]));
    let err = train_on_tokens_err(&layout, &config);
    assert!(err.contains("unknown upstream stage \"fetch\""), "{err}");
    edit_stamp(&tokens, |j| {
        j["upstream"] = serde_json::json!(["data-prep"]);
        j["stage"] = serde_json::json!("train");
    });
    let err = train_on_tokens_err(&layout, &config);
    assert!(
        err.contains("written by stage \"train\", not `tokenize`"),
        "{err}"
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            "\\PC{0,12}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map("[a-z./]{0,8}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A stamp-shaped object whose fields may be anything.
    fn stamp_like() -> impl Strategy<Value = serde_json::Value> {
        let path = prop_oneof![
            "[a-z]{1,6}(/[a-z]{1,6}){0,2}",
            "(\\.\\./|/|\\./)?[a-z./]{0,10}"
        ];
        (
            prop::collection::btree_map(path, "[0-9a-f]{4}", 0..4),
            prop::collection::vec(
                prop::sample::select(vec!["data-prep", "tokenize", "train", "x", ""]),
                0..3,
            ),
            json_value(),
            any::<bool>(),
        )
            .prop_map(|(outputs, upstream, config, typed)| {
                serde_json::json!({
                    "stage": "tokenize",
                    "code": "1",
                    "artifact_format": if typed { serde_json::json!(2) } else { config.clone() },
                    "config": config,
                    "runtime": {},
                    "inputs": {},
                    "outputs": outputs,
                    "upstream": upstream,
                })
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn garbled_stamps_never_panic(text in "\\PC{0,300}") {
            if let Err(e) = Stamp::parse(&text, Path::new("s/stamp.json")) {
                let e = format!("{e:#}");
                prop_assert!(e.contains("s/stamp.json"), "{}", e);
            }
        }

        #[test]
        fn a_parsed_stamp_keeps_its_promises(value in stamp_like()) {
            match Stamp::parse(&value.to_string(), Path::new("s/stamp.json")) {
                Ok(stamp) => {
                    prop_assert!(!stamp.outputs.is_empty());
                    for rel in stamp.outputs.keys() {
                        let p = Path::new(rel);
                        // Joined to the stage folder, it cannot climb out of it.
                        prop_assert!(!rel.is_empty() && p.is_relative(), "{rel}");
                        prop_assert!(p.iter().all(|part| part != ".."), "{rel}");
                    }
                    for up in &stamp.upstream {
                        prop_assert!(StageId::from_recipe(up).is_some());
                    }
                }
                Err(e) => {
                    let e = format!("{e:#}");
                    prop_assert!(e.starts_with("s/stamp.json"), "{}", e)
                }
            }
        }
    }
}

#[test]
fn downstream_refuses_a_stale_upstream_and_names_the_stage() {
    let (_tmp, layout, mut config) = setup();
    let data = StageRun::new(&layout, StageId::DataPrep, &config, "code");
    produce(&data, &[("train.parquet", "rows")]);
    let mut tok = StageRun::new(&layout, StageId::Tokenize, &config, "code");
    tok.upstream(&layout, &config, StageId::DataPrep, &["train.parquet"])
        .unwrap();
    produce(&tok, &[("train.safetensors", "ids")]);

    // Changing what data-prep reads makes data stale for tokenize and for train.
    config.data.train_fraction = 0.2;
    let mut tok = StageRun::new(&layout, StageId::Tokenize, &config, "code");
    let err = tok
        .upstream(&layout, &config, StageId::DataPrep, &["train.parquet"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("just data-prep") && err.contains("data.train_fraction"),
        "{err}"
    );
    let err = verify_current(&layout, &config, StageId::Tokenize).unwrap_err();
    assert!(format!("{err:#}").contains("just data-prep"), "{err:#}");

    // A missing upstream names its stage too.
    let err = verify_current(&layout, &config, StageId::Train)
        .unwrap_err()
        .to_string();
    assert!(err.contains("just train"), "{err}");
}
