//! Sampling train and splitting test into validation and test, reproducible
//! from the seed alone.
//!
//! Randomness is ChaCha8 keyed by the seed (its 8 little-endian bytes, then
//! zeros), one stream per purpose ([`TRAIN_STREAM`], [`TEST_STREAM`]), read
//! only through `next_u64`, with our own unbiased [`below`] and
//! Fisher–Yates [`shuffle`]: the splits do not change when `rand` changes
//! its algorithms, and changing one split's settings leaves the other's draw
//! alone.
//!
//! Index mapping: a source split's rows are numbered `0..n` in source order
//! (see [`crate::source`]). [`partition`] shuffles that list of numbers and
//! cuts it after `round(fraction · n)`: the first part is the chosen rows,
//! the second the rest, both in shuffled order. Train = the chosen rows of
//! the source's train; validation = the chosen rows of the source's test,
//! test = its rest. With `stratify`, each label (0, then 1) is shuffled and
//! cut on its own, `round(fraction · n_label)`, and each part is shuffled
//! once more so that the labels are mixed. The `max_*` caps then keep the
//! first K rows of a split.

use anyhow::{ensure, Result};
use pipeline::config::DataConfig;
use pipeline::data::Reviews;
use pipeline::Split;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The stream that samples train.
pub const TRAIN_STREAM: u64 = 1;
/// The stream that shuffles test into validation and test.
pub const TEST_STREAM: u64 = 2;

pub fn rng(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let mut rng = ChaCha8Rng::from_seed(key);
    rng.set_stream(stream);
    rng
}

/// Uniform in `0..n`.
pub fn below(rng: &mut impl RngCore, n: usize) -> usize {
    assert!(n > 0, "below(0)");
    let n = n as u64;
    // Reject the top partial block of u64 values so that every result is equally likely.
    let limit = u64::MAX - u64::MAX % n;
    loop {
        let x = rng.next_u64();
        if x < limit {
            return (x % n) as usize;
        }
    }
}

/// Fisher–Yates (Durstenfeld): for i = n-1 down to 1, swap items i and `below(i + 1)`.
pub fn shuffle<T>(items: &mut [T], rng: &mut impl RngCore) {
    for i in (1..items.len()).rev() {
        items.swap(i, below(rng, i + 1));
    }
}

fn cut(fraction: f64, n: usize) -> usize {
    ((fraction * n as f64).round() as usize).min(n)
}

/// Rows `0..labels.len()` split into (chosen, rest); see the module docs.
pub fn partition(
    labels: &[u8],
    fraction: f64,
    stratify: bool,
    rng: &mut impl RngCore,
) -> (Vec<usize>, Vec<usize>) {
    if !stratify {
        let mut rows: Vec<usize> = (0..labels.len()).collect();
        shuffle(&mut rows, rng);
        let rest = rows.split_off(cut(fraction, rows.len()));
        return (rows, rest);
    }
    let (mut chosen, mut rest) = (Vec::new(), Vec::new());
    for label in [0, 1] {
        let mut rows: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == label).collect();
        shuffle(&mut rows, rng);
        let k = cut(fraction, rows.len());
        chosen.extend_from_slice(&rows[..k]);
        rest.extend_from_slice(&rows[k..]);
    }
    shuffle(&mut chosen, rng);
    shuffle(&mut rest, rng);
    (chosen, rest)
}

/// The three splits data-prep writes.
#[derive(Debug, Clone, PartialEq)]
pub struct Splits {
    pub train: Reviews,
    pub validation: Reviews,
    pub test: Reviews,
}

impl Splits {
    pub fn get(&self, split: Split) -> &Reviews {
        match split {
            Split::Train => &self.train,
            Split::Validation => &self.validation,
            Split::Test => &self.test,
        }
    }
}

/// Samples `train` and splits `test` as `data` says.
pub fn make_splits(
    train: &Reviews,
    test: &Reviews,
    data: &DataConfig,
    seed: u64,
) -> Result<Splits> {
    let (mut train_rows, _) = partition(
        &train.labels,
        data.train_fraction,
        data.stratify,
        &mut rng(seed, TRAIN_STREAM),
    );
    let (mut validation_rows, mut test_rows) = partition(
        &test.labels,
        data.validation_fraction,
        data.stratify,
        &mut rng(seed, TEST_STREAM),
    );
    for (rows, cap) in [
        (&mut train_rows, data.max_train),
        (&mut validation_rows, data.max_validation),
        (&mut test_rows, data.max_test),
    ] {
        rows.truncate(cap.unwrap_or(usize::MAX));
    }
    ensure!(
        !train_rows.is_empty(),
        "data.train_fraction = {} of the source's {} train reviews selects none",
        data.train_fraction,
        train.len()
    );
    ensure!(
        !validation_rows.is_empty() && !test_rows.is_empty(),
        "data.validation_fraction = {} of the source's {} test reviews leaves {} empty",
        data.validation_fraction,
        test.len(),
        if test_rows.is_empty() {
            "test"
        } else {
            "validation"
        }
    );
    Ok(Splits {
        train: train.select(&train_rows),
        validation: test.select(&validation_rows),
        test: test.select(&test_rows),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn reviews(split: &str, n: usize, positives: usize) -> Reviews {
        let mut r = Reviews::default();
        for i in 0..n {
            r.ids.push(format!("{split}/{i}"));
            r.texts.push(format!("review {i}"));
            r.labels.push(u8::from(i >= n - positives));
            r.ratings.push(None);
        }
        r
    }

    #[test]
    fn the_random_stream_is_pinned() {
        // These values change only if ChaCha8, the seeding or the shuffle
        // change, which would silently change every split: keep them.
        let mut rows: Vec<usize> = (0..10).collect();
        shuffle(&mut rows, &mut rng(42, TRAIN_STREAM));
        assert_eq!(rows, PINNED_SHUFFLE);
        assert_ne!(
            rng(42, TRAIN_STREAM).next_u64(),
            rng(42, TEST_STREAM).next_u64()
        );
        assert_ne!(
            rng(42, TRAIN_STREAM).next_u64(),
            rng(43, TRAIN_STREAM).next_u64()
        );
    }
    const PINNED_SHUFFLE: [usize; 10] = [1, 0, 4, 9, 5, 3, 8, 2, 7, 6];

    #[test]
    fn below_is_roughly_uniform() {
        let mut rng = rng(7, 0);
        let mut counts = [0usize; 6];
        for _ in 0..60_000 {
            counts[below(&mut rng, 6)] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_500..10_500).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn sizes_follow_the_fractions_and_splits_are_disjoint() {
        let (train, test) = (reviews("train", 1000, 500), reviews("test", 1000, 500));
        let data = DataConfig::default();
        let s = make_splits(&train, &test, &data, 42).unwrap();
        assert_eq!(
            (s.train.len(), s.validation.len(), s.test.len()),
            (100, 200, 800)
        );
        let validation: HashSet<_> = s.validation.ids.iter().collect();
        assert!(s.test.ids.iter().all(|id| !validation.contains(id)));
        let all: HashSet<_> = s.validation.ids.iter().chain(&s.test.ids).collect();
        assert_eq!(
            all.len(),
            1000,
            "validation and test cover the source's test"
        );
        assert_eq!(make_splits(&train, &test, &data, 42).unwrap(), s);
        assert_ne!(make_splits(&train, &test, &data, 1).unwrap(), s);
    }

    #[test]
    fn stratify_keeps_the_balance_exact_and_mixes_labels() {
        let (train, test) = (reviews("train", 1000, 300), reviews("test", 1000, 500));
        let data = DataConfig {
            stratify: true,
            ..DataConfig::default()
        };
        let s = make_splits(&train, &test, &data, 42).unwrap();
        assert_eq!((s.train.len(), s.train.positives()), (100, 30));
        assert_eq!((s.validation.len(), s.validation.positives()), (200, 100));
        assert_eq!((s.test.len(), s.test.positives()), (800, 400));
        // Mixed, not all negatives first: a cap keeps both labels.
        assert!(s.train.labels[..10].contains(&1) && s.train.labels[..10].contains(&0));
    }

    #[test]
    fn caps_keep_the_first_rows() {
        let (train, test) = (reviews("train", 100, 50), reviews("test", 100, 50));
        let full = make_splits(&train, &test, &DataConfig::default(), 3).unwrap();
        let data = DataConfig {
            max_train: Some(4),
            max_validation: Some(3),
            max_test: Some(1000),
            ..DataConfig::default()
        };
        let capped = make_splits(&train, &test, &data, 3).unwrap();
        assert_eq!(capped.train.ids, full.train.ids[..4]);
        assert_eq!(capped.validation.ids, full.validation.ids[..3]);
        assert_eq!(capped.test, full.test);
    }

    #[test]
    fn empty_splits_are_errors_naming_the_key() {
        let (train, test) = (reviews("train", 4, 2), reviews("test", 4, 2));
        let data = DataConfig {
            train_fraction: 0.01,
            ..DataConfig::default()
        };
        let err = make_splits(&train, &test, &data, 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("data.train_fraction"), "{err}");
        let data = DataConfig {
            train_fraction: 1.0,
            validation_fraction: 1.0,
            ..DataConfig::default()
        };
        let err = make_splits(&train, &test, &data, 1)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("data.validation_fraction") && err.contains("test empty"),
            "{err}"
        );
    }
}
