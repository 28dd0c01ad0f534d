//! The train stage end to end on the fixture's tiny BERT (fixtures/bert-tiny-lora/base
//! as a local model folder), with small token artifacts and a tokens stamp made here.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use lora_classifier::{Checkpoint, SequenceClassifier};
use pipeline::atomic::StagingDir;
use pipeline::history::{self, HistoryRow, RowKind};
use pipeline::stamp::StageRun;
use pipeline::tokens::TokenSplit;
use pipeline::train_summary::TrainSummary;
use pipeline::{Config, Layout, Split, StageId};
use train::Outcome;

const MAX_LEN: usize = 24;

fn model_dir() -> PathBuf {
    test_support::fixture("bert-tiny-lora/base")
}

/// `n` reviews: `[CLS] words… [SEP] [PAD]…` of varying length, the label carried by which
/// words occur (so that there is something to learn).
fn split(n: usize, salt: u32) -> TokenSplit {
    let (mut ids, mut mask, mut labels) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n as u32 {
        let label = (i * 7 + salt) % 2;
        let len = 4 + ((i * 5 + salt) % (MAX_LEN as u32 - 5)) as usize;
        let mut row = vec![101];
        for k in 1..len - 1 {
            let base = if label == 1 { 2000 } else { 3000 };
            row.push(base + (i * 31 + k as u32 * 17 + salt) % 50);
        }
        row.push(102);
        let used = row.len();
        row.resize(MAX_LEN, 0);
        ids.extend(&row);
        mask.extend((0..MAX_LEN).map(|j| (j < used) as u32));
        labels.push(label);
    }
    TokenSplit {
        max_len: MAX_LEN,
        pad_token_id: 0,
        tokenizer: "test".into(),
        input_ids: ids,
        attention_mask: mask,
        labels,
        rows: (0..n as u32).collect(),
    }
}

fn config(root: &Path) -> Config {
    let mut c = Config {
        artifacts: root.join("artifacts"),
        ..Config::default()
    };
    c.model.source = model_dir().display().to_string();
    c.model.max_len = MAX_LEN;
    c.lora.r = 4;
    c.lora.alpha = 8.0;
    c.training.learning_rate = 1e-2;
    c.training.batch_size = 4;
    c.training.epochs = 2;
    c.training.warmup_ratio = 0.1;
    c.training.checkpoint_every_steps = 2;
    c.training.eval_every_steps = Some(3);
    c.training.max_grad_norm = Some(1.0);
    c
}

/// Writes tokens/{train,validation,test}.safetensors with a stamp for `config`.
fn write_tokens(config: &Config, train: &TokenSplit, validation: &TokenSplit) {
    let layout = Layout::new(&config.artifacts);
    let run = StageRun::new(&layout, StageId::Tokenize, config);
    let staged = StagingDir::new(&run.dir).unwrap();
    for (s, data) in [
        (Split::Train, train),
        (Split::Validation, validation),
        (Split::Test, validation),
    ] {
        data.write(&staged.path().join(Layout::tokens_file(s)))
            .unwrap();
    }
    run.write_stamp(staged.path()).unwrap();
    staged.commit().unwrap();
}

/// A temp root with a config (also as `pipeline.yaml`) and tokens: 18 train reviews (5
/// batches of 4, the last partial), 8 validation reviews.
fn setup(edit: impl FnOnce(&mut Config)) -> (tempfile::TempDir, Config) {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config(tmp.path());
    edit(&mut c);
    write_tokens(&c, &split(18, 0), &split(8, 1));
    fs::write(tmp.path().join("pipeline.yaml"), c.to_yaml()).unwrap();
    (tmp, c)
}

fn train_dir(c: &Config) -> PathBuf {
    Layout::new(&c.artifacts).stage_dir(StageId::Train)
}

fn adapter_bytes(c: &Config) -> Vec<Vec<u8>> {
    let dir = train_dir(c).join(train::ADAPTER_DIR);
    ["adapter_config.json", "adapter_model.safetensors"]
        .iter()
        .map(|f| fs::read(dir.join(f)).unwrap())
        .collect()
}

/// The history without the wall-clock throughput, which differs between runs.
fn history_of(c: &Config) -> Vec<HistoryRow> {
    let mut rows = history::read_parquet(&train_dir(c).join(history::HISTORY_FILE)).unwrap();
    for r in &mut rows {
        r.samples_per_s = None;
    }
    rows
}

fn summary_of(c: &Config) -> TrainSummary {
    serde_json::from_str(&fs::read_to_string(train_dir(c).join("summary.json")).unwrap()).unwrap()
}

fn run_err(c: &Config) -> String {
    format!("{:#}", train::run(c, false).unwrap_err())
}

#[test]
fn trains_end_to_end_then_is_up_to_date() {
    let (_tmp, c) = setup(|_| {});
    let Outcome::Ran { summary, .. } = train::run(&c, false).unwrap() else {
        panic!("expected a run")
    };
    let layout = Layout::new(&c.artifacts);
    assert!(
        !layout.train_checkpoints().exists(),
        "checkpoints are removed after the commit"
    );
    for f in [
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "history.parquet",
        "summary.json",
        "stamp.json",
    ] {
        assert!(train_dir(&c).join(f).exists(), "{f}");
    }

    let rows = history_of(&c);
    let count = |k: RowKind| rows.iter().filter(|r| r.kind == k).count();
    assert_eq!(count(RowKind::Step), 10);
    assert_eq!(count(RowKind::Epoch), 2);
    // Every 3 steps, except at an epoch's end (step 10 does not reach, 3, 6, 9 do).
    assert_eq!(count(RowKind::Eval), 3);
    let steps: Vec<u64> = rows
        .iter()
        .filter(|r| r.kind == RowKind::Step)
        .map(|r| r.step)
        .collect();
    assert_eq!(steps, (1..=10).collect::<Vec<_>>());
    // Linear schedule, warmup ceil(10 * 0.1) = 1 step: step 1 runs with lr 0.
    let lrs: Vec<f64> = rows.iter().filter_map(|r| r.learning_rate).collect();
    assert_eq!(lrs[0], 0.0);
    assert!((lrs[1] - 1e-2).abs() < 1e-15 && lrs[9] > 0.0 && lrs[9] < lrs[1]);
    let epoch1: Vec<f64> = rows
        .iter()
        .filter(|r| r.kind == RowKind::Step && r.epoch == 1)
        .map(|r| r.train_loss)
        .collect();
    let e1 = rows
        .iter()
        .find(|r| r.kind == RowKind::Epoch && r.epoch == 1)
        .unwrap();
    assert_eq!(
        e1.train_loss,
        epoch1.iter().sum::<f64>() / epoch1.len() as f64
    );

    assert_eq!(
        (
            summary.steps,
            summary.epochs,
            summary.train_samples,
            summary.validation_samples
        ),
        (10, 2, 18, 8)
    );
    assert_eq!(summary.device, "cpu");
    assert_eq!(summary.dtype, "f32");
    assert_eq!(summary.resumed_from_step, None);
    assert!(
        summary.parameters_line.starts_with("trainable params: "),
        "{}",
        summary.parameters_line
    );
    let epochs: Vec<&HistoryRow> = rows.iter().filter(|r| r.kind == RowKind::Epoch).collect();
    let best = epochs
        .iter()
        .min_by(|a, b| a.val_loss.partial_cmp(&b.val_loss).unwrap())
        .unwrap();
    assert_eq!(summary.best_epoch, best.epoch);
    assert_eq!(summary.adapter_epoch, best.epoch);
    assert_eq!(summary.best_val_loss, best.val_loss.unwrap());
    assert_eq!(summary.final_val_loss, epochs[1].val_loss.unwrap());

    // The saved adapter is the kept epoch's: it reproduces that epoch's validation loss.
    let ckpt = Checkpoint::open(&model_dir()).unwrap();
    let model = SequenceClassifier::load_adapter(
        &ckpt,
        &train_dir(&c).join("adapter"),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let v = training::evaluate(&model, &split(8, 1), c.training.batch_size, &Device::Cpu).unwrap();
    assert!(
        (v.loss - summary.best_val_loss).abs() < 1e-6,
        "{} vs {}",
        v.loss,
        summary.best_val_loss
    );

    assert!(matches!(
        train::run(&c, false).unwrap(),
        Outcome::UpToDate { .. }
    ));
    assert!(
        matches!(train::run(&c, true).unwrap(), Outcome::Ran { reason, .. } if reason == "--force")
    );
    // A training key makes it stale.
    let mut changed = c.clone();
    changed.training.epochs = 1;
    assert!(
        matches!(train::run(&changed, false).unwrap(), Outcome::Ran { reason, .. } if reason.contains("training.epochs"))
    );
}

#[test]
fn keep_last_saves_the_last_epoch() {
    let (_tmp, c) = setup(|c| {
        c.training.keep = pipeline::config::KeepAdapter::Last;
        c.training.eval_every_steps = None;
    });
    train::run(&c, false).unwrap();
    let s = summary_of(&c);
    assert_eq!((s.kept.as_str(), s.adapter_epoch), ("last", 2));
}

#[test]
fn two_runs_are_identical() {
    let (_a, ca) = setup(|c| c.lora.dropout = 0.2);
    let (_b, cb) = setup(|c| c.lora.dropout = 0.2);
    train::run(&ca, false).unwrap();
    train::run(&cb, false).unwrap();
    assert_eq!(history_of(&ca), history_of(&cb));
    assert_eq!(adapter_bytes(&ca), adapter_bytes(&cb));
}

fn binary(tmp: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_train"));
    cmd.arg("--config").arg(tmp.join("pipeline.yaml"));
    cmd
}

/// The CPU time (clock ticks) process `pid` has used, from /proc (Linux); None elsewhere.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some(field(11)? + field(12)?)
}

/// Waits until `child` has written the checkpoint of `step` under `checkpoints` (the test hook
/// then holds it there), and returns its folder. Guarded on the run's progress, not on the
/// wall clock, which a loaded machine stretches: the run must not end or write a later
/// checkpoint first, and it must keep using CPU time (a run that uses none for 2 minutes is
/// stuck, however busy the machine).
fn wait_for_checkpoint(child: &mut Child, checkpoints: &Path, step: u64) -> PathBuf {
    let want = checkpoints.join(format!("step-{step:08}"));
    let (mut ticks, mut progressed) = (cpu_ticks(child.id()), Instant::now());
    while !want.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before the checkpoint of step {step}");
        }
        let later = fs::read_dir(checkpoints)
            .into_iter()
            .flatten()
            .find_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                let n: u64 = name.strip_prefix("step-")?.parse().ok()?;
                (n > step).then_some(name)
            });
        assert!(
            later.is_none(),
            "the run went past step {step} to {later:?}"
        );
        let now = cpu_ticks(child.id());
        if now != ticks {
            (ticks, progressed) = (now, Instant::now());
        }
        assert!(
            ticks.is_none() || progressed.elapsed() < Duration::from_secs(120),
            "the run used no CPU time for 2 minutes before step {step}: stuck"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    want
}

/// Kills the real binary with SIGKILL right after a mid-epoch checkpoint (the test hook makes
/// the process stop in place after writing the checkpoint of step 7, so the kill point is
/// known), runs it again, and compares with a run that was never interrupted.
#[test]
fn resumes_after_a_kill_as_if_never_stopped() {
    let edit = |c: &mut Config| {
        c.lora.dropout = 0.1;
        c.training.checkpoint_every_steps = 7;
    };
    let (tmp_a, ca) = setup(edit);
    let (tmp_b, cb) = setup(edit);

    let status = binary(tmp_b.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());

    let mut child = binary(tmp_a.path())
        .env(train::HANG_AFTER_CHECKPOINT_ENV, "7")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ckpt = wait_for_checkpoint(
        &mut child,
        &Layout::new(&ca.artifacts).train_checkpoints(),
        7,
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Step 7 is batch 2 of epoch 2 (5 batches an epoch): mid-epoch.
    let state: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(ckpt.join("state.json")).unwrap()).unwrap();
    assert_eq!(
        (
            state["position"]["epoch"].as_u64(),
            state["position"]["batch"].as_u64()
        ),
        (Some(1), Some(2))
    );
    assert!(!train_dir(&ca).exists(), "a killed run commits nothing");

    let out = binary(tmp_a.path()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("resuming from checkpoint") && stdout.contains("step-00000007"),
        "{stdout}"
    );
    assert_eq!(summary_of(&ca).resumed_from_step, Some(7));
    assert_eq!(history_of(&ca), history_of(&cb));
    assert_eq!(adapter_bytes(&ca), adapter_bytes(&cb));
}

#[test]
fn half_written_and_foreign_checkpoints_are_not_resumed() {
    let (_tmp, c) = setup(|_| {});
    let dir = Layout::new(&c.artifacts).train_checkpoints();
    // A write killed midway, and a complete checkpoint of another config.
    fs::create_dir_all(dir.join(".tmp-step-00000004-1")).unwrap();
    let store = training::CheckpointStore::new(&dir, "another run");
    store
        .write(&training::checkpoint::Snapshot {
            position: training::checkpoint::Position {
                global_step: 9,
                epoch: 1,
                batch: 4,
                optimizer_steps: 9,
            },
            params: vec![],
            optimizer: vec![],
            best: vec![],
            history: vec![],
        })
        .unwrap();
    let Outcome::Ran { summary, .. } = train::run(&c, false).unwrap() else {
        panic!()
    };
    assert_eq!(summary.resumed_from_step, None);
    assert!(!dir.exists());
}

#[test]
fn missing_or_stale_tokens_name_the_stage_to_run() {
    let tmp = tempfile::tempdir().unwrap();
    let c = config(tmp.path());
    let err = run_err(&c);
    assert!(err.contains("just tokenize"), "{err}");

    let (_tmp, c) = setup(|_| {});
    let mut stale = c.clone();
    stale.model.max_len = 20;
    let err = run_err(&stale);
    assert!(
        err.contains("just tokenize") && err.contains("model.max_len"),
        "{err}"
    );
}

/// Bad inputs fail before training: no checkpoint is written and nothing is committed.
fn assert_fails_early(c: &Config, expect: &[&str]) {
    let err = run_err(c);
    for e in expect {
        assert!(err.contains(e), "expected {e:?} in: {err}");
    }
    assert!(
        !Layout::new(&c.artifacts).train_checkpoints().exists(),
        "{err}"
    );
    assert!(!train_dir(c).exists(), "{err}");
}

#[test]
fn max_len_beyond_the_model_positions() {
    // The fixture model has 64 positions.
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config(tmp.path());
    c.model.max_len = 80;
    let widen = |s: TokenSplit| {
        let n = s.len();
        let mut ids = Vec::new();
        let mut mask = Vec::new();
        for i in 0..n {
            ids.extend(&s.input_ids[i * MAX_LEN..(i + 1) * MAX_LEN]);
            ids.extend(std::iter::repeat_n(0, 80 - MAX_LEN));
            mask.extend(&s.attention_mask[i * MAX_LEN..(i + 1) * MAX_LEN]);
            mask.extend(std::iter::repeat_n(0, 80 - MAX_LEN));
        }
        TokenSplit {
            max_len: 80,
            input_ids: ids,
            attention_mask: mask,
            ..s
        }
    };
    write_tokens(&c, &widen(split(8, 0)), &widen(split(4, 1)));
    assert_fails_early(&c, &["model.max_len 80", "64 positions"]);
}

#[test]
fn token_ids_beyond_the_vocabulary() {
    let tmp = tempfile::tempdir().unwrap();
    let c = config(tmp.path());
    let mut train = split(8, 0);
    train.input_ids[3] = 50_000;
    train.tokenizer = "openai-community/gpt2".into();
    write_tokens(&c, &train, &split(4, 1));
    assert_fails_early(
        &c,
        &[
            "token id 50000",
            "30522",
            "openai-community/gpt2",
            "just tokenize",
        ],
    );
}

#[test]
fn unknown_target_module_lists_the_linear_layers() {
    let (_tmp, c) = setup(|c| c.lora.target_modules = Some(vec!["q_proj".into()]));
    assert_fails_early(&c, &["lora", "q_proj", "query", "value", "dense"]);
}

#[test]
#[cfg_attr(
    feature = "cuda",
    ignore = "a CUDA build accepts training.device cuda: nothing to refuse"
)]
fn gpu_in_a_build_without_cuda() {
    let (_tmp, c) = setup(|c| c.training.device = "cuda".into());
    assert_fails_early(&c, &["CUDA", "--features cuda"]);
}

#[test]
fn empty_split() {
    let tmp = tempfile::tempdir().unwrap();
    let c = config(tmp.path());
    write_tokens(&c, &split(8, 0), &split(0, 1));
    assert_fails_early(&c, &["validation.safetensors", "no examples"]);
}

#[test]
fn non_finite_loss_stops_naming_the_step_and_keeps_the_checkpoint() {
    let (_tmp, c) = setup(|c| {
        c.training.learning_rate = 1e30;
        c.training.warmup_ratio = 0.0;
        c.training.optimizer = pipeline::config::OptimizerKind::Sgd;
        c.training.max_grad_norm = None;
        c.training.checkpoint_every_steps = 1;
        c.training.eval_every_steps = None;
    });
    let err = run_err(&c);
    assert!(
        err.contains("training loss is") && err.contains("at step 2"),
        "{err}"
    );
    assert!(
        err.contains("step-00000001") && err.contains("is kept"),
        "{err}"
    );
    assert!(Layout::new(&c.artifacts)
        .train_checkpoints()
        .join("step-00000001")
        .exists());
    assert!(!train_dir(&c).exists());
}

// Hostile and broken inputs (issue #12): each refused with an error naming the file or key,
// before any training, and nothing written.

#[test]
fn a_token_file_with_max_len_0_or_labels_beyond_0_1_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let c = config(tmp.path());
    let tokens = Layout::new(&c.artifacts).stage_dir(StageId::Tokenize);
    let zero = TokenSplit {
        max_len: 0,
        input_ids: vec![],
        attention_mask: vec![],
        ..split(8, 0)
    };
    write_tokens(&c, &zero, &split(4, 1));
    let message = format!(
        "{} is not a valid token file (rerun `just tokenize`): the `tokens` metadata entry: \
         max_len is 0, expected at least 1",
        tokens.join("train.safetensors").display()
    );
    assert_fails_early(&c, &[&message]);

    let mut three = split(4, 1);
    three.labels[2] = 2;
    write_tokens(&c, &split(8, 0), &three);
    let message = format!(
        "{} is not a valid token file (rerun `just tokenize`): tensor `labels` holds 2 at \
         index 2, expected 0 or 1",
        tokens.join("validation.safetensors").display()
    );
    assert_fails_early(&c, &[&message]);
}

#[test]
fn a_rank_no_layer_can_hold_is_refused_before_allocating() {
    let (_tmp, c) = setup(|c| c.lora.r = 1 << 40);
    assert_fails_early(
        &c,
        &[
            "adding LoRA to the model (the lora.* keys)",
            "LoRA rank r = 1099511627776 is too large for layer",
            "r can be at most 32",
        ],
    );
}

/// One optimizer step (the last) with a learning rate that moves the parameters by ~3e37:
/// still finite, but the validation after it overflows. The stage fails and saves nothing.
#[test]
fn a_non_finite_validation_after_the_last_step_saves_no_adapter() {
    let (_tmp, c) = setup(|c| {
        c.training.optimizer = pipeline::config::OptimizerKind::Adam;
        c.training.weight_decay = 0.0;
        c.training.learning_rate = 3e37;
        c.training.epochs = 1;
        c.training.batch_size = 18;
        c.training.warmup_ratio = 0.0;
        c.training.max_grad_norm = None;
        c.training.eval_every_steps = None;
    });
    let err = run_err(&c);
    assert!(
        err.contains("the validation loss is NaN after step 1 (epoch 1): stopping without saving an adapter; no checkpoint was written yet"),
        "{err}"
    );
    assert!(!train_dir(&c).exists(), "no adapter, no train folder");
}

/// A learning rate that overflows f32 makes the parameters infinite in the step itself.
#[test]
fn non_finite_parameters_after_a_step_stop_the_run() {
    let (_tmp, c) = setup(|c| {
        c.training.learning_rate = 1e300;
        c.training.warmup_ratio = 0.0;
        c.training.optimizer = pipeline::config::OptimizerKind::Sgd;
        c.training.max_grad_norm = None;
    });
    let err = run_err(&c);
    assert!(
        err.contains("is NaN or infinite after step 1 (epoch 1, batch 1): stopping without saving an adapter; no checkpoint was written yet"),
        "{err}"
    );
    assert!(err.starts_with("parameter base_model.model."), "{err}");
    assert!(!train_dir(&c).exists());
}

/// A checkpoint whose state holds NaN is skipped (and said so) for the previous good one, and
/// the result is the same as a run that was never interrupted.
#[test]
fn resume_skips_a_checkpoint_with_non_finite_state() {
    let (tmp_a, ca) = setup(|_| {});
    let (tmp_b, cb) = setup(|_| {});
    let status = binary(tmp_b.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());

    let mut child = binary(tmp_a.path())
        .env(train::HANG_AFTER_CHECKPOINT_ENV, "4")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let checkpoints = Layout::new(&ca.artifacts).train_checkpoints();
    let newest = wait_for_checkpoint(&mut child, &checkpoints, 4);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(checkpoints.join("step-00000002").exists());

    // Poison one parameter of the newest checkpoint.
    let file = newest.join("tensors.safetensors");
    let mut tensors = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    let name = tensors
        .keys()
        .find(|k| k.starts_with("param/") && k.contains("lora_A"))
        .unwrap()
        .clone();
    let t = &tensors[&name];
    let mut values = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    values[0] = f32::NAN;
    let poisoned = candle_core::Tensor::from_vec(values, t.dims(), &Device::Cpu).unwrap();
    tensors.insert(name.clone(), poisoned);
    candle_core::safetensors::save(&tensors, &file).unwrap();

    let out = binary(tmp_a.path()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let skipped = format!(
        "train: skipping checkpoint {}: tensor '{name}' holds NaN or infinite values; trying an older one",
        newest.display()
    );
    assert!(stdout.contains(&skipped), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "train: resuming from checkpoint {} (step 2",
            checkpoints.join("step-00000002").display()
        )),
        "{stdout}"
    );
    assert_eq!(summary_of(&ca).resumed_from_step, Some(2));
    assert_eq!(history_of(&ca), history_of(&cb));
    assert_eq!(adapter_bytes(&ca), adapter_bytes(&cb));
}
