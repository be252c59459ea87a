//! The model directory (DESIGN §3): versions written completely, then a pointer switched
//! atomically, so that a reader never sees a half-written model.
//!
//! Layout under the directory: `versions/<id>/model.json` (and whatever else a version holds,
//! such as its report), and `CURRENT`, a one-line file naming the current version. Publishing
//! writes the version into a temporary directory, syncs it and renames it into place, then
//! writes `CURRENT` the same way; a rename is atomic on one file system. Version ids count up
//! from `000001`; two publishers at once take different ids (a rename onto a version that
//! exists fails), and `CURRENT` ends on the later of them (the switch is locked and only moves
//! forward).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use txpipe_core::model::ModelArtifact;

use crate::{JobError, Result};

const POINTER: &str = "CURRENT";
const VERSIONS: &str = "versions";
const MODEL_FILE: &str = "model.json";
const LAST_RUN: &str = "LAST_RUN.json";

/// What the last training run decided, kept beside the versions (`LAST_RUN.json`), for
/// `txpipe status`: a refused run publishes nothing, so only this says why.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LastRun {
    /// When the run ended (RFC 3339, UTC).
    pub at: String,
    /// `published`, `refused` or `failed`.
    pub outcome: String,
    /// The refusal's code (`auc_floor`, `one_class`, ...), when refused.
    pub code: Option<String>,
    /// Why it was refused or failed.
    pub detail: Option<String>,
    /// The version published.
    pub version: Option<String>,
    pub holdout_auc: Option<f64>,
}

/// A model directory.
#[derive(Debug, Clone)]
pub struct ModelStore {
    dir: PathBuf,
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = fs::File::create(path).map_err(|e| JobError::io(path, e))?;
    f.write_all(bytes).map_err(|e| JobError::io(path, e))?;
    f.sync_all().map_err(|e| JobError::io(path, e))
}

fn sync_dir(path: &Path) -> Result<()> {
    fs::File::open(path).and_then(|d| d.sync_all()).map_err(|e| JobError::io(path, e))
}

impl ModelStore {
    pub fn new(dir: impl Into<PathBuf>) -> ModelStore {
        ModelStore { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory of version `id`.
    pub fn version_dir(&self, id: &str) -> PathBuf {
        self.dir.join(VERSIONS).join(id)
    }

    /// Records the last training run's decision (written whole, then renamed over the old one).
    pub fn record_run(&self, run: &LastRun) -> Result<()> {
        fs::create_dir_all(&self.dir).map_err(|e| JobError::io(&self.dir, e))?;
        let path = self.dir.join(LAST_RUN);
        let tmp = self.dir.join(format!(".{LAST_RUN}.tmp"));
        let text = serde_json::to_vec_pretty(run).map_err(|e| JobError::data(LAST_RUN, e))?;
        write_synced(&tmp, &text)?;
        fs::rename(&tmp, &path).map_err(|e| JobError::io(&path, e))
    }

    /// The last training run's decision, if one was recorded.
    pub fn last_run(&self) -> Option<LastRun> {
        let text = fs::read_to_string(self.dir.join(LAST_RUN)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The version ids kept, oldest first.
    pub fn versions(&self) -> Vec<String> {
        let mut ids: Vec<String> = fs::read_dir(self.dir.join(VERSIONS))
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .filter(|n| n.parse::<u64>().is_ok())
                    .collect()
            })
            .unwrap_or_default();
        ids.sort();
        ids
    }

    /// The id `CURRENT` names, if any.
    pub fn current_id(&self) -> Result<Option<String>> {
        let path = self.dir.join(POINTER);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text.trim().to_string()).filter(|id| !id.is_empty())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(JobError::io(path, e)),
        }
    }

    /// The current model, if one was published.
    pub fn current(&self) -> Result<Option<ModelArtifact>> {
        match self.current_id()? {
            Some(id) => self.load(&id).map(Some),
            None => Ok(None),
        }
    }

    /// Version `id`'s model.
    pub fn load(&self, id: &str) -> Result<ModelArtifact> {
        let path = self.version_dir(id).join(MODEL_FILE);
        let text = fs::read_to_string(&path).map_err(|e| JobError::io(&path, e))?;
        let model: ModelArtifact = serde_json::from_str(&text).map_err(|e| {
            JobError::data(path.display().to_string(), format!("not a model.json of txpipe: {e}"))
        })?;
        if model.format != txpipe_core::model::artifact::FORMAT {
            return Err(JobError::data(
                path.display().to_string(),
                format!(
                    "model format {} (this txpipe reads {})",
                    model.format,
                    txpipe_core::model::artifact::FORMAT
                ),
            ));
        }
        Ok(model)
    }

    /// The next free version id.
    fn next_id(&self) -> Result<u64> {
        let versions = self.dir.join(VERSIONS);
        let mut highest = 0;
        match fs::read_dir(&versions) {
            Ok(entries) => {
                for e in entries.flatten() {
                    if let Some(n) = e.file_name().to_str().and_then(|s| s.parse::<u64>().ok()) {
                        highest = highest.max(n);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(JobError::io(versions, e)),
        }
        Ok(highest + 1)
    }

    /// Publishes a model: `fill` writes the version's files (the model first) into a fresh
    /// directory given its id; then the directory moves into place and becomes current.
    /// Returns the new version's id and directory.
    pub fn publish(
        &self,
        model: impl Fn(&str) -> ModelArtifact,
        extra: impl Fn(&ModelArtifact, &Path) -> Result<()>,
    ) -> Result<(String, PathBuf)> {
        let versions = self.dir.join(VERSIONS);
        fs::create_dir_all(&versions).map_err(|e| JobError::io(&versions, e))?;
        let staging = versions.join(format!(
            ".staging-{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_micros()
        ));
        fs::create_dir(&staging).map_err(|e| JobError::io(&staging, e))?;
        let written = (|| {
            let mut number = self.next_id()?;
            loop {
                let id = format!("{number:06}");
                let artifact = model(&id);
                // The artifact's types always serialise: a failure here is a bug.
                let text = serde_json::to_vec_pretty(&artifact)
                    .map_err(|e| JobError::Internal(format!("serialising the model: {e}")))?;
                write_synced(&staging.join(MODEL_FILE), &text)?;
                extra(&artifact, &staging)?;
                sync_dir(&staging)?;
                let target = versions.join(&id);
                // Fails when another publisher took the id first: take the next.
                match fs::rename(&staging, &target) {
                    Ok(()) if fs::metadata(&target).is_ok() => return Ok((id, target)),
                    Ok(()) => {
                        let gone =
                            std::io::Error::new(std::io::ErrorKind::NotFound, "vanished after the rename");
                        return Err(JobError::io(&target, gone));
                    }
                    Err(_) if target.exists() => number += 1,
                    Err(e) => return Err(JobError::io(&target, e)),
                }
            }
        })();
        let (id, target) = match written {
            Ok(v) => v,
            Err(e) => {
                let _ = fs::remove_dir_all(&staging);
                return Err(e);
            }
        };
        sync_dir(&versions)?;
        if !self.point_to(&id)? {
            tracing::warn!(
                version = %id,
                current = ?self.current_id().ok().flatten(),
                "published, but a newer version is current already (another publisher at the same time); \
                 CURRENT stays on it"
            );
        }
        Ok((id, target))
    }

    /// Points `CURRENT` at version `id`, unless a newer version is current already: of two
    /// publishers at once, the later version stays current whichever of them switches last.
    /// The switch holds an exclusive lock on `.CURRENT.lock` (released when the file closes).
    /// Returns whether it switched.
    fn point_to(&self, id: &str) -> Result<bool> {
        let lock_path = self.dir.join(format!(".{POINTER}.lock"));
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| JobError::io(&lock_path, e))?;
        lock.lock().map_err(|e| JobError::io(&lock_path, e))?;
        let number = |v: &str| v.parse::<u64>().ok();
        if self.current_id()?.is_some_and(|current| number(&current) > number(id)) {
            return Ok(false);
        }
        let pointer_tmp = self.dir.join(format!(".{POINTER}.{}", std::process::id()));
        write_synced(&pointer_tmp, format!("{id}\n").as_bytes())?;
        let pointer = self.dir.join(POINTER);
        fs::rename(&pointer_tmp, &pointer).map_err(|e| JobError::io(&pointer, e))?;
        sync_dir(&self.dir)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn of_two_publishers_at_once_the_later_version_stays_current() {
        let dir = tempfile::tempdir().unwrap();
        let store = ModelStore::new(dir.path());
        let versions = dir.path().join(VERSIONS);
        fs::create_dir_all(versions.join("000001")).unwrap();
        fs::create_dir_all(versions.join("000002")).unwrap();
        // The interleaving forced: the publisher of 000002 switches first, then the one of
        // 000001 comes to switch (it took its id first, but was slower).
        assert!(store.point_to("000002").unwrap());
        assert!(!store.point_to("000001").unwrap());
        assert_eq!(store.current_id().unwrap().as_deref(), Some("000002"));
        // A newer one still moves it on; the same one again is no change of mind.
        assert!(store.point_to("000003").unwrap());
        assert!(store.point_to("000003").unwrap());
        assert_eq!(store.current_id().unwrap().as_deref(), Some("000003"));
    }
}
