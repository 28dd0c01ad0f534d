//! Runs killed with SIGKILL resume as if never stopped. A test binary of its own (no libtest
//! harness): it runs itself as the run to kill, the train stage with a hook that stops in place
//! after a chosen checkpoint, so that the production binary carries no test machinery.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use candle_core::Device;
use common::*;
use pipeline::{Config, Layout};

/// Set for the run to kill: the optimizer step after whose checkpoint it stops.
const STOP_AFTER_ENV: &str = "TRAIN_KILL_TEST_STOP_AFTER";

/// The run to kill: trains on the config file `config`, then sleeps forever after the
/// checkpoint of step `step`.
fn stop_after(step: u64, config: &Path) {
    let config = Config::load(config, &[]).unwrap();
    let mut hook = |dir: &Path, at: u64| {
        if at == step {
            println!("stopped after writing {}", dir.display());
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    };
    let mut stage = train::Train::after_checkpoint(&mut hook);
    pipeline::runner::execute(&mut stage, &config, false).unwrap();
    panic!("the run ended before step {step}");
}

/// The `train` binary on the config in `tmp`.
fn binary(tmp: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_train"));
    cmd.arg("--config").arg(tmp.join("pipeline.yaml"));
    cmd
}

/// This test binary as a train run that stops in place (sleeps) after writing the checkpoint
/// of optimizer step `step`, so that the test can SIGKILL it at a known point.
fn stopping_run(tmp: &Path, step: u64) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env(STOP_AFTER_ENV, step.to_string())
        .arg(tmp.join("pipeline.yaml"));
    cmd
}

/// The CPU time (clock ticks) process `pid` has used, from /proc (Linux); None elsewhere.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some(field(11)? + field(12)?)
}

/// Waits until `child` has written the checkpoint of `step` under `checkpoints` (it then stops
/// in place), and returns its folder. Guarded on the run's progress, not on the wall clock,
/// which a loaded machine stretches: the run must not end or write a later checkpoint first,
/// and it must keep using CPU time (a run that uses none for 2 minutes is stuck, however busy
/// the machine).
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

/// Runs training in `tmp` to the end, quietly.
fn run_to_end(tmp: &Path) {
    let status = binary(tmp)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}

/// Starts training in `tmp` (config `c`) and kills it (SIGKILL) once checkpoint `step` is
/// complete; returns that checkpoint's folder.
fn kill_at_checkpoint(tmp: &Path, c: &Config, step: u64) -> PathBuf {
    let mut child = stopping_run(tmp, step)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ckpt = wait_for_checkpoint(
        &mut child,
        &Layout::new(&c.artifacts).train_checkpoints(),
        step,
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    ckpt
}

/// Runs training in `tmp` again, which must succeed; its stdout.
fn resume(tmp: &Path) -> String {
    let out = binary(tmp).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The resumed run (`resumed`, from checkpoint `step`) ended as the uninterrupted one did: the
/// same history and the same adapter bytes.
fn assert_same_as_uninterrupted(resumed: &Config, uninterrupted: &Config, step: u64) {
    assert_eq!(summary_of(resumed).resumed_from_step, Some(step));
    assert_eq!(history_of(resumed), history_of(uninterrupted));
    assert_eq!(adapter_bytes(resumed), adapter_bytes(uninterrupted));
}

/// Kills a run with SIGKILL right after a mid-epoch checkpoint (the run stops in place after
/// writing the checkpoint of step 7, so the kill point is known), runs the `train` binary
/// again, and compares with a run that was never interrupted.
fn resumes_after_a_kill_as_if_never_stopped() {
    let edit = |c: &mut Config| {
        c.lora.dropout = 0.1;
        c.training.checkpoint_every_steps = 7;
    };
    let (tmp_a, ca) = setup(edit);
    let (tmp_b, cb) = setup(edit);
    run_to_end(tmp_b.path());

    let ckpt = kill_at_checkpoint(tmp_a.path(), &ca, 7);
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

    let stdout = resume(tmp_a.path());
    assert!(
        stdout.contains("resuming from checkpoint") && stdout.contains("step-00000007"),
        "{stdout}"
    );
    assert_same_as_uninterrupted(&ca, &cb, 7);
}

/// A checkpoint whose state holds NaN is skipped (and said so) for the previous good one, and
/// the result is the same as a run that was never interrupted.
fn resume_skips_a_checkpoint_with_non_finite_state() {
    let (tmp_a, ca) = setup(|_| {});
    let (tmp_b, cb) = setup(|_| {});
    run_to_end(tmp_b.path());

    let checkpoints = Layout::new(&ca.artifacts).train_checkpoints();
    let newest = kill_at_checkpoint(tmp_a.path(), &ca, 4);
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

    let stdout = resume(tmp_a.path());
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
    assert_same_as_uninterrupted(&ca, &cb, 2);
}

const TESTS: [(&str, fn()); 2] = [
    (
        "resumes_after_a_kill_as_if_never_stopped",
        resumes_after_a_kill_as_if_never_stopped,
    ),
    (
        "resume_skips_a_checkpoint_with_non_finite_state",
        resume_skips_a_checkpoint_with_non_finite_state,
    ),
];

fn main() {
    if let Ok(step) = std::env::var(STOP_AFTER_ENV) {
        let config = PathBuf::from(std::env::args_os().nth(1).expect("a config file"));
        return stop_after(step.parse().expect("a step number"), &config);
    }
    // libtest's conventions, as far as they matter here: name filters, and --list.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let chosen = TESTS.iter().filter(|(name, _)| {
        filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()))
    });
    if args.iter().any(|a| a == "--list") {
        for (name, _) in chosen {
            println!("{name}: test");
        }
        return;
    }
    for (name, test) in chosen {
        println!("test {name} ...");
        test();
        println!("test {name} ... ok");
    }
}
