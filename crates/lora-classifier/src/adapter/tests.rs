use super::*;
use proptest::prelude::*;

fn base() -> Value {
    json!({"peft_type": "LORA", "task_type": "SEQ_CLS", "r": 8, "lora_alpha": 32,
           "lora_dropout": 0.1, "target_modules": ["query", "value"], "bias": "none"})
}

fn with(key: &str, value: Value) -> Result<AdapterSettings> {
    let mut c = base();
    c[key] = value;
    settings(&c, Path::new("a/adapter_config.json"))
}

#[test]
fn fields_of_the_wrong_type_are_errors_not_defaults() {
    for (key, value, message) in [
        (
            "lora_alpha",
            json!("32"),
            "key `lora_alpha`: invalid type: string \"32\", expected f64",
        ),
        (
            "r",
            json!("8"),
            "key `r`: invalid type: string \"8\", expected u64",
        ),
        (
            "r",
            json!(-8),
            "key `r`: invalid value: integer `-8`, expected u64",
        ),
        (
            "r",
            json!(8.5),
            "key `r`: invalid type: floating point `8.5`, expected u64",
        ),
        (
            "lora_dropout",
            json!([0.1]),
            "key `lora_dropout`: invalid type: sequence, expected f64",
        ),
        (
            "use_rslora",
            json!("yes"),
            "key `use_rslora`: invalid type: string \"yes\", expected a boolean",
        ),
        (
            "bias",
            json!(0),
            "key `bias`: invalid type: integer `0`, expected a string",
        ),
        (
            "modules_to_save",
            json!([1]),
            "key `modules_to_save[0]`: invalid type: integer `1`",
        ),
        (
            "lora_layer_norm",
            json!(1),
            "key `lora_layer_norm`: invalid type: integer `1`, expected a boolean",
        ),
        (
            "base_model_name_or_path",
            json!(7),
            "key `base_model_name_or_path`: invalid type: integer `7`",
        ),
    ] {
        let err = format!("{:#}", with(key, value).unwrap_err());
        assert!(
            err.starts_with("a/adapter_config.json: ") && err.contains(message),
            "{key}: {err}"
        );
    }
}

#[test]
fn out_of_range_values_are_errors() {
    for (key, value, message) in [
        ("r", json!(0), "r is 0, expected at least 1"),
        (
            "lora_alpha",
            json!(1e12),
            "lora_alpha 1000000000000 is out of range, expected a number in (0, 10000]",
        ),
        ("lora_alpha", json!(-1), "lora_alpha -1 is out of range"),
        (
            "lora_dropout",
            json!(1.0),
            "lora_dropout 1 is out of range, expected a value in [0, 1)",
        ),
    ] {
        let err = format!("{:#}", with(key, value).unwrap_err());
        assert!(err.contains(message), "{key}: {err}");
    }
}

#[test]
fn nulls_and_missing_keys_take_peft_defaults() {
    let s = settings(
        &json!({"peft_type": "LORA", "r": 4, "lora_alpha": null}),
        Path::new("c"),
    )
    .unwrap();
    assert_eq!((s.lora.r, s.lora.alpha, s.lora.dropout), (4, 8.0, 0.0));
    assert_eq!(s.lora.bias, LoraBias::None);
    assert!(s.base_model.is_none());
    let s = with("lora_alpha", json!(16.5)).unwrap();
    assert_eq!(s.lora.alpha, 16.5);
}

#[test]
fn hub_ids_are_told_from_paths() {
    for id in [
        "gpt2",
        "openai-community/gpt2",
        "sentence-transformers/all-MiniLM-L6-v2",
    ] {
        assert!(looks_like_hub_id(id), "{id}");
    }
    for path in [
        "/models/minilm",
        "./minilm",
        "../x/y",
        "a/b/c",
        "C:\\models",
        "",
        "org/",
    ] {
        assert!(!looks_like_hub_id(path), "{path}");
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(Value::from),
        prop::sample::select(vec![
            "LORA",
            "SEQ_CLS",
            "none",
            "all",
            "query",
            "classifier",
            "x"
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
            prop::collection::btree_map("[a-z]{1,3}", inner, 0..2)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Any value for any key read: an error naming the file, or settings in range.
    #[test]
    fn random_fields_give_an_error_or_valid_settings(
        edits in prop::collection::vec((
            prop::sample::select(vec![
                "peft_type", "task_type", "r", "lora_alpha", "lora_dropout", "target_modules",
                "bias", "use_rslora", "use_dora", "modules_to_save", "rank_pattern",
                "lora_layer_norm", "base_model_name_or_path", "other",
            ]),
            json_value(),
        ), 0..5),
    ) {
        let mut c = base();
        for (key, value) in edits {
            c[key] = value;
        }
        match settings(&c, Path::new("a/adapter_config.json")) {
            Ok(s) => {
                prop_assert!(s.lora.r >= 1);
                prop_assert!(s.lora.alpha > 0.0 && s.lora.alpha <= MAX_ALPHA);
                prop_assert!((0.0..1.0).contains(&s.lora.dropout));
                prop_assert!(s.lora.scale().is_finite());
            }
            Err(e) => {
                let e = format!("{e:#}");
                prop_assert!(e.starts_with("a/adapter_config.json: "), "{}", e)
            }
        }
    }

    #[test]
    fn garbled_text_never_panics(text in "\\PC{0,200}") {
        if let Ok(v) = serde_json::from_str::<Value>(&text) {
            let _ = settings(&v, Path::new("c"));
        }
    }
}
