//! Test-only helpers (a dev-dependency of the workspace's crates): where the in-repo reference
//! fixtures are, how tests find the real model and data (the standard Hugging Face cache), and
//! how a test that cannot run here says so.
//!
//! Fixture-based tests always run: `fixtures/` is in the repository. Tests that need the real
//! all-MiniLM-L6-v2, GPT-2 tokenizer or IMDb find them through the HF cache (downloading when
//! online) and, when that fails, print `SKIPPED: <test>: <why>` and return:
//!
//! ```ignore
//! let dir = test_support::require!(test_support::real_model(test_support::MINILM, true));
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

use hub::{Hub, Needs};

pub mod compare;

/// Set to `1` (CI does, when `../shared` is beside the checkout) to make a test that cannot find
/// the real model or data fail instead of skipping, so a run can insist that they ran.
pub const REQUIRE_REAL_ENV: &str = "REQUIRE_REAL";

/// The real models and dataset that some tests use.
pub const MINILM: &str = "sentence-transformers/all-MiniLM-L6-v2";
pub const GPT2: &str = "openai-community/gpt2";
pub const IMDB: &str = "stanfordnlp/imdb";
/// IMDb's parquet files in its hub repository.
pub const IMDB_TRAIN: &str = "plain_text/train-00000-of-00001.parquet";
pub const IMDB_TEST: &str = "plain_text/test-00000-of-00001.parquet";

fn repo_root() -> &'static Path {
    // crates/test-support → the workspace root.
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// `fixtures/` at the repository root: reference answers made by `fixtures/generate.py`.
pub fn fixtures_dir() -> PathBuf {
    repo_root().join("fixtures")
}

/// `fixtures/<name>`, canonical (stamps and error messages show it); panics naming the path
/// when it is missing, since the fixtures are part of the repository.
pub fn fixture(name: &str) -> PathBuf {
    let path = fixtures_dir().join(name);
    path.canonicalize()
        .unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// `../shared` beside the repository, where this project's machines (and its CI) keep the real
/// data and models; absent on other machines.
pub fn shared_dir() -> Option<PathBuf> {
    let dir = repo_root().join("../shared");
    dir.is_dir().then(|| dir.canonicalize().unwrap_or(dir))
}

/// The hub cache the tests use for real models and data: the environment's, as
/// huggingface_hub reads it (`HF_HUB_CACHE`, `HF_HOME`, `~/.cache/huggingface`), except that
/// with neither variable set and `../shared/hf-home` present, that one, offline (as the
/// justfile does).
pub fn hub() -> Hub {
    let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    if !set("HF_HOME") && !set("HF_HUB_CACHE") {
        if let Some(shared) = shared_dir() {
            let home = shared.join("hf-home");
            if home.is_dir() {
                return Hub::new(home.join("hub"), true);
            }
        }
    }
    Hub::from_env()
}

/// The snapshot folder of a real hub model (config and tokenizer, and the weights when
/// `weights`), from the cache or downloaded; `Err` says why it is not to be had.
pub fn real_model(repo_id: &str, weights: bool) -> Result<PathBuf, String> {
    let needs = Needs {
        weights,
        tokenizer: true,
    };
    hub()
        .model_dir(repo_id, "main", needs)
        .map_err(|e| format!("needs the real {repo_id}: {e:#}"))
}

/// A file of a real hub dataset, from the cache or downloaded; `Err` says why not.
pub fn real_dataset_file(repo_id: &str, file: &str) -> Result<PathBuf, String> {
    hub()
        .dataset_file(repo_id, "main", file)
        .map_err(|e| format!("needs the real {repo_id}: {e:#}"))
}

/// A file under `../shared` (data that is in no hub cache, such as Stanford's tarball).
pub fn shared_file(relative: &str) -> Result<PathBuf, String> {
    let dir = shared_dir().ok_or("needs ../shared beside the repository (not there)")?;
    let path = dir.join(relative);
    if path.exists() {
        Ok(path)
    } else {
        Err(format!("needs {} (not there)", path.display()))
    }
}

/// Whether `REQUIRE_REAL=1`: a missing real model or data set is then a failure.
pub fn real_required() -> bool {
    std::env::var(REQUIRE_REAL_ENV).is_ok_and(|v| v == "1")
}

/// Prints `SKIPPED: <test>: <why>` straight to the process's stderr: the test harness captures
/// `eprintln!` (shown only for failing tests), and a skip must be seen in a plain `cargo test`
/// run. With `REQUIRE_REAL=1` it fails the test instead.
#[track_caller]
pub fn report_skip(test: &str, why: &str) {
    if real_required() {
        panic!("{test}: {why}, and {REQUIRE_REAL_ENV}=1 forbids skipping");
    }
    write_skip(test, why);
}

/// A skip that depends on this machine, not on data (an instruction set the CPU lacks, a
/// permission the OS withholds, a test binary not built): shown like [`report_skip`], but never
/// a failure under `REQUIRE_REAL`, since no data beside the checkout can change it.
pub fn report_platform_skip(test: &str, why: &str) {
    write_skip(test, why);
}

fn write_skip(test: &str, why: &str) {
    let line = format!("SKIPPED: {test}: {why}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Every file and folder under `dir`, relative and sorted, with the bytes of files: two calls
/// compare equal when nothing under `dir` was added, removed or changed.
pub fn tree(dir: &Path) -> Vec<(PathBuf, Option<Vec<u8>>)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(PathBuf, Option<Vec<u8>>)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(base).unwrap().to_path_buf();
            if path.is_dir() {
                out.push((rel, None));
                walk(base, &path, out);
            } else {
                out.push((rel, Some(std::fs::read(&path).unwrap())));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The path of the function this expands in (`crate::module::test_name`).
#[macro_export]
macro_rules! function_path {
    () => {{
        fn here() {}
        let name = ::std::any::type_name_of_val(&here);
        name.strip_suffix("::here").unwrap_or(name)
    }};
}

/// The value of an `Ok`, or, for an `Err(why)`, a skip report naming the enclosing test, and
/// `return` from it.
#[macro_export]
macro_rules! require {
    ($found:expr) => {
        match $found {
            Ok(value) => value,
            Err(why) => {
                $crate::report_skip($crate::function_path!(), &why);
                return;
            }
        }
    };
}
