//! What earlier jobs of a scene took, so the next job of that scene has an
//! ETA before its first frame ends. A scene is the set of a job's input files
//! by content: re-rendering the same files (another frame range, another
//! chunk size) starts from their run times per frame. A job that succeeds
//! folds its own per-frame times into the scene's rows, in the same fenced
//! batch as its final state.

use std::collections::HashMap;

use kiln_proto::v1 as pb;
use sha2::{Digest, Sha256};

use crate::eta::{RunStats, StepTimes};

/// Samples a scene's row keeps at most, so that it follows a scene whose
/// render times change (new lighting, heavier geometry) instead of averaging
/// over its whole history.
const KEPT_SAMPLES: i32 = 200;
/// A scene nobody rendered for this long is forgotten.
const FORGET_AFTER: &str = "90 days";

/// Identifies a scene by its input files' digests; `None` for a job without inputs.
pub fn scene_key(inputs: &[pb::TaskInput]) -> Option<String> {
    if inputs.is_empty() {
        return None;
    }
    let mut digests: Vec<&str> = inputs.iter().map(|i| i.digest.as_str()).collect();
    digests.sort_unstable();
    digests.dedup();
    let mut hash = Sha256::new();
    for digest in digests {
        hash.update(digest.as_bytes());
        hash.update(b"\n");
    }
    Some(hex::encode(hash.finalize()))
}

/// One step's per-frame run times to fold into its scene's row.
#[derive(Debug, Clone)]
pub struct SceneTimesWrite {
    pub scene: String,
    pub step_name: String,
    pub stats: RunStats,
}

/// The writes a succeeded job leaves for its scene.
pub fn writes_for(scene: &str, steps: Vec<StepTimes>) -> impl Iterator<Item = SceneTimesWrite> {
    steps
        .into_iter()
        .filter(|step| step.own.count > 0)
        .map(move |step| SceneTimesWrite {
            scene: scene.to_owned(),
            step_name: step.name,
            stats: step.own,
        })
}

/// What earlier jobs of each scene took, per step name.
pub async fn load(
    db: &sqlx::PgPool,
    scenes: &[String],
) -> Result<HashMap<String, HashMap<String, RunStats>>, sqlx::Error> {
    let rows: Vec<(String, String, i32, f64, f64)> = sqlx::query_as(
        "SELECT scene, step_name, samples, mean, m2 FROM scene_run_times WHERE scene = ANY($1)",
    )
    .bind(scenes)
    .fetch_all(db)
    .await?;
    let mut scenes: HashMap<String, HashMap<String, RunStats>> = HashMap::new();
    for (scene, step, samples, mean, m2) in rows {
        let stats = RunStats {
            count: samples.max(0) as u32,
            mean,
            m2,
        };
        scenes.entry(scene).or_default().insert(step, stats);
    }
    Ok(scenes)
}

/// Folds succeeded jobs' run times into their scenes' rows (Chan et al.'s
/// parallel update, in SQL so that two jobs of a scene finishing in one
/// batch both count), scaling rows down to KEPT_SAMPLES; forgets scenes
/// not rendered for FORGET_AFTER.
pub async fn write(
    tx: &mut sqlx::PgConnection,
    writes: &[SceneTimesWrite],
) -> Result<(), sqlx::Error> {
    if writes.is_empty() {
        return Ok(());
    }
    for write in writes {
        let stats = write.stats.weighed_as(KEPT_SAMPLES as u32);
        sqlx::query(
            "INSERT INTO scene_run_times AS r (scene, step_name, samples, mean, m2)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (scene, step_name) DO UPDATE SET
                 mean = r.mean + (EXCLUDED.mean - r.mean) * EXCLUDED.samples / (r.samples + EXCLUDED.samples),
                 m2 = (r.m2 + EXCLUDED.m2 + (EXCLUDED.mean - r.mean) ^ 2 * r.samples * EXCLUDED.samples
                         / (r.samples + EXCLUDED.samples))
                      * LEAST(1.0, $6::float8 / (r.samples + EXCLUDED.samples)),
                 samples = LEAST(r.samples + EXCLUDED.samples, $6),
                 updated_at = now()",
        )
        .bind(&write.scene)
        .bind(&write.step_name)
        .bind(stats.count as i32)
        .bind(stats.mean)
        .bind(stats.m2)
        .bind(KEPT_SAMPLES)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query("DELETE FROM scene_run_times WHERE updated_at < now() - $1::interval")
        .bind(FORGET_AFTER)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(path: &str, digest: &str) -> pb::TaskInput {
        pb::TaskInput {
            path: path.into(),
            digest: digest.into(),
        }
    }

    #[test]
    fn a_scene_is_its_files_in_any_order() {
        let a = scene_key(&[input("a.blend", "1"), input("tex.png", "2")]);
        let b = scene_key(&[input("tex.png", "2"), input("a.blend", "1")]);
        assert_eq!(a, b);
        assert_ne!(a, scene_key(&[input("a.blend", "1")]));
        assert_eq!(scene_key(&[]), None);
    }
}
