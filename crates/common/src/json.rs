//! JSON files this program wrote (summaries, metrics), read back: one definition of the
//! errors, which name the file and what it was expected to hold.

use std::path::Path;

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;

/// `path`'s JSON as a `T`. A file that cannot be read is "cannot read PATH"; one that does not
/// parse as a `T` is "PATH is not what this program wrote (expected T)", with serde's reason.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not what this program wrote (expected {})",
            path.display(),
            type_name::<T>()
        )
    })
}

/// As [`read_json`], but a file that does not exist is `None` (what a stage that has not run
/// yet leaves).
pub fn read_json_if_exists<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    if !path.exists() {
        return Ok(None);
    }
    read_json(path).map(Some)
}

/// `T`'s name without module paths, as people read it: `Vec<ExamplePrediction>`, not
/// `alloc::vec::Vec<pipeline::predictions::ExamplePrediction>`.
fn type_name<T>() -> String {
    let full = std::any::type_name::<T>();
    let mut out = String::with_capacity(full.len());
    let mut path = String::new();
    for c in full.chars().chain(std::iter::once('\0')) {
        if c.is_alphanumeric() || c == '_' || c == ':' {
            path.push(c);
            continue;
        }
        out.push_str(path.rsplit("::").next().unwrap_or_default());
        path.clear();
        if c != '\0' {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[derive(Debug, PartialEq, serde::Deserialize)]
    struct Summary {
        accuracy: f64,
    }

    #[test]
    fn a_good_file_reads_back() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("summary.json");
        std::fs::write(&path, r#"{"accuracy": 0.5}"#).unwrap();
        let want = Summary { accuracy: 0.5 };
        assert_eq!(read_json::<Summary>(&path).unwrap(), want);
        assert_eq!(read_json_if_exists::<Summary>(&path).unwrap(), Some(want));
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it_or_none() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("missing.json");
        let err = format!("{:#}", read_json::<Summary>(&path).unwrap_err());
        assert!(
            err.starts_with(&format!("cannot read {}: ", path.display())),
            "{err}"
        );
        assert_eq!(read_json_if_exists::<Summary>(&path).unwrap(), None);
    }

    #[test]
    fn malformed_json_names_the_file_what_was_expected_and_why() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("summary.json");
        for text in ["{not json", r#"{"accuracy": "high"}"#] {
            std::fs::write(&path, text).unwrap();
            for err in [
                read_json::<Summary>(&path).unwrap_err(),
                read_json_if_exists::<Summary>(&path).unwrap_err(),
            ] {
                let err = format!("{err:#}");
                let head = format!(
                    "{} is not what this program wrote (expected Summary): ",
                    path.display()
                );
                assert!(err.starts_with(&head), "{err}");
                assert!(err.len() > head.len(), "serde's reason is kept: {err}");
            }
        }
    }

    #[test]
    fn type_names_lose_their_module_paths() {
        assert_eq!(type_name::<Summary>(), "Summary");
        assert_eq!(type_name::<Vec<Summary>>(), "Vec<Summary>");
        assert_eq!(
            type_name::<BTreeMap<String, Option<u32>>>(),
            "BTreeMap<String, Option<u32>>"
        );
        assert_eq!(type_name::<(f64, &str)>(), "(f64, &str)");
    }
}
