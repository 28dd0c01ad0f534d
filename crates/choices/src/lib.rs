//! The values of `pipeline.yaml`'s choice keys, one enum each: owned here so that the libraries
//! that act on them (lora-classifier, training) and the config that parses them (pipeline)
//! share one definition, spelled one way in YAML, on the command line and in messages.
//!
//! Each enum parses from its spelling ([`std::str::FromStr`], which serde and clap use too) and
//! prints it back ([`std::fmt::Display`]); an unknown spelling is an error listing the known.
//!
//! Beside them, the one small type the training library and the pipeline's artifacts share
//! without depending on each other: a training history record ([`HistoryRecord`], of a
//! [`RecordKind`]), from the training loop through its checkpoints to `history.parquet`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Serde through the spelling, so that YAML, JSON and `--set` accept exactly what `FromStr` does.
macro_rules! serde_by_spelling {
    ($name:ident) => {
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// A unit enum with one spelling per variant.
macro_rules! choice {
    ($(#[$meta:meta])* $name:ident, $what:literal {
        $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The spelling in `pipeline.yaml`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownChoice;

            fn from_str(text: &str) -> Result<Self, UnknownChoice> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == text)
                    .ok_or_else(|| UnknownChoice {
                        what: $what,
                        given: text.to_string(),
                        expected: Self::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(" | "),
                    })
            }
        }

        serde_by_spelling!($name);
    };
}

/// `lora.target_modules: all-linear`, PEFT's value for every linear layer but the output one:
/// the config holds it as the one-name list `[all-linear]`, the model expands it by architecture.
pub const ALL_LINEAR: &str = "all-linear";

/// A spelling no variant has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownChoice {
    what: &'static str,
    given: String,
    expected: String,
}

impl fmt::Display for UnknownChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown {} {:?}, expected {}",
            self.what, self.given, self.expected
        )
    }
}

impl std::error::Error for UnknownChoice {}

choice!(
    /// Which biases train, as PEFT's `bias`: none; all (every parameter named `*bias*`,
    /// LayerNorms included); lora_only (the biases of the layers that have LoRA).
    LoraBias, "LoRA bias" {
        None = "none",
        All = "all",
        LoraOnly = "lora_only",
    }
);

choice!(
    /// The optimizer, as `torch.optim` defines it.
    OptimizerKind, "optimizer" {
        /// Adam with decoupled weight decay (`torch.optim.AdamW`).
        AdamW = "adamw",
        /// `torch.optim.Adam`: weight decay as L2, added to the gradient.
        Adam = "adam",
        /// `torch.optim.SGD` (dampening 0, not Nesterov); weight decay as L2.
        Sgd = "sgd",
        /// `torch.optim.RMSprop` (not centered); weight decay as L2.
        RmsProp = "rmsprop",
    }
);

choice!(
    /// The learning-rate schedule's shape after warmup, as Hugging Face transformers (and
    /// PyTorch's StepLR) define it.
    ScheduleKind, "scheduler" {
        Constant = "constant",
        /// `get_linear_schedule_with_warmup`: down to 0 at the last step.
        Linear = "linear",
        /// `get_cosine_schedule_with_warmup` with `num_cycles` 0.5: half a cosine down to 0.
        Cosine = "cosine",
        /// StepLR after warmup: `gamma^floor((t - warmup) / step_size)`.
        Step = "step",
    }
);

choice!(
    /// The dtype of the frozen base weights (LoRA, the head and optimizer state stay f32).
    DtypeSetting, "dtype" {
        /// bf16 on a GPU and on a CPU with AVX512-BF16, else f32.
        Auto = "auto",
        F32 = "f32",
        Bf16 = "bf16",
        F16 = "f16",
    }
);

choice!(
    /// Which tokens of a review longer than `model.max_len` are kept (`model.truncation`).
    Truncation, "truncation" {
        /// The first ones, as `tokenizer(text, truncation=True)` (HF's default).
        Head = "head",
        /// The last ones, as HF's `truncation_side="left"`.
        Tail = "tail",
        /// The first quarter and the last three quarters of the row (Sun et al. 2019, "How to
        /// Fine-Tune BERT for Text Classification": head 128 + tail 382 of 510 was best on IMDb).
        HeadTail = "head_tail",
    }
);

choice!(
    /// The dtype of an export's weights (`export.dtype`): f32 exact, bf16 or f16 half the size.
    ExportDtype, "export dtype" {
        F32 = "f32",
        Bf16 = "bf16",
        F16 = "f16",
    }
);

choice!(
    /// `evaluate.dtype`: the frozen weights' format in evaluate and predict.
    EvaluateDtype, "evaluate dtype" {
        /// As `training.dtype`.
        Auto = "auto",
        /// The merged model's weights in per-channel int8, activations quantized per row at
        /// run time (CPU; inference only).
        Int8 = "int8",
    }
);

/// Where the model runs: `auto` (a GPU when the build has CUDA and one is there, else the
/// CPU), `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceSetting {
    Auto,
    Cpu,
    Cuda(usize),
}

impl fmt::Display for DeviceSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSetting::Auto => f.write_str("auto"),
            DeviceSetting::Cpu => f.write_str("cpu"),
            DeviceSetting::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl FromStr for DeviceSetting {
    type Err = UnknownChoice;

    fn from_str(text: &str) -> Result<Self, UnknownChoice> {
        Ok(match text {
            "auto" => DeviceSetting::Auto,
            "cpu" => DeviceSetting::Cpu,
            "cuda" => DeviceSetting::Cuda(0),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => DeviceSetting::Cuda(n),
                _ => {
                    return Err(UnknownChoice {
                        what: "device",
                        given: other.to_string(),
                        expected: "auto | cpu | cuda | cuda:N".into(),
                    })
                }
            },
        })
    }
}

serde_by_spelling!(DeviceSetting);

choice!(
    /// What a training history [`HistoryRecord`] is of.
    RecordKind, "history record kind" {
        /// One optimizer step: its training loss, learning rate and throughput.
        Step = "step",
        /// A validation in the middle of an epoch (every `training.eval_every_steps` steps).
        Eval = "eval",
        /// The validation at an epoch's end, with the epoch's mean training loss.
        Epoch = "epoch",
    }
);

/// One record of a training run's history: what the training loop records per optimizer step,
/// per mid-epoch validation and per epoch end, what its checkpoints keep (serde, JSON) and
/// what the train stage writes as `history.parquet`. One type from the loop to the report.
///
/// Its serde form is exact: a finite float is a number, which serde_json (with
/// `float_roundtrip`, as the workspace builds it) reads back bit for bit; NaN and the
/// infinities, which JSON has no numbers for (serde_json would write `null`), are the strings
/// `"NaN"`, `"inf"` and `"-inf"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryRecord {
    pub kind: RecordKind,
    /// 1-based.
    pub epoch: u32,
    /// Optimizer steps done when it was recorded (1 after the first step), so a validation
    /// record has the step it was measured after.
    pub step: u64,
    /// The step's loss; for validation records, the epoch's mean step loss so far (at an
    /// epoch's end, the epoch's).
    #[serde(with = "exact_f64")]
    pub train_loss: f64,
    /// The rate a step ran with.
    #[serde(with = "exact_f64::option")]
    pub learning_rate: Option<f64>,
    /// A step's throughput.
    #[serde(with = "exact_f64::option")]
    pub samples_per_s: Option<f64>,
    #[serde(with = "exact_f64::option")]
    pub val_loss: Option<f64>,
    #[serde(with = "exact_f64::option")]
    pub val_accuracy: Option<f64>,
}

impl HistoryRecord {
    /// Every loss it holds is finite (a run stops before recording anything else).
    pub fn is_finite(&self) -> bool {
        self.train_loss.is_finite() && self.val_loss.is_none_or(f64::is_finite)
    }
}

/// Serde of an f64 that keeps every value: finite ones as numbers, the others by name.
mod exact_f64 {
    use std::fmt;

    use serde::de::{self, Visitor};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    const NAMES: [(&str, f64); 3] = [
        ("NaN", f64::NAN),
        ("inf", f64::INFINITY),
        ("-inf", f64::NEG_INFINITY),
    ];

    pub fn serialize<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
        if value.is_finite() {
            serializer.serialize_f64(*value)
        } else if value.is_nan() {
            serializer.serialize_str(NAMES[0].0)
        } else if *value > 0.0 {
            serializer.serialize_str(NAMES[1].0)
        } else {
            serializer.serialize_str(NAMES[2].0)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
        deserializer.deserialize_any(ExactF64)
    }

    struct ExactF64;

    impl Visitor<'_> for ExactF64 {
        type Value = f64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a number, \"NaN\", \"inf\" or \"-inf\"")
        }

        fn visit_f64<E>(self, v: f64) -> Result<f64, E> {
            Ok(v)
        }

        fn visit_u64<E>(self, v: u64) -> Result<f64, E> {
            Ok(v as f64)
        }

        fn visit_i64<E>(self, v: i64) -> Result<f64, E> {
            Ok(v as f64)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
            NAMES
                .iter()
                .find(|(name, _)| *name == v)
                .map(|&(_, value)| value)
                .ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
        }
    }

    /// The same for an `Option<f64>`, `None` being `null`.
    pub mod option {
        use super::*;

        #[derive(Serialize, Deserialize)]
        struct Exact(#[serde(with = "super")] f64);

        pub fn serialize<S: Serializer>(
            value: &Option<f64>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            value.map(Exact).serialize(serializer)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<f64>, D::Error> {
            Ok(Option::<Exact>::deserialize(deserializer)?.map(|e| e.0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T>(values: &[T])
    where
        T: Serialize + for<'de> Deserialize<'de> + FromStr + fmt::Display + PartialEq + fmt::Debug,
        <T as FromStr>::Err: fmt::Debug,
    {
        for v in values {
            let text = v.to_string();
            assert_eq!(&text.parse::<T>().unwrap(), v, "{text}");
            let json = serde_json::to_string(v).unwrap();
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(&serde_json::from_str::<T>(&json).unwrap(), v);
        }
    }

    #[test]
    fn every_value_reads_back_from_its_spelling() {
        round_trip(LoraBias::ALL);
        round_trip(OptimizerKind::ALL);
        round_trip(ScheduleKind::ALL);
        round_trip(DtypeSetting::ALL);
        round_trip(ExportDtype::ALL);
        round_trip(Truncation::ALL);
        round_trip(RecordKind::ALL);
        round_trip(&[
            DeviceSetting::Auto,
            DeviceSetting::Cpu,
            DeviceSetting::Cuda(0),
            DeviceSetting::Cuda(3),
        ]);
        // `cuda` is `cuda:0`, printed as such.
        assert_eq!("cuda".parse::<DeviceSetting>(), Ok(DeviceSetting::Cuda(0)));
    }

    #[test]
    fn the_pytorch_and_peft_spellings() {
        assert_eq!(LoraBias::LoraOnly.as_str(), "lora_only");
        assert_eq!(OptimizerKind::RmsProp.as_str(), "rmsprop");
        assert_eq!(OptimizerKind::AdamW.as_str(), "adamw");
    }

    #[test]
    fn unknown_spellings_list_the_known() {
        assert_eq!(
            "lion".parse::<OptimizerKind>().unwrap_err().to_string(),
            "unknown optimizer \"lion\", expected adamw | adam | sgd | rmsprop"
        );
        assert_eq!(
            "gpu".parse::<DeviceSetting>().unwrap_err().to_string(),
            "unknown device \"gpu\", expected auto | cpu | cuda | cuda:N"
        );
        assert!("cuda:x".parse::<DeviceSetting>().is_err());
        assert!("cuda:-1".parse::<DeviceSetting>().is_err());
        let err = serde_json::from_str::<DtypeSetting>("\"f64\"").unwrap_err();
        assert!(
            err.to_string().contains("expected auto | f32 | bf16 | f16"),
            "{err}"
        );
        // Not a string at all.
        assert!(serde_json::from_str::<LoraBias>("3").is_err());
    }

    fn record(train_loss: f64, other: Option<f64>) -> HistoryRecord {
        HistoryRecord {
            kind: RecordKind::Eval,
            epoch: u32::MAX,
            step: u64::MAX,
            train_loss,
            learning_rate: other,
            samples_per_s: other.map(|v| -v),
            val_loss: None,
            val_accuracy: other,
        }
    }

    fn bits(r: &HistoryRecord) -> [Option<u64>; 5] {
        [
            Some(r.train_loss),
            r.learning_rate,
            r.samples_per_s,
            r.val_loss,
            r.val_accuracy,
        ]
        .map(|v| v.map(f64::to_bits))
    }

    /// Every float comes back bit for bit from JSON, the infinities too (serde_json alone
    /// writes them as null); NaN comes back NaN.
    #[test]
    fn a_history_record_reads_back_exactly_from_json() {
        let values = [
            0.1 + 0.2,
            1.0 / 3.0,
            -0.0,
            f64::MIN_POSITIVE,
            f64::from_bits(1), // the smallest subnormal
            f64::MAX,
            f64::MIN,
            f64::EPSILON,
            2f64.powi(-1000),
            1e23,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ];
        for v in values {
            for other in [None, Some(v)] {
                let r = record(v, other);
                let json = serde_json::to_string(&r).unwrap();
                let back: HistoryRecord = serde_json::from_str(&json).unwrap();
                assert_eq!(bits(&back), bits(&r), "{json}");
                assert_eq!(back.kind, r.kind);
                assert_eq!((back.epoch, back.step), (r.epoch, r.step));
            }
        }
        let json = serde_json::to_string(&record(f64::NAN, Some(f64::INFINITY))).unwrap();
        assert!(
            json.contains(r#""train_loss":"NaN""#) && json.contains(r#""learning_rate":"inf""#),
            "{json}"
        );
        assert!(json.contains(r#""samples_per_s":"-inf""#), "{json}");
        assert!(json.contains(r#""kind":"eval""#), "{json}");
        let back: HistoryRecord = serde_json::from_str(&json).unwrap();
        assert!(back.train_loss.is_nan() && !back.is_finite());
        assert_eq!(back.learning_rate, Some(f64::INFINITY));

        // An integer is a float; any other string, or null for a loss, is an error.
        let json = json.replace(r#""train_loss":"NaN""#, r#""train_loss":3"#);
        assert_eq!(
            serde_json::from_str::<HistoryRecord>(&json)
                .unwrap()
                .train_loss,
            3.0
        );
        for bad in [r#""train_loss":"nan""#, r#""train_loss":null"#] {
            let json = json.replace(r#""train_loss":3"#, bad);
            let err = serde_json::from_str::<HistoryRecord>(&json).unwrap_err();
            assert!(
                err.to_string()
                    .contains("a number, \"NaN\", \"inf\" or \"-inf\""),
                "{err}"
            );
        }
    }
}
