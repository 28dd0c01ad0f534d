//! Shared helpers: the fixture's tiny BERT as a local model folder, small token splits with a
//! tokens stamp made here, and the outputs of a train run.
#![allow(dead_code)] // each test binary uses its own share of the helpers

use std::fs;
use std::path::{Path, PathBuf};

use pipeline::atomic::StagingDir;
use pipeline::history::{self, HistoryRow};
use pipeline::stamp::StageRun;
use pipeline::tokens::TokenSplit;
use pipeline::train_summary::TrainSummary;
use pipeline::{Config, Layout, Split, StageId};

pub const MAX_LEN: usize = 24;

pub fn model_dir() -> PathBuf {
    test_support::fixture("bert-tiny-lora/base")
}

/// `n` reviews: `[CLS] words… [SEP] [PAD]…` of varying length, the label carried by which
/// words occur (so that there is something to learn).
pub fn split(n: usize, salt: u32) -> TokenSplit {
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

pub fn config(root: &Path) -> Config {
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
pub fn write_tokens(config: &Config, train: &TokenSplit, validation: &TokenSplit) {
    let layout = Layout::new(&config.artifacts);
    let run = StageRun::new(&layout, StageId::Tokenize, config, "test");
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
pub fn setup(edit: impl FnOnce(&mut Config)) -> (tempfile::TempDir, Config) {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config(tmp.path());
    edit(&mut c);
    write_tokens(&c, &split(18, 0), &split(8, 1));
    fs::write(tmp.path().join("pipeline.yaml"), c.to_yaml()).unwrap();
    (tmp, c)
}

pub fn train_dir(c: &Config) -> PathBuf {
    Layout::new(&c.artifacts).stage_dir(StageId::Train)
}

pub fn adapter_bytes(c: &Config) -> Vec<Vec<u8>> {
    let dir = train_dir(c).join(train::ADAPTER_DIR);
    ["adapter_config.json", "adapter_model.safetensors"]
        .iter()
        .map(|f| fs::read(dir.join(f)).unwrap())
        .collect()
}

/// The history without the wall-clock throughput, which differs between runs.
pub fn history_of(c: &Config) -> Vec<HistoryRow> {
    let mut rows = history::read_parquet(&train_dir(c).join(history::HISTORY_FILE)).unwrap();
    for r in &mut rows {
        r.samples_per_s = None;
    }
    rows
}

pub fn summary_of(c: &Config) -> TrainSummary {
    serde_json::from_str(&fs::read_to_string(train_dir(c).join("summary.json")).unwrap()).unwrap()
}

pub fn run_err(c: &Config) -> String {
    format!("{:#}", train::run(c, false).unwrap_err())
}

/// A folder made read-only to this process as the kernel enforces it, undone when dropped:
/// permission bits (`chmod -R a-w`) for a user other than root; for root, whom they do not
/// bind, the immutable attribute (`chattr -R +i`, which refuses even root: EPERM).
pub struct ReadOnlyTree {
    dir: PathBuf,
    immutable: bool,
}

impl ReadOnlyTree {
    /// Makes `dir` read-only; an error saying why when this machine cannot (no `chattr`, a
    /// file system without the attribute, no CAP_LINUX_IMMUTABLE).
    pub fn new(dir: &Path) -> Result<Self, String> {
        use std::os::unix::fs::MetadataExt;
        let root_user = fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        let tree = Self {
            dir: dir.to_path_buf(),
            immutable: root_user,
        };
        if root_user {
            let out = std::process::Command::new("chattr")
                .args(["-R", "+i"])
                .arg(dir)
                .output()
                .map_err(|e| {
                    format!("running as root, and no chattr to make a folder immutable: {e}")
                })?;
            if !out.status.success() {
                return Err(format!(
                    "running as root, and `chattr -R +i` failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        } else {
            set_modes(dir, false);
        }
        if fs::write(dir.join(".probe"), "").is_ok() {
            let _ = fs::remove_file(dir.join(".probe"));
            return Err(format!("{} is still writable", dir.display()));
        }
        Ok(tree)
    }
}

impl Drop for ReadOnlyTree {
    fn drop(&mut self) {
        if self.immutable {
            let _ = std::process::Command::new("chattr")
                .args(["-R", "-i"])
                .arg(&self.dir)
                .status();
        } else {
            set_modes(&self.dir, true);
        }
    }
}

/// `chmod -R a-w` (or `u+w`, with `writable`) of `path`.
fn set_modes(path: &Path, writable: bool) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    let mode = meta.permissions().mode();
    let mode = if writable {
        mode | 0o200
    } else {
        mode & !0o222
    };
    let _ = fs::set_permissions(path, fs::Permissions::from_mode(mode));
    if meta.is_dir() {
        for entry in fs::read_dir(path).into_iter().flatten().flatten() {
            set_modes(&entry.path(), writable);
        }
    }
}

/// Prints `SKIPPED: <test>: <why>` where a passing run shows it: what this machine cannot do
/// (not missing data, so never a failure under `REQUIRE_REAL`).
pub fn report_skip(test: &str, why: &str) {
    test_support::report_platform_skip(test, why);
}
