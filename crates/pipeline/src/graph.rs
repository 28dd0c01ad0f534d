//! The pipeline graph, declared once: the stages' registry ([`StageId::ALL`], the one list of
//! them, which `imdb-lora`'s commands and help, `status`, `results`, the e2e chain and the
//! justfile's `all` and `smoke` iterate) and for each stage its name, its one-line summary,
//! its folder, the config keys its outputs depend on, the inputs it takes from outside the
//! artifacts, the upstream artifacts it reads and the files it writes (think `dvc.yaml`). The
//! stage runner, the stamps, the upstream checks, `just status` and README's stage table all
//! read it; a stage that writes what it does not declare fails.

use std::fmt;

use crate::config::Config;
use crate::{data, history, predictions, tokens, train_summary};

/// A pipeline stage, named as its `just` recipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StageId {
    DataPrep,
    Tokenize,
    Train,
    Evaluate,
    Report,
    Export,
}

impl StageId {
    /// In pipeline order: each stage reads only stages before it.
    pub const ALL: [StageId; 6] = [
        StageId::DataPrep,
        StageId::Tokenize,
        StageId::Train,
        StageId::Evaluate,
        StageId::Report,
        StageId::Export,
    ];

    /// Its declaration.
    pub fn spec(self) -> &'static StageSpec {
        &STAGES[self as usize]
    }

    /// Its name: the command that runs it (`imdb-lora <recipe>`), its `just` recipe, and its
    /// thin alias binary.
    pub fn recipe(self) -> &'static str {
        self.spec().recipe
    }

    pub fn from_recipe(name: &str) -> Option<StageId> {
        Self::ALL.into_iter().find(|s| s.recipe() == name)
    }

    /// Its folder under the artifacts root.
    pub fn dir_name(self) -> &'static str {
        self.spec().dir
    }

    /// The config keys whose values its outputs depend on.
    pub fn config_keys(self) -> &'static [&'static str] {
        self.spec().keys
    }
}

impl fmt::Display for StageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.recipe())
    }
}

/// When a declared file is part of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    Always,
    /// The boolean config key is true.
    Set(&'static str),
    /// The list config key holds the value.
    Lists(&'static str, &'static str),
}

impl When {
    pub fn holds(self, config: &Config) -> bool {
        match self {
            When::Always => true,
            When::Set(key) => config.sections(&[key])[key] == serde_json::Value::Bool(true),
            When::Lists(key, value) => config.sections(&[key])[key]
                .as_array()
                .is_some_and(|list| list.iter().any(|v| v == value)),
        }
    }
}

impl fmt::Display for When {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            When::Always => Ok(()),
            When::Set(key) => write!(f, " (with `{key}`)"),
            When::Lists(key, value) => write!(f, " (`{key}` has {value})"),
        }
    }
}

/// A file an upstream stage wrote, read by a downstream one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Read {
    pub stage: StageId,
    /// Relative to the upstream stage's folder.
    pub file: &'static str,
    pub when: When,
}

/// A file a stage writes into its folder; `*.ext` stands for every file with that extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Write {
    pub file: &'static str,
    pub when: When,
}

impl Write {
    /// Whether `name` (relative to the stage folder) is this output.
    pub fn matches(&self, name: &str) -> bool {
        match self.file.strip_prefix('*') {
            Some(ext) => !name.contains('/') && name.ends_with(ext) && name.len() > ext.len(),
            None => name == self.file,
        }
    }

    pub fn is_pattern(&self) -> bool {
        self.file.starts_with('*')
    }
}

/// An input from outside the artifacts, recorded in the stamp by content hash under its
/// prefix (never by path: caches and folders differ between machines). A stage says where its
/// files are ([`crate::sources::SourceFiles`]); the runner hashes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `data.source`: the reviews (`source/train`, `source/test` or `source/archive`).
    Dataset,
    /// The model's `config.json` and weights (`model/config.json`, `model/model.safetensors`
    /// or the shard index and every shard).
    Model,
    /// The model's `tokenizer.json` (`tokenizer/tokenizer.json`).
    Tokenizer,
}

impl Source {
    /// What its files' stamp names begin with (spelled here only).
    pub fn prefix(self) -> &'static str {
        match self {
            Source::Dataset => "source/",
            Source::Model => "model/",
            Source::Tokenizer => "tokenizer/",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Source::Dataset => "the dataset (`data.source`)",
            Source::Model => "the model's config and weights",
            Source::Tokenizer => "the model's tokenizer.json",
        }
    }
}

/// One stage of the graph.
#[derive(Debug)]
pub struct StageSpec {
    pub id: StageId,
    pub recipe: &'static str,
    pub dir: &'static str,
    /// What it makes, in one line for people (`imdb-lora --help` lists it).
    pub about: &'static str,
    /// Config keys (a section name stands for every key in it) whose values decide its
    /// outputs: a changed one reruns the stage, and stages reading it refuse it until then.
    pub keys: &'static [&'static str],
    /// What the stage resolves at run time that decides its outputs besides the keys (the
    /// device and dtype it computes in): recorded in its stamp, compared on its own reruns
    /// only, so that a later stage may run elsewhere.
    pub runtime: &'static [&'static str],
    pub sources: &'static [Source],
    pub reads: &'static [Read],
    pub writes: &'static [Write],
}

impl StageSpec {
    /// The stages it reads from, each once, in pipeline order.
    pub fn upstream(&self) -> Vec<StageId> {
        let mut ups: Vec<StageId> = self.reads.iter().map(|r| r.stage).collect();
        ups.sort();
        ups.dedup();
        ups
    }

    /// The reads that are part of a run with `config`.
    pub fn reads_for(&self, config: &Config) -> Vec<Read> {
        self.reads
            .iter()
            .filter(|r| r.when.holds(config))
            .copied()
            .collect()
    }

    /// The outputs that are part of a run with `config`.
    pub fn writes_for(&self, config: &Config) -> Vec<Write> {
        self.writes
            .iter()
            .filter(|w| w.when.holds(config))
            .copied()
            .collect()
    }
}

/// Files of the train stage's adapter folder (PEFT's names).
pub const ADAPTER_DIR: &str = "adapter";
pub const ADAPTER_CONFIG: &str = "adapter/adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter/adapter_model.safetensors";
/// The train stage's JSON-lines log (training's `LOG_FILE`; this crate does not depend on it).
pub const TRAIN_LOG_FILE: &str = "log.jsonl";

const fn always(stage: StageId, file: &'static str) -> Read {
    Read {
        stage,
        file,
        when: When::Always,
    }
}

const fn out(file: &'static str) -> Write {
    Write {
        file,
        when: When::Always,
    }
}

const VALIDATION: When = When::Set("evaluate.validation");

use StageId::{DataPrep, Evaluate, Export, Report, Tokenize, Train};

/// The files of the export stage's merged checkpoint (lora-classifier's `EXPORT_FILES`; this
/// crate does not depend on the model's).
pub const EXPORT_FILES: [&str; 4] = [
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
];

/// The pipeline, in order.
pub const STAGES: [StageSpec; 6] = [
    StageSpec {
        id: DataPrep,
        recipe: "data-prep",
        dir: "data",
        about: "IMDb sampled and split into train, validation and test",
        keys: &["seed", "data"],
        runtime: &[],
        sources: &[Source::Dataset],
        reads: &[],
        writes: &[
            out(data::FILES[0]),
            out(data::FILES[1]),
            out(data::FILES[2]),
            out(data::SUMMARY_FILE),
        ],
    },
    StageSpec {
        id: Tokenize,
        recipe: "tokenize",
        dir: "tokens",
        about: "every split as padded token ids",
        keys: &[
            "model.source",
            "model.revision",
            "model.max_len",
            "model.truncation",
        ],
        runtime: &[],
        sources: &[Source::Tokenizer],
        reads: &[
            always(DataPrep, data::FILES[0]),
            always(DataPrep, data::FILES[1]),
            always(DataPrep, data::FILES[2]),
        ],
        writes: &[
            out(tokens::FILES[0]),
            out(tokens::FILES[1]),
            out(tokens::FILES[2]),
            out(tokens::SUMMARY_FILE),
        ],
    },
    StageSpec {
        id: Train,
        recipe: "train",
        dir: "train",
        about: "the LoRA adapter (PEFT format), training history and summary",
        // model.max_len reaches train through the tokens too; a key here so that the train
        // stamp alone says what the adapter was trained for (predict checks it).
        keys: &[
            "seed",
            "model.source",
            "model.revision",
            "model.max_len",
            "model.truncation",
            "lora",
            "training.learning_rate",
            "training.batch_size",
            "training.gradient_accumulation_steps",
            "training.epochs",
            "training.max_steps",
            "training.early_stopping_patience",
            "training.optimizer",
            "training.momentum",
            "training.weight_decay",
            "training.adam_beta1",
            "training.adam_beta2",
            "training.adam_epsilon",
            "training.scheduler",
            "training.warmup_steps",
            "training.warmup_ratio",
            "training.step_size",
            "training.step_gamma",
            "training.max_grad_norm",
            "training.eval_every_steps",
            "training.keep",
        ],
        runtime: &["device", "dtype"],
        sources: &[Source::Model],
        reads: &[
            always(Tokenize, tokens::FILES[0]),
            always(Tokenize, tokens::FILES[1]),
        ],
        writes: &[
            out(ADAPTER_CONFIG),
            out(ADAPTER_WEIGHTS),
            out(history::HISTORY_FILE),
            out(train_summary::SUMMARY_FILE),
            out(TRAIN_LOG_FILE),
        ],
    },
    StageSpec {
        id: Evaluate,
        recipe: "evaluate",
        dir: "evaluate",
        about: "test-split predictions, metrics and example predictions",
        keys: &[
            "model.source",
            "model.revision",
            "model.max_len",
            "model.truncation",
            "evaluate.threshold",
            "evaluate.validation",
            "evaluate.examples",
        ],
        runtime: &["dtype"],
        sources: &[Source::Model, Source::Tokenizer],
        reads: &[
            always(Tokenize, tokens::FILES[2]),
            Read {
                stage: Tokenize,
                file: tokens::FILES[1],
                when: VALIDATION,
            },
            always(DataPrep, data::FILES[2]),
            Read {
                stage: DataPrep,
                file: data::FILES[1],
                when: VALIDATION,
            },
            always(Train, ADAPTER_CONFIG),
            always(Train, ADAPTER_WEIGHTS),
        ],
        writes: &[
            out(predictions::PREDICTIONS_FILE),
            out(predictions::METRICS_FILE),
            out(predictions::REPORT_TEXT_FILE),
            out(predictions::EXAMPLES_FILE),
            Write {
                file: predictions::VALIDATION_PREDICTIONS_FILE,
                when: VALIDATION,
            },
            Write {
                file: predictions::VALIDATION_METRICS_FILE,
                when: VALIDATION,
            },
            Write {
                file: predictions::VALIDATION_REPORT_TEXT_FILE,
                when: VALIDATION,
            },
        ],
    },
    StageSpec {
        id: Report,
        recipe: "report",
        dir: "report",
        about: "figures and the HTML and Markdown report",
        keys: &["report"],
        runtime: &[],
        sources: &[],
        reads: &[
            always(DataPrep, data::SUMMARY_FILE),
            always(Train, history::HISTORY_FILE),
            always(Train, train_summary::SUMMARY_FILE),
            always(Evaluate, predictions::METRICS_FILE),
            always(Evaluate, predictions::PREDICTIONS_FILE),
            always(Evaluate, predictions::EXAMPLES_FILE),
        ],
        writes: &[
            Write {
                file: "*.png",
                when: When::Lists("report.formats", "png"),
            },
            Write {
                file: "*.svg",
                when: When::Lists("report.formats", "svg"),
            },
            out("report.html"),
            out("report.md"),
        ],
    },
    StageSpec {
        id: Export,
        recipe: "export",
        dir: "export",
        about: "the adapter merged into the model: a Hugging Face checkpoint",
        keys: &[
            "model.source",
            "model.revision",
            "model.max_len",
            "model.truncation",
            "export.dtype",
        ],
        runtime: &[],
        sources: &[Source::Model, Source::Tokenizer],
        reads: &[
            always(Train, ADAPTER_CONFIG),
            always(Train, ADAPTER_WEIGHTS),
        ],
        writes: &[
            out(EXPORT_FILES[0]),
            out(EXPORT_FILES[1]),
            out(EXPORT_FILES[2]),
            out(EXPORT_FILES[3]),
        ],
    },
];

/// Settings that are no stage's key, and why: they cannot change any stage's outputs (or,
/// for the device and dtype, the stage records what they resolved to instead).
pub const NOT_KEYS: &[(&str, &str)] = &[
    ("artifacts", "where the outputs go, not what they hold"),
    (
        "training.device",
        "train and evaluate record the device and dtype they ran with instead",
    ),
    (
        "training.dtype",
        "train and evaluate record the dtype the weights had instead",
    ),
    (
        "training.checkpoint_every_steps",
        "a resumed run continues bit for bit",
    ),
    (
        "evaluate.batch_size",
        "the probabilities are the same for any batch size",
    ),
    (
        "evaluate.dtype",
        "evaluate records the weights' format it ran with (int8) instead",
    ),
];

/// The config as the stages' keys see it: every key but [`NOT_KEYS`] (what a report shows as
/// the run's settings).
pub fn keyed_config(config: &Config) -> serde_json::Value {
    let mut full = serde_json::to_value(config).expect("config serialises");
    for (key, _) in NOT_KEYS {
        let (section, name) = match key.split_once('.') {
            Some((section, name)) => (Some(section), name),
            None => (None, *key),
        };
        let parent = match section {
            Some(section) => full.get_mut(section),
            None => Some(&mut full),
        };
        if let Some(serde_json::Value::Object(map)) = parent {
            map.remove(name);
        }
    }
    full
}

/// README's table of the graph: one row per stage.
pub fn markdown_table() -> String {
    let mut out =
        String::from("| stage | folder | config keys | reads | writes |\n|---|---|---|---|---|\n");
    for spec in &STAGES {
        let code = |items: Vec<String>| {
            if items.is_empty() {
                "—".to_string()
            } else {
                items.join(", ")
            }
        };
        let mut reads: Vec<String> = spec
            .sources
            .iter()
            .map(|s| s.describe().to_string())
            .collect();
        reads.extend(
            spec.reads
                .iter()
                .map(|r| format!("`{}/{}`{}", r.stage.dir_name(), r.file, r.when)),
        );
        let mut keys: Vec<String> = spec.keys.iter().map(|k| format!("`{k}`")).collect();
        keys.extend(spec.runtime.iter().map(|r| format!("({r} used)")));
        let writes = spec
            .writes
            .iter()
            .map(|w| format!("`{}`{}", w.file, w.when))
            .collect();
        out.push_str(&format!(
            "| `{}` | `{}/` | {} | {} | {} |\n",
            spec.recipe,
            spec.dir,
            code(keys),
            code(reads),
            code(writes)
        ));
    }
    out
}

#[cfg(test)]
mod tests;
