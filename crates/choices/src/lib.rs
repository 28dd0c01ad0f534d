//! The values of `pipeline.yaml`'s choice keys, one enum each: owned here so that the libraries
//! that act on them (lora-classifier, training) and the config that parses them (pipeline)
//! share one definition, spelled one way in YAML, on the command line and in messages.
//!
//! Each enum parses from its spelling ([`std::str::FromStr`], which serde and clap use too) and
//! prints it back ([`std::fmt::Display`]); an unknown spelling is an error listing the known.

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
}
