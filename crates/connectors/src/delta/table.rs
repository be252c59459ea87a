//! One Delta table that txpipe appends to, with Kafka positions kept in the same commits.
//!
//! In: record batches and, per Kafka partition, the last offset they cover. Out: one Delta
//! commit holding the data files and one application-transaction (`txn`) action per partition,
//! so that data and position land together or not at all. Reading the positions back is how
//! ingest knows where to resume.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, mpsc};
use std::time::Duration;

use delta_kernel::expressions::Scalar;
use deltalake::arrow::array::{Array, Date32Array, RecordBatch};
use deltalake::arrow::datatypes::{DataType as ArrowType, SchemaRef, TimeUnit};
use deltalake::kernel::transaction::{
    CommitBuilder, CommitConflictError, CommitData, CommitProperties, TransactionError,
};
use deltalake::kernel::{Action, Add, DataType, StructField, Transaction};
use deltalake::logstore::object_store::ObjectStoreExt;
use deltalake::logstore::{CommitOrBytes, LogStore, get_actions};
use deltalake::parquet::basic::Compression;
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::parquet::schema::types::ColumnPath;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::table::config::TablePropertiesExt;
use deltalake::writer::{DeltaWriter, RecordBatchWriter, WriteMode};
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError, Path, TableProperty, ensure_table_uri};
use indexmap::IndexMap;
use url::Url;

/// What can go wrong with a table.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("delta table {location}: opening or creating failed: {source}")]
    Open { location: String, source: Box<DeltaTableError> },
    #[error("delta table {location}: its columns {found} do not match txpipe's {expected}")]
    Layout { location: String, found: String, expected: String },
    #[error("delta table {location}: writing data files failed: {source}")]
    Write { location: String, source: Box<DeltaTableError> },
    /// Another writer committed positions for the same partitions since our snapshot.
    #[error("delta table {location}: another writer moved the positions of these partitions")]
    Conflict { location: String },
    #[error("delta table {location}: commit failed after version {version:?}: {source}")]
    Commit { location: String, version: Option<u64>, source: Box<DeltaTableError> },
    #[error("delta table {location}: reading the log failed: {source}")]
    Read { location: String, source: Box<DeltaTableError> },
    #[error("delta table {location}: {operation} failed: {source}")]
    Maintenance { location: String, operation: &'static str, source: Box<DeltaTableError> },
    /// A log entry or a data file of a commit not read yet was removed (log clean-up, vacuum).
    #[error("delta table {location}: {detail}")]
    Gone { location: String, detail: String },
}

impl DeltaError {
    /// Whether trying again can succeed (storage hiccups), as opposed to a conflict or a bad
    /// table.
    pub fn retryable(&self) -> bool {
        match self {
            DeltaError::Open { source, .. }
            | DeltaError::Write { source, .. }
            | DeltaError::Commit { source, .. }
            | DeltaError::Read { source, .. }
            | DeltaError::Maintenance { source, .. } => matches!(
                **source,
                DeltaTableError::ObjectStore { .. }
                    | DeltaTableError::Io { .. }
                    | DeltaTableError::Transaction { source: TransactionError::MaxCommitAttempts(_) }
            ),
            DeltaError::Conflict { .. } | DeltaError::Layout { .. } | DeltaError::Gone { .. } => false,
        }
    }
}

pub type Result<T, E = DeltaError> = std::result::Result<T, E>;

/// Delta type of an Arrow type used by txpipe's tables.
fn delta_type(t: &ArrowType) -> DataType {
    match t {
        ArrowType::Utf8 => DataType::STRING,
        ArrowType::Float64 => DataType::DOUBLE,
        ArrowType::Int64 => DataType::LONG,
        ArrowType::Int32 => DataType::INTEGER,
        ArrowType::Boolean => DataType::BOOLEAN,
        ArrowType::Date32 => DataType::DATE,
        ArrowType::Binary => DataType::BINARY,
        ArrowType::Timestamp(TimeUnit::Microsecond, _) => DataType::TIMESTAMP,
        // txpipe's layouts use only the types above (see rows.rs).
        other => unreachable!("no Delta mapping for {other}"),
    }
}

fn describe(schema: &SchemaRef) -> String {
    let cols: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| format!("{} {}{}", f.name(), f.data_type(), if f.is_nullable() { "?" } else { "" }))
        .collect();
    format!("[{}]", cols.join(", "))
}

/// Opens an existing table at its newest version; a missing table is an error.
pub async fn open_existing(location: &str, storage_options: &BTreeMap<String, String>) -> Result<DeltaTable> {
    let open_err = |source| DeltaError::Open { location: location.to_string(), source: Box::new(source) };
    let url = ensure_table_uri(location).map_err(open_err)?;
    let options: HashMap<String, String> = storage_options.clone().into_iter().collect();
    let mut table = DeltaTable::try_from_url_with_storage_options(url, options).await.map_err(open_err)?;
    if table.version().is_none() {
        return Err(open_err(DeltaTableError::NotATable(format!("no Delta table at {location}"))));
    }
    table.update_state().await.map_err(open_err)?;
    Ok(table)
}

/// A table txpipe appends to.
///
/// Appending needs no list of the table's files, only the tail of its log: this handle keeps
/// the table as last loaded, plus what the log says since (`head`, `recent`). Its own commits
/// and other writers' commits are read one log entry each, so a commit costs the same on a
/// table of ten files and of a million; the full state is loaded again only when the log
/// changes the table's schema or protocol, or when it has moved past what the tail can show.
pub struct Table {
    /// The table as last loaded in full.
    table: DeltaTable,
    location: String,
    url: Url,
    storage_options: HashMap<String, String>,
    layout: SchemaRef,
    app_prefix: String,
    partition_by: Option<Vec<String>>,
    /// Columns whose values are (nearly) all distinct: written without a dictionary.
    distinct: Vec<String>,
    /// The newest version known: the loaded one, or a later one read from the log's tail or
    /// committed by this handle.
    head: Option<u64>,
    /// Positions (application-transaction id → value) stored by the commits after the loaded
    /// version up to `head`.
    recent: HashMap<String, i64>,
    /// Whether appends write their log entry directly: the table's protocol asks nothing of a
    /// writer beyond what an append of txpipe's files meets (writer version 2 or less).
    direct: bool,
    checkpoints: Checkpoints,
}

impl Table {
    /// Opens the table at `location` (a path or URL), creating it with the given layout when it
    /// does not exist. An existing table must have the same columns.
    pub async fn open_or_create(
        location: &str,
        storage_options: &BTreeMap<String, String>,
        layout: SchemaRef,
        partition_by: Option<&str>,
        app_prefix: &str,
        checkpoint_interval: u32,
    ) -> Result<Table> {
        let open_err = |source| DeltaError::Open { location: location.to_string(), source: Box::new(source) };
        let url = ensure_table_uri(location).map_err(open_err)?;
        let options: HashMap<String, String> = storage_options.clone().into_iter().collect();
        let table = DeltaTable::try_from_url_with_storage_options(url.clone(), options.clone())
            .await
            .map_err(open_err)?;
        let table = if table.version().is_some() {
            table
        } else {
            let columns: Vec<StructField> = layout
                .fields()
                .iter()
                .map(|f| StructField::new(f.name(), delta_type(f.data_type()), f.is_nullable()))
                .collect();
            let created = table
                .create()
                .with_columns(columns)
                .with_partition_columns(partition_by.into_iter().map(str::to_string))
                .with_configuration_property(
                    TableProperty::CheckpointInterval,
                    Some(checkpoint_interval.to_string()),
                )
                .with_save_mode(SaveMode::Ignore)
                .await;
            match created {
                Ok(t) => {
                    tracing::info!(location, "created delta table");
                    t
                }
                // Another process created it at the same moment: open theirs.
                Err(e) => {
                    let mut t = DeltaTable::try_from_url_with_storage_options(url.clone(), options.clone())
                        .await
                        .map_err(open_err)?;
                    t.update_state().await.map_err(|_| open_err(e))?;
                    t
                }
            }
        };
        let mut this = Table {
            head: table.version(),
            table,
            location: location.to_string(),
            url,
            storage_options: options,
            layout,
            app_prefix: app_prefix.to_string(),
            partition_by: partition_by.map(|p| vec![p.to_string()]),
            distinct: Vec::new(),
            recent: HashMap::new(),
            direct: false,
            checkpoints: Checkpoints::default(),
        };
        this.loaded()?;
        Ok(this)
    }

    /// Takes in a table state just loaded in full: checks its columns, and reads what it asks
    /// of a writer.
    fn loaded(&mut self) -> Result<()> {
        self.head = self.table.version();
        self.recent.clear();
        let found = self.arrow_schema()?;
        let expected = &self.layout;
        let same = found.fields().len() == expected.fields().len()
            && found.fields().iter().zip(expected.fields()).all(|(a, b)| {
                a.name() == b.name() && a.data_type() == b.data_type() && a.is_nullable() == b.is_nullable()
            });
        if !same {
            return Err(DeltaError::Layout {
                location: self.location.clone(),
                found: describe(&found),
                expected: describe(expected),
            });
        }
        let snapshot = self.table.snapshot().map_err(|source| self.read_err(source))?;
        // The protocol's fields are read from its log form (the kernel keeps its getters to
        // itself).
        let protocol = serde_json::to_value(snapshot.protocol()).unwrap_or_default();
        let writer_version = protocol.get("minWriterVersion").and_then(|v| v.as_i64()).unwrap_or(i64::MAX);
        self.direct = writer_version <= 2;
        if !self.direct {
            tracing::info!(
                location = %self.location,
                writer_version,
                "the table's protocol asks more of a writer than txpipe's own log entries: commits go through delta-rs"
            );
        }
        let config = snapshot.table_config();
        self.checkpoints.interval = config.checkpoint_interval().get();
        Ok(())
    }

    fn arrow_schema(&self) -> Result<SchemaRef> {
        let snapshot = self.table.snapshot().map_err(|source| self.read_err(source))?;
        Ok(snapshot.snapshot().arrow_schema())
    }

    fn read_err(&self, source: DeltaTableError) -> DeltaError {
        DeltaError::Read { location: self.location.clone(), source: Box::new(source) }
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    /// Declares columns whose values are (nearly) all distinct, such as ids: their data is
    /// written without a dictionary.
    pub fn with_distinct_columns(mut self, columns: &[&str]) -> Table {
        self.distinct = columns.iter().map(|c| c.to_string()).collect();
        self
    }

    /// The newest version known to this handle (see [`Table::refresh`]).
    pub fn version(&self) -> Option<u64> {
        self.head
    }

    /// The table as delta-rs last loaded it in full, which can be older than
    /// [`Table::version`]; [`Table::load`] brings it to the newest version.
    pub fn delta(&self) -> &DeltaTable {
        &self.table
    }

    /// Loads the newest version of the table in full (its files included).
    pub async fn load(&mut self) -> Result<()> {
        let r = self.table.update_state().await;
        r.map_err(|source| self.read_err(source))?;
        self.loaded()
    }

    fn app_id(&self, partition: i32) -> String {
        format!("{}-{partition}", self.app_prefix)
    }

    /// Brings this handle to the newest version of the table: reads the log entries after the
    /// known head, one by one, and loads the table in full only when one of them changes its
    /// schema or protocol or when the log was cleaned up past the head.
    pub async fn refresh(&mut self) -> Result<()> {
        self.tail().await.map(drop)
    }

    /// Reads the log after the known head (see [`Table::refresh`]); returns what the entries
    /// read changed.
    async fn tail(&mut self) -> Result<Tail> {
        let mut tail = Tail::default();
        if !self.direct {
            let before = self.head;
            self.load().await?;
            tail.reloaded = self.head != before;
            return Ok(tail);
        }
        let log_store = self.table.log_store();
        loop {
            let next = self.head.map_or(0, |h| h + 1);
            let entry = log_store.read_commit_entry(next).await.map_err(|source| self.read_err(source))?;
            let Some(bytes) = entry else { break };
            let actions = get_actions(next, &bytes).map_err(|source| self.read_err(source))?;
            if actions.iter().any(|a| matches!(a, Action::Metadata(_) | Action::Protocol(_))) {
                tracing::info!(location = %self.location, version = next, "the table's schema or protocol changed; loading it again");
                self.load().await?;
                tail.reloaded = true;
                return Ok(tail);
            }
            for action in actions {
                if let Action::Txn(txn) = action {
                    tail.apps.insert(txn.app_id.clone());
                    self.recent.insert(txn.app_id, txn.version);
                }
            }
            self.head = Some(next);
        }
        // Log clean-up deletes entries only behind a checkpoint: a checkpoint past the head
        // means the entries after the head may be gone, and the tail cannot be trusted.
        if self.last_checkpoint(&log_store).await? > self.head {
            tracing::info!(location = %self.location, head = ?self.head, "a checkpoint is past this handle's head; loading the table again");
            self.load().await?;
            tail.reloaded = true;
        }
        Ok(tail)
    }

    /// The version of the newest checkpoint the log points at, if any.
    async fn last_checkpoint(&self, log_store: &dyn LogStore) -> Result<Option<u64>> {
        let path = Path::from("_delta_log/_last_checkpoint");
        let read = match log_store.object_store(None).get(&path).await {
            Ok(found) => found.bytes().await,
            Err(deltalake::ObjectStoreError::NotFound { .. }) => return Ok(None),
            Err(e) => Err(e),
        };
        let bytes = read.map_err(|e| self.read_err(e.into()))?;
        // A pointer being rewritten or unreadable is no proof of anything: trust the tail.
        let pointer: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
        Ok(pointer.and_then(|p| p.get("version")?.as_u64()))
    }

    /// The last offset stored per partition, at the newest known version (None: nothing
    /// stored).
    pub async fn positions(&self, partitions: &[i32]) -> Result<HashMap<i32, Option<i64>>> {
        let snapshot = self.table.snapshot().map_err(|source| self.read_err(source))?;
        let log_store = self.table.log_store();
        let mut out = HashMap::with_capacity(partitions.len());
        for &p in partitions {
            let app_id = self.app_id(p);
            let v = match self.recent.get(&app_id) {
                Some(&v) => Some(v),
                None => snapshot
                    .transaction_version(log_store.as_ref(), app_id)
                    .await
                    .map_err(|source| self.read_err(source))?,
            };
            out.insert(p, v);
        }
        Ok(out)
    }

    /// A writer of data files for this table: batches written to it are encoded and uploaded
    /// as they come; nothing is visible until [`Table::commit`] gets its files.
    pub fn writer(&self) -> Result<TableWriter> {
        let location = self.location.clone();
        let mut properties = WriterProperties::builder()
            .set_created_by(format!("txpipe {}", env!("CARGO_PKG_VERSION")))
            .set_compression(Compression::SNAPPY);
        for column in &self.distinct {
            // A dictionary of unique values only costs time before the writer gives it up.
            properties = properties.set_column_dictionary_enabled(ColumnPath::from(column.as_str()), false);
        }
        let inner = RecordBatchWriter::for_table(&self.table)
            .map_err(|source| DeltaError::Write { location: location.clone(), source: Box::new(source) })?
            .with_writer_properties(properties.build());
        let date_partition = match self.partition_by.as_deref() {
            Some([column]) => {
                let schema = self.arrow_schema()?;
                let is_date =
                    schema.field_with_name(column).is_ok_and(|f| f.data_type() == &ArrowType::Date32);
                is_date.then(|| column.clone())
            }
            _ => None,
        };
        Ok(TableWriter { inner, location, rows: 0, date_partition })
    }

    /// Appends `batches` and records `positions` in one commit (see [`Table::commit`]).
    pub async fn append(
        &mut self,
        batches: &[RecordBatch],
        positions: &BTreeMap<i32, i64>,
        metadata: serde_json::Map<String, serde_json::Value>,
    ) -> Result<u64> {
        let mut writer = self.writer()?;
        for b in batches {
            writer.write(b).await?;
        }
        let files = writer.finish().await?;
        self.commit(files, positions, metadata).await
    }

    /// Commits written `files` and records `positions` (partition → last offset covered) in
    /// one commit, checked against the newest known version: if another writer stored a
    /// position for any of these partitions since, nothing is committed and
    /// [`DeltaError::Conflict`] comes back. Returns the new version.
    pub async fn commit(
        &mut self,
        files: Vec<Add>,
        positions: &BTreeMap<i32, i64>,
        metadata: serde_json::Map<String, serde_json::Value>,
    ) -> Result<u64> {
        if !self.direct {
            return self.commit_through_delta_rs(files, positions, metadata).await;
        }
        let txns: Vec<Transaction> =
            positions.iter().map(|(&p, &o)| Transaction::new(self.app_id(p), o)).collect();
        let ours: HashSet<String> = txns.iter().map(|t| t.app_id.clone()).collect();
        let data = CommitData::new(
            files.into_iter().map(Action::Add).collect(),
            self.operation(),
            metadata.into_iter().collect(),
            txns.clone(),
        );
        let commit_err = |location: &str, version, source: TransactionError| DeltaError::Commit {
            location: location.to_string(),
            version,
            source: Box::new(source.into()),
        };
        let bytes = data.get_bytes().map_err(|e| commit_err(&self.location, self.head, e))?;
        let log_store = self.table.log_store();
        for _ in 0..MAX_COMMIT_ATTEMPTS {
            let version = self.head.map_or(0, |h| h + 1);
            let entry = CommitOrBytes::LogBytes(bytes.clone());
            match log_store.write_commit_entry(version, entry, uuid::Uuid::new_v4()).await {
                Ok(()) => {
                    self.head = Some(version);
                    self.recent.extend(txns.into_iter().map(|t| (t.app_id, t.version)));
                    self.checkpoints.committed(&self.url, &self.storage_options, version);
                    return Ok(version);
                }
                Err(TransactionError::VersionAlreadyExists(_)) => {
                    // Someone else took the version: read what they wrote; try the next one
                    // unless they moved these partitions' positions.
                    let tail = self.tail().await?;
                    if tail.reloaded || !tail.apps.is_disjoint(&ours) {
                        return Err(DeltaError::Conflict { location: self.location.clone() });
                    }
                }
                Err(e) => return Err(commit_err(&self.location, self.head, e)),
            }
        }
        Err(commit_err(
            &self.location,
            self.head,
            TransactionError::MaxCommitAttempts(MAX_COMMIT_ATTEMPTS as i32),
        ))
    }

    fn operation(&self) -> DeltaOperation {
        DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: self.partition_by.clone(),
            predicate: None,
        }
    }

    /// [`Table::commit`] for tables whose protocol needs delta-rs's checks: the commit goes
    /// through delta-rs's transaction, and its state is loaded after it.
    async fn commit_through_delta_rs(
        &mut self,
        files: Vec<Add>,
        positions: &BTreeMap<i32, i64>,
        metadata: serde_json::Map<String, serde_json::Value>,
    ) -> Result<u64> {
        let actions: Vec<Action> = files.into_iter().map(Action::Add).collect();
        let txns: Vec<Transaction> =
            positions.iter().map(|(&p, &o)| Transaction::new(self.app_id(p), o)).collect();
        let properties = CommitProperties::default()
            .with_application_transactions(txns)
            .with_metadata(metadata)
            .with_max_retries(MAX_COMMIT_ATTEMPTS);
        let read_version = self.table.version();
        let snapshot = self.table.snapshot().map_err(|source| self.read_err(source))?;
        let prepared = CommitBuilder::from(properties)
            .with_actions(actions)
            .build(Some(snapshot), self.table.log_store(), self.operation())
            .into_prepared_commit_future()
            .await;
        let commit_err = |location: &str, source: DeltaTableError| match source {
            DeltaTableError::Transaction {
                source: TransactionError::CommitConflict(CommitConflictError::ConcurrentTransaction),
            } => DeltaError::Conflict { location: location.to_string() },
            source => DeltaError::Commit {
                location: location.to_string(),
                version: read_version,
                source: Box::new(source),
            },
        };
        let post = prepared
            .map_err(|e| commit_err(&self.location, e))?
            .await
            .map_err(|e| commit_err(&self.location, e))?;
        let version = post.version;
        // The commit is durable now; a failed checkpoint or log clean-up only costs read speed.
        match post.await {
            Ok(done) => {
                self.table.state = Some(done.snapshot);
                self.loaded()?;
            }
            Err(e) => {
                tracing::warn!(location = %self.location, version, error = %e, "post-commit work failed; reloading");
                self.load().await?;
            }
        }
        Ok(version)
    }

    /// Waits (up to `limit`) for a checkpoint being written in the background to be done.
    pub fn wait_for_checkpoint(&mut self, limit: Duration) {
        self.checkpoints.wait(limit);
    }
}

/// How often a commit is tried again when other writers keep taking the next version.
const MAX_COMMIT_ATTEMPTS: usize = 100;

/// What reading the log's tail found.
#[derive(Default)]
struct Tail {
    /// The table was loaded again in full (schema or protocol changed, or the log moved past
    /// the tail).
    reloaded: bool,
    /// Application-transaction ids whose positions the entries read stored.
    apps: HashSet<String>,
}

/// Checkpoints of the log, written beside the commits: every `interval` versions, a checkpoint
/// is written on a thread of its own (it loads the table's full state, which grows with the
/// table), then expired log entries are cleaned up as the table's settings say. One at a time:
/// while one is being written, the next due is skipped.
#[derive(Default)]
struct Checkpoints {
    interval: u64,
    /// Says when the checkpoint being written is done (in a mutex: the table is shared
    /// between threads).
    running: Option<Mutex<mpsc::Receiver<()>>>,
}

impl Checkpoints {
    fn committed(&mut self, url: &Url, options: &HashMap<String, String>, version: u64) {
        if self.interval == 0 || version == 0 || !version.is_multiple_of(self.interval) {
            return;
        }
        if let Some(done) = self.running.as_mut().and_then(|d| d.get_mut().ok()) {
            match done.try_recv() {
                Err(mpsc::TryRecvError::Empty) => {
                    tracing::debug!(version, "a checkpoint is still being written; this one is skipped");
                    return;
                }
                Ok(()) | Err(mpsc::TryRecvError::Disconnected) => {}
            }
        }
        let (done_tx, done_rx) = mpsc::channel();
        let (url, options) = (url.clone(), options.clone());
        let spawned = std::thread::Builder::new().name("txpipe-checkpoint".into()).spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            let result = match runtime {
                Ok(rt) => rt.block_on(write_checkpoint(url.clone(), options, version)),
                Err(e) => Err(DeltaTableError::Generic(format!("no runtime for the checkpoint: {e}"))),
            };
            match result {
                Ok(cleaned) => tracing::debug!(%url, version, cleaned, "checkpoint written"),
                // The commits are durable; a missing checkpoint only costs readers time.
                Err(e) => tracing::warn!(%url, version, error = %e, "writing a checkpoint failed"),
            }
            let _ = done_tx.send(());
        });
        match spawned {
            Ok(_) => self.running = Some(Mutex::new(done_rx)),
            Err(e) => tracing::warn!(version, error = %e, "no thread for a checkpoint; skipped"),
        }
    }

    fn wait(&mut self, limit: Duration) {
        if let Some(done) = self.running.take().and_then(|d| d.into_inner().ok())
            && let Err(mpsc::RecvTimeoutError::Timeout) = done.recv_timeout(limit)
        {
            tracing::warn!(
                limit_ms = limit.as_millis() as u64,
                "a checkpoint is still being written; not waiting longer"
            );
        }
    }
}

impl Drop for Checkpoints {
    fn drop(&mut self) {
        // A checkpoint cut off half-way is harmless (readers use the log), but one that is
        // nearly done is worth its wait.
        self.wait(Duration::from_secs(30));
    }
}

/// Writes the checkpoint of `version` and cleans up expired log entries; returns how many
/// were deleted.
async fn write_checkpoint(
    url: Url,
    options: HashMap<String, String>,
    version: u64,
) -> Result<usize, DeltaTableError> {
    let table =
        DeltaTableBuilder::from_url(url)?.with_storage_options(options).with_version(version).load().await?;
    deltalake::checkpoints::create_checkpoint(&table, None).await?;
    if table.snapshot()?.table_config().enable_expired_log_cleanup() {
        return deltalake::checkpoints::cleanup_metadata(&table, None).await;
    }
    Ok(0)
}

/// The value of a non-null Date32 column when every row has the same one.
fn single_date(batch: &RecordBatch, column: &str) -> Option<i32> {
    let dates = batch.column_by_name(column)?.as_any().downcast_ref::<Date32Array>()?;
    if dates.null_count() > 0 {
        return None;
    }
    let values = dates.values();
    let first = *values.first()?;
    values.iter().all(|&d| d == first).then_some(first)
}

/// Data files being written for one commit.
pub struct TableWriter {
    inner: RecordBatchWriter,
    location: String,
    rows: usize,
    /// The partition column, when the table is partitioned by one date column.
    date_partition: Option<String>,
}

impl TableWriter {
    /// Encodes and uploads a batch (split by partition values).
    pub async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.rows += batch.num_rows();
        let location = &self.location;
        let write_err = |source| DeltaError::Write { location: location.clone(), source: Box::new(source) };
        // A stream's batch is usually all one day: then it goes to its partition as it is,
        // without the sort and copy of the general split.
        if let Some((column, day)) =
            self.date_partition.as_ref().and_then(|c| Some((c, single_date(batch, c)?)))
        {
            let values = IndexMap::from([(column.clone(), Scalar::Date(day))]);
            return self
                .inner
                .write_partition(batch.clone(), &values, WriteMode::Default)
                .await
                .map(drop)
                .map_err(write_err);
        }
        self.inner.write(batch.clone()).await.map_err(write_err)
    }

    /// Rows written so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Closes the files; their `add` actions go to [`Table::commit`].
    pub async fn finish(mut self) -> Result<Vec<Add>> {
        if self.rows == 0 {
            return Ok(Vec::new());
        }
        let location = self.location.clone();
        self.inner.flush().await.map_err(|source| DeltaError::Write { location, source: Box::new(source) })
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::collections::BTreeMap;

    use deltalake::arrow::array::{Array, Date32Array, TimestampMicrosecondArray};
    use txpipe_core::event::{EventParser, Value};
    use txpipe_core::schema::Schema;

    use super::*;
    use crate::delta::table::open_existing;
    use crate::delta::{CleanRows, EVENT_DATE, clean_schema, data_files, read_rows};

    /// A clean batch of one event per time, ids made of the time and the position.
    pub(in crate::delta) fn rows(parser: &EventParser, times: &[&str]) -> RecordBatch {
        let mut rows = CleanRows::new(parser.schema());
        for (i, time) in times.iter().enumerate() {
            let event = format!(
                r#"{{"transaction_id":"t{time}{i}","account_id":"a","merchant_category":"fuel","amount":1.0,"currency":"EUR","event_time":"{time}"}}"#
            );
            let mut values: Vec<Value> = Vec::new();
            parser.parse(event.as_bytes(), &mut values).unwrap();
            rows.push(&values, 0, i as i64);
        }
        rows.finish(0).unwrap()
    }

    #[tokio::test]
    async fn one_day_and_mixed_day_batches_land_in_their_date_partitions() {
        let dir = tempfile::tempdir().unwrap();
        let schema = Schema::default_schema();
        let parser = EventParser::new(schema.clone());
        let location = dir.path().join("t").to_string_lossy().into_owned();
        let mut table = Table::open_or_create(
            &location,
            &BTreeMap::new(),
            clean_schema(&schema),
            Some(EVENT_DATE),
            "test",
            10,
        )
        .await
        .unwrap();
        // One day (written straight to its partition), then three rows over two days (split).
        let one_day = rows(&parser, &["2026-11-01T08:00:00Z", "2026-11-01T23:59:59Z"]);
        let mixed = rows(&parser, &["2026-11-02T00:00:00Z", "2026-11-01T12:00:00Z", "2026-11-02T09:30:00Z"]);
        table.append(&[one_day, mixed], &BTreeMap::from([(0, 2)]), serde_json::Map::new()).await.unwrap();
        table.load().await.unwrap();

        let days: Vec<Option<String>> = data_files(table.delta())
            .unwrap()
            .iter()
            .map(|f| f.partition_values[EVENT_DATE].clone())
            .collect();
        assert!(
            days.contains(&Some("2026-11-01".into())) && days.contains(&Some("2026-11-02".into())),
            "{days:?}"
        );
        let mut seen = 0;
        for batch in read_rows(table.delta()).await.unwrap() {
            let dates =
                batch.column_by_name(EVENT_DATE).unwrap().as_any().downcast_ref::<Date32Array>().unwrap();
            let times = batch
                .column_by_name("event_time")
                .unwrap()
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .unwrap();
            for i in 0..batch.num_rows() {
                assert_eq!(dates.value(i) as i64, times.value(i).div_euclid(86_400_000_000), "row {i}");
                seen += 1;
            }
        }
        assert_eq!(seen, 5);
    }

    async fn open(location: &str, parser: &EventParser, interval: u32) -> Table {
        let layout = clean_schema(parser.schema());
        Table::open_or_create(location, &BTreeMap::new(), layout, Some(EVENT_DATE), "test", interval)
            .await
            .unwrap()
    }

    fn one_row(parser: &EventParser) -> RecordBatch {
        rows(parser, &["2026-11-01T08:00:00Z"])
    }

    async fn commit_files(location: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(format!("{location}/_delta_log"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn a_stale_handle_commits_after_the_others_unless_they_moved_its_partitions() {
        let dir = tempfile::tempdir().unwrap();
        let parser = EventParser::new(Schema::default_schema());
        let location = dir.path().join("t").to_string_lossy().into_owned();
        let mut a = open(&location, &parser, 100).await;
        let mut b = open(&location, &parser, 100).await;
        assert_eq!((a.version(), b.version()), (Some(0), Some(0)));
        let none = serde_json::Map::new;
        // a takes versions 1 and 2 (partitions 0 and 1); b still knows version 0.
        assert_eq!(a.append(&[one_row(&parser)], &BTreeMap::from([(0, 5)]), none()).await.unwrap(), 1);
        assert_eq!(a.append(&[one_row(&parser)], &BTreeMap::from([(1, 7)]), none()).await.unwrap(), 2);
        // b's commit for partition 2 finds version 1 taken, reads 1 and 2, and lands as 3.
        assert_eq!(b.append(&[one_row(&parser)], &BTreeMap::from([(2, 9)]), none()).await.unwrap(), 3);
        assert_eq!(
            b.positions(&[0, 1, 2, 3]).await.unwrap(),
            HashMap::from([(0, Some(5)), (1, Some(7)), (2, Some(9)), (3, None)])
        );
        // a's commit for partition 2 finds b's position there: a conflict, nothing written.
        let err = a.append(&[one_row(&parser)], &BTreeMap::from([(2, 12)]), none()).await.unwrap_err();
        assert!(matches!(err, DeltaError::Conflict { .. }), "{err}");
        assert_eq!(a.version(), Some(3), "a read b's commit");
        assert_eq!(a.positions(&[2]).await.unwrap()[&2], Some(9));
        // Both handles and a fresh load agree: three commits, one row each, positions as above.
        let mut fresh = open_existing(&location, &BTreeMap::new()).await.unwrap();
        fresh.update_state().await.unwrap();
        assert_eq!(fresh.version(), Some(3));
        let rows: usize = read_rows(&fresh).await.unwrap().iter().map(RecordBatch::num_rows).sum();
        assert_eq!(rows, 3);
        let log = fresh.log_store();
        let snapshot = fresh.snapshot().unwrap();
        for (p, held) in [(0, 5), (1, 7), (2, 9)] {
            let v = snapshot.transaction_version(log.as_ref(), format!("test-{p}")).await.unwrap();
            assert_eq!(v, Some(held), "partition {p}");
        }
    }

    #[tokio::test]
    async fn checkpoints_are_written_beside_the_commits_and_readable() {
        let dir = tempfile::tempdir().unwrap();
        let parser = EventParser::new(Schema::default_schema());
        let location = dir.path().join("t").to_string_lossy().into_owned();
        let mut table = open(&location, &parser, 3).await;
        for offset in 0..7 {
            table
                .append(&[one_row(&parser)], &BTreeMap::from([(0, offset)]), serde_json::Map::new())
                .await
                .unwrap();
            table.wait_for_checkpoint(Duration::from_secs(60));
        }
        let names = commit_files(&location).await;
        assert!(names.contains(&"00000000000000000003.checkpoint.parquet".to_string()), "{names:?}");
        assert!(names.contains(&"00000000000000000006.checkpoint.parquet".to_string()), "{names:?}");
        assert!(names.contains(&"_last_checkpoint".to_string()), "{names:?}");
        let fresh = open_existing(&location, &BTreeMap::new()).await.unwrap();
        assert_eq!(fresh.version(), Some(7));
        let rows: usize = read_rows(&fresh).await.unwrap().iter().map(RecordBatch::num_rows).sum();
        assert_eq!(rows, 7);
    }

    #[tokio::test]
    async fn a_handle_whose_tail_was_cleaned_up_loads_the_table_again() {
        let dir = tempfile::tempdir().unwrap();
        let parser = EventParser::new(Schema::default_schema());
        let location = dir.path().join("t").to_string_lossy().into_owned();
        let mut a = open(&location, &parser, 2).await;
        let mut stale = open(&location, &parser, 2).await;
        for offset in 0..5 {
            a.append(&[one_row(&parser)], &BTreeMap::from([(0, offset)]), serde_json::Map::new())
                .await
                .unwrap();
            a.wait_for_checkpoint(Duration::from_secs(60));
        }
        // What log clean-up does once the entries are old enough: everything before the
        // checkpoint of version 4 goes.
        for v in 0..4 {
            std::fs::remove_file(format!("{location}/_delta_log/{v:020}.json")).unwrap();
        }
        std::fs::remove_file(format!("{location}/_delta_log/{:020}.checkpoint.parquet", 2)).unwrap();
        // The stale handle (version 0) finds no entry 1, but the checkpoint pointer says 4.
        stale.refresh().await.unwrap();
        assert_eq!(stale.version(), Some(5));
        assert_eq!(stale.positions(&[0]).await.unwrap()[&0], Some(4));
        assert_eq!(
            stale
                .append(&[one_row(&parser)], &BTreeMap::from([(0, 5)]), serde_json::Map::new())
                .await
                .unwrap(),
            6
        );
    }

    #[tokio::test]
    async fn a_schema_change_in_the_log_is_seen_by_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let parser = EventParser::new(Schema::default_schema());
        let location = dir.path().join("t").to_string_lossy().into_owned();
        let mut table = open(&location, &parser, 100).await;
        table.append(&[one_row(&parser)], &BTreeMap::from([(0, 0)]), serde_json::Map::new()).await.unwrap();
        // Another tool adds a column.
        let other = open_existing(&location, &BTreeMap::new()).await.unwrap();
        let extra = StructField::new("note", DataType::STRING, true);
        other.add_columns().with_fields([extra]).await.unwrap();
        let err = table.refresh().await.unwrap_err();
        assert!(matches!(&err, DeltaError::Layout { found, .. } if found.contains("note")), "{err}");
    }
}
