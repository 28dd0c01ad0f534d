//! The train stage end to end on the fixture's tiny BERT (fixtures/bert-tiny-lora/base
//! as a local model folder), with small token artifacts and a tokens stamp made here.

use std::fs;

use candle_core::{DType, Device};
use lora_classifier::{Checkpoint, SequenceClassifier};
use pipeline::history::{HistoryRow, RowKind};
use pipeline::tokens::TokenSplit;
use pipeline::{Config, Layout, StageId};
use train::Outcome;

mod common;

use common::*;

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
    // `training.dtype: auto`: bf16 where this CPU has AVX512-BF16 kernels and no AMX, else f32.
    let auto = if lora_classifier::cpu_has_native_bf16() && !lora_classifier::cpu_has_amx_bf16() {
        "bf16"
    } else {
        "f32"
    };
    assert_eq!(summary.dtype, auto);
    // What ran, named: the native bf16 kernels where the CPU has them.
    let native = if auto == "bf16" {
        "cpu bf16 avx512-bf16"
    } else {
        "cpu f32 "
    };
    assert!(
        summary.runs_on.starts_with(native),
        "runs_on {:?}, expected {native}…",
        summary.runs_on
    );
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

    // The saved adapter is the kept epoch's: with the frozen weights in the dtype it trained
    // with, it reproduces that epoch's validation loss.
    let ckpt = Checkpoint::open(&model_dir()).unwrap();
    let dtype = if auto == "bf16" {
        DType::BF16
    } else {
        DType::F32
    };
    let mut model = SequenceClassifier::load_adapter(
        &ckpt,
        &train_dir(&c).join("adapter"),
        &Device::Cpu,
        dtype,
    )
    .unwrap();
    let validation = split(8, 1);
    let v = training::evaluate(
        &mut model,
        &train::examples(&validation),
        c.training.batch_size,
        &Device::Cpu,
    )
    .unwrap();
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
    let (_tmp, c) = setup(|c| c.training.device = pipeline::config::DeviceSetting::Cuda(0));
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

/// The `train` binary on the config in `tmp`, with `args`: its exit code, stdout and stderr.
fn run_binary(cmd: &mut std::process::Command) -> (Option<i32>, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn train_command(tmp: &std::path::Path, args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_train"));
    cmd.arg("--config")
        .arg(tmp.join("pipeline.yaml"))
        .args(args);
    cmd
}

/// A root this process may only read (read-only, another user's): a stage that is up to date
/// says so and succeeds, one that must run fails naming the root, why and what to do, and
/// neither writes anything (not even the lock). Read-only as the kernel enforces it: permission
/// bits, or for root the immutable attribute (EACCES / EPERM), and a read-only bind mount in a
/// mount namespace of its own (EROFS) where this machine allows one.
#[test]
fn a_read_only_root_serves_stages_that_are_up_to_date() {
    const TEST: &str = "a_read_only_root_serves_stages_that_are_up_to_date";
    let (tmp, c) = setup(|_| {});
    train::run(&c, false).unwrap();
    let before = test_support::tree(&c.artifacts);
    let must_run = |stderr: &str, why: &str| {
        let root = c.artifacts.display();
        assert!(
            stderr.contains(&format!(
                "error: train: {why}: train must run and write its outputs: the artifacts root \
                 {root} is read-only to this run (cannot open {root}/.lock for writing: "
            )) && stderr.contains("or pass --set artifacts=PATH to write the outputs elsewhere"),
            "{stderr}"
        );
    };
    match ReadOnlyTree::new(&c.artifacts) {
        Err(why) => report_skip(TEST, &why),
        Ok(read_only) => {
            let outcome = train::run(&c, false).unwrap();
            assert!(matches!(outcome, Outcome::UpToDate { .. }), "{outcome:?}");
            let (code, stdout, stderr) = run_binary(&mut train_command(tmp.path(), &[]));
            assert_eq!(code, Some(0), "{stderr}");
            assert!(stdout.starts_with("train: up to date"), "{stdout}");

            let lr = ["--set", "training.learning_rate=0.02"];
            let (code, _, stderr) = run_binary(&mut train_command(tmp.path(), &lr));
            assert_eq!(code, Some(1), "{stderr}");
            must_run(
                &stderr,
                "config changed: training.learning_rate: 0.01 → 0.02",
            );
            let (code, _, stderr) = run_binary(&mut train_command(tmp.path(), &["--force"]));
            assert_eq!(code, Some(1), "{stderr}");
            must_run(&stderr, "--force");
            drop(read_only);
            assert_eq!(test_support::tree(&c.artifacts), before, "nothing written");
        }
    }

    // A read-only file system: the root bind-mounted read-only onto itself, in a mount
    // namespace of the run's own (`unshare`; as a user other than root, in a user namespace).
    let erofs = |args: &[&str]| {
        let mut cmd = std::process::Command::new("unshare");
        let root_user = {
            use std::os::unix::fs::MetadataExt;
            fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
        };
        cmd.arg(if root_user { "-m" } else { "-rm" })
            .args([
                "sh",
                "-c",
                r#"mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" || exit 97; shift; exec "$@""#,
                "sh",
            ])
            .arg(&c.artifacts)
            .arg(env!("CARGO_BIN_EXE_train"))
            .arg("--config")
            .arg(tmp.path().join("pipeline.yaml"))
            .args(args);
        run_binary(&mut cmd)
    };
    match erofs(&[]) {
        (Some(0), stdout, _) => {
            assert!(stdout.starts_with("train: up to date"), "{stdout}");
            let (code, _, stderr) = erofs(&["--force"]);
            assert_eq!(code, Some(1), "{stderr}");
            must_run(&stderr, "--force");
            assert!(stderr.contains("Read-only file system"), "{stderr}");
            assert_eq!(test_support::tree(&c.artifacts), before, "nothing written");
        }
        (code, _, stderr) if code == Some(97) || code.is_none() || stderr.contains("unshare") => {
            report_skip(
                TEST,
                &format!("no read-only bind mount here: {}", stderr.trim()),
            );
        }
        (code, stdout, stderr) => panic!("{code:?}\n{stdout}\n{stderr}"),
    }
}
