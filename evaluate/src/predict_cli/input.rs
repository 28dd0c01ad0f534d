//! The input files of `predict --input`: parquet, JSON Lines or CSV, read one chunk of
//! `--chunk-rows` rows at a time so that memory does not grow with the file. Parquet reads only
//! the rows of the chunks asked for (the pages of the others are skipped undecoded); JSON Lines
//! and CSV are read record by record, and only the records of the chunks asked for are parsed
//! and kept.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use polars::prelude::*;

use super::shard::Shard;

/// What the input's extension says it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    Parquet,
    Jsonl,
    Csv,
}

/// A file's extension in lower case: what decides the input and output formats.
pub fn extension(path: &Path) -> Option<String> {
    path.extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
}

impl InputFormat {
    pub fn of(path: &Path) -> Result<Self> {
        Ok(match extension(path).as_deref() {
            Some("parquet" | "pq") => Self::Parquet,
            Some("jsonl" | "ndjson") => Self::Jsonl,
            Some("csv") => Self::Csv,
            _ => bail!(
                "--input {}: unknown file type; expected .parquet, .jsonl (JSON Lines: one object \
                 per line; also .ndjson) or .csv (with a header line)",
                path.display()
            ),
        })
    }
}

/// The type of the id column, as the output stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdType {
    /// Integers (parquet's integer columns, JSON integers).
    Int,
    /// Strings (parquet's string columns, JSON strings, every CSV id).
    Str,
}

/// The id column: its name (the output keeps it) and type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdColumn {
    pub name: String,
    pub dtype: IdType,
}

/// One chunk's ids; `None` where a row has none.
#[derive(Debug, Clone, PartialEq)]
pub enum Ids {
    Int(Vec<Option<i64>>),
    Str(Vec<Option<String>>),
}

/// Rows `first_row ..` of the input: chunk `index`.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub index: usize,
    pub first_row: usize,
    pub texts: Vec<String>,
    pub ids: Option<Ids>,
}

enum Source {
    Parquet {
        metadata: FileMetadataRef,
    },
    Jsonl,
    Csv {
        text: usize,
        id: Option<usize>,
        width: usize,
    },
}

/// An input file, opened and checked: the text column is there, the id column too if one was
/// asked for, and there is at least one row.
pub struct Input {
    path: PathBuf,
    text_column: String,
    id: Option<IdColumn>,
    rows: usize,
    chunk_rows: usize,
    source: Source,
}

/// The default id column, used when the input has it.
pub const DEFAULT_ID_COLUMN: &str = "id";

impl Input {
    /// Opens `path` and reads what is needed to check it: parquet's metadata and schema, a CSV's
    /// header, a JSON Lines file's first row; JSON Lines and CSV are counted through (records
    /// are not kept).
    pub fn open(
        path: &Path,
        text_column: &str,
        id_column: Option<&str>,
        chunk_rows: usize,
    ) -> Result<Self> {
        if chunk_rows == 0 {
            bail!("--chunk-rows must be at least 1");
        }
        let format = InputFormat::of(path)?;
        let mut input = Self {
            path: path.to_path_buf(),
            text_column: text_column.to_string(),
            id: None,
            rows: 0,
            chunk_rows,
            source: Source::Jsonl,
        };
        match format {
            InputFormat::Parquet => input.open_parquet(id_column)?,
            InputFormat::Jsonl => input.open_jsonl(id_column)?,
            InputFormat::Csv => input.open_csv(id_column)?,
        }
        if input.rows == 0 {
            bail!("{}: holds no rows, nothing to classify", path.display());
        }
        Ok(input)
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn chunks(&self) -> usize {
        self.rows.div_ceil(self.chunk_rows)
    }

    pub fn id(&self) -> Option<&IdColumn> {
        self.id.as_ref()
    }

    fn open_file(&self) -> Result<File> {
        File::open(&self.path).with_context(|| format!("cannot open {}", self.path.display()))
    }

    /// `{path}: no column `{name}` (columns: …)`.
    fn no_column(&self, name: &str, what: &str, columns: &[String]) -> anyhow::Error {
        anyhow::anyhow!(
            "{}: no column `{name}` (its columns: {}); name the {what} column with --{what}-column",
            self.path.display(),
            columns.join(", ")
        )
    }

    fn open_parquet(&mut self, id_column: Option<&str>) -> Result<()> {
        let unreadable = || format!("{} is not a readable parquet file", self.path.display());
        let mut reader = ParquetReader::new(self.open_file()?);
        let metadata = reader
            .get_metadata()
            .map_err(anyhow::Error::from)
            .with_context(unreadable)?
            .clone();
        self.rows = metadata.num_rows;
        let mut empty = ParquetReader::new(self.open_file()?);
        empty.set_metadata(metadata.clone());
        let empty = empty
            .with_slice(Some((0, 0)))
            .finish()
            .map_err(anyhow::Error::from)
            .with_context(unreadable)?;
        let schema = empty.schema();
        let columns: Vec<String> = schema.iter_names().map(|n| n.to_string()).collect();
        let Some(text_dtype) = schema.get(&self.text_column) else {
            return Err(self.no_column(&self.text_column, "text", &columns));
        };
        if *text_dtype != DataType::String {
            bail!(
                "{}: column `{}` holds {text_dtype}, expected strings (the texts to classify)",
                self.path.display(),
                self.text_column
            );
        }
        let id = match id_column {
            Some(name) => Some(name),
            None => schema
                .get(DEFAULT_ID_COLUMN)
                .is_some()
                .then_some(DEFAULT_ID_COLUMN),
        };
        if let Some(name) = id {
            let Some(dtype) = schema.get(name) else {
                return Err(self.no_column(name, "id", &columns));
            };
            let dtype = if dtype.is_integer() {
                IdType::Int
            } else if *dtype == DataType::String {
                IdType::Str
            } else {
                bail!(
                    "{}: id column `{name}` holds {dtype}, expected integers or strings",
                    self.path.display()
                );
            };
            self.id = Some(IdColumn {
                name: name.to_string(),
                dtype,
            });
        }
        self.source = Source::Parquet { metadata };
        Ok(())
    }

    fn open_jsonl(&mut self, id_column: Option<&str>) -> Result<()> {
        let mut lines = Lines::new(self.open_file()?);
        let mut first = None;
        while let Some((line, text)) = lines
            .next_row()
            .with_context(|| self.path.display().to_string())?
        {
            if first.is_none() {
                first = Some((line, text.to_string()));
            }
            self.rows += 1;
        }
        let Some((line, first)) = first else {
            return Ok(()); // no rows: open() says so
        };
        let mut object = self.json_object(&first, 0, line)?;
        // The first row must hold a text: a wrong --text-column fails here, before the model
        // loads, whichever shard this is.
        self.json_text(&mut object, 0, line)?;
        let id = match id_column {
            Some(name) => {
                if !object.contains_key(name) {
                    let fields: Vec<String> = object.keys().cloned().collect();
                    bail!(
                        "{}: row 0 (line {line}): no field `{name}` (its fields: {}); name the id \
                         field with --id-column",
                        self.path.display(),
                        fields.join(", ")
                    );
                }
                Some(name)
            }
            None => object
                .contains_key(DEFAULT_ID_COLUMN)
                .then_some(DEFAULT_ID_COLUMN),
        };
        if let Some(name) = id {
            // The first row's id decides the column's type (a null one: strings).
            let dtype = match &object[name] {
                serde_json::Value::Number(_) => IdType::Int,
                _ => IdType::Str,
            };
            let column = IdColumn {
                name: name.to_string(),
                dtype,
            };
            // Checks the first row's id itself (a number that is no integer, an object …).
            json_id(&object, &column, &self.row_at(0, line))?;
            self.id = Some(column);
        }
        Ok(())
    }

    fn open_csv(&mut self, id_column: Option<&str>) -> Result<()> {
        let mut records = CsvRecords::new(self.open_file()?);
        let context = || self.path.display().to_string();
        let Some((_, header)) = records.next().with_context(context)? else {
            return Ok(()); // no rows: open() says so
        };
        let header: Vec<String> = header.into_iter().map(Option::unwrap_or_default).collect();
        let find = |name: &str| header.iter().position(|h| h == name);
        let text = find(&self.text_column)
            .ok_or_else(|| self.no_column(&self.text_column, "text", &header))?;
        let id = match id_column {
            Some(name) => Some(find(name).ok_or_else(|| self.no_column(name, "id", &header))?),
            None => find(DEFAULT_ID_COLUMN),
        };
        while records.next().with_context(context)?.is_some() {
            self.rows += 1;
        }
        self.id = id.map(|i| IdColumn {
            name: header[i].clone(),
            dtype: IdType::Str,
        });
        self.source = Source::Csv {
            text,
            id,
            width: header.len(),
        };
        Ok(())
    }

    /// `{path}: row {row} (line {line})`.
    fn row_at(&self, row: usize, line: usize) -> String {
        format!("{}: row {row} (line {line})", self.path.display())
    }

    fn json_object(
        &self,
        line_text: &str,
        row: usize,
        line: usize,
    ) -> Result<serde_json::Map<String, serde_json::Value>> {
        match serde_json::from_str(line_text) {
            Ok(serde_json::Value::Object(object)) => Ok(object),
            Ok(other) => bail!(
                "{}: {}, expected an object such as {{\"{}\": \"…\"}}",
                self.row_at(row, line),
                json_kind(&other),
                self.text_column
            ),
            Err(err) => bail!("{}: not valid JSON: {err}", self.row_at(row, line)),
        }
    }

    /// Takes the text out of a JSON row.
    fn json_text(
        &self,
        object: &mut serde_json::Map<String, serde_json::Value>,
        row: usize,
        line: usize,
    ) -> Result<String> {
        let name = &self.text_column;
        match object.remove(name) {
            Some(serde_json::Value::String(text)) => Ok(text),
            None => {
                let fields: Vec<&str> = object.keys().map(String::as_str).collect();
                bail!(
                    "{}: no field `{name}` (its fields: {}); name the text field with \
                     --text-column",
                    self.row_at(row, line),
                    fields.join(", ")
                )
            }
            Some(other) => bail!(
                "{}: `{name}` is {}, expected a string",
                self.row_at(row, line),
                json_kind(&other)
            ),
        }
    }

    /// Reads the chunks `shard` owns, in order, and hands each to `each`. A row without a text
    /// (missing, null, not a string) is an error naming the file and the row.
    pub fn read(&self, shard: Shard, mut each: impl FnMut(Chunk) -> Result<()>) -> Result<()> {
        match &self.source {
            Source::Parquet { metadata } => {
                for index in (shard.index..self.chunks()).step_by(shard.count) {
                    each(self.parquet_chunk(metadata, index)?)?;
                }
                Ok(())
            }
            Source::Jsonl => self.read_jsonl(shard, each),
            Source::Csv { text, id, width } => self.read_csv(shard, *text, *id, *width, each),
        }
    }

    fn parquet_chunk(&self, metadata: &FileMetadataRef, index: usize) -> Result<Chunk> {
        let first_row = index * self.chunk_rows;
        let len = self.chunk_rows.min(self.rows - first_row);
        let mut columns = vec![self.text_column.clone()];
        columns.extend(self.id.iter().map(|id| id.name.clone()));
        // A fresh reader (and memory map) per chunk: what one chunk touched is released with it.
        let mut reader = ParquetReader::new(self.open_file()?);
        reader.set_metadata(metadata.clone());
        let df = reader
            .with_columns(Some(columns))
            .with_slice(Some((first_row, len)))
            .finish()
            .map_err(anyhow::Error::from)
            .with_context(|| {
                format!(
                    "{}: cannot read rows {first_row}..{}",
                    self.path.display(),
                    first_row + len
                )
            })?;
        let texts = df
            .column(&self.text_column)?
            .str()?
            .iter()
            .enumerate()
            .map(|(i, text)| {
                text.map(str::to_string).with_context(|| {
                    format!(
                        "{}: row {}: `{}` is null, expected a string",
                        self.path.display(),
                        first_row + i,
                        self.text_column
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let ids = match &self.id {
            None => None,
            Some(id) => {
                let column = df.column(&id.name)?;
                Some(match id.dtype {
                    IdType::Str => Ids::Str(
                        column
                            .str()?
                            .iter()
                            .map(|v| v.map(str::to_string))
                            .collect(),
                    ),
                    IdType::Int => {
                        let column = column
                            .strict_cast(&DataType::Int64)
                            .map_err(anyhow::Error::from)
                            .with_context(|| {
                                format!(
                                    "{}: id column `{}` ({}) has values beyond 64-bit integers in \
                                     rows {first_row}..{}",
                                    self.path.display(),
                                    id.name,
                                    column.dtype(),
                                    first_row + len
                                )
                            })?;
                        Ids::Int(column.i64()?.iter().collect())
                    }
                })
            }
        };
        Ok(Chunk {
            index,
            first_row,
            texts,
            ids,
        })
    }

    fn read_jsonl(&self, shard: Shard, mut each: impl FnMut(Chunk) -> Result<()>) -> Result<()> {
        let mut lines = Lines::new(self.open_file()?);
        let mut chunks = ChunkBuilder::new(self.chunk_rows);
        let mut row = 0;
        while let Some((line, line_text)) = lines
            .next_row()
            .with_context(|| self.path.display().to_string())?
        {
            if shard.owns(row / self.chunk_rows) {
                let mut object = self.json_object(line_text, row, line)?;
                let text = self.json_text(&mut object, row, line)?;
                let row_id = match &self.id {
                    Some(column) => Some(json_id(&object, column, &self.row_at(row, line))?),
                    None => None,
                };
                if let Some(chunk) = chunks.push(row, text, row_id) {
                    each(chunk)?;
                }
            }
            row += 1;
        }
        chunks.finish().map_or(Ok(()), each)
    }

    fn read_csv(
        &self,
        shard: Shard,
        text: usize,
        id: Option<usize>,
        width: usize,
        mut each: impl FnMut(Chunk) -> Result<()>,
    ) -> Result<()> {
        let mut records = CsvRecords::new(self.open_file()?);
        let context = || self.path.display().to_string();
        records.next().with_context(context)?; // the header
        let mut chunks = ChunkBuilder::new(self.chunk_rows);
        let mut row = 0;
        while let Some((line, mut fields)) = records.next().with_context(context)? {
            if shard.owns(row / self.chunk_rows) {
                if fields.len() != width {
                    bail!(
                        "{}: {} fields, but the header names {width} columns",
                        self.row_at(row, line),
                        fields.len()
                    );
                }
                let row_id = id.map(|i| RowId::Str(fields[i].take()));
                let Some(text) = fields[text].take() else {
                    bail!(
                        "{}: `{}` is empty (null), expected a text (an empty text is written \"\")",
                        self.row_at(row, line),
                        self.text_column
                    );
                };
                if let Some(chunk) = chunks.push(row, text, row_id) {
                    each(chunk)?;
                }
            }
            row += 1;
        }
        chunks.finish().map_or(Ok(()), each)
    }
}

/// One row's id.
#[derive(Debug, Clone, PartialEq)]
enum RowId {
    Int(Option<i64>),
    Str(Option<String>),
}

/// A JSON row's id, of the column's type (missing or null: none).
fn json_id(
    object: &serde_json::Map<String, serde_json::Value>,
    column: &IdColumn,
    at: &str,
) -> Result<RowId> {
    use serde_json::Value;
    let value = object.get(&column.name).unwrap_or(&Value::Null);
    Ok(match (column.dtype, value) {
        (IdType::Int, Value::Null) => RowId::Int(None),
        (IdType::Str, Value::Null) => RowId::Str(None),
        (IdType::Int, Value::Number(n)) if n.as_i64().is_some() => RowId::Int(n.as_i64()),
        (IdType::Str, Value::String(s)) => RowId::Str(Some(s.clone())),
        (dtype, other) => bail!(
            "{at}: `{}` is {}, but ids are {} (the first row's id decides)",
            column.name,
            json_kind(other),
            match dtype {
                IdType::Int => "integers",
                IdType::Str => "strings",
            }
        ),
    })
}

fn json_kind(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("a boolean ({b})"),
        Value::Number(n) => format!("a number ({n})"),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// Gathers the rows of one chunk at a time.
struct ChunkBuilder {
    chunk_rows: usize,
    current: Option<Chunk>,
}

impl ChunkBuilder {
    fn new(chunk_rows: usize) -> Self {
        Self {
            chunk_rows,
            current: None,
        }
    }

    /// Adds row `row`; returns the previous chunk when this row starts another.
    fn push(&mut self, row: usize, text: String, id: Option<RowId>) -> Option<Chunk> {
        let index = row / self.chunk_rows;
        let done = match &self.current {
            Some(chunk) if chunk.index != index => self.current.take(),
            _ => None,
        };
        let chunk = self.current.get_or_insert_with(|| Chunk {
            index,
            first_row: row,
            texts: Vec::new(),
            ids: match &id {
                None => None,
                Some(RowId::Int(_)) => Some(Ids::Int(Vec::new())),
                Some(RowId::Str(_)) => Some(Ids::Str(Vec::new())),
            },
        });
        chunk.texts.push(text);
        match (&mut chunk.ids, id) {
            (Some(Ids::Int(ids)), Some(RowId::Int(v))) => ids.push(v),
            (Some(Ids::Str(ids)), Some(RowId::Str(v))) => ids.push(v),
            (None, None) => {}
            _ => unreachable!("a column's ids are of one type"),
        }
        done
    }

    fn finish(self) -> Option<Chunk> {
        self.current
    }
}

/// The non-blank lines of a JSON Lines file, read one at a time into one buffer.
struct Lines {
    reader: BufReader<File>,
    buf: String,
    /// Lines read so far.
    line: usize,
}

impl Lines {
    fn new(file: File) -> Self {
        Self {
            reader: BufReader::with_capacity(1 << 16, file),
            buf: String::new(),
            line: 0,
        }
    }

    /// The next line that is not blank, without its line break, with its number (from 1).
    fn next_row(&mut self) -> Result<Option<(usize, &str)>> {
        loop {
            self.buf.clear();
            let n = self.reader.read_line(&mut self.buf).with_context(|| {
                format!("line {}: cannot read (not UTF-8 text?)", self.line + 1)
            })?;
            if n == 0 {
                return Ok(None);
            }
            self.line += 1;
            if self.line == 1 && self.buf.starts_with('\u{feff}') {
                self.buf.drain(..'\u{feff}'.len_utf8());
            }
            if !self.buf.trim().is_empty() {
                return Ok(Some((self.line, self.buf.trim_end_matches(['\n', '\r']))));
            }
        }
    }
}

/// The records of a CSV file (RFC 4180: comma-separated, fields optionally in double quotes
/// with `""` for a quote inside, line breaks allowed inside quotes), read one at a time. Blank
/// lines are skipped. A field is `None` when it is empty and unquoted (a missing value, as
/// pandas and polars read it) and `Some("")` when quoted (`""`).
struct CsvRecords {
    reader: BufReader<File>,
    buf: String,
    /// Lines read so far.
    line: usize,
}

impl CsvRecords {
    fn new(file: File) -> Self {
        Self {
            reader: BufReader::with_capacity(1 << 16, file),
            buf: String::new(),
            line: 0,
        }
    }

    /// Reads the next line into `buf` (false at the end of the file).
    fn read_line(&mut self) -> Result<bool> {
        self.buf.clear();
        let n = self
            .reader
            .read_line(&mut self.buf)
            .with_context(|| format!("line {}: cannot read (not UTF-8 text?)", self.line + 1))?;
        if n == 0 {
            return Ok(false);
        }
        self.line += 1;
        if self.line == 1 && self.buf.starts_with('\u{feff}') {
            self.buf.drain(..'\u{feff}'.len_utf8());
        }
        Ok(true)
    }

    /// The next record: the line it starts on (from 1) and its fields.
    #[allow(clippy::should_implement_trait)]
    fn next(&mut self) -> Result<Option<(usize, Vec<Option<String>>)>> {
        loop {
            if !self.read_line()? {
                return Ok(None);
            }
            if !self.buf.trim_end_matches(['\n', '\r']).is_empty() {
                break;
            }
        }
        let start = self.line;
        let mut fields = Vec::new();
        let mut field = String::new();
        let (mut quoted, mut in_quotes) = (false, false);
        loop {
            let body = self.buf.trim_end_matches(['\n', '\r']);
            let newline = &self.buf[body.len()..];
            let mut chars = body.chars().peekable();
            while let Some(c) = chars.next() {
                if in_quotes {
                    if c != '"' {
                        field.push(c);
                    } else if chars.peek() == Some(&'"') {
                        chars.next();
                        field.push('"');
                    } else {
                        in_quotes = false;
                    }
                } else if c == ',' {
                    let value = std::mem::take(&mut field);
                    fields.push((quoted || !value.is_empty()).then_some(value));
                    quoted = false;
                } else if c == '"' && field.is_empty() && !quoted {
                    (quoted, in_quotes) = (true, true);
                } else {
                    // As Python's csv module: a quote inside an unquoted field, or text after a
                    // closing quote, is kept as it is.
                    field.push(c);
                }
            }
            if !in_quotes {
                fields.push((quoted || !field.is_empty()).then_some(field));
                return Ok(Some((start, fields)));
            }
            // A line break inside quotes is part of the field, as written.
            field.push_str(newline);
            if !self.read_line()? {
                bail!("line {start}: a quoted field is not closed before the end of the file");
            }
        }
    }
}

/// Writes a parquet file that `predict --input` reads: `rows` rows of `id` (integers) and
/// `text`, as `row(i)` gives them, 65,536 rows per row group and never more in memory (for
/// benchmarks and examples).
pub fn write_texts_parquet(
    path: &Path,
    rows: usize,
    row: impl Fn(usize) -> (i64, String),
) -> Result<()> {
    const GROUP: usize = 1 << 16;
    pipeline::atomic::write_file(path, |file| {
        let schema = Schema::from_iter([
            Field::new(DEFAULT_ID_COLUMN.into(), DataType::Int64),
            Field::new("text".into(), DataType::String),
        ]);
        let mut writer = ParquetWriter::new(file).batched(&schema)?;
        for start in (0..rows).step_by(GROUP) {
            let (ids, texts): (Vec<i64>, Vec<String>) =
                (start..rows.min(start + GROUP)).map(&row).unzip();
            let df = DataFrame::new(
                ids.len(),
                vec![
                    Column::new(DEFAULT_ID_COLUMN.into(), ids),
                    Column::new("text".into(), texts),
                ],
            )?;
            writer.write_batch(&df)?;
        }
        writer.finish()?;
        Ok(())
    })
}
