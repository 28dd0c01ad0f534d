//! The parquet plumbing the artifact modules share: atomic writes, and reads
//! whose errors name the file, the missing column and the stage to run.

use std::path::Path;

use anyhow::{Context, Result};
use polars::prelude::*;

/// Writes `df` to `path` atomically.
pub(crate) fn write(path: &Path, df: &mut DataFrame) -> Result<()> {
    crate::atomic::write_file(path, |file| {
        ParquetWriter::new(file).finish(df)?;
        Ok(())
    })
}

/// A parquet file that `stage` writes.
pub(crate) struct Table<'a> {
    path: &'a Path,
    df: DataFrame,
}

impl<'a> Table<'a> {
    pub(crate) fn read(path: &'a Path, stage: &str) -> Result<Self> {
        let file = std::fs::File::open(path).with_context(|| {
            format!("cannot open {} (run `just {stage}` first)", path.display())
        })?;
        let df = ParquetReader::new(file)
            .finish()
            .map_err(anyhow::Error::from)
            .with_context(|| format!("{} is not a readable parquet file", path.display()))?;
        Ok(Self { path, df })
    }

    pub(crate) fn column(&self, name: &str) -> Result<&Column> {
        self.df
            .column(name)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("{}: no `{name}` column", self.path.display()))
    }

    pub(crate) fn height(&self) -> usize {
        self.df.height()
    }
}
