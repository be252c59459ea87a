//! Small whole files under one object-store URL (`s3://bucket/prefix`): read, written whole,
//! created only when absent, replaced only when unchanged, and the folders under a prefix. For
//! what lives beside the tables on the same store (the model directory).
//!
//! In: a URL and the tables' storage options (endpoint, credentials, the same `AWS_*`
//! variables). Out: bytes, and whether a conditional write was taken or found the object
//! changed. A put replaces an object atomically (a reader sees the old or the new one); creation
//! only when absent is the store's conditional put (`If-None-Match: *`) that Delta commits rely
//! on; replacement only when unchanged is `If-Match` on the object's ETag.

use std::collections::BTreeMap;

use deltalake::logstore::ObjectStoreRef;
use deltalake::logstore::object_store::path::Path;
use deltalake::logstore::object_store::{
    Error as StoreError, GetOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    UpdateVersion,
};

/// What can go wrong with the files under a URL.
#[derive(Debug, thiserror::Error)]
pub enum ObjectsError {
    /// The URL or its options cannot make a store.
    #[error("{location}: {detail}")]
    Open { location: String, detail: String },
    #[error("{location}: {source}")]
    Store { location: String, source: Box<StoreError> },
}

impl ObjectsError {
    /// Whether trying again can succeed: the store's own failures (unreachable, timed out,
    /// refused), not a bad URL, a missing object or an operation the store does not support.
    pub fn retryable(&self) -> bool {
        match self {
            ObjectsError::Open { .. } => false,
            ObjectsError::Store { source, .. } => !matches!(
                **source,
                StoreError::NotFound { .. }
                    | StoreError::InvalidPath { .. }
                    | StoreError::NotSupported { .. }
                    | StoreError::NotImplemented { .. }
            ),
        }
    }
}

pub type Result<T, E = ObjectsError> = std::result::Result<T, E>;

/// The version of an object as read, to replace it only if it is still that one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    e_tag: Option<String>,
    version: Option<String>,
}

/// An object's bytes and its version.
#[derive(Debug, Clone)]
pub struct Object {
    pub bytes: Vec<u8>,
    pub seen: Seen,
}

/// The files under one object-store URL.
#[derive(Clone)]
pub struct Objects {
    url: String,
    store: ObjectStoreRef,
}

impl std::fmt::Debug for Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Objects").field("url", &self.url).finish()
    }
}

impl Objects {
    /// The store under `url`, with the tables' storage options (and txpipe's short request
    /// retries where they are not set).
    pub fn open(url: &str, storage_options: &BTreeMap<String, String>) -> Result<Objects> {
        let open_err = |detail: String| ObjectsError::Open { location: url.to_string(), detail };
        let parsed =
            url::Url::parse(url.trim_end_matches('/')).map_err(|e| open_err(format!("not a URL: {e}")))?;
        let options = crate::delta::store_options(url, storage_options);
        let store = deltalake::logstore::store_for(&parsed, options).map_err(|e| open_err(e.to_string()))?;
        Ok(Objects { url: url.trim_end_matches('/').to_string(), store })
    }

    /// The URL these files are under.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL of `name` under it.
    pub fn url_of(&self, name: &str) -> String {
        format!("{}/{name}", self.url)
    }

    fn error(&self, name: &str, source: StoreError) -> ObjectsError {
        ObjectsError::Store { location: self.url_of(name), source: Box::new(source) }
    }

    /// The object `name` (a path under the URL), None when there is none.
    pub async fn get(&self, name: &str) -> Result<Option<Object>> {
        let result = match self.store.get_opts(&Path::from(name), GetOptions::default()).await {
            Ok(r) => r,
            Err(StoreError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.error(name, e)),
        };
        let seen = Seen { e_tag: result.meta.e_tag.clone(), version: result.meta.version.clone() };
        let bytes = result.bytes().await.map_err(|e| self.error(name, e))?;
        Ok(Some(Object { bytes: bytes.to_vec(), seen }))
    }

    /// Writes `name` whole, replacing what is there.
    pub async fn put(&self, name: &str, bytes: Vec<u8>) -> Result<()> {
        self.put_mode(name, bytes, PutMode::Overwrite).await.map(|_| ())
    }

    /// Writes `name` only if there is no object of that name (or, with `seen`, only if the
    /// object is still the one read): false when another writer was first.
    ///
    /// A store that gives no version of its objects (no ETag), or does not support replacing
    /// only if unchanged, gets a plain replacement, with a warning: two writers at the same
    /// moment could then both think they replaced the object.
    pub async fn put_if(&self, name: &str, bytes: Vec<u8>, seen: Option<&Seen>) -> Result<bool> {
        let update = match seen {
            None => return self.put_mode(name, bytes, PutMode::Create).await,
            Some(Seen { e_tag: None, version: None }) => None,
            Some(s) => Some(UpdateVersion { e_tag: s.e_tag.clone(), version: s.version.clone() }),
        };
        if let Some(update) = update {
            match self.put_mode(name, bytes.clone(), PutMode::Update(update)).await {
                Err(ObjectsError::Store { source, .. })
                    if matches!(
                        *source,
                        StoreError::NotImplemented { .. } | StoreError::NotSupported { .. }
                    ) => {}
                answer => return answer,
            }
        }
        tracing::warn!(
            object = %self.url_of(name),
            "the store cannot replace an object only if unchanged: replacing it unconditionally"
        );
        self.put_mode(name, bytes, PutMode::Overwrite).await
    }

    /// Deletes `name` (nothing to do when it is not there).
    pub async fn delete(&self, name: &str) -> Result<()> {
        match self.store.delete(&Path::from(name)).await {
            Ok(()) | Err(StoreError::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(name, e)),
        }
    }

    async fn put_mode(&self, name: &str, bytes: Vec<u8>, mode: PutMode) -> Result<bool> {
        let options = PutOptions { mode, ..PutOptions::default() };
        match self.store.put_opts(&Path::from(name), PutPayload::from(bytes), options).await {
            Ok(_) => Ok(true),
            Err(StoreError::AlreadyExists { .. } | StoreError::Precondition { .. }) => Ok(false),
            Err(e) => Err(self.error(name, e)),
        }
    }

    /// The names (paths under the URL) of every object under `prefix`, at any depth.
    pub async fn names(&self, prefix: &str) -> Result<Vec<String>> {
        use futures::TryStreamExt;
        let listed: Vec<_> = self
            .store
            .list(Some(&Path::from(prefix)))
            .try_collect()
            .await
            .map_err(|e| self.error(prefix, e))?;
        Ok(listed.into_iter().map(|meta| meta.location.to_string()).collect())
    }

    /// The names of the folders directly under `prefix` (a store may keep a folder whose
    /// objects were all deleted).
    pub async fn folders(&self, prefix: &str) -> Result<Vec<String>> {
        let listed = self
            .store
            .list_with_delimiter(Some(&Path::from(prefix)))
            .await
            .map_err(|e| self.error(prefix, e))?;
        Ok(listed.common_prefixes.iter().filter_map(|p| p.filename().map(str::to_string)).collect())
    }
}
