//! The model directory (DESIGN §3): versions written completely, then a pointer switched
//! atomically, so that a reader never sees a half-written model.
//!
//! Layout under the directory: `versions/<id>/model.json` (and whatever else a version holds,
//! such as its report), and `CURRENT`, a one-line file naming the current version. Version ids
//! count up from `000001`; two publishers at once take different ids, and `CURRENT` ends on the
//! later of them (the switch only moves forward).
//!
//! In a local folder (or a network file system), publishing writes the version into a
//! temporary directory, syncs it and renames it into place (a rename onto a version that exists
//! fails), then writes `CURRENT` the same way under a lock; a rename is atomic on one file
//! system. On an object store (`s3://bucket/models/lr_model`, with the tables' storage
//! options), a version's `model.json` is created only if absent (the store's conditional put,
//! as Delta commits: of two publishers one takes the id, the other the next), its other files
//! follow, and `CURRENT` is replaced only if it is still the object read (`If-Match`); a put is
//! atomic, so a reader sees the old pointer or the new one, never a part.

use std::collections::BTreeMap;
use std::fs;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use txpipe_connectors::objects::{Objects, ObjectsError};
use txpipe_core::model::ModelArtifact;

use crate::{JobError, Result};

const POINTER: &str = "CURRENT";
const VERSIONS: &str = "versions";
const MODEL_FILE: &str = "model.json";
const LAST_RUN: &str = "LAST_RUN.json";
/// Attempts at replacing `CURRENT` on an object store while other publishers keep changing it.
const SWITCH_ATTEMPTS: usize = 20;

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

/// A model directory: a local folder or an object-store URL.
#[derive(Debug, Clone)]
pub struct ModelStore {
    at: At,
}

#[derive(Debug, Clone)]
enum At {
    Local(PathBuf),
    Object(Objects),
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = fs::File::create(path).map_err(|e| JobError::io(path, e))?;
    f.write_all(bytes).map_err(|e| JobError::io(path, e))?;
    f.sync_all().map_err(|e| JobError::io(path, e))
}

fn sync_dir(path: &Path) -> Result<()> {
    fs::File::open(path).and_then(|d| d.sync_all()).map_err(|e| JobError::io(path, e))
}

/// Runs an object-store request to its end from the store's synchronous callers (some of them
/// inside the jobs' runtime, where blocking on a future of that runtime is not allowed): on a
/// runtime of its own, one thread, started at the first request.
fn block<T: Send + 'static>(request: impl Future<Output = T> + Send + 'static) -> Result<T> {
    static RUNTIME: OnceLock<std::io::Result<tokio::runtime::Runtime>> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("txpipe-models")
            .enable_all()
            .build()
    });
    let runtime = runtime
        .as_ref()
        .map_err(|e| JobError::Internal(format!("starting the model store's runtime: {e}")))?;
    let (answer, answered) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = answer.send(request.await);
    });
    answered.recv().map_err(|_| JobError::Internal("a model store request ended without an answer".into()))
}

/// A request's answer, with the store's error as the job's.
fn answer<T>(r: Result<std::result::Result<T, ObjectsError>>) -> Result<T> {
    r?.map_err(JobError::from)
}

impl ModelStore {
    /// A model directory in a local folder.
    pub fn new(dir: impl Into<PathBuf>) -> ModelStore {
        ModelStore { at: At::Local(dir.into()) }
    }

    /// The model directory at `location`: a local path, or an object-store URL opened with the
    /// tables' storage options.
    pub fn open(location: &str, storage_options: &BTreeMap<String, String>) -> Result<ModelStore> {
        if txpipe_connectors::delta::is_object_store(location) {
            Ok(ModelStore { at: At::Object(Objects::open(location, storage_options)?) })
        } else {
            Ok(ModelStore::new(location))
        }
    }

    /// Where the directory is (a path or a URL).
    pub fn location(&self) -> String {
        match &self.at {
            At::Local(dir) => dir.display().to_string(),
            At::Object(o) => o.url().to_string(),
        }
    }

    /// Where version `id`'s file `name` is (a path or a URL).
    pub fn file_location(&self, id: &str, name: &str) -> String {
        match &self.at {
            At::Local(dir) => dir.join(VERSIONS).join(id).join(name).display().to_string(),
            At::Object(o) => o.url_of(&format!("{VERSIONS}/{id}/{name}")),
        }
    }

    /// An object's bytes (None: there is none).
    fn get(o: &Objects, name: String) -> Result<Option<Vec<u8>>> {
        let o = o.clone();
        answer(block(async move { o.get(&name).await.map(|got| got.map(|g| g.bytes)) }))
    }

    /// Records the last training run's decision (written whole, replacing the old one).
    pub fn record_run(&self, run: &LastRun) -> Result<()> {
        let text = serde_json::to_vec_pretty(run).map_err(|e| JobError::data(LAST_RUN, e))?;
        match &self.at {
            At::Local(dir) => {
                fs::create_dir_all(dir).map_err(|e| JobError::io(dir, e))?;
                let path = dir.join(LAST_RUN);
                let tmp = dir.join(format!(".{LAST_RUN}.tmp"));
                write_synced(&tmp, &text)?;
                fs::rename(&tmp, &path).map_err(|e| JobError::io(&path, e))
            }
            At::Object(o) => {
                let o = o.clone();
                answer(block(async move { o.put(LAST_RUN, text).await }))
            }
        }
    }

    /// The last training run's decision, if one was recorded.
    pub fn last_run(&self) -> Option<LastRun> {
        let bytes = match &self.at {
            At::Local(dir) => fs::read(dir.join(LAST_RUN)).ok()?,
            At::Object(o) => Self::get(o, LAST_RUN.into()).ok()??,
        };
        serde_json::from_slice(&bytes).ok()
    }

    /// The version ids kept, oldest first.
    pub fn versions(&self) -> Vec<String> {
        let names: Vec<String> = match &self.at {
            At::Local(dir) => fs::read_dir(dir.join(VERSIONS))
                .map(|entries| {
                    entries.flatten().filter_map(|e| e.file_name().to_str().map(str::to_string)).collect()
                })
                .unwrap_or_default(),
            // The versions that hold a model (a store may keep the folder of one removed).
            At::Object(o) => {
                let o = o.clone();
                let names = answer(block(async move { o.names(VERSIONS).await })).unwrap_or_default();
                let (prefix, suffix) = (format!("{VERSIONS}/"), format!("/{MODEL_FILE}"));
                names
                    .iter()
                    .filter_map(|n| n.strip_suffix(suffix.as_str())?.strip_prefix(prefix.as_str()))
                    .map(str::to_string)
                    .collect()
            }
        };
        let mut ids: Vec<String> = names.into_iter().filter(|n| n.parse::<u64>().is_ok()).collect();
        ids.sort();
        ids
    }

    /// The id `CURRENT` names, if any.
    pub fn current_id(&self) -> Result<Option<String>> {
        let text = match &self.at {
            At::Local(dir) => {
                let path = dir.join(POINTER);
                match fs::read_to_string(&path) {
                    Ok(text) => text,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(JobError::io(path, e)),
                }
            }
            At::Object(o) => match Self::get(o, POINTER.into())? {
                Some(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                None => return Ok(None),
            },
        };
        Ok(Some(text.trim().to_string()).filter(|id| !id.is_empty()))
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
        let location = self.file_location(id, MODEL_FILE);
        let text = match &self.at {
            At::Local(_) => fs::read(&location).map_err(|e| JobError::io(&location, e))?,
            At::Object(o) => Self::get(o, format!("{VERSIONS}/{id}/{MODEL_FILE}"))?.ok_or_else(|| {
                JobError::data(&location, "no such model (its version is not in the model directory)")
            })?,
        };
        let model: ModelArtifact = serde_json::from_slice(&text)
            .map_err(|e| JobError::data(&location, format!("not a model.json of txpipe: {e}")))?;
        if model.format != txpipe_core::model::artifact::FORMAT {
            return Err(JobError::data(
                location,
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
        let highest = match &self.at {
            At::Local(dir) => {
                let versions = dir.join(VERSIONS);
                match fs::read_dir(&versions) {
                    Ok(entries) => entries
                        .flatten()
                        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u64>().ok()))
                        .max()
                        .unwrap_or(0),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
                    Err(e) => return Err(JobError::io(versions, e)),
                }
            }
            At::Object(o) => {
                let o = o.clone();
                let names = answer(block(async move { o.folders(VERSIONS).await }))?;
                names.iter().filter_map(|n| n.parse::<u64>().ok()).max().unwrap_or(0)
            }
        };
        Ok(highest + 1)
    }

    /// Publishes a model: `model` makes the artifact for an id, `extra` writes the version's
    /// other files into a folder given the artifact; then the version takes its place and
    /// becomes current. Returns the new version's id.
    pub fn publish(
        &self,
        model: impl Fn(&str) -> ModelArtifact,
        extra: impl Fn(&ModelArtifact, &Path) -> Result<()>,
    ) -> Result<String> {
        let id = match &self.at {
            At::Local(dir) => self.publish_local(dir, model, extra)?,
            At::Object(o) => self.publish_object(o, model, extra)?,
        };
        if !self.point_to(&id)? {
            tracing::warn!(
                version = %id,
                current = ?self.current_id().ok().flatten(),
                "published, but a newer version is current already (another publisher at the same time); \
                 CURRENT stays on it"
            );
        }
        Ok(id)
    }

    fn publish_local(
        &self,
        dir: &Path,
        model: impl Fn(&str) -> ModelArtifact,
        extra: impl Fn(&ModelArtifact, &Path) -> Result<()>,
    ) -> Result<String> {
        let versions = dir.join(VERSIONS);
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
                write_synced(&staging.join(MODEL_FILE), &serialise(&artifact)?)?;
                extra(&artifact, &staging)?;
                sync_dir(&staging)?;
                let target = versions.join(&id);
                // Fails when another publisher took the id first: take the next.
                match fs::rename(&staging, &target) {
                    Ok(()) if fs::metadata(&target).is_ok() => return Ok(id),
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
        if written.is_err() {
            let _ = fs::remove_dir_all(&staging);
        }
        let id = written?;
        sync_dir(&versions)?;
        Ok(id)
    }

    /// On an object store: the version's other files are written to a local folder first; the
    /// id is taken by creating its `model.json` only if absent, then the other files follow.
    fn publish_object(
        &self,
        o: &Objects,
        model: impl Fn(&str) -> ModelArtifact,
        extra: impl Fn(&ModelArtifact, &Path) -> Result<()>,
    ) -> Result<String> {
        let staging = tempfile::tempdir().map_err(|e| JobError::io(std::env::temp_dir(), e))?;
        let mut number = self.next_id()?;
        let (id, artifact) = loop {
            let id = format!("{number:06}");
            let artifact = model(&id);
            let (o, name, text) = (o.clone(), format!("{VERSIONS}/{id}/{MODEL_FILE}"), serialise(&artifact)?);
            if answer(block(async move { o.put_if(&name, text, None).await }))? {
                break (id, artifact);
            }
            // Another publisher took this id first: take the next.
            number += 1;
        };
        let rest = (|| {
            extra(&artifact, staging.path())?;
            let entries = fs::read_dir(staging.path()).map_err(|e| JobError::io(staging.path(), e))?;
            for entry in entries {
                let path = entry.map_err(|e| JobError::io(staging.path(), e))?.path();
                let Some(file) = path.file_name().and_then(|f| f.to_str()).map(str::to_string) else {
                    continue;
                };
                let bytes = fs::read(&path).map_err(|e| JobError::io(&path, e))?;
                let (o, name) = (o.clone(), format!("{VERSIONS}/{id}/{file}"));
                answer(block(async move { o.put(&name, bytes).await }))?;
            }
            Ok(())
        })();
        if let Err(e) = rest {
            // Not published: the version's model goes, so that its id is not listed as kept.
            let (o, name) = (o.clone(), format!("{VERSIONS}/{id}/{MODEL_FILE}"));
            if let Err(gone) = answer(block(async move { o.delete(&name).await })) {
                tracing::warn!(version = %id, error = %gone, "removing the unpublished version failed");
            }
            return Err(e);
        }
        Ok(id)
    }

    /// Points `CURRENT` at version `id`, unless a newer version is current already: of two
    /// publishers at once, the later version stays current whichever of them switches last.
    /// Locally the switch holds an exclusive lock on `.CURRENT.lock` (released when the file
    /// closes); on an object store `CURRENT` is replaced only if it is still the one read, and
    /// read again otherwise. Returns whether it switched.
    fn point_to(&self, id: &str) -> Result<bool> {
        let number = |v: &str| v.parse::<u64>().ok();
        let text = format!("{id}\n").into_bytes();
        match &self.at {
            At::Local(dir) => {
                let lock_path = dir.join(format!(".{POINTER}.lock"));
                let lock = fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&lock_path)
                    .map_err(|e| JobError::io(&lock_path, e))?;
                lock.lock().map_err(|e| JobError::io(&lock_path, e))?;
                if self.current_id()?.is_some_and(|current| number(&current) > number(id)) {
                    return Ok(false);
                }
                let pointer_tmp = dir.join(format!(".{POINTER}.{}", std::process::id()));
                write_synced(&pointer_tmp, &text)?;
                let pointer = dir.join(POINTER);
                fs::rename(&pointer_tmp, &pointer).map_err(|e| JobError::io(&pointer, e))?;
                sync_dir(dir)?;
                Ok(true)
            }
            At::Object(o) => {
                for _ in 0..SWITCH_ATTEMPTS {
                    let (reader, writer, text) = (o.clone(), o.clone(), text.clone());
                    let seen = answer(block(async move { reader.get(POINTER).await }))?;
                    let current = seen.as_ref().map(|s| String::from_utf8_lossy(&s.bytes).trim().to_string());
                    if current.is_some_and(|c| number(&c) > number(id)) {
                        return Ok(false);
                    }
                    let seen = seen.map(|s| s.seen);
                    if answer(block(async move { writer.put_if(POINTER, text, seen.as_ref()).await }))? {
                        return Ok(true);
                    }
                    // Another publisher switched it since it was read: look again.
                }
                Err(JobError::data(
                    o.url_of(POINTER),
                    format!(
                        "changed by another writer at each of {SWITCH_ATTEMPTS} attempts to switch it to {id}"
                    ),
                ))
            }
        }
    }
}

/// A model's `model.json` text.
fn serialise(artifact: &ModelArtifact) -> Result<Vec<u8>> {
    // The artifact's types always serialise: a failure here is a bug.
    serde_json::to_vec_pretty(artifact).map_err(|e| JobError::Internal(format!("serialising the model: {e}")))
}

/// The S3 store of the tests (shared with the connectors' tests).
#[cfg(test)]
#[path = "../../connectors/tests/common/s3.rs"]
mod test_s3;

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

    use super::test_s3 as s3;

    /// The same interleaving on the S3 store of `scripts/services up s3`, where the switch is a
    /// replacement of `CURRENT` only if unchanged; the versions and the last run read back.
    #[test]
    fn on_an_object_store_the_later_version_stays_current_too() {
        let (location, options) = s3::s3_location("models");
        let store = ModelStore::open(&format!("{location}/lr_model"), &options).unwrap();
        assert_eq!(store.current_id().unwrap(), None);
        assert_eq!(store.next_id().unwrap(), 1);
        assert!(store.point_to("000002").unwrap());
        assert!(!store.point_to("000001").unwrap());
        assert_eq!(store.current_id().unwrap().as_deref(), Some("000002"));
        assert!(store.point_to("000003").unwrap());
        assert!(store.point_to("000003").unwrap());
        assert_eq!(store.current_id().unwrap().as_deref(), Some("000003"));
        let run = LastRun {
            at: "2026-12-07T00:00:00Z".into(),
            outcome: "refused".into(),
            code: Some("auc_floor".into()),
            detail: Some("under the floor".into()),
            version: None,
            holdout_auc: Some(0.5),
        };
        store.record_run(&run).unwrap();
        assert_eq!(store.last_run(), Some(run));
        // A version the pointer names but the store does not hold is an error that says so.
        let missing = store.load("000003").unwrap_err().to_string();
        assert!(
            missing.contains("lr_model/versions/000003/model.json") && missing.contains("no such model"),
            "{missing}"
        );
    }

    #[test]
    fn a_model_directory_url_that_is_not_one_names_itself() {
        let e = ModelStore::open("s3://", &BTreeMap::new()).unwrap_err().to_string();
        assert!(e.starts_with("s3://"), "{e}");
    }
}
