//! Tiny IMDb sources in every format, built in temp dirs, and helpers to run the stage.
#![allow(dead_code)] // each test binary uses its own share of the helpers

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pipeline::data::Reviews;
use pipeline::{Config, Split};
use polars::prelude::*;

/// Reviews per label folder: ids run past 9 so that numeric and name order differ.
pub const TRAIN_PER_LABEL: u64 = 20;
pub const TEST_PER_LABEL: u64 = 25;

pub struct Review {
    pub split: &'static str,
    pub label: u8,
    pub id: u64,
    pub rating: u8,
    pub text: String,
}

impl Review {
    pub fn rel_path(&self) -> String {
        let dir = ["neg", "pos"][self.label as usize];
        format!("{}/{dir}/{}_{}.txt", self.split, self.id, self.rating)
    }
}

/// The fixture's reviews in Stanford's sorted order (split, label, numeric id).
pub fn reviews() -> Vec<Review> {
    let mut out = Vec::new();
    for (split, n) in [("train", TRAIN_PER_LABEL), ("test", TEST_PER_LABEL)] {
        for label in [0u8, 1] {
            for id in 0..n {
                let rating = if label == 1 { 7 + id % 4 } else { 1 + id % 4 } as u8;
                let mood = ["dull", "great"][label as usize];
                let text =
                    format!("{split} {id}: a {mood} film.<br /><br />Café, naïve — {rating}/10");
                out.push(Review {
                    split,
                    label,
                    id,
                    rating,
                    text,
                });
            }
        }
    }
    out
}

/// `root/aclImdb/…` with the files Stanford ships beside the reviews.
pub fn acl_folder(root: &Path) -> PathBuf {
    let acl = root.join("aclImdb");
    for r in reviews() {
        write(&acl.join(r.rel_path()), r.text.as_bytes());
    }
    for (extra, content) in [
        ("README", "Large Movie Review Dataset"),
        ("imdb.vocab", "the\nand\n"),
        (
            "train/urls_pos.txt",
            "http://www.imdb.com/title/tt0453418/usercomments\n",
        ),
        ("train/labeledBow.feat", "0 0:1\n"),
        ("train/unsup/0_0.txt", "unlabelled"),
    ] {
        write(&acl.join(extra), content.as_bytes());
    }
    acl
}

pub fn write(path: &Path, bytes: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

/// A tarball entry with the path bytes as given: the tar crate's own
/// builder refuses `..` and absolute paths, which the tests need.
pub fn append_raw(builder: &mut tar::Builder<impl std::io::Write>, path: &str, data: &[u8]) {
    let mut header = tar::Header::new_gnu();
    header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
    let kind = if path.ends_with('/') {
        tar::EntryType::Directory
    } else {
        tar::EntryType::Regular
    };
    header.set_entry_type(kind);
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append(&header, data).unwrap();
}

/// `aclImdb_v1.tar.gz` of the fixture (entries in reverse order, to show the
/// order is not taken from the archive), plus `extra` (path, content) entries.
pub fn tarball(path: &Path, skip: impl Fn(&Review) -> bool, extra: &[(&str, &[u8])]) -> PathBuf {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let gz = flate2::write::GzEncoder::new(fs::File::create(path).unwrap(), Default::default());
    let mut builder = tar::Builder::new(gz);
    append_raw(&mut builder, "aclImdb/", b"");
    append_raw(
        &mut builder,
        "aclImdb/README",
        b"Large Movie Review Dataset",
    );
    append_raw(&mut builder, "aclImdb/train/unsup/0_0.txt", b"unlabelled");
    for r in reviews().iter().rev().filter(|r| !skip(r)) {
        append_raw(
            &mut builder,
            &format!("aclImdb/{}", r.rel_path()),
            r.text.as_bytes(),
        );
    }
    for (p, data) in extra {
        append_raw(&mut builder, p, data);
    }
    builder.into_inner().unwrap().finish().unwrap();
    path.to_path_buf()
}

pub fn write_parquet(path: &Path, columns: Vec<Column>) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut df = DataFrame::new(columns[0].len(), columns).unwrap();
    ParquetWriter::new(fs::File::create(path).unwrap())
        .finish(&mut df)
        .unwrap();
}

/// `{dir}/{split}-00000-of-00001.parquet` with columns text, label, rows in Stanford's order.
pub fn parquet_folder(dir: &Path) -> PathBuf {
    for split in ["train", "test"] {
        let rows: Vec<_> = reviews().into_iter().filter(|r| r.split == split).collect();
        let texts: Vec<&str> = rows.iter().map(|r| r.text.as_str()).collect();
        let labels: Vec<i64> = rows.iter().map(|r| r.label as i64).collect();
        write_parquet(
            &dir.join(format!("{split}-00000-of-00001.parquet")),
            vec![
                Column::new("text".into(), texts),
                Column::new("label".into(), labels),
            ],
        );
    }
    dir.to_path_buf()
}

/// A Hugging Face cache (`HF_HOME`) holding dataset `repo` (`org/name`) as the hub lays it out.
pub fn hub_cache(hf_home: &Path, repo: &str) {
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let repo_dir = hf_home
        .join("hub")
        .join(format!("datasets--{}", repo.replace('/', "--")));
    parquet_folder(&repo_dir.join("snapshots").join(sha).join("plain_text"));
    write(&repo_dir.join("refs/main"), sha.as_bytes());
}

/// The default config, writing under `root/artifacts`, sampling half of train.
pub fn config(root: &Path, source: &Path) -> Config {
    let mut config = Config {
        artifacts: root.join("artifacts"),
        ..Config::default()
    };
    config.data.source = source.display().to_string();
    config.data.train_fraction = 0.5;
    config
}

/// `config` as a YAML file for the binary.
pub fn config_file(root: &Path, config: &Config) -> PathBuf {
    let path = root.join("pipeline.yaml");
    fs::create_dir_all(root).unwrap();
    fs::write(&path, config.to_yaml()).unwrap();
    path
}

/// Runs the binary offline, with HF_HOME as given (or unset) and no HF_HUB_CACHE.
pub fn data_prep(config: &Path, args: &[&str], hf_home: Option<&Path>) -> Output {
    run_offline(config, args, [("HF_HOME", hf_home), ("HF_HUB_CACHE", None)])
}

/// Runs the binary offline with the hub cache folder given as HF_HUB_CACHE, HF_HOME unset.
pub fn data_prep_with_hub_cache(config: &Path, args: &[&str], cache: &Path) -> Output {
    run_offline(
        config,
        args,
        [("HF_HOME", None), ("HF_HUB_CACHE", Some(cache))],
    )
}

/// The binary with HF_HUB_OFFLINE=1 and each variable set to its path or removed.
pub fn run_offline(config: &Path, args: &[&str], vars: [(&str, Option<&Path>); 2]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_data-prep"));
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .env("HF_HUB_OFFLINE", "1");
    for (name, value) in vars {
        match value {
            Some(path) => cmd.env(name, path),
            None => cmd.env_remove(name),
        };
    }
    cmd.output().unwrap()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn read_splits(data_dir: &Path) -> [Reviews; 3] {
    Split::ALL.map(|s| Reviews::read_parquet(&data_dir.join(format!("{s}.parquet"))).unwrap())
}

/// Every file of `dir` (recursively, relative path → bytes).
pub fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir).unwrap().display().to_string();
                out.push((rel, fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// After a failed run: no data folder and no temp leftovers under the artifacts root.
pub fn assert_no_output(artifacts: &Path) {
    if artifacts.exists() {
        let left: Vec<_> = fs::read_dir(artifacts)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            left.is_empty(),
            "left behind in {}: {left:?}",
            artifacts.display()
        );
    }
}
