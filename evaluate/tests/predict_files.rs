//! `predict --input/--output` on the tiny BERT fixture: parquet, JSON Lines and CSV inputs give
//! `predict --json`'s predictions; shards put together give the unsharded output row for row;
//! `--shard auto` reads Kubernetes' and Slurm's variables; refused inputs name the file and the
//! row or column, and leave no output (an earlier one as it was).

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;
use evaluate::predict_cli::shard::{self, Shard, ShardSpec};
use evaluate::predict_cli::JsonLine;
use polars::prelude::*;

const PREDICT: &str = env!("CARGO_BIN_EXE_predict");

/// The variables `--shard auto` reads: cleared in every child, so that a test run inside a
/// Slurm job or a Kubernetes pod sees only what the test sets.
const JOB_VARS: [&str; 5] = [
    "JOB_COMPLETION_INDEX",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_MIN",
    "SLURM_ARRAY_TASK_STEP",
    "SLURM_ARRAY_TASK_COUNT",
];

/// 23 texts with what CSV and JSON must carry through: commas, quotes, a line break, a
/// backslash, non-ASCII. (No empty text: `predict TEXT…` skips blank ones; a file's are
/// classified, below.)
fn texts() -> Vec<String> {
    let mut texts: Vec<String> = vec![
        "A wonderful, moving film with a superb cast.".into(),
        "Dull plot, wooden acting; I walked out halfway.".into(),
        "He said \"never again\" and meant it.".into(),
        "Two lines:\nthe second one is better.".into(),
        "Café, naïve — 9/10 ★ \\o/".into(),
        "Not bad at all.".into(),
    ];
    texts.extend((0..17).map(|i| review("file", i, (i % 2) as u8)));
    texts
}

/// A config on the fixture's tiny BERT: 24 tokens, batches of 3 (several per chunk, shortest
/// first), a threshold between the fixture's probabilities so that both labels occur.
fn config_file(root: &Path) -> PathBuf {
    let mut c = predict_config(root);
    c.evaluate.batch_size = 3;
    c.evaluate.threshold = 0.33;
    write_config(root, &c)
}

/// predict with the fixture's model and adapter, `args` after them, `env` set (and the job
/// array's variables cleared otherwise).
fn predict_env(root: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(PREDICT);
    cmd.arg("--config")
        .arg(config_file(root))
        .arg("--model")
        .arg(bert_base())
        .arg("--adapter")
        .arg(bert_adapter())
        .args(args)
        .current_dir(root)
        .stdin(Stdio::null());
    for var in JOB_VARS {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    cmd.output().unwrap()
}

fn predict(root: &Path, args: &[&str]) -> Output {
    predict_env(root, args, &[])
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn assert_ok(o: &Output, what: &str) {
    assert!(o.status.success(), "{what}: {}", stderr(o));
}

/// One output row.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    id: Option<serde_json::Value>,
    row: u64,
    label: String,
    score: f64,
    prob_positive: f64,
}

/// Reads a parquet output, checking its columns and their types; `id` names the id column.
fn read_parquet(path: &Path, id: Option<(&str, DataType)>) -> Vec<Row> {
    let df = ParquetReader::new(fs::File::open(path).unwrap())
        .finish()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut want = vec![];
    if let Some((name, dtype)) = &id {
        want.push((name.to_string(), dtype.clone()));
    }
    want.extend([
        ("row".to_string(), DataType::UInt64),
        ("label".to_string(), DataType::String),
        ("score".to_string(), DataType::Float64),
        ("prob_positive".to_string(), DataType::Float64),
    ]);
    let got: Vec<(String, DataType)> = df
        .schema()
        .iter()
        .map(|(n, d)| (n.to_string(), d.clone()))
        .collect();
    assert_eq!(got, want, "{}: the output's schema", path.display());
    let col = |name: &str| df.column(name).unwrap().as_materialized_series().clone();
    let ids: Vec<Option<serde_json::Value>> = match &id {
        None => vec![None; df.height()],
        Some((name, DataType::Int64)) => col(name)
            .i64()
            .unwrap()
            .iter()
            .map(|v| v.map(serde_json::Value::from))
            .collect(),
        Some((name, _)) => col(name)
            .str()
            .unwrap()
            .iter()
            .map(|v| v.map(serde_json::Value::from))
            .collect(),
    };
    let rows = col("row");
    let labels = col("label");
    let scores = col("score");
    let probs = col("prob_positive");
    (0..df.height())
        .map(|i| Row {
            id: ids[i].clone(),
            row: rows.u64().unwrap().get(i).unwrap(),
            label: labels.str().unwrap().get(i).unwrap().to_string(),
            score: scores.f64().unwrap().get(i).unwrap(),
            prob_positive: probs.f64().unwrap().get(i).unwrap(),
        })
        .collect()
}

/// Reads a JSON Lines output, checking each line's keys.
fn read_jsonl(path: &Path, id: Option<&str>) -> Vec<Row> {
    let text = fs::read_to_string(path).unwrap();
    text.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let o = v.as_object().unwrap();
            let mut keys: Vec<&str> = vec!["label", "prob_positive", "row", "score"];
            keys.extend(id);
            keys.sort();
            assert_eq!(o.keys().map(String::as_str).collect::<Vec<_>>(), keys);
            Row {
                id: id.map(|name| o[name].clone()),
                row: o["row"].as_u64().unwrap(),
                label: o["label"].as_str().unwrap().to_string(),
                score: o["score"].as_f64().unwrap(),
                prob_positive: o["prob_positive"].as_f64().unwrap(),
            }
        })
        .collect()
}

/// `predict --json` on `texts`.
fn predict_json(root: &Path, texts: &[String]) -> Vec<JsonLine> {
    let mut args = vec!["--json"];
    args.extend(texts.iter().map(String::as_str));
    let o = predict(root, &args);
    assert_ok(&o, "predict --json");
    let out = String::from_utf8(o.stdout).unwrap();
    let lines: Vec<JsonLine> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), texts.len(), "{out}");
    lines
}

fn write_parquet(path: &Path, columns: Vec<Column>) {
    let height = columns[0].len();
    let mut df = DataFrame::new(height, columns).unwrap();
    ParquetWriter::new(fs::File::create(path).unwrap())
        .finish(&mut df)
        .unwrap();
}

fn write_jsonl(path: &Path, rows: &[serde_json::Value]) {
    let mut text = String::new();
    for row in rows {
        text.push_str(&row.to_string());
        text.push('\n');
    }
    fs::write(path, text).unwrap();
}

/// A CSV field as pandas writes it: quoted when it holds a comma, quote or line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) || s.is_empty() {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The three inputs of `texts` under `dir`: in.parquet (integer ids), in.jsonl (integer ids),
/// in.csv (ids, as strings; an extra column; CRLF line ends).
fn write_inputs(dir: &Path, texts: &[String]) -> [PathBuf; 3] {
    fs::create_dir_all(dir).unwrap();
    let ids: Vec<i64> = (0..texts.len() as i64).map(|i| 1000 + i).collect();
    let parquet = dir.join("in.parquet");
    write_parquet(
        &parquet,
        vec![
            Column::new("stars".into(), vec![7i32; texts.len()]),
            Column::new("text".into(), texts.to_vec()),
            Column::new("id".into(), ids.clone()),
        ],
    );
    let jsonl = dir.join("in.jsonl");
    let rows: Vec<serde_json::Value> = texts
        .iter()
        .zip(&ids)
        .map(|(t, id)| serde_json::json!({"id": id, "text": t, "extra": [1, 2]}))
        .collect();
    write_jsonl(&jsonl, &rows);
    let csv = dir.join("in.csv");
    let mut text = String::from("id,text,stars\r\n");
    for (t, id) in texts.iter().zip(&ids) {
        text.push_str(&format!("{id},{},7\r\n", csv_field(t)));
    }
    fs::write(&csv, text).unwrap();
    [parquet, jsonl, csv]
}

#[test]
fn parquet_jsonl_and_csv_inputs_give_predicts_predictions() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let texts = texts();
    let want = predict_json(root, &texts);
    let labels: BTreeSet<&str> = want.iter().map(|l| l.label.as_str()).collect();
    assert_eq!(
        labels,
        BTreeSet::from(["negative", "positive"]),
        "the threshold should give both labels"
    );
    let inputs = write_inputs(&root.join("in"), &texts);
    for input in &inputs {
        let csv = input.extension().unwrap() == "csv";
        let id_dtype = if csv {
            DataType::String
        } else {
            DataType::Int64
        };
        for ext in ["parquet", "jsonl"] {
            let what = format!("{} → {ext}", input.display());
            let output = root.join(format!(
                "out/{}.{ext}",
                input.extension().unwrap().to_str().unwrap()
            ));
            let o = predict(root, &["--input", s(input), "--output", s(&output)]);
            assert_ok(&o, &what);
            let got = match ext {
                "parquet" => read_parquet(&output, Some(("id", id_dtype.clone()))),
                _ => read_jsonl(&output, Some("id")),
            };
            assert_eq!(got.len(), texts.len(), "{what}");
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                let id = 1000 + i as i64;
                let id = if csv {
                    serde_json::json!(id.to_string())
                } else {
                    serde_json::json!(id)
                };
                assert_eq!(g.id, Some(id), "{what}: row {i}");
                assert_eq!(g.row, i as u64, "{what}");
                assert_eq!(g.label, w.label, "{what}: row {i} ({:?})", w.text);
                // The same texts in the same batches: the same numbers, bit for bit.
                assert_eq!(
                    g.prob_positive, w.prob_positive,
                    "{what}: row {i} ({:?})",
                    w.text
                );
                assert_eq!(g.score, w.score, "{what}: row {i}");
            }
        }
    }
    // Without an id column (and with other column names): no id in the output. An empty text
    // is a row like the others.
    let input = root.join("in/named.parquet");
    let mut with_empty = texts.clone();
    with_empty.push(String::new());
    write_parquet(&input, vec![Column::new("review".into(), with_empty)]);
    let output = root.join("out/named.parquet");
    let o = predict(
        root,
        &[
            "--input",
            s(&input),
            "--output",
            s(&output),
            "--text-column",
            "review",
        ],
    );
    assert_ok(&o, "--text-column review");
    let got = read_parquet(&output, None);
    assert_eq!(got.len(), texts.len() + 1);
    assert!((0.0..=1.0).contains(&got[texts.len()].prob_positive));
    let probs: Vec<f64> = got[..texts.len()].iter().map(|r| r.prob_positive).collect();
    let want_probs: Vec<f64> = want.iter().map(|l| l.prob_positive).collect();
    let d = test_support::compare::max_abs_diff(&probs, &want_probs, "no id column");
    assert!(d <= 1e-6, "{d}");
    // --id-column picks another column (here the integer column `stars`, as Int64).
    let output = root.join("out/stars.jsonl");
    let o = predict(
        root,
        &[
            "--input",
            s(&inputs[0]),
            "--output",
            s(&output),
            "--id-column",
            "stars",
        ],
    );
    assert_ok(&o, "--id-column stars");
    let got = read_jsonl(&output, Some("stars"));
    assert!(got.iter().all(|r| r.id == Some(serde_json::json!(7))));
}

/// Shards 0/3, 1/3 and 2/3 of 23 rows in chunks of 4 (6 chunks): each holds its chunks (i,
/// i+3), and together, ordered by `row`, they are the unsharded output row for row.
#[test]
fn shards_put_together_are_the_whole_output() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let texts = texts();
    assert_eq!(texts.len(), 23);
    let inputs = write_inputs(&root.join("in"), &texts);
    for input in &inputs {
        let kind = input.extension().unwrap().to_str().unwrap();
        let id = (
            "id",
            if kind == "csv" {
                DataType::String
            } else {
                DataType::Int64
            },
        );
        let whole = root.join(format!("{kind}/whole.parquet"));
        let o = predict(
            root,
            &[
                "--input",
                s(input),
                "--output",
                s(&whole),
                "--chunk-rows",
                "4",
            ],
        );
        assert_ok(&o, kind);
        let whole = read_parquet(&whole, Some(id.clone()));
        assert_eq!(
            whole.iter().map(|r| r.row).collect::<Vec<_>>(),
            (0..23).collect::<Vec<_>>()
        );
        // The placeholder names each shard's file.
        let pattern = root.join(format!("{kind}/part-{{shard}}.parquet"));
        let mut together = Vec::new();
        for i in 0..3 {
            let o = predict(
                root,
                &[
                    "--input",
                    s(input),
                    "--output",
                    s(&pattern),
                    "--chunk-rows",
                    "4",
                    "--shard",
                    &format!("{i}/3"),
                ],
            );
            assert_ok(&o, &format!("{kind} shard {i}/3"));
            let part = root.join(format!("{kind}/part-0000{i}-of-00003.parquet"));
            let rows = read_parquet(&part, Some(id.clone()));
            let chunks: Vec<u64> = rows.iter().map(|r| r.row / 4).collect();
            let want: Vec<u64> = (0..23u64).map(|r| r / 4).filter(|c| c % 3 == i).collect();
            assert_eq!(
                chunks,
                want,
                "{kind}: shard {i}/3 holds chunks {i}, {}",
                i + 3
            );
            together.extend(rows);
        }
        assert_eq!(together.len(), whole.len(), "{kind}");
        // More shards than chunks: a shard with none writes an empty output, with the schema.
        let empty = root.join(format!("{kind}/empty.parquet"));
        let o = predict(
            root,
            &[
                "--input",
                s(input),
                "--output",
                s(&empty),
                "--chunk-rows",
                "16",
                "--shard",
                "2/3",
            ],
        );
        assert_ok(&o, &format!("{kind}: an empty shard"));
        assert_eq!(read_parquet(&empty, Some(id.clone())), []);
        together.sort_by_key(|r| r.row);
        assert_eq!(together, whole, "{kind}: the shards ordered by row");
        // Chunks of 4 rows batch differently from one chunk of all: equal within rounding.
        let one = predict_json(root, &texts);
        let d = test_support::compare::max_abs_diff(
            &whole.iter().map(|r| r.prob_positive).collect::<Vec<_>>(),
            &one.iter().map(|l| l.prob_positive).collect::<Vec<_>>(),
            "chunks of 4 vs predict",
        );
        assert!(d <= 1e-6, "{kind}: {d}");
    }
}

/// Environment variables a child gets.
type Env<'a> = &'a [(&'a str, &'a str)];

#[test]
fn shard_auto_reads_kubernetes_and_slurm_variables() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let [parquet, ..] = write_inputs(&root.join("in"), &texts());
    let run = |name: &str, args: &[&str], env: &[(&str, &str)]| {
        let output = root.join(format!("out/{name}.jsonl"));
        let mut all = vec![
            "--input",
            s(&parquet),
            "--output",
            s(&output),
            "--chunk-rows",
            "2",
        ];
        all.extend(args);
        let o = predict_env(root, &all, env);
        (o, output)
    };
    let (o, fixed) = run("fixed", &["--shard", "1/3"], &[]);
    assert_ok(&o, "--shard 1/3");
    let fixed = read_jsonl(&fixed, Some("id"));
    assert!(!fixed.is_empty());
    let cases: [(&str, &[&str], Env); 3] = [
        (
            "k8s",
            &["--shard", "auto", "--shard-count", "3"],
            &[("JOB_COMPLETION_INDEX", "1")],
        ),
        (
            "slurm",
            &["--shard", "auto"],
            &[
                ("SLURM_ARRAY_TASK_ID", "6"),
                ("SLURM_ARRAY_TASK_MIN", "5"),
                ("SLURM_ARRAY_TASK_COUNT", "3"),
            ],
        ),
        (
            "slurm-count",
            &["--shard", "auto", "--shard-count", "3"],
            &[("SLURM_ARRAY_TASK_ID", "1")],
        ),
    ];
    for (name, args, env) in cases {
        let (o, output) = run(name, args, env);
        assert_ok(&o, name);
        assert_eq!(read_jsonl(&output, Some("id")), fixed, "{name}");
    }
    let refused: [(&str, &[&str], Env, &str); 4] = [
        (
            "k8s without a count",
            &["--shard", "auto"],
            &[("JOB_COMPLETION_INDEX", "1")],
            "--shard-count",
        ),
        (
            "no job array",
            &["--shard", "auto"],
            &[],
            "JOB_COMPLETION_INDEX",
        ),
        (
            "index beyond the count",
            &["--shard", "auto", "--shard-count", "3"],
            &[("JOB_COMPLETION_INDEX", "3")],
            "shard index 3 is not below the shard count 3",
        ),
        (
            "slurm id below min",
            &["--shard", "auto"],
            &[
                ("SLURM_ARRAY_TASK_ID", "2"),
                ("SLURM_ARRAY_TASK_MIN", "5"),
                ("SLURM_ARRAY_TASK_COUNT", "3"),
            ],
            "SLURM_ARRAY_TASK_ID=2",
        ),
    ];
    for (what, args, env, message) in refused {
        let (o, output) = run("refused", args, env);
        assert!(!o.status.success(), "{what}");
        assert!(stderr(&o).contains(message), "{what}: {}", stderr(&o));
        assert!(!output.exists(), "{what}");
    }
}

/// `shard::resolve` on its own: Slurm's step, both variables set, a count with a fixed shard.
#[test]
fn shard_resolution() {
    let env = |vars: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        }
    };
    let auto = Some(ShardSpec::Auto);
    let shard = |index, count| Shard { index, count };
    assert_eq!(shard::resolve(None, None, env(&[])).unwrap().0, Shard::ALL);
    assert_eq!(
        "2/5".parse::<ShardSpec>().unwrap(),
        ShardSpec::Fixed(shard(2, 5))
    );
    for bad in ["5/5", "1/0", "1", "a/b", "-1/3"] {
        assert!(bad.parse::<ShardSpec>().is_err(), "{bad}");
    }
    let step = env(&[
        ("SLURM_ARRAY_TASK_ID", "14"),
        ("SLURM_ARRAY_TASK_MIN", "10"),
        ("SLURM_ARRAY_TASK_STEP", "2"),
        ("SLURM_ARRAY_TASK_COUNT", "4"),
    ]);
    assert_eq!(shard::resolve(auto, None, step).unwrap().0, shard(2, 4));
    let both = env(&[("SLURM_ARRAY_TASK_ID", "0"), ("JOB_COMPLETION_INDEX", "0")]);
    let err = shard::resolve(auto, Some(2), both).unwrap_err().to_string();
    assert!(err.contains("both"), "{err}");
    let err = shard::resolve(Some(ShardSpec::Fixed(shard(0, 2))), Some(2), env(&[]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--shard-count goes with --shard auto"),
        "{err}"
    );
    assert_eq!(
        shard::expand_output(Path::new("out/part-{shard}.parquet"), shard(3, 12)),
        Path::new("out/part-00003-of-00012.parquet")
    );
    // The rows of each shard add up to the input's.
    for (total, chunk) in [(23, 4), (8, 4), (1, 4096), (4096, 4096), (4097, 4096)] {
        let sum: usize = (0..3).map(|i| shard(i, 3).rows(total, chunk)).sum();
        assert_eq!(sum, total, "{total} rows in chunks of {chunk}");
    }
}

/// Every refused input: a non-zero exit, the file and the row or column named, and no output
/// (an existing one untouched, nothing left beside it). Row errors sit in a later chunk, so the
/// run had already written predictions when it failed.
#[test]
fn refused_inputs_leave_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let dir = root.join("in");
    fs::create_dir_all(&dir).unwrap();
    let texts: Vec<String> = (0..8).map(|i| review("bad", i, (i % 2) as u8)).collect();
    let mut with_null: Vec<Option<String>> = texts.iter().cloned().map(Some).collect();
    with_null[5] = None;

    let file = |name: &str| dir.join(name);
    write_parquet(
        &file("no-text.parquet"),
        vec![Column::new("review".into(), texts.clone())],
    );
    write_parquet(
        &file("null.parquet"),
        vec![Column::new("text".into(), with_null)],
    );
    write_parquet(
        &file("numbers.parquet"),
        vec![Column::new("text".into(), (0..8i64).collect::<Vec<_>>())],
    );
    write_parquet(
        &file("empty.parquet"),
        vec![Column::new("text".into(), Vec::<String>::new())],
    );
    fs::write(file("zero-bytes.parquet"), "").unwrap();
    let json_rows = |bad: serde_json::Value| {
        let mut rows: Vec<serde_json::Value> = texts
            .iter()
            .map(|t| serde_json::json!({"text": t}))
            .collect();
        rows[5] = bad;
        rows
    };
    write_jsonl(
        &file("null.jsonl"),
        &json_rows(serde_json::json!({"text": null})),
    );
    write_jsonl(
        &file("number.jsonl"),
        &json_rows(serde_json::json!({"text": 5})),
    );
    write_jsonl(
        &file("missing.jsonl"),
        &json_rows(serde_json::json!({"body": "x"})),
    );
    write_jsonl(
        &file("no-text.jsonl"),
        &[serde_json::json!({"review": "x"})],
    );
    let mut broken = texts
        .iter()
        .map(|t| serde_json::json!({"text": t}).to_string())
        .collect::<Vec<_>>();
    broken[5] = "{\"text\": \"unterminated".into();
    fs::write(file("broken.jsonl"), broken.join("\n")).unwrap();
    fs::write(file("empty.jsonl"), "\n \n").unwrap();
    fs::write(file("empty.csv"), "").unwrap();
    fs::write(file("header.csv"), "id,text\n").unwrap();
    fs::write(file("no-text.csv"), "id,review\n1,x\n").unwrap();
    let mut csv = String::from("id,text\n");
    for (i, t) in texts.iter().enumerate() {
        if i == 5 {
            csv.push_str("5,\n");
        } else {
            csv.push_str(&format!("{i},{t}\n"));
        }
    }
    fs::write(file("null.csv"), csv).unwrap();
    fs::write(
        file("short.csv"),
        "id,text,stars\n1,good,3\n2,bad,4\n3,ok,5\n4,meh,1\n5,fine\n",
    )
    .unwrap();
    fs::write(file("texts.txt"), "one\ntwo\n").unwrap();
    let good = write_inputs(&dir, &texts)[0].clone();

    // (input, extra arguments, what stderr must hold).
    let cases: Vec<(PathBuf, Vec<&str>, Vec<String>)> = vec![
        (
            file("no-text.parquet"),
            vec![],
            vec![
                "no-text.parquet".into(),
                "no column `text`".into(),
                "review".into(),
            ],
        ),
        (
            file("null.parquet"),
            vec![],
            vec!["null.parquet: row 5: `text` is null".into()],
        ),
        (
            file("numbers.parquet"),
            vec![],
            vec!["numbers.parquet".into(), "column `text` holds i64".into()],
        ),
        (
            file("empty.parquet"),
            vec![],
            vec!["empty.parquet: holds no rows".into()],
        ),
        (
            file("zero-bytes.parquet"),
            vec![],
            vec!["zero-bytes.parquet is not a readable parquet file".into()],
        ),
        (
            file("null.jsonl"),
            vec![],
            vec!["null.jsonl: row 5 (line 6): `text` is null".into()],
        ),
        (
            file("number.jsonl"),
            vec![],
            vec!["number.jsonl: row 5 (line 6): `text` is a number (5), expected a string".into()],
        ),
        (
            file("missing.jsonl"),
            vec![],
            vec!["missing.jsonl: row 5 (line 6): no field `text`".into()],
        ),
        (
            file("no-text.jsonl"),
            vec![],
            vec!["no-text.jsonl: row 0 (line 1): no field `text`".into()],
        ),
        (
            file("broken.jsonl"),
            vec![],
            vec!["broken.jsonl: row 5 (line 6): not valid JSON".into()],
        ),
        (
            file("empty.jsonl"),
            vec![],
            vec!["empty.jsonl: holds no rows".into()],
        ),
        (
            file("empty.csv"),
            vec![],
            vec!["empty.csv: holds no rows".into()],
        ),
        (
            file("header.csv"),
            vec![],
            vec!["header.csv: holds no rows".into()],
        ),
        (
            file("no-text.csv"),
            vec![],
            vec!["no-text.csv: no column `text`".into()],
        ),
        (
            file("null.csv"),
            vec![],
            vec!["null.csv: row 5 (line 7): `text` is empty (null)".into()],
        ),
        (
            file("short.csv"),
            vec![],
            vec!["short.csv: row 4 (line 6): 2 fields, but the header names 3 columns".into()],
        ),
        (
            file("texts.txt"),
            vec![],
            vec!["--input".into(), "texts.txt: unknown file type".into()],
        ),
        (
            good.clone(),
            vec!["--id-column", "nope"],
            vec!["in.parquet: no column `nope`".into()],
        ),
        (
            good.clone(),
            vec!["--shard", "3/3"],
            vec!["shard index 3 is not below the shard count 3".into()],
        ),
        (
            good.clone(),
            vec!["--chunk-rows", "0"],
            vec!["--chunk-rows must be at least 1".into()],
        ),
    ];
    let out = root.join("out");
    for (ext, previous) in [("parquet", None), ("jsonl", Some("previous output\n"))] {
        for (input, extra, messages) in &cases {
            let _ = fs::remove_dir_all(&out);
            fs::create_dir_all(&out).unwrap();
            let output = out.join(format!("predictions.{ext}"));
            if let Some(previous) = previous {
                fs::write(&output, previous).unwrap();
            }
            let mut args = vec!["--input", s(input), "--output", s(&output)];
            if !extra.contains(&"--chunk-rows") {
                args.extend(["--chunk-rows", "2"]);
            }
            args.extend(extra.iter().copied());
            let what = format!("{} {extra:?} → .{ext}", input.display());
            let o = predict(root, &args);
            assert!(!o.status.success(), "{what}: should fail");
            let err = stderr(&o);
            for message in messages {
                assert!(
                    err.contains(message.as_str()),
                    "{what}: {message:?} not in: {err}"
                );
            }
            match previous {
                None => assert!(!output.exists(), "{what}: an output was left"),
                Some(previous) => assert_eq!(
                    fs::read_to_string(&output).unwrap(),
                    previous,
                    "{what}: the existing output changed"
                ),
            }
            let left: Vec<_> = fs::read_dir(&out)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(
                left.len(),
                usize::from(previous.is_some()),
                "{what}: left {left:?}"
            );
        }
    }
    // An output of unknown type.
    let output = out.join("predictions.csv");
    let o = predict(root, &["--input", s(&good), "--output", s(&output)]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("predictions.csv: unknown file type"),
        "{}",
        stderr(&o)
    );
    assert!(!output.exists());
}

/// `--log-format json`: progress as JSON lines on stderr, the last one at done = total.
#[test]
fn progress_follows_log_format_json() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let [_, jsonl, _] = write_inputs(&root.join("in"), &texts());
    let output = root.join("out.parquet");
    let o = predict(
        root,
        &[
            "--input",
            s(&jsonl),
            "--output",
            s(&output),
            "--chunk-rows",
            "5",
            "--shard",
            "1/2",
            "--log-format",
            "json",
        ],
    );
    assert_ok(&o, "--log-format json");
    let err = stderr(&o);
    let progress: Vec<serde_json::Value> = err
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = progress
        .last()
        .unwrap_or_else(|| panic!("no JSON progress in: {err}"));
    assert_eq!(last["stage"], "predict");
    // Chunks 1 and 3 of 5 rows each.
    assert_eq!(last["done"], 10);
    assert_eq!(last["total"], 10);
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(out.contains("10 of 23 reviews (shard 1/2)"), "{out}");
    let rows: Vec<u64> = read_parquet(&output, Some(("id", DataType::Int64)))
        .iter()
        .map(|r| r.row)
        .collect();
    assert_eq!(rows, [5, 6, 7, 8, 9, 15, 16, 17, 18, 19]);
}
