//! Upstream checks: a stage reads another's outputs only when they are complete and were made
//! with the current config, else it stops and names the recipe to run.

use std::collections::HashSet;

use anyhow::{bail, Context, Result};

use crate::config::Config;
use crate::layout::{Layout, StageId};
use crate::stamp::{changed_keys, read_stamp, ARTIFACT_FORMAT, STAMP_FILE};

/// Errors unless `stage`'s outputs exist, are intact and were made with the
/// current config, and the same holds for its own upstream stages.
pub fn verify_current(layout: &Layout, config: &Config, stage: StageId) -> Result<()> {
    verify_tree(layout, config, stage, &mut Vec::new(), &mut HashSet::new())
}

/// `verify_current` along the upstream links: `path` holds the stages being checked (a stage
/// met again on it is a cycle), `done` those already found current.
fn verify_tree(
    layout: &Layout,
    config: &Config,
    stage: StageId,
    path: &mut Vec<StageId>,
    done: &mut HashSet<StageId>,
) -> Result<()> {
    if done.contains(&stage) {
        return Ok(());
    }
    let dir = layout.stage_dir(stage);
    let run = format!("run `just {}` (or `just all`) first", stage.recipe());
    let stamp =
        read_stamp(&dir).with_context(|| format!("{} cannot be trusted; {run}", dir.display()))?;
    let Some(stamp) = stamp else {
        bail!("{} has no complete output: {run}", dir.display());
    };
    let stamp_file = dir.join(STAMP_FILE);
    if stamp.stage != stage.recipe() {
        bail!(
            "{}: written by stage {:?}, not `{}`; {run}",
            stamp_file.display(),
            stamp.stage,
            stage.recipe()
        );
    }
    let current = config.sections(stage.config_keys());
    if stamp.config != current {
        bail!(
            "{} is stale: {} changed since `{}` ran; {run}",
            dir.display(),
            changed_keys(&stamp.config, &current),
            stage.recipe()
        );
    }
    // Only the format is checked here: the producer is another binary, and it
    // reruns itself when its own code changed.
    if stamp.artifact_format != ARTIFACT_FORMAT {
        bail!(
            "{} was written in an older artifact format; {run}",
            dir.display()
        );
    }
    if let Some(reason) = stamp.damage(&dir)? {
        bail!("{} is incomplete ({reason}); {run}", dir.display());
    }
    path.push(stage);
    for up in &stamp.upstream {
        let id = StageId::from_recipe(up).expect("Stamp::parse checked the upstream names");
        if path.contains(&id) {
            bail!(
                "{}: upstream stage `{up}` leads back to `{}` (a cycle): the stamp is corrupt; {run}",
                stamp_file.display(),
                stage.recipe()
            );
        }
        verify_tree(layout, config, id, path, done)
            .with_context(|| format!("{} depends on it", dir.display()))?;
    }
    path.pop();
    done.insert(stage);
    Ok(())
}
