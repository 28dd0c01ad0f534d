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

    /// A column's values as `T`, nulls kept: an error naming the file and the column when its
    /// type is another.
    fn values<T>(
        &self,
        name: &str,
        expected: &str,
        get: impl FnOnce(&Column) -> PolarsResult<Vec<Option<T>>>,
    ) -> Result<Vec<Option<T>>> {
        let column = self.column(name)?;
        get(column).map_err(|_| {
            anyhow::anyhow!(
                "{}: column `{name}` holds {}, expected {expected}",
                self.path.display(),
                column.dtype()
            )
        })
    }

    /// A column's values, each present: an error naming the file, the column and the row at
    /// the first null (an artifact column never holds one unless the file was damaged).
    fn required<T>(&self, name: &str, values: Vec<Option<T>>) -> Result<Vec<T>> {
        values
            .into_iter()
            .enumerate()
            .map(|(row, v)| {
                v.with_context(|| {
                    format!(
                        "{}: column `{name}` is null at row {row}, expected a value in every row",
                        self.path.display()
                    )
                })
            })
            .collect()
    }

    pub(crate) fn opt_i64s(&self, name: &str) -> Result<Vec<Option<i64>>> {
        self.values(name, "int64", |c| Ok(c.i64()?.iter().collect()))
    }

    pub(crate) fn i64s(&self, name: &str) -> Result<Vec<i64>> {
        self.required(name, self.opt_i64s(name)?)
    }

    pub(crate) fn opt_f64s(&self, name: &str) -> Result<Vec<Option<f64>>> {
        self.values(name, "float64", |c| Ok(c.f64()?.iter().collect()))
    }

    pub(crate) fn f64s(&self, name: &str) -> Result<Vec<f64>> {
        self.required(name, self.opt_f64s(name)?)
    }

    pub(crate) fn strings(&self, name: &str) -> Result<Vec<String>> {
        let values = self.values(name, "strings", |c| {
            Ok(c.str()?.iter().map(|s| s.map(str::to_string)).collect())
        })?;
        self.required(name, values)
    }

    pub(crate) fn u32s(&self, name: &str) -> Result<Vec<u32>> {
        let values = self.values(name, "uint32", |c| Ok(c.u32()?.iter().collect()))?;
        self.required(name, values)
    }

    pub(crate) fn u64s(&self, name: &str) -> Result<Vec<u64>> {
        let values = self.values(name, "uint64", |c| Ok(c.u64()?.iter().collect()))?;
        self.required(name, values)
    }

    /// An error about the value in `row` of column `name`.
    pub(crate) fn bad_value(&self, name: &str, row: usize, what: String) -> anyhow::Error {
        anyhow::anyhow!(
            "{}: column `{name}`, row {row}: {what}",
            self.path.display()
        )
    }
}
