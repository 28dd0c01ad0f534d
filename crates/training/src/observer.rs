//! What a run reports as it goes, to whoever drives it: progress bars, logs, test hooks. The
//! library itself prints nothing.

use std::path::Path;

use crate::checkpoint::Position;
use crate::history::Record;

/// Why a checkpoint was not resumed from.
#[derive(Debug)]
pub enum Skipped {
    /// Written by another run (another config or other inputs): never resumed from.
    Foreign,
    /// Of this run, but unreadable or holding non-finite state; an older one is tried.
    Unusable(anyhow::Error),
}

/// One thing that happened in a run.
#[derive(Debug)]
pub enum Event<'a> {
    /// A checkpoint in the store that is not resumed from.
    CheckpointSkipped {
        path: &'a Path,
        why: Skipped,
    },
    /// The run continues from this checkpoint; `batches` is the number per epoch.
    Resumed {
        path: &'a Path,
        position: &'a Position,
        batches: u64,
    },
    /// The run starts from the beginning, after skipping this many unusable checkpoints.
    Started {
        unusable_skipped: usize,
    },
    /// Epoch `epoch` (1-based) of `epochs` starts at batch `first_batch` of `batches`.
    EpochStarted {
        epoch: u32,
        epochs: usize,
        batches: u64,
        first_batch: u64,
    },
    /// An optimizer step was taken (its record is in the history).
    Step(&'a Record),
    /// A validation is under way: `done` of its `total` rows classified so far.
    Validating {
        done: u64,
        total: u64,
    },
    /// A validation ran, mid-epoch or at the epoch's end (see the record's kind).
    Validated(&'a Record),
    EpochFinished {
        epoch: u32,
    },
    /// A checkpoint was written after optimizer step `step`.
    CheckpointWritten {
        dir: &'a Path,
        step: u64,
    },
}

/// Receives a run's events; any `FnMut(Event)` is one.
pub trait Observer {
    fn on(&mut self, event: Event<'_>);
}

impl<F: FnMut(Event<'_>)> Observer for F {
    fn on(&mut self, event: Event<'_>) {
        self(event)
    }
}

/// Ignores every event.
pub struct Silent;

impl Observer for Silent {
    fn on(&mut self, _: Event<'_>) {}
}
