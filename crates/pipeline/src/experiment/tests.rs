use super::*;

fn axis(arg: &str) -> Axis {
    Axis::parse(arg).unwrap()
}

fn config_file(dir: &Path) -> PathBuf {
    let path = dir.join("pipeline.yaml");
    fs::write(&path, "seed: 7\ntraining:\n  epochs: 2\n").unwrap();
    path
}

fn error_of<T: std::fmt::Debug>(result: Result<T>) -> String {
    format!("{:#}", result.unwrap_err())
}

#[test]
fn an_axis_splits_its_values_on_commas_outside_brackets() {
    assert_eq!(
        axis("training.learning_rate=2e-4, 5e-4"),
        Axis {
            key: "training.learning_rate".into(),
            values: vec!["2e-4".into(), "5e-4".into()],
        }
    );
    assert_eq!(
        axis("lora.target_modules=[query,value],[query,key,value,dense]").values,
        ["[query,value]", "[query,key,value,dense]"]
    );
    assert_eq!(axis("lora.r=8").values, ["8"]);
}

#[test]
fn a_malformed_axis_is_refused_naming_it() {
    for (arg, says) in [
        ("lora.r", "expected KEY=VALUE1,VALUE2"),
        ("=8,16", "the key is empty"),
        ("lora.r=", "the grid of `lora.r` is empty"),
        ("lora.r= , ", "the grid of `lora.r` is empty"),
        ("lora.r=8,,16", "an empty value in the grid of `lora.r`"),
        ("lora.r=8,", "an empty value"),
        ("lora.target_modules=[query,value", "unbalanced brackets"),
    ] {
        let err = error_of(Axis::parse(arg));
        assert!(err.contains(says), "{arg}: {err}");
    }
}

#[test]
fn the_grid_is_every_combination_first_axis_slowest() {
    let combos = expand(&[axis("a=1,2"), axis("b=x,y,z")]);
    let shown: Vec<String> = combos.iter().map(|c| describe(c)).collect();
    assert_eq!(
        shown,
        ["a=1, b=x", "a=1, b=y", "a=1, b=z", "a=2, b=x", "a=2, b=y", "a=2, b=z"]
    );
    assert_eq!(expand(&[]), vec![Vec::<(String, String)>::new()]);
}

#[test]
fn a_plan_loads_every_run_with_the_sets_and_its_assignments() {
    let dir = tempfile::tempdir().unwrap();
    let path = config_file(dir.path());
    let runs = plan(
        &path,
        &["model.truncation=head_tail".into()],
        &[
            axis("training.learning_rate=2e-4,5e-4"),
            axis("lora.r=8,16"),
        ],
    )
    .unwrap();
    let got: Vec<(f64, usize)> = runs
        .iter()
        .map(|r| (r.config.training.learning_rate, r.config.lora.r))
        .collect();
    assert_eq!(got, [(2e-4, 8), (2e-4, 16), (5e-4, 8), (5e-4, 16)]);
    use crate::config::Truncation;
    assert!(runs
        .iter()
        .all(|r| r.config.model.truncation == Truncation::HeadTail));
    // The file's own values stay.
    assert!(runs
        .iter()
        .all(|r| r.config.seed == 7 && r.config.training.epochs == 2));
    let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
    assert!(names[0].starts_with("learning_rate=2e-4_r=8-"), "{names:?}");
    let lists = plan(
        &path,
        &[],
        &[axis("lora.target_modules=[query,value],null")],
    )
    .unwrap();
    assert!(
        lists[0].name.starts_with("target_modules=query+value-"),
        "{}",
        lists[0].name
    );
    assert!(
        lists[1].name.starts_with("target_modules=null-"),
        "{}",
        lists[1].name
    );
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 4, "{names:?}");
}

#[test]
fn bad_input_is_refused_before_anything_runs_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = config_file(dir.path());
    let cases: [(&[&str], &[&str], &str); 6] = [
        (&[], &["training.learnin_rate=1,2"], "learnin_rate"),
        (&[], &["lora.r=8,many"], "key `lora.r`"),
        (&["lora.r=x"], &["training.epochs=1,2"], "key `lora.r`"),
        (&["lora.r=8"], &["lora.r=8,16"], "`lora.r` is given twice"),
        (&[], &["lora.r=8,16", "lora.r=4"], "`lora.r` is given twice"),
        (&[], &["artifacts=a,b"], "--grid artifacts"),
    ];
    for (sets, grid, says) in cases {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let axes: Vec<Axis> = grid.iter().map(|g| axis(g)).collect();
        let err = error_of(plan(&path, &sets, &axes));
        assert!(err.contains(says), "{sets:?} {grid:?}: {err}");
    }
    // The same value written two ways is one run, not two.
    let err = error_of(plan(
        &path,
        &[],
        &[axis("training.learning_rate=5e-4,0.0005")],
    ));
    assert!(err.contains("have the same config"), "{err}");
    assert!(
        fs::read_dir(dir.path()).unwrap().count() == 1,
        "plan wrote nothing"
    );
}

#[test]
fn stages_share_a_root_exactly_when_their_keys_and_upstream_agree() {
    let base = Config::default();
    let mut lr = base.clone();
    lr.training.learning_rate *= 2.0;
    let mut truncation = base.clone();
    truncation.model.truncation = crate::config::Truncation::HeadTail;
    let mut threshold = base.clone();
    threshold.evaluate.threshold = 0.4;
    let mut elsewhere = base.clone();
    elsewhere.artifacts = PathBuf::from("somewhere/else");
    let same = |a: &Config, b: &Config| -> Vec<StageId> {
        STAGES
            .into_iter()
            .filter(|&s| identity(s, a) == identity(s, b))
            .collect()
    };
    use StageId::*;
    assert_eq!(same(&base, &lr), [DataPrep, Tokenize]);
    assert_eq!(same(&base, &truncation), [DataPrep]);
    assert_eq!(same(&base, &threshold), [DataPrep, Tokenize, Train]);
    assert_eq!(same(&base, &elsewhere), STAGES);
}

#[test]
fn a_stage_root_links_every_stage_it_reads_through() {
    assert_eq!(upstream_closure(StageId::DataPrep), []);
    assert_eq!(
        upstream_closure(StageId::Train),
        [StageId::DataPrep, StageId::Tokenize]
    );
    let dir = tempfile::tempdir().unwrap();
    let exp = Experiment::hold(&dir.path().join("e")).unwrap();
    let config = Config::default();
    let root = exp.prepare_stage(StageId::Evaluate, &config).unwrap();
    for up in [StageId::DataPrep, StageId::Tokenize, StageId::Train] {
        let link = fs::read_link(root.join(up.dir_name())).unwrap();
        let expected = Path::new("..")
            .join(exp.stage_root(up, &config).file_name().unwrap())
            .join(up.dir_name());
        assert_eq!(link, expected);
    }
    // Again: the links are kept; something else in their place is refused.
    exp.prepare_stage(StageId::Evaluate, &config).unwrap();
    fs::remove_file(root.join("train")).unwrap();
    fs::create_dir(root.join("train")).unwrap();
    let err = error_of(exp.prepare_stage(StageId::Evaluate, &config));
    assert!(err.contains("not a link"), "{err}");
}

#[test]
fn a_recorded_run_keeps_its_name_by_its_identity() {
    let dir = tempfile::tempdir().unwrap();
    let exp = Experiment::hold(&dir.path().join("e")).unwrap();
    let record = |name: &str| RunRecord {
        name: name.into(),
        assignments: vec![],
        sets: vec![],
        config: serde_json::json!({}),
        started: 0,
        index: 0,
    };
    let old = "target_modules=~query~value~-1a2b3c4d";
    crate::atomic::write_json(
        &dir.path().join("e/runs").join(format!("{old}.json")),
        &record(old),
    )
    .unwrap();
    let recorded = exp.runs().unwrap();
    assert_eq!(
        known_name(&recorded, "target_modules=query+value-1a2b3c4d"),
        old
    );
    assert_eq!(known_name(&recorded, "r=8-99999999"), "r=8-99999999");
}

#[test]
fn one_exp_at_a_time_per_experiment() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Experiment::hold(dir.path()).unwrap();
    let err = error_of(Experiment::hold(dir.path()));
    assert!(err.contains("another `exp` is running"), "{err}");
    for bad in ["", ".hidden", "a/b", "x y"] {
        assert!(check_name(bad).is_err(), "{bad:?}");
    }
    check_name("lr-sweep_2.1").unwrap();
}
