use super::*;

/// Every leaf key of the config, dotted.
fn leaves(value: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(v, &key, out);
            }
        }
        _ => out.push(prefix.to_string()),
    }
}

fn covers(declared: &str, leaf: &str) -> bool {
    leaf == declared || leaf.starts_with(&format!("{declared}."))
}

#[test]
fn every_setting_is_a_key_of_some_stage_or_says_why_not() {
    let mut all = Vec::new();
    leaves(
        &serde_json::to_value(Config::default()).unwrap(),
        "",
        &mut all,
    );
    for leaf in &all {
        let keyed = STAGES
            .iter()
            .any(|s| s.keys.iter().any(|k| covers(k, leaf)));
        let exempt = NOT_KEYS.iter().any(|(k, _)| covers(k, leaf));
        assert!(
            keyed != exempt,
            "{leaf}: must be some stage's key or in NOT_KEYS, and not both"
        );
    }
    // And every declared key exists.
    for spec in &STAGES {
        for key in spec.keys {
            assert!(all.iter().any(|l| covers(key, l)), "{key}");
        }
    }
    let keyed = keyed_config(&Config::default());
    assert!(keyed.get("artifacts").is_none() && keyed["training"].get("device").is_none());
    assert_eq!(keyed["training"]["epochs"], 3);
}

#[test]
fn each_stage_has_its_own_name_and_a_one_line_summary() {
    for stage in StageId::ALL {
        let spec = stage.spec();
        assert_eq!(StageId::from_recipe(spec.recipe), Some(stage));
        assert_eq!(stage.to_string(), spec.recipe);
        // A command name the justfile's `for` loops and `imdb-lora <stage>` can take as is.
        assert!(
            !spec.recipe.is_empty()
                && spec
                    .recipe
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '-'),
            "{:?}",
            spec.recipe
        );
        assert!(
            !spec.about.is_empty() && !spec.about.contains('\n'),
            "{}: {:?}",
            spec.recipe,
            spec.about
        );
    }
    assert_eq!(StageId::from_recipe("predict"), None);
}

#[test]
fn stages_read_only_declared_outputs_of_earlier_stages() {
    for (i, spec) in STAGES.iter().enumerate() {
        assert_eq!(spec.id as usize, i, "STAGES is in StageId order");
        assert_eq!(StageId::ALL[i], spec.id);
        for read in spec.reads {
            assert!(read.stage < spec.id, "{}: reads a later stage", spec.recipe);
            let upstream = read.stage.spec();
            assert!(
                upstream
                    .writes
                    .iter()
                    .any(|w| !w.is_pattern() && w.file == read.file),
                "{} reads {}/{}, which {} does not declare",
                spec.recipe,
                upstream.dir,
                read.file,
                upstream.recipe
            );
        }
    }
    let dirs: Vec<&str> = STAGES.iter().map(|s| s.dir).collect();
    let mut unique = dirs.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), dirs.len(), "one folder per stage");
}

#[test]
fn conditions_follow_the_config() {
    let mut c = Config::default();
    let evaluate = StageId::Evaluate.spec();
    assert_eq!(evaluate.reads_for(&c).len(), 4);
    assert_eq!(evaluate.writes_for(&c).len(), 4);
    c.evaluate.validation = true;
    assert_eq!(evaluate.reads_for(&c).len(), 6);
    assert_eq!(evaluate.writes_for(&c).len(), 7);
    c.report.formats = vec![crate::config::ImageFormat::Svg];
    let report = StageId::Report.spec().writes_for(&c);
    assert!(report.iter().any(|w| w.matches("loss.svg")));
    assert!(!report.iter().any(|w| w.matches("loss.png")));
    assert!(!report
        .iter()
        .any(|w| w.matches("sub/loss.svg") || w.matches(".svg")));
}
