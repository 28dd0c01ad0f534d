//! `predict --shard I/N` and `--shard auto`: which chunks of an input file this process
//! classifies. Chunk k (rows `k·chunk_rows ..`) belongs to shard `k mod N`, so the split
//! depends only on the row count and `--chunk-rows`, never on timing or on the machine.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Context, Result};

/// Shard `index` of `count` (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// The whole input.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Whether chunk `chunk` is this shard's.
    pub fn owns(self, chunk: usize) -> bool {
        chunk % self.count == self.index
    }

    /// How many of `total` rows this shard classifies, in chunks of `chunk_rows`.
    pub fn rows(self, total: usize, chunk_rows: usize) -> usize {
        let chunks = total.div_ceil(chunk_rows);
        (self.index..chunks)
            .step_by(self.count)
            .map(|k| chunk_rows.min(total - k * chunk_rows))
            .sum()
    }

    fn checked(index: usize, count: usize, what: &str) -> Result<Self> {
        if count == 0 {
            bail!("{what}: the shard count must be at least 1");
        }
        if index >= count {
            bail!("{what}: shard index {index} is not below the shard count {count} (indices run from 0 to {})", count - 1);
        }
        Ok(Self { index, count })
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// What `--shard` says: a fixed shard, or `auto` (from the job array's environment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardSpec {
    Fixed(Shard),
    Auto,
}

impl FromStr for ShardSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Ok(Self::Auto);
        }
        let parsed = s
            .split_once('/')
            .and_then(|(i, n)| Some((i.trim().parse().ok()?, n.trim().parse().ok()?)));
        let Some((index, count)) = parsed else {
            return Err(format!(
                "expected I/N (shard I of N, counting from 0, e.g. 0/4) or auto, not {s:?}"
            ));
        };
        Shard::checked(index, count, &format!("--shard {s}"))
            .map(Self::Fixed)
            .map_err(|e| e.to_string())
    }
}

/// The shard to run: `--shard` (none = the whole input) with `--shard-count`, and for `auto` the
/// job array's variables read through `env`: Kubernetes' `JOB_COMPLETION_INDEX` (an Indexed
/// Job; the count is `--shard-count`, the Job's `completions`), or Slurm's
/// `SLURM_ARRAY_TASK_ID` with `SLURM_ARRAY_TASK_MIN`, `SLURM_ARRAY_TASK_STEP` and
/// `SLURM_ARRAY_TASK_COUNT` (or `--shard-count`). Also returns where the shard came from, for
/// the log.
pub fn resolve(
    spec: Option<ShardSpec>,
    shard_count: Option<usize>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(Shard, String)> {
    let spec = match (spec, shard_count) {
        (None, None) => return Ok((Shard::ALL, "the whole input".into())),
        (Some(ShardSpec::Fixed(shard)), None) => return Ok((shard, format!("--shard {shard}"))),
        (Some(ShardSpec::Auto), _) => ShardSpec::Auto,
        (_, Some(_)) => {
            bail!("--shard-count goes with --shard auto (with --shard I/N, N is the count)")
        }
    };
    debug_assert_eq!(spec, ShardSpec::Auto);
    let number = |name: &str, value: &str| -> Result<usize> {
        value
            .trim()
            .parse::<usize>()
            .with_context(|| format!("--shard auto: {name}={value:?} is not a whole number ≥ 0"))
    };
    let k8s = env("JOB_COMPLETION_INDEX");
    let slurm = env("SLURM_ARRAY_TASK_ID");
    match (k8s, slurm) {
        (Some(_), Some(_)) => bail!(
            "--shard auto: both JOB_COMPLETION_INDEX (Kubernetes) and SLURM_ARRAY_TASK_ID (Slurm) \
             are set; pass --shard I/N"
        ),
        (None, None) => bail!(
            "--shard auto: neither JOB_COMPLETION_INDEX (a Kubernetes Indexed Job) nor \
             SLURM_ARRAY_TASK_ID (a Slurm job array) is set; pass --shard I/N"
        ),
        (Some(index), None) => {
            let index = number("JOB_COMPLETION_INDEX", &index)?;
            let Some(count) = shard_count else {
                bail!(
                    "--shard auto: JOB_COMPLETION_INDEX={index} (a Kubernetes Indexed Job) gives \
                     no count: pass --shard-count N, N being the Job's completions"
                );
            };
            let what = format!("JOB_COMPLETION_INDEX={index}, --shard-count {count}");
            let shard = Shard::checked(index, count, &format!("--shard auto: {what}"))?;
            Ok((shard, what))
        }
        (None, Some(id)) => {
            let id = number("SLURM_ARRAY_TASK_ID", &id)?;
            let min = match env("SLURM_ARRAY_TASK_MIN") {
                Some(v) => number("SLURM_ARRAY_TASK_MIN", &v)?,
                None => 0,
            };
            let step = match env("SLURM_ARRAY_TASK_STEP") {
                Some(v) => number("SLURM_ARRAY_TASK_STEP", &v)?.max(1),
                None => 1,
            };
            let count = match (shard_count, env("SLURM_ARRAY_TASK_COUNT")) {
                (Some(n), _) => n,
                (None, Some(v)) => number("SLURM_ARRAY_TASK_COUNT", &v)?,
                (None, None) => bail!(
                    "--shard auto: SLURM_ARRAY_TASK_ID={id} without SLURM_ARRAY_TASK_COUNT: pass \
                     --shard-count N"
                ),
            };
            let what = format!(
                "SLURM_ARRAY_TASK_ID={id}, SLURM_ARRAY_TASK_MIN={min}, step {step}, count {count}"
            );
            if id < min || (id - min) % step != 0 {
                bail!(
                    "--shard auto: {what}: the task is not on the array's grid (min + k·step); \
                     use a plain range such as --array=0-{}",
                    count.saturating_sub(1)
                );
            }
            let index = (id - min) / step;
            if count > 0 && index >= count {
                bail!(
                    "--shard auto: {what}: shard index {index} is not below the shard count \
                     {count}; an array with gaps (--array=1,3,7) cannot be sharded by task id: \
                     use --array=0-{}",
                    count - 1
                );
            }
            let shard = Shard::checked(index, count, &format!("--shard auto: {what}"))?;
            Ok((shard, what))
        }
    }
}

/// `path` with `{shard}` replaced by `IIIII-of-NNNNN` (zero-padded, so the shards' files sort
/// in shard order).
pub fn expand_output(path: &std::path::Path, shard: Shard) -> std::path::PathBuf {
    let text = path.to_string_lossy();
    if !text.contains("{shard}") {
        return path.to_path_buf();
    }
    let tag = format!("{:05}-of-{:05}", shard.index, shard.count);
    text.replace("{shard}", &tag).into()
}
