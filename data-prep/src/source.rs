//! Reading IMDb from any of its sources into the source's own `train` and
//! `test` splits, in a fixed order, every review checked.
//!
//! Row order, which the seeded sampling depends on: parquet sources keep the
//! file order (shards by name); Stanford sources are sorted by label (neg,
//! then pos) and numeric id, so a folder and its tarball give the same rows
//! whatever order the file system or archive lists them in.

use std::fs::{self, File};
use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, bail, ensure, Context, Result};
use flate2::read::GzDecoder;
use pipeline::cli::Progress;
use pipeline::data::Reviews;
use pipeline::sources::{Content, SourceFiles};
use polars::prelude::*;

/// The files of the `stanfordnlp/imdb` layout, in the hub repo and in local folders.
const HUB_FILES: [&str; 2] = [
    "plain_text/train-00000-of-00001.parquet",
    "plain_text/test-00000-of-00001.parquet",
];
const SPLITS: [&str; 2] = ["train", "test"];
/// Stanford's folder per label: index = label.
const LABEL_DIRS: [&str; 2] = ["neg", "pos"];
/// The largest review accepted, from any source: IMDb's longest is 13.7 KB, so a bigger one is
/// not a review (and a tar header's size is not trusted before allocating).
pub const MAX_REVIEW_BYTES: u64 = 1 << 20;
const EXPECTED: &str = "expected a Hugging Face dataset id, a folder of {train,test}-*.parquet, \
                        an aclImdb/ folder or aclImdb_v1.tar.gz";

/// A resolved `data.source`.
#[derive(Debug, Clone)]
pub enum Source {
    /// Parquet files (text, label) per source split: a hub dataset from the
    /// HF cache or a local folder.
    Parquet {
        hub: bool,
        train: Vec<PathBuf>,
        test: Vec<PathBuf>,
    },
    /// An extracted `aclImdb/` folder.
    Folder(PathBuf),
    /// `aclImdb_v1.tar.gz`, read as a stream.
    Tarball(PathBuf),
}

/// The source's two labelled splits.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub train: Reviews,
    pub test: Reviews,
}

/// Whether `source` names something on disk rather than a hub id
/// (`name` or `org/name`).
fn is_local(source: &str) -> bool {
    hub::is_local(source)
        || [".tar.gz", ".tgz", ".parquet"]
            .iter()
            .any(|ext| source.ends_with(ext))
        || Path::new(source)
            .file_name()
            .is_some_and(|n| n == "aclImdb")
        || source.matches('/').count() > 1
}

/// Finds the files `source` stands for (hub files are resolved through the
/// HF cache at `revision`, downloading only when allowed).
pub fn resolve(source: &str, revision: &str) -> Result<Source> {
    if !is_local(source) {
        let [train, test] = HUB_FILES.map(|file| hub::dataset_file(source, revision, file));
        return Ok(Source::Parquet {
            hub: true,
            train: vec![train?],
            test: vec![test?],
        });
    }
    let path = Path::new(source);
    if !path.exists() {
        bail!("data source {} does not exist ({EXPECTED})", path.display());
    }
    if path.is_file() {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        ensure!(
            name.ends_with(".tar.gz") || name.ends_with(".tgz"),
            "data source {} is a file but not a .tar.gz archive ({EXPECTED})",
            path.display()
        );
        return Ok(Source::Tarball(path.to_path_buf()));
    }
    if path.file_name().is_some_and(|n| n == "aclImdb") || path.join("train/pos").is_dir() {
        return Ok(Source::Folder(path.to_path_buf()));
    }
    if path.join("aclImdb").is_dir() {
        return Ok(Source::Folder(path.join("aclImdb")));
    }
    for dir in [path.to_path_buf(), path.join("plain_text")] {
        let [train, test] = SPLITS.map(|split| parquet_shards(&dir, split));
        let (train, test) = (train?, test?);
        match (train.is_empty(), test.is_empty()) {
            (false, false) => {
                return Ok(Source::Parquet {
                    hub: false,
                    train,
                    test,
                })
            }
            (true, true) => continue,
            (_, missing_test) => bail!(
                "data source {}: has no {}-*.parquet beside its other split",
                dir.display(),
                if missing_test { "test" } else { "train" }
            ),
        }
    }
    bail!(
        "data source {}: found no train-*.parquet and test-*.parquet (nor in plain_text/) \
         and no aclImdb/ folder ({EXPECTED})",
        path.display()
    )
}

/// `{split}-*.parquet` in `dir`, by name.
fn parquet_shards(dir: &Path, split: &str) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let prefix = format!("{split}-");
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".parquet") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

impl Source {
    /// How `summary.json` names the kind of source.
    /// The hub commit the files came from (their snapshot in the HF cache); `None` for local
    /// sources.
    pub fn resolved_commit(&self) -> Option<String> {
        match self {
            Source::Parquet {
                hub: true, train, ..
            } => train.first().and_then(|p| hub::snapshot_commit(p)),
            _ => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Source::Parquet { hub: true, .. } => "hub dataset",
            Source::Parquet { hub: false, .. } => "parquet folder",
            Source::Folder(_) => "aclImdb folder",
            Source::Tarball(_) => "aclImdb tarball",
        }
    }

    /// Where the reviews are, by stable names for the stamp (the runner hashes them): each
    /// split's parquet shards, each split's review files of a folder (only those count:
    /// README, urls_*.txt or unsup/ may change freely), or the tarball.
    pub fn files(&self) -> Result<SourceFiles> {
        let parts = match self {
            Source::Parquet { train, test, .. } => vec![
                ("train".to_string(), Content::Shards(train.clone())),
                ("test".to_string(), Content::Shards(test.clone())),
            ],
            Source::Folder(root) => {
                let files = list_folder(root)?;
                SPLITS
                    .iter()
                    .enumerate()
                    .map(|(split_index, split)| {
                        let reviews = files
                            .iter()
                            .filter(|(p, _)| p.split == split_index)
                            .map(|(place, path)| (place.rel_path(), path.clone()))
                            .collect();
                        (split.to_string(), Content::Tree(reviews))
                    })
                    .collect()
            }
            Source::Tarball(path) => vec![("archive".to_string(), Content::File(path.clone()))],
        };
        Ok(SourceFiles::dataset(parts))
    }

    /// Reads and checks every review.
    pub fn load(&self) -> Result<Loaded> {
        match self {
            Source::Parquet { train, test, .. } => Ok(Loaded {
                train: read_parquet_split("train", train)?,
                test: read_parquet_split("test", test)?,
            }),
            Source::Folder(root) => load_folder(root),
            Source::Tarball(path) => load_tarball(path),
        }
    }
}

/// Reads `text` and `label` of a source split's shards; ids are
/// `{split}/{row}`, the row counted across the shards in name order.
fn read_parquet_split(split: &str, files: &[PathBuf]) -> Result<Reviews> {
    let mut reviews = Reviews::default();
    for file in files {
        let name = file.display();
        let df = File::open(file)
            .map_err(anyhow::Error::from)
            .and_then(|f| Ok(ParquetReader::new(f).finish()?))
            .with_context(|| format!("{name} is not a readable parquet file"))?;
        let column = |col: &str| {
            df.column(col).map_err(|_| {
                anyhow!("{name}: no `{col}` column (expected columns text: string, label: int 0/1)")
            })
        };
        let (text, label) = (column("text")?, column("label")?);
        let texts = text.str().map_err(|_| {
            anyhow!(
                "{name}: column `text` holds {}, not UTF-8 strings",
                text.dtype()
            )
        })?;
        ensure!(
            label.dtype().is_integer(),
            "{name}: column `label` holds {}, not integers 0/1",
            label.dtype()
        );
        let label = label.cast(&DataType::Int64)?;
        let offset = reviews.len();
        for (row, (text, label)) in texts.iter().zip(label.i64()?.iter()).enumerate() {
            let text = match text {
                Some(t) if !t.trim().is_empty() => t,
                _ => bail!("{name}: row {row}: empty or null text"),
            };
            check_review_size(text.len() as u64, &|| format!("{name}: row {row}"))?;
            let label = match label {
                Some(l @ (0 | 1)) => l as u8,
                other => bail!(
                    "{name}: row {row}: label {} is not 0 or 1",
                    other.map_or("null".into(), |l| l.to_string())
                ),
            };
            reviews.ids.push(format!("{split}/{}", offset + row));
            reviews.texts.push(text.to_string());
            reviews.labels.push(label);
            reviews.ratings.push(None);
        }
    }
    Ok(reviews)
}

/// Where a Stanford review file sits: `{split}/{pos|neg}/{id}_{rating}.txt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Place {
    // Field order is the sort order: split, label, numeric id.
    split: usize,
    label: u8,
    id: u64,
    rating: u8,
}

impl Place {
    /// Its place for `parts` (the path below `aclImdb/`), `None` for files
    /// that are not labelled reviews (README, urls_*.txt, unsup/, *.feat).
    fn of(parts: &[&str]) -> Result<Option<Place>> {
        let [split, label_dir, file] = parts else {
            return Ok(None);
        };
        let (Some(split), Some(label), Some(stem)) = (
            SPLITS.iter().position(|s| s == split),
            LABEL_DIRS.iter().position(|l| l == label_dir),
            file.strip_suffix(".txt"),
        ) else {
            return Ok(None);
        };
        let parsed = stem.split_once('_').and_then(|(id, rating)| {
            let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            (digits(id) && digits(rating)).then_some(())?;
            Some((id.parse().ok()?, rating.parse().ok()?))
        });
        match parsed {
            Some((id, rating @ 1..=10)) => Ok(Some(Place {
                split,
                label: label as u8,
                id,
                rating,
            })),
            _ => bail!("not a review file name (expected ID_RATING.txt, rating 1-10)"),
        }
    }

    fn rel_path(&self) -> String {
        format!(
            "{}/{}/{}_{}.txt",
            SPLITS[self.split], LABEL_DIRS[self.label as usize], self.id, self.rating
        )
    }
}

/// Refuses a review whose size (`bytes`, announced or read) is over [`MAX_REVIEW_BYTES`].
fn check_review_size(bytes: u64, what: &dyn Fn() -> String) -> Result<()> {
    ensure!(
        bytes <= MAX_REVIEW_BYTES,
        "{}: {bytes} bytes, over the 1 MiB ({MAX_REVIEW_BYTES} bytes) a review may have",
        what()
    );
    Ok(())
}

/// Reads a review whose size was announced as `announced` (a tar header, a file's metadata),
/// trusting neither: it is checked before allocating, and at most one byte past the cap is read.
fn read_capped(reader: impl Read, announced: u64, what: &dyn Fn() -> String) -> Result<Vec<u8>> {
    check_review_size(announced, what)?;
    let mut bytes = Vec::with_capacity(announced as usize);
    reader
        .take(MAX_REVIEW_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("{}: cannot read", what()))?;
    check_review_size(bytes.len() as u64, what)?;
    Ok(bytes)
}

/// A review file's text: UTF-8 and not blank.
fn review_text(bytes: Vec<u8>, what: &dyn Fn() -> String) -> Result<String> {
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow!(
            "{}: not valid UTF-8 (at byte {})",
            what(),
            e.utf8_error().valid_up_to()
        )
    })?;
    ensure!(!text.trim().is_empty(), "{}: empty review", what());
    Ok(text)
}

/// Sorts the reviews, checks the layout and builds the two splits.
fn stanford_splits(origin: &Path, mut reviews: Vec<(Place, String)>) -> Result<Loaded> {
    reviews.sort_by_key(|(place, _)| *place);
    for pair in reviews.windows(2) {
        let (a, b) = (&pair[0].0, &pair[1].0);
        ensure!(
            (a.split, a.label, a.id) != (b.split, b.label, b.id),
            "{}: review {} appears twice (as aclImdb/{} and aclImdb/{})",
            origin.display(),
            a.id,
            a.rel_path(),
            b.rel_path()
        );
    }
    let mut splits = [Reviews::default(), Reviews::default()];
    for (place, text) in reviews {
        let r = &mut splits[place.split];
        r.ids.push(format!(
            "{}/{}/{}",
            SPLITS[place.split], LABEL_DIRS[place.label as usize], place.id
        ));
        r.texts.push(text);
        r.labels.push(place.label);
        r.ratings.push(Some(place.rating));
    }
    for (split, reviews) in SPLITS.iter().zip(&splits) {
        for (label, dir) in LABEL_DIRS.iter().enumerate() {
            ensure!(
                reviews.labels.contains(&(label as u8)),
                "{}: not Stanford's aclImdb layout: no reviews in aclImdb/{split}/{dir}/ \
                 (expected aclImdb/{{train,test}}/{{pos,neg}}/ID_RATING.txt)",
                origin.display()
            );
        }
    }
    let [train, test] = splits;
    Ok(Loaded { train, test })
}

/// Refuses a symbolic link inside the dataset: it could make any file on the machine (or
/// another folder) read as a review; the tarball source refuses links too.
fn refuse_link(path: &Path, kind: fs::FileType) -> Result<()> {
    ensure!(
        !kind.is_symlink(),
        "{}: a symbolic link; the aclImdb folder must hold its folders and review files \
         themselves (links are refused, as in the tarball)",
        path.display()
    );
    Ok(())
}

/// The review files of an `aclImdb/` folder, sorted, each a regular file (not a link) of at
/// most [`MAX_REVIEW_BYTES`].
fn list_folder(root: &Path) -> Result<Vec<(Place, PathBuf)>> {
    let mut files = Vec::new();
    for split in SPLITS {
        if let Ok(meta) = fs::symlink_metadata(root.join(split)) {
            refuse_link(&root.join(split), meta.file_type())?;
        }
        for label in LABEL_DIRS {
            let dir = root.join(split).join(label);
            if let Ok(meta) = fs::symlink_metadata(&dir) {
                refuse_link(&dir, meta.file_type())?;
            }
            ensure!(
                dir.is_dir(),
                "{}: not Stanford's aclImdb layout: no folder {split}/{label}/ \
                 (expected aclImdb/{{train,test}}/{{pos,neg}}/ID_RATING.txt)",
                root.display()
            );
            for entry in
                fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?
            {
                let entry = entry?;
                let path = entry.path();
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(place) = Place::of(&[split, label, name.as_str()])
                    .with_context(|| format!("{}", path.display()))?
                else {
                    continue;
                };
                let meta = fs::symlink_metadata(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                refuse_link(&path, meta.file_type())?;
                ensure!(meta.is_file(), "{}: not a regular file", path.display());
                check_review_size(meta.len(), &|| path.display().to_string())?;
                files.push((place, path));
            }
        }
    }
    files.sort();
    Ok(files)
}

/// The bytes of a review file listed by [`list_folder`], within the cap even if it grew since.
fn read_review_file(path: &Path) -> Result<Vec<u8>> {
    let what = || path.display().to_string();
    let file = File::open(path).with_context(|| format!("cannot read {}", what()))?;
    let len = file.metadata()?.len();
    read_capped(file, len, &what)
}

fn load_folder(root: &Path) -> Result<Loaded> {
    let files = list_folder(root)?;
    let mut progress = Progress::new("reading", files.len() as u64);
    let mut reviews = Vec::with_capacity(files.len());
    for (place, path) in files {
        let text = review_text(read_review_file(&path)?, &|| path.display().to_string())?;
        reviews.push((place, text));
        progress.advance(1, "reviews");
    }
    progress.finish();
    stanford_splits(root, reviews)
}

/// Counts the bytes read through it (the compressed stream's progress).
struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// The path below `aclImdb/` of a tarball entry, `None` when it lies
/// outside (absolute, `..`, another top folder).
fn entry_parts(path: &Path) -> Option<Vec<String>> {
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
            _ => return None,
        }
    }
    (parts.first()? == "aclImdb").then(|| parts.split_off(1))
}

/// Streams the archive (never extracting it), keeping the labelled reviews.
fn load_tarball(path: &Path) -> Result<Loaded> {
    let name = path.display();
    let file = File::open(path).with_context(|| format!("cannot open {name}"))?;
    let kib = file.metadata()?.len().div_ceil(1024);
    let count = Arc::new(AtomicU64::new(0));
    let reader = Counting {
        inner: BufReader::new(file),
        count: count.clone(),
    };
    let mut archive = tar::Archive::new(GzDecoder::new(reader));
    let mut progress = Progress::new("reading", kib);
    let mut shown = 0;
    let mut reviews = Vec::new();
    let entries = archive
        .entries()
        .with_context(|| format!("{name} is not a readable .tar.gz archive"))?;
    for entry in entries {
        let mut entry =
            entry.with_context(|| format!("{name} is not a readable .tar.gz archive"))?;
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() || kind.is_pax_local_extensions() {
            continue;
        }
        let entry_path = entry
            .path()
            .with_context(|| format!("{name}: an entry has an unreadable path"))?
            .into_owned();
        let Some(parts) = entry_parts(&entry_path) else {
            bail!(
                "{name}: entry {} lies outside aclImdb/ (absolute path, `..` or another folder): \
                 not Stanford's aclImdb_v1.tar.gz",
                entry_path.display()
            );
        };
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        let what = || format!("{name}: {}", entry_path.display());
        if !kind.is_dir() {
            if let Some(place) = Place::of(&parts).with_context(what)? {
                ensure!(kind.is_file(), "{}: not a regular file", what());
                let size = entry.size();
                let bytes = read_capped(&mut entry, size, &what)?;
                reviews.push((place, review_text(bytes, &what)?));
            }
        }
        let now = count.load(Ordering::Relaxed) / 1024;
        progress.advance(now - shown, &format!("KiB, {} reviews", reviews.len()));
        shown = now;
    }
    progress.advance(
        kib.saturating_sub(shown),
        &format!("KiB, {} reviews", reviews.len()),
    );
    progress.finish();
    stanford_splits(path, reviews)
}

#[cfg(test)]
mod tests;
