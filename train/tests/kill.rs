//! Runs killed with SIGKILL resume as if never stopped, and two runs on one artifacts root. A
//! test binary of its own (no libtest harness; `common/libtest.rs` reads libtest's command
//! line): it runs itself as the run to kill, the train stage with a hook that stops in place
//! after a chosen checkpoint, so that the production binary carries no test machinery.

mod common;
#[path = "common/libtest.rs"]
mod libtest;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
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

/// A child process, killed (SIGKILL) and reaped when dropped: a failed assertion must not leave
/// a run sleeping forever.
struct Running(Child);

impl Running {
    fn id(&self) -> u32 {
        self.0.id()
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        self.0.try_wait().unwrap()
    }

    /// SIGKILL, and waits for it to end.
    fn kill(mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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
fn wait_for_checkpoint(child: &mut Running, checkpoints: &Path, step: u64) -> PathBuf {
    let want = checkpoints.join(format!("step-{step:08}"));
    let mut progress = Progress::new(child);
    while !want.exists() {
        if let Some(status) = child.try_wait() {
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
        progress.check(child, &format!("before step {step}"));
        std::thread::sleep(Duration::from_millis(20));
    }
    want
}

/// Whether a run still makes progress: it must keep using CPU time (one that uses none for 2
/// minutes is stuck, however busy the machine is).
struct Progress {
    ticks: Option<u64>,
    since: Instant,
}

impl Progress {
    fn new(child: &Running) -> Self {
        Self {
            ticks: cpu_ticks(child.id()),
            since: Instant::now(),
        }
    }

    fn check(&mut self, child: &Running, when: &str) {
        let now = cpu_ticks(child.id());
        if now != self.ticks {
            (self.ticks, self.since) = (now, Instant::now());
        }
        assert!(
            self.ticks.is_none() || self.since.elapsed() < Duration::from_secs(120),
            "the run used no CPU time for 2 minutes {when}: stuck"
        );
    }
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
    let (child, ckpt) = stopped_at_checkpoint(tmp, c, step);
    child.kill();
    ckpt
}

/// Starts training in `tmp` (config `c`) as a run that stops in place, holding the artifacts
/// root, once checkpoint `step` is complete; the run and that checkpoint's folder.
fn stopped_at_checkpoint(tmp: &Path, c: &Config, step: u64) -> (Running, PathBuf) {
    let mut child = Running(
        stopping_run(tmp, step)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let ckpt = wait_for_checkpoint(
        &mut child,
        &Layout::new(&c.artifacts).train_checkpoints(),
        step,
    );
    (child, ckpt)
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

/// A run on the artifacts root another run holds (it stopped in place after a checkpoint) is
/// refused: a non-zero exit, a message that names the root and the process holding it, and
/// not a byte written. Once the holder is gone, the next run goes ahead.
fn a_second_run_on_a_held_root_is_refused() {
    let (tmp, c) = setup(|_| {});
    let (holder, _) = stopped_at_checkpoint(tmp.path(), &c, 2);
    let before = test_support::tree(tmp.path());
    let lock = fs::read_to_string(c.artifacts.join(pipeline::root::LOCK_FILE)).unwrap();
    assert_eq!(lock, format!("process {} (train)\n", holder.id()));

    let out = binary(tmp.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{} is in use by process {} (train): one run at a time per artifacts root",
            c.artifacts.display(),
            holder.id()
        )),
        "{stderr}"
    );
    assert_eq!(
        test_support::tree(tmp.path()),
        before,
        "the refused run wrote nothing"
    );

    holder.kill();
    let stdout = resume(tmp.path());
    assert!(stdout.contains("resuming from checkpoint"), "{stdout}");
}

/// SplitMix64: the kill points, drawn the same on every machine.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn duration_below(&mut self, d: Duration) -> Duration {
        Duration::from_nanos(self.below(d.as_nanos() as u64))
    }
}

/// The step of a checkpoint folder's name, and whether it is the staging folder of one being
/// written (`.step-N.tmp-…`) rather than a complete one (`step-N`).
fn checkpoint_name(name: &str) -> Option<(u64, bool)> {
    if let Some(n) = name.strip_prefix("step-") {
        return Some((n.parse().ok()?, false));
    }
    let rest = name.strip_prefix(".step-")?;
    let (n, tag) = rest.split_once('.')?;
    tag.starts_with("tmp-").then_some(())?;
    Some((n.parse().ok()?, true))
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// When an uninterrupted run, watched from its start, was first seen writing each checkpoint
/// (its staging folder, or the checkpoint itself if the write was too quick to see), when each
/// was first seen complete, and when the run ended.
struct Timeline {
    writing: BTreeMap<u64, Duration>,
    written: BTreeMap<u64, Duration>,
    ended: Duration,
}

impl Timeline {
    fn watch(tmp: &Path, c: &Config) -> Timeline {
        let checkpoints = Layout::new(&c.artifacts).train_checkpoints();
        let started = Instant::now();
        let mut child = Running(
            binary(tmp)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let (mut writing, mut written) = (BTreeMap::new(), BTreeMap::new());
        let mut progress = Progress::new(&child);
        let status = loop {
            if let Some(status) = child.try_wait() {
                break status;
            }
            let now = started.elapsed();
            for name in names(&checkpoints) {
                if let Some((step, staging)) = checkpoint_name(&name) {
                    writing.entry(step).or_insert(now);
                    if !staging {
                        written.entry(step).or_insert(now);
                    }
                }
            }
            progress.check(&child, "in the uninterrupted run");
            std::thread::yield_now();
        };
        assert!(status.success(), "the uninterrupted run failed: {status}");
        Timeline {
            writing,
            written,
            ended: started.elapsed(),
        }
    }

    /// From a start to the first checkpoint's write (a third of the run if none was seen).
    fn startup(&self) -> Duration {
        let seen = self.writing.values().min().copied();
        seen.unwrap_or(self.ended / 3)
    }

    /// The longest time from one checkpoint's write starting to the next one's (a step, a
    /// validation, a checkpoint write). The looks at the folder may miss some checkpoints on a
    /// loaded machine (each is removed two steps later): the kill points only need to be about
    /// right.
    fn step(&self) -> Duration {
        let times: Vec<Duration> = self.writing.values().copied().collect();
        times
            .windows(2)
            .map(|w| w[1].saturating_sub(w[0]))
            .max()
            .unwrap_or(Duration::from_millis(50))
    }

    /// The longest a checkpoint was seen being written (at least 50 µs: a write too quick to
    /// see is shorter than a look at the folder).
    fn write(&self) -> Duration {
        self.written
            .iter()
            .map(|(step, done)| done.saturating_sub(self.writing[step]))
            .max()
            .unwrap_or_default()
            .max(Duration::from_micros(50))
    }

    /// From the last checkpoint complete to the run's end: the outputs written and committed,
    /// and the checkpoints removed.
    /// (A quarter of the run if the last checkpoint was not seen.)
    fn tail(&self, last: u64) -> Duration {
        match self.written.get(&last) {
            Some(&seen) => self.ended.saturating_sub(seen),
            None => self.ended / 4,
        }
    }
}

/// Where a run is killed: a delay after an event of its own.
#[derive(Debug, Clone, Copy)]
enum KillPoint {
    /// After the start: the lock, the recovery of a killed run's leftovers, loading (and for
    /// a run resumed from the last checkpoint, all it does).
    Startup(Duration),
    /// After the write of checkpoint `step` is first seen: inside it, or in the next step.
    Checkpoint(u64, Duration),
    /// After the last checkpoint (of step `.0`) is complete: the outputs staged, committed,
    /// the checkpoints removed.
    Commit(u64, Duration),
    /// Not killed: the run goes to its end.
    Never,
}

/// A train run in `tmp` killed at `point`, with its stdout: whether it was killed (it may end
/// first).
fn run_killed_at(tmp: &Path, c: &Config, point: KillPoint) -> (bool, String) {
    let checkpoints = Layout::new(&c.artifacts).train_checkpoints();
    let (stdout_file, stderr_file) = (tmp.join("stdout.txt"), tmp.join("stderr.txt"));
    // What the run itself writes counts, not what an earlier run left.
    let earlier = names(&checkpoints);
    let mut child = Running(
        binary(tmp)
            .stdout(fs::File::create(&stdout_file).unwrap())
            .stderr(fs::File::create(&stderr_file).unwrap())
            .spawn()
            .unwrap(),
    );
    let seen = |step: u64, complete: bool| {
        names(&checkpoints).iter().any(|n| {
            !earlier.contains(n)
                && checkpoint_name(n)
                    .is_some_and(|(s, staging)| s == step && !(complete && staging))
        })
    };
    let (trigger, delay): (Box<dyn Fn() -> bool>, Duration) = match point {
        KillPoint::Startup(d) => (Box::new(|| true), d),
        KillPoint::Checkpoint(step, d) => (Box::new(move || seen(step, false)), d),
        KillPoint::Commit(last, d) => (Box::new(move || seen(last, true)), d),
        KillPoint::Never => (Box::new(|| false), Duration::ZERO),
    };
    let (started, mut progress) = (Instant::now(), Progress::new(&child));
    let mut fired: Option<Instant> = None;
    let killed = loop {
        if let Some(status) = child.try_wait() {
            let output = |f: &Path| fs::read_to_string(f).unwrap();
            assert!(
                status.success(),
                "the run failed ({status}):\n{}\n{}",
                output(&stdout_file),
                output(&stderr_file)
            );
            break false;
        }
        match fired {
            None if trigger() => fired = Some(Instant::now()),
            Some(at) if at.elapsed() >= delay => {
                child.kill();
                break true;
            }
            _ => {}
        }
        progress.check(&child, &format!("before {point:?}"));
        if started.elapsed() > Duration::from_secs(600) {
            panic!("the run did not reach {point:?} in 10 minutes");
        }
        std::thread::yield_now();
    };
    (killed, fs::read_to_string(&stdout_file).unwrap())
}

/// The newest complete checkpoint under `checkpoints`, if any: the one a resumed run must
/// start from.
fn newest_checkpoint(checkpoints: &Path) -> Option<(u64, PathBuf)> {
    names(checkpoints)
        .iter()
        .filter_map(|n| match checkpoint_name(n) {
            Some((step, false)) => Some((step, checkpoints.join(n))),
            _ => None,
        })
        .max()
}

/// A checkpoint folder is complete: its state names its step, its history and tensors read.
fn assert_complete_checkpoint(dir: &Path, step: u64) {
    let read = |f: &str| {
        fs::read_to_string(dir.join(f))
            .unwrap_or_else(|e| panic!("{}: {f}: {e} (a half-written checkpoint)", dir.display()))
    };
    let state: serde_json::Value = serde_json::from_str(&read("state.json")).unwrap();
    assert_eq!(
        state["position"]["global_step"].as_u64(),
        Some(step),
        "{}",
        dir.display()
    );
    let history: serde_json::Value = serde_json::from_str(&read("history.json")).unwrap();
    assert!(history.as_array().is_some_and(|h| !h.is_empty()));
    let tensors =
        candle_core::safetensors::load(dir.join("tensors.safetensors"), &Device::Cpu).unwrap();
    assert!(tensors.keys().any(|k| k.starts_with("param/")));
    assert_eq!(
        names(dir),
        ["history.json", "state.json", "tensors.safetensors"],
        "{}",
        dir.display()
    );
}

const INSIDE_WRITE: &str = "inside a checkpoint write";

/// What a kill left, for the tally: which write it interrupted, as far as the files tell.
fn check_after_kill(c: &Config) -> &'static str {
    let root = &c.artifacts;
    // Nothing but what the pipeline writes: its folders, checkpoints, leftovers.
    pipeline::root::check(root).unwrap();
    let checkpoints = Layout::new(root).train_checkpoints();
    let mut half_written = false;
    for name in names(&checkpoints) {
        match checkpoint_name(&name) {
            Some((step, false)) => assert_complete_checkpoint(&checkpoints.join(&name), step),
            Some((_, true)) => half_written = true,
            None => assert!(
                name == "log.jsonl" || pipeline::atomic::is_leftover(&name),
                "{name}"
            ),
        }
    }
    let committed = train_dir(c).join("stamp.json").exists();
    if train_dir(c).exists() {
        assert!(committed, "train/ is complete or absent");
    }
    match (committed, half_written, checkpoints.exists()) {
        (true, _, true) => "after the commit, before the checkpoints were removed",
        (true, _, false) => "after the commit and the checkpoints' removal",
        (false, true, _) => INSIDE_WRITE,
        (false, false, true) => "between checkpoint writes, or before the commit",
        (false, false, false) => "before the first checkpoint",
    }
}

/// What a run's stdout says it resumed from agrees with what the kill before it left: the
/// newest checkpoint folder (so it was complete), or none; never one skipped as unusable.
fn assert_resumed_from(stdout: &str, newest: &Option<(u64, PathBuf)>, committed: bool) {
    assert!(
        !stdout.contains("skipping checkpoint") && !stdout.contains("ignoring checkpoint"),
        "{stdout}"
    );
    if committed {
        assert!(
            stdout.is_empty() || stdout.contains("train: up to date"),
            "{stdout}"
        );
    } else if stdout.contains("train: resuming from checkpoint") {
        let (step, path) = newest.as_ref().expect("a checkpoint to resume from");
        assert!(
            stdout.contains(&format!(
                "train: resuming from checkpoint {} (step {step},",
                path.display()
            )),
            "expected a resume from {}: {stdout}",
            path.display()
        );
    } else if stdout.contains("no usable checkpoint") {
        assert!(newest.is_none(), "{newest:?} was not used: {stdout}");
    }
}

/// The outputs as the uninterrupted run's: history, adapter bytes and the log (without the
/// wall-clock throughput); the root holds no lock and no leftover.
fn assert_finished_as(c: &Config, uninterrupted: &Config) {
    assert_eq!(history_of(c), history_of(uninterrupted));
    assert_eq!(adapter_bytes(c), adapter_bytes(uninterrupted));
    assert_eq!(log_of(c), log_of(uninterrupted));
    for name in names(&c.artifacts) {
        assert!(
            ["tokens", "train", "checkpoints"].contains(&name.as_str()),
            "{name}"
        );
    }
    // Checkpoints stay only when a kill came between the commit and their removal; complete.
    let checkpoints = Layout::new(&c.artifacts).train_checkpoints();
    for name in names(&c.artifacts.join("checkpoints")) {
        assert_eq!(name, "train");
    }
    for name in names(&checkpoints) {
        match checkpoint_name(&name) {
            Some((step, false)) => assert_complete_checkpoint(&checkpoints.join(&name), step),
            _ => assert_eq!(name, "log.jsonl"),
        }
    }
}

/// train/log.jsonl without the wall-clock throughput.
fn log_of(c: &Config) -> Vec<serde_json::Value> {
    fs::read_to_string(train_dir(c).join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut()
                .unwrap()
                .remove("train_samples_per_second");
            v
        })
        .collect()
}

/// SIGKILL at points drawn from a seeded generator inside checkpoint writes (a checkpoint every
/// step), the outputs' staging and commit, the checkpoints' removal and a resumed run's start.
/// The killed runs' roots are resumed by the next run, itself killed, until one finishes.
/// After each kill every checkpoint folder is complete, and the next run resumes from the
/// newest; every run that finishes ends as the uninterrupted run did, leaving no leftover.
fn kills_inside_checkpoint_and_commit_writes_lose_nothing() {
    // 40 kills, more (up to 200) until 5 of them left a checkpoint half-written: on a loaded
    // machine fewer land inside the writes.
    const KILLS: usize = 40;
    const INSIDE: usize = 5;
    const MAX_KILLS: usize = 200;
    let edit = |c: &mut Config| c.training.checkpoint_every_steps = 1;
    let (tmp_b, cb) = setup(edit);
    let timeline = Timeline::watch(tmp_b.path(), &cb);
    let last = summary_of(&cb).steps;
    let (startup, write, step, tail) = (
        timeline.startup(),
        timeline.write(),
        timeline.step(),
        timeline.tail(last),
    );

    let mut rng = SplitMix(0x6b69_6c6c_2d39);
    let mut tally: BTreeMap<&str, usize> = BTreeMap::new();
    let (mut kills, mut finished) = (0, 0);
    let mut chain: Option<(tempfile::TempDir, Config)> = None;
    let more = |kills: usize, tally: &BTreeMap<&str, usize>| {
        let inside = tally.get(INSIDE_WRITE).copied().unwrap_or(0);
        kills < KILLS || (inside < INSIDE && kills < MAX_KILLS)
    };
    while more(kills, &tally) || chain.is_some() {
        let (tmp, c) = chain.get_or_insert_with(|| setup(edit));
        let newest = newest_checkpoint(&Layout::new(&c.artifacts).train_checkpoints());
        let committed = train_dir(c).join("stamp.json").exists();
        let from = newest.as_ref().map_or(0, |(s, _)| *s);
        let point = match rng.below(6) {
            _ if !more(kills, &tally) => KillPoint::Never,
            _ if from >= last => KillPoint::Startup(rng.duration_below(startup + tail)),
            0 => KillPoint::Startup(rng.duration_below(startup)),
            1 => KillPoint::Commit(last, rng.duration_below(tail)),
            // Half of them within the time a write was seen to take, the rest over a step.
            k => KillPoint::Checkpoint(
                from + 1 + rng.below(last - from),
                rng.duration_below(if k % 2 == 0 { write } else { step }),
            ),
        };
        let (killed, stdout) = run_killed_at(tmp.path(), c, point);
        assert_resumed_from(&stdout, &newest, committed);
        if killed {
            kills += 1;
            *tally.entry(check_after_kill(c)).or_default() += 1;
        } else {
            assert_finished_as(c, &cb);
            finished += 1;
            chain = None;
        }
    }
    println!(
        "{kills} kills, {finished} runs to the end (a run: startup {startup:?}, checkpoint \
         write {write:?}, step {step:?}, tail {tail:?}); the kills left: {tally:?}"
    );
    assert!(
        tally.get(INSIDE_WRITE).is_some_and(|&n| n > 0),
        "no kill landed inside a checkpoint write: the test tests nothing"
    );
}

const TESTS: [(&str, fn()); 4] = [
    (
        "resumes_after_a_kill_as_if_never_stopped",
        resumes_after_a_kill_as_if_never_stopped,
    ),
    (
        "resume_skips_a_checkpoint_with_non_finite_state",
        resume_skips_a_checkpoint_with_non_finite_state,
    ),
    (
        "kills_inside_checkpoint_and_commit_writes_lose_nothing",
        kills_inside_checkpoint_and_commit_writes_lose_nothing,
    ),
    (
        "a_second_run_on_a_held_root_is_refused",
        a_second_run_on_a_held_root_is_refused,
    ),
];

fn main() {
    if let Ok(step) = std::env::var(STOP_AFTER_ENV) {
        let config = PathBuf::from(std::env::args_os().nth(1).expect("a config file"));
        return stop_after(step.parse().expect("a step number"), &config);
    }
    libtest::main(&TESTS);
}
