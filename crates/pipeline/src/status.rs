//! `just status`: for every stage, whether it is up to date, and if not what changed, without
//! running anything (like `dvc status`).

use std::fmt::Write as _;

use anyhow::Result;

use crate::config::Config;
use crate::graph::StageId;
use crate::root;
use crate::runner::{planned_run, Context, StageInputs};
use crate::stamp::{read_stamp, Change};

/// Where a stage stands.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    UpToDate,
    /// No outputs: it never ran with this artifacts root (or its folder was removed).
    NeverRan,
    /// Its stamp differs from what a run would record now.
    Stale(Vec<Change>),
    /// Its own stamp matches, but stages it reads must rerun first (it reruns if their
    /// outputs change).
    Waits(Vec<StageId>),
    /// What it would record cannot be worked out (a missing model, an unreadable source).
    Unknown(String),
}

impl State {
    pub fn is_up_to_date(&self) -> bool {
        *self == State::UpToDate
    }
}

/// The state of each of `stages` (in pipeline order) for `config`.
pub fn status(
    config: &Config,
    stages: &mut [&mut dyn StageInputs],
) -> Result<Vec<(StageId, State)>> {
    root::check(&config.artifacts)?;
    let ctx = Context::new(config);
    let mut states: Vec<(StageId, State)> = Vec::new();
    for stage in stages.iter_mut() {
        let id = stage.id();
        let dir = ctx.layout.stage_dir(id);
        let state = match read_stamp(&dir) {
            Ok(None) => State::NeverRan,
            Err(err) => State::Stale(vec![Change::BadStamp(format!("{err:#}"))]),
            Ok(Some(_)) => {
                match planned_run(&mut **stage, &ctx, false).and_then(|(r, _)| r.changes()) {
                    Err(err) => State::Unknown(format!("{err:#}")),
                    Ok(changes) if !changes.is_empty() => State::Stale(changes),
                    Ok(_) => {
                        let waits: Vec<StageId> = id
                            .spec()
                            .reads_for(config)
                            .iter()
                            .filter(|r| stage.replacement(r).is_none())
                            .map(|r| r.stage)
                            .filter(|up| {
                                states
                                    .iter()
                                    .any(|(s, state)| s == up && !state.is_up_to_date())
                            })
                            .fold(Vec::new(), |mut v, s| {
                                if !v.contains(&s) {
                                    v.push(s);
                                }
                                v
                            });
                        if waits.is_empty() {
                            State::UpToDate
                        } else {
                            State::Waits(waits)
                        }
                    }
                }
            }
        };
        states.push((id, state));
    }
    Ok(states)
}

/// The states as `just status` prints them: a line per stage, and one per change.
pub fn render(states: &[(StageId, State)]) -> String {
    let mut out = String::new();
    for (id, state) in states {
        let name = id.recipe();
        let _ = match state {
            State::UpToDate => writeln!(out, "{name:<10} up to date"),
            State::NeverRan => writeln!(out, "{name:<10} not run: no outputs yet"),
            State::Waits(ups) => {
                let ups: Vec<&str> = ups.iter().map(|s| s.recipe()).collect();
                writeln!(
                    out,
                    "{name:<10} waits for {}: reruns if their outputs change",
                    ups.join(", ")
                )
            }
            State::Unknown(why) => writeln!(out, "{name:<10} cannot tell: {why}"),
            State::Stale(changes) => {
                let _ = writeln!(out, "{name:<10} changed:");
                for change in changes {
                    let _ = writeln!(out, "{:<10}   {change}", "");
                }
                Ok(())
            }
        };
    }
    out
}
