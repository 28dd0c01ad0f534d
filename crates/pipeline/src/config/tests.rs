use std::path::Path;

use anyhow::Result;

use super::*;

fn load(text: &str, sets: &[&str]) -> Result<Config> {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    Config::from_yaml(text, "test.yaml", &sets)
}

#[test]
fn revisions_must_not_be_empty() {
    for key in ["data.revision", "model.revision"] {
        let err = Config::from_yaml("", "p.yaml", &[format!("{key}=''")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("key `{key}`: must not be empty")),
            "{err}"
        );
    }
    let c = Config::from_yaml("data:\n  revision: v1.0\n", "p.yaml", &[]).unwrap();
    assert_eq!(
        (c.data.revision.as_str(), c.model.revision.as_str()),
        ("v1.0", "main")
    );
}

#[test]
fn empty_file_gives_the_defaults() {
    assert_eq!(load("", &[]).unwrap(), Config::default());
}

#[test]
fn the_repository_pipeline_yaml_parses_and_holds_every_key() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pipeline.yaml");
    let config = Config::load(&path, &[]).unwrap();
    // Every key is spelled out in the file, so it must round-trip to the same tree.
    let text = std::fs::read_to_string(&path).unwrap();
    let written: serde_json::Value = serde_norway::from_str(&text).unwrap();
    let parsed = serde_json::to_value(&config).unwrap();
    assert_eq!(written, parsed, "pipeline.yaml must list every key");
}

#[test]
fn target_modules_take_pefts_all_linear_and_write_it_back() {
    let c = load("lora:\n  target_modules: all-linear\n", &[]).unwrap();
    assert_eq!(c.lora.target_modules, Some(vec![ALL_LINEAR.to_string()]));
    assert!(
        c.to_yaml().contains("target_modules: all-linear"),
        "{}",
        c.to_yaml()
    );
    assert_eq!(load(&c.to_yaml(), &[]).unwrap(), c);
    let listed = load("", &["lora.target_modules=[all-linear]"]).unwrap();
    assert_eq!(listed.lora.target_modules, c.lora.target_modules);
    for (yaml, says) in [
        (
            "lora:\n  target_modules: query\n",
            "`query`: expected a list of module names (`[query]`)",
        ),
        (
            "lora:\n  target_modules: [query, all-linear]\n",
            "`all-linear` stands alone",
        ),
        (
            "lora:\n  target_modules: 3\n",
            "expected a list of module names, `all-linear`, or null",
        ),
    ] {
        let err = format!("{:#}", load(yaml, &[]).unwrap_err());
        assert!(
            err.contains("lora.target_modules") && err.contains(says),
            "{yaml}: {err}"
        );
    }
}

#[test]
fn overrides_take_yaml_values() {
    let c = load(
        "training:\n  epochs: 2\n",
        &[
            "training.learning_rate=2e-5",
            "lora.target_modules=[query, key]",
            "data.max_train=null",
        ],
    )
    .unwrap();
    assert_eq!(c.training.epochs, 2);
    assert_eq!(c.training.learning_rate, 2e-5);
    assert_eq!(
        c.lora.target_modules,
        Some(vec!["query".to_string(), "key".to_string()])
    );
}

#[test]
fn unknown_keys_are_named() {
    let err = load("lora:\n  rank: 8\n", &[]).unwrap_err().to_string();
    assert!(err.contains("test.yaml") && err.contains("rank"), "{err}");
    let err = load("", &["training.lr=1"]).unwrap_err();
    assert!(format!("{err:#}").contains("lr"), "{err:#}");
}

#[test]
fn wrong_types_are_named() {
    let err = load("training:\n  batch_size: sixteen\n", &[]).unwrap_err();
    let err = err.to_string();
    assert!(err.contains("training.batch_size"), "{err}");
}

#[test]
fn out_of_range_values_are_named() {
    for (set, key) in [
        ("lora.r=0", "lora.r"),
        ("lora.dropout=1.0", "lora.dropout"),
        ("lora.dropout=-0.1", "lora.dropout"),
        ("data.train_fraction=0", "data.train_fraction"),
        ("data.validation_fraction=1.5", "data.validation_fraction"),
        ("training.batch_size=0", "training.batch_size"),
        ("training.device=gpu", "training.device"),
        ("training.dtype=f64", "training.dtype"),
        ("evaluate.threshold=2", "evaluate.threshold"),
        // Sizes that would abort on allocation or overflow.
        ("lora.alpha=1e6", "lora.alpha"),
        ("lora.alpha=.inf", "lora.alpha"),
        ("training.batch_size=4097", "training.batch_size"),
        ("evaluate.batch_size=1099511627776", "evaluate.batch_size"),
        ("model.max_len=1099511627776", "model.max_len"),
        ("training.epochs=1000000000", "training.epochs"),
        ("artifacts=''", "artifacts"),
        ("artifacts=' '", "artifacts"),
    ] {
        let err = load("", &[set]).unwrap_err().to_string();
        assert!(
            err.contains(key) && err.contains("test.yaml"),
            "{set}: {err}"
        );
    }
}

#[test]
fn bounds_are_inclusive_and_named_in_the_error() {
    let c = load(
        "",
        &[
            "lora.alpha=10000",
            "training.batch_size=4096",
            "evaluate.batch_size=4096",
            "model.max_len=8192",
        ],
    )
    .unwrap();
    assert_eq!(c.lora.alpha, MAX_LORA_ALPHA);
    assert_eq!(c.training.batch_size, MAX_BATCH_SIZE);
    let err = load("", &["training.batch_size=5000"])
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "test.yaml: key `training.batch_size`: 5000 is out of range, expected at most 4096 \
         (a batch is held in memory at once)"
    );
}

#[test]
fn a_file_that_is_not_a_mapping_is_blamed_not_the_override() {
    for (text, kind) in [
        ("- seed: 1\n- lora: {}\n", "a list"),
        ("42\n", "a number"),
        ("just words\n", "a string"),
    ] {
        let err = format!("{:#}", load(text, &["lora.r=4"]).unwrap_err());
        assert!(
            err.starts_with("test.yaml: expected a mapping of sections")
                && err.contains(kind)
                && !err.contains("--set"),
            "{err}"
        );
    }
    // A bad override on a good file still blames the override.
    let err = format!("{:#}", load("seed: 1\n", &["seed.x=1"]).unwrap_err());
    assert!(err.contains("--set seed.x=1") && err.contains("`seed` is not a section"));
}

#[test]
fn enums_are_strict() {
    let err = load("training:\n  optimizer: lion\n", &[]).unwrap_err();
    assert!(err.to_string().contains("training.optimizer"), "{err}");
    assert!(load("", &["lora.bias=lora_only"]).is_ok());
}

#[test]
fn sections_pick_named_keys() {
    let c = Config::default();
    let s = c.sections(&["seed", "model.max_len"]);
    assert_eq!(s["seed"], 42);
    assert_eq!(s["model.max_len"], 128);
}

#[test]
fn devices_and_dtypes_are_typed_once_parsed() {
    let c = load("training:\n  device: cuda:1\n  dtype: bf16\n", &[]).unwrap();
    assert_eq!(c.training.device, DeviceSetting::Cuda(1));
    assert_eq!(c.training.dtype, DtypeSetting::Bf16);
    let err = load("", &["training.device=cuda:x"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("key `training.device`") && err.contains("cuda:N"),
        "{err}"
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Keys of every section, with values drawn from the types YAML can spell.
    fn key() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "seed",
            "artifacts",
            "data.source",
            "data.train_fraction",
            "data.max_test",
            "model.source",
            "model.max_len",
            "lora.r",
            "lora.alpha",
            "lora.dropout",
            "lora.bias",
            "lora.target_modules",
            "training.batch_size",
            "training.epochs",
            "training.optimizer",
            "training.device",
            "training.max_grad_norm",
            "evaluate.threshold",
            "evaluate.batch_size",
            "report.formats",
            "lora",
            "nonsense",
            "training.nonsense",
        ])
        .prop_map(String::from)
    }

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<i64>().prop_map(|v| v.to_string()),
            any::<u64>().prop_map(|v| v.to_string()),
            any::<f64>().prop_map(|v| format!("{v:e}")),
            Just("null".to_string()),
            Just(".nan".to_string()),
            Just("-.inf".to_string()),
            Just("[query, value]".to_string()),
            Just("{a: 1}".to_string()),
            "[a-z_:0-9]{0,12}",
        ]
    }

    /// The config a successful parse gives is valid: it parses again to itself.
    fn round_trips(c: &Config) {
        let again = Config::from_yaml(&c.to_yaml(), "again.yaml", &[]).unwrap();
        assert_eq!(&again, c);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn garbled_text_never_panics(text in "\\PC{0,200}") {
            match Config::from_yaml(&text, "fuzz.yaml", &[]) {
                Ok(c) => round_trips(&c),
                Err(e) => {
                    let e = format!("{e:#}");
                    prop_assert!(e.contains("fuzz.yaml"), "{}", e)
                }
            }
        }

        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let text = String::from_utf8_lossy(&bytes);
            if let Ok(c) = Config::from_yaml(&text, "fuzz.yaml", &[]) {
                round_trips(&c);
            }
        }

        #[test]
        fn random_keys_and_values_give_an_error_naming_the_origin_or_a_valid_config(
            entries in prop::collection::vec((key(), value()), 0..6),
            as_overrides in any::<bool>(),
        ) {
            let lines: Vec<String> = entries.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let result = if as_overrides {
                Config::from_yaml("", "fuzz.yaml", &lines)
            } else {
                // Nested YAML from the dotted keys (a later key may clash with an earlier
                // one: that is an error too, not a panic).
                let mut text = String::new();
                for (k, v) in &entries {
                    let parts: Vec<&str> = k.split('.').collect();
                    for (depth, part) in parts.iter().enumerate() {
                        let indent = "  ".repeat(depth);
                        if depth + 1 == parts.len() {
                            text.push_str(&format!("{indent}{part}: {v}\n"));
                        } else {
                            text.push_str(&format!("{indent}{part}:\n"));
                        }
                    }
                }
                Config::from_yaml(&text, "fuzz.yaml", &[])
            };
            match result {
                Ok(c) => round_trips(&c),
                Err(e) => {
                    let e = format!("{e:#}");
                    prop_assert!(e.contains("fuzz.yaml") || e.contains("--set"), "{e}");
                }
            }
        }
    }
}
