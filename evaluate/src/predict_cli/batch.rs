//! `predict --input PATH --output PATH`: a file of texts (parquet, JSON Lines or CSV) classified
//! a chunk at a time, the predictions streamed to parquet or JSON Lines. Memory holds one chunk,
//! whatever the file's size; the output appears complete or not at all (written under a
//! temporary name beside it, renamed when done), so a failed run leaves an earlier output as it
//! was.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use polars::prelude::*;

use super::input::{Chunk, IdColumn, IdType, Ids, Input};
use super::shard::{self, Shard, ShardSpec};
use super::JsonLine;
use crate::{Classifier, ModelChoice};
use pipeline::cli::Progress;
use pipeline::Config;

/// The options of `predict --input`.
#[derive(Debug, Clone, clap::Args)]
pub struct FileArgs {
    /// Classify the texts of this file: .parquet, .jsonl (JSON Lines, one object per line) or
    /// .csv (with a header line), read in chunks of --chunk-rows rows (memory stays flat
    /// whatever its size). Needs --output.
    #[arg(long, value_name = "PATH", requires = "output", conflicts_with_all = ["texts", "file", "json"])]
    pub input: Option<PathBuf>,
    /// Where to write the predictions: .parquet or .jsonl, one row per input row: the input's
    /// id column (if any), row (its row number in the input, from 0), label, score and
    /// prob_positive. `{shard}` in the path becomes the shard, as 00001-of-00004. Written under
    /// a temporary name and renamed when complete: a failed run leaves no output, and an
    /// existing one as it was.
    #[arg(long, value_name = "PATH", requires = "input")]
    pub output: Option<PathBuf>,
    /// The column (parquet, CSV) or field (JSON Lines) holding the texts.
    #[arg(long, value_name = "NAME", default_value = "text", requires = "input")]
    pub text_column: String,
    /// The column copied to the output to identify the rows [default: id, when the input has it]
    #[arg(long, value_name = "NAME", requires = "input")]
    pub id_column: Option<String>,
    /// Rows per chunk: the unit of reading, writing and sharding (each chunk is tokenized and
    /// classified in batches of evaluate.batch_size, shortest first).
    #[arg(long, value_name = "N", default_value_t = 4096, requires = "input")]
    pub chunk_rows: usize,
    /// Classify only shard I of N: chunks I, I+N, I+2N, … (I from 0). `auto`: from a Kubernetes
    /// Indexed Job (JOB_COMPLETION_INDEX, with --shard-count) or a Slurm job array
    /// (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN of SLURM_ARRAY_TASK_COUNT).
    #[arg(long, value_name = "I/N|auto", requires = "input")]
    pub shard: Option<ShardSpec>,
    /// The number of shards for --shard auto (a Kubernetes Indexed Job's completions; a Slurm
    /// array's SLURM_ARRAY_TASK_COUNT otherwise).
    #[arg(long, value_name = "N", requires = "shard")]
    pub shard_count: Option<usize>,
}

/// The output's columns after the id.
pub const ROW: &str = "row";
pub const LABEL: &str = "label";
pub const SCORE: &str = "score";
pub const PROB_POSITIVE: &str = "prob_positive";

/// What a run did.
#[derive(Debug, Clone)]
pub struct Summary {
    pub output: PathBuf,
    pub shard: Shard,
    /// Rows classified (this shard's).
    pub rows: usize,
    /// Rows of the whole input.
    pub input_rows: usize,
    /// Texts longer than model.max_len tokens (cut).
    pub truncated: usize,
    pub seconds: f64,
}

/// The output's format, from its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutputFormat {
    Parquet,
    Jsonl,
}

impl OutputFormat {
    fn of(path: &Path) -> Result<Self> {
        Ok(match super::input::extension(path).as_deref() {
            Some("parquet" | "pq") => Self::Parquet,
            Some("jsonl" | "ndjson") => Self::Jsonl,
            _ => bail!(
                "--output {}: unknown file type; expected .parquet or .jsonl",
                path.display()
            ),
        })
    }
}

/// Runs `predict --input`: everything is checked (shard, paths, the input's columns and rows)
/// before the model loads.
pub fn run(config: &Config, choice: &ModelChoice, args: &FileArgs) -> Result<Summary> {
    let (Some(input_path), Some(output)) = (&args.input, &args.output) else {
        bail!("--input and --output go together");
    };
    let (shard, source) = shard::resolve(args.shard, args.shard_count, |name| {
        std::env::var(name).ok()
    })?;
    let output = shard::expand_output(output, shard);
    let format = OutputFormat::of(&output)?;
    if same_file(input_path, &output) {
        bail!(
            "--output {} is the input file: write the predictions elsewhere",
            output.display()
        );
    }
    if args.id_column.as_deref() == Some(args.text_column.as_str()) {
        bail!(
            "--id-column and --text-column both name `{}`",
            args.text_column
        );
    }
    let input = Input::open(
        input_path,
        &args.text_column,
        args.id_column.as_deref(),
        args.chunk_rows,
    )?;
    if let Some(id) = input.id() {
        if [ROW, LABEL, SCORE, PROB_POSITIVE].contains(&id.name.as_str()) {
            bail!(
                "the id column `{}` has the name of an output column (row, label, score, \
                 prob_positive): pick another with --id-column",
                id.name
            );
        }
    }
    let rows = shard.rows(input.rows(), args.chunk_rows);
    let mut progress = Progress::new("predict", rows as u64);
    progress.println(&format!(
        "predict: {} → {}: shard {shard} ({source}), {rows} of {} rows in chunks of {}",
        input_path.display(),
        output.display(),
        input.rows(),
        args.chunk_rows
    ));

    let started = Instant::now();
    let classifier = Classifier::load(config, choice)?;
    progress.println(&format!("predict: runs on {}", classifier.runs_on()));
    let encoder = crate::encoder_for(config, choice.model.as_deref())?;
    let threshold = config.evaluate.threshold;
    let mut truncated = 0;
    pipeline::atomic::write_file(&output, |file| {
        let mut sink = Sink::new(file, format, input.id())?;
        input.read(shard, |chunk| {
            let encoded = encoder.encode(&chunk.texts)?;
            truncated += encoded.truncated;
            let probs = classifier.positive_probabilities(
                &encoded.input_ids,
                &encoded.attention_mask,
                encoder.max_len(),
                config.evaluate.batch_size,
                Some(&mut crate::cli::show_batches(&mut progress)),
            )?;
            sink.write(&chunk, &probs, threshold)
        })?;
        sink.finish()
    })?;
    progress.finish();
    Ok(Summary {
        output,
        shard,
        rows,
        input_rows: input.rows(),
        truncated,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Whether `a` and `b` name the same existing file.
fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Where the predictions go, a chunk at a time.
enum Sink<'a> {
    Parquet {
        writer: Box<polars::io::parquet::write::BatchedWriter<&'a mut File>>,
        id: Option<IdColumn>,
    },
    Jsonl {
        writer: BufWriter<&'a mut File>,
        id: Option<IdColumn>,
    },
}

impl<'a> Sink<'a> {
    fn new(file: &'a mut File, format: OutputFormat, id: Option<&IdColumn>) -> Result<Self> {
        let id = id.cloned();
        Ok(match format {
            OutputFormat::Parquet => {
                let mut fields = Vec::new();
                if let Some(id) = &id {
                    let dtype = match id.dtype {
                        IdType::Int => DataType::Int64,
                        IdType::Str => DataType::String,
                    };
                    fields.push(Field::new(id.name.as_str().into(), dtype));
                }
                fields.extend([
                    Field::new(ROW.into(), DataType::UInt64),
                    Field::new(LABEL.into(), DataType::String),
                    Field::new(SCORE.into(), DataType::Float64),
                    Field::new(PROB_POSITIVE.into(), DataType::Float64),
                ]);
                let schema = Schema::from_iter(fields);
                Sink::Parquet {
                    writer: Box::new(ParquetWriter::new(file).batched(&schema)?),
                    id,
                }
            }
            OutputFormat::Jsonl => Sink::Jsonl {
                writer: BufWriter::new(file),
                id,
            },
        })
    }

    fn write(&mut self, chunk: &Chunk, probs: &[f64], threshold: f64) -> Result<()> {
        let n = chunk.texts.len();
        let lines: Vec<JsonLine> = probs
            .iter()
            .map(|&p| JsonLine::new("", p, threshold))
            .collect();
        let rows = (chunk.first_row as u64..).take(n);
        match self {
            Sink::Parquet { writer, id } => {
                let mut columns = Vec::with_capacity(5);
                if let (Some(id), Some(ids)) = (id, &chunk.ids) {
                    let name = id.name.as_str().into();
                    columns.push(match ids {
                        Ids::Int(v) => Column::new(name, v),
                        Ids::Str(v) => Column::new(name, v),
                    });
                }
                columns.extend([
                    Column::new(ROW.into(), rows.collect::<Vec<u64>>()),
                    Column::new(
                        LABEL.into(),
                        lines.iter().map(|l| l.label.as_str()).collect::<Vec<_>>(),
                    ),
                    Column::new(
                        SCORE.into(),
                        lines.iter().map(|l| l.score).collect::<Vec<_>>(),
                    ),
                    Column::new(PROB_POSITIVE.into(), probs.to_vec()),
                ]);
                writer.write_batch(&DataFrame::new(n, columns)?)?;
            }
            Sink::Jsonl { writer, id } => {
                for (i, (line, row)) in lines.iter().zip(rows).enumerate() {
                    let mut object = serde_json::Map::new();
                    if let (Some(id), Some(ids)) = (id.as_ref(), &chunk.ids) {
                        let value = match ids {
                            Ids::Int(v) => serde_json::json!(v[i]),
                            Ids::Str(v) => serde_json::json!(v[i]),
                        };
                        object.insert(id.name.clone(), value);
                    }
                    object.insert(ROW.into(), row.into());
                    object.insert(LABEL.into(), line.label.clone().into());
                    object.insert(SCORE.into(), line.score.into());
                    object.insert(PROB_POSITIVE.into(), line.prob_positive.into());
                    serde_json::to_writer(&mut *writer, &object)?;
                    writer.write_all(b"\n")?;
                }
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<()> {
        match self {
            Sink::Parquet { writer, .. } => {
                writer.finish()?;
            }
            Sink::Jsonl { mut writer, .. } => writer.flush().context("flushing the output")?,
        }
        Ok(())
    }
}
