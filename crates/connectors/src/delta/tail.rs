//! A resumable reader of a Delta table as a stream: the data files that commits after a given
//! version added, in commit order, a bounded number at a time.
//!
//! In: a table location, the columns wanted, and the first version to read. Out: micro-batches
//! of rows (the wanted columns of every added file, in commit order, then file order) with the
//! highest version they complete. Only files added with `dataChange = true` count: compaction's
//! rewrites (`dataChange = false`) are skipped, so no row comes twice. The log is read one entry
//! at a time (no table state is loaded), so a poll costs the same on any table size.
//!
//! Failures that must not pass silently: a log entry removed by log clean-up before it was read,
//! and a data file of an unread commit that is gone (vacuumed), are errors naming the version
//! and the file.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use deltalake::arrow::array::{Array, BooleanArray, Int32Array, RecordBatch};
use deltalake::arrow::compute::filter_record_batch;
use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use deltalake::kernel::Action;
use deltalake::logstore::LogStoreRef;
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError, Path, ensure_table_uri};

use super::read::{DataFile, read_projected};
use super::{DeltaError, data_files, log};

/// One micro-batch of a tail: whole commits, so that the rows of one commit (which a reader
/// orders by Kafka partition and offset) never straddle two batches.
#[derive(Debug)]
pub struct TailBatch {
    /// The wanted columns of the rows of the files read, in commit order.
    pub batches: Vec<RecordBatch>,
    pub files: usize,
    /// Rows handed out (with [`TableTail::only_partitions`], those of its partitions).
    pub rows: usize,
    /// The last version in this batch: every file of every commit up to it has been handed out.
    pub complete_through: Option<u64>,
    /// When the batch's first commit was made (Unix ms, from its `commitInfo`; None when the
    /// log does not say).
    pub first_commit_ms: Option<i64>,
}

/// The table read as a stream of added files.
pub struct TableTail {
    location: String,
    storage_options: HashMap<String, String>,
    log_store: Option<LogStoreRef>,
    out_schema: SchemaRef,
    partition_columns: Vec<String>,
    /// The next version whose log entry is read.
    next: u64,
    /// Read commits not handed out yet: version, added files and their rows (from the files'
    /// statistics; 0 when a file has none).
    pending: VecDeque<(u64, Vec<DataFile>, u64)>,
    /// When the commits in `pending` were made (Unix ms), as their `commitInfo` says.
    commit_ms: BTreeMap<u64, i64>,
    max_files: usize,
    max_rows: u64,
    /// The last version to read (None: no end).
    until: Option<u64>,
    /// Only the rows of the Kafka partitions p with p % count == index: (index, count).
    partitions: Option<(u32, u32)>,
    /// Data files read at once.
    parallel: usize,
}

fn read_err(location: &str, source: DeltaTableError) -> DeltaError {
    DeltaError::Read { location: location.to_string(), source: Box::new(source) }
}

impl TableTail {
    /// A tail of the table at `location` that reads the commits from version `next` on,
    /// `columns` of their rows (a column the table lacks comes back all null, typed as
    /// `types` says), at most `max_files` files and about `max_rows` rows per batch (the rows
    /// as the files' statistics count them; a file without statistics counts none).
    pub fn new(
        location: &str,
        storage_options: &BTreeMap<String, String>,
        columns: &[(&str, DataType)],
        next: u64,
        max_files: usize,
        max_rows: u64,
    ) -> TableTail {
        let fields: Vec<Field> = columns.iter().map(|(n, t)| Field::new(*n, t.clone(), true)).collect();
        TableTail {
            location: location.to_string(),
            storage_options: super::config::store_options(location, storage_options),
            log_store: None,
            out_schema: Arc::new(Schema::new(fields)),
            partition_columns: Vec::new(),
            next,
            pending: VecDeque::new(),
            commit_ms: BTreeMap::new(),
            max_files: max_files.max(1),
            max_rows: max_rows.max(1),
            until: None,
            partitions: None,
            parallel: 1,
        }
    }

    /// Reads up to `files` data files at once (one by default); batches keep their order.
    pub fn reading(mut self, files: usize) -> TableTail {
        self.parallel = files.max(1);
        self
    }

    /// Hands out only the rows of the Kafka partitions `p` with `p % count == index` (its
    /// `kafka_partition` column must be read), from the log and from the table alike.
    pub fn only_partitions(mut self, index: u32, count: u32) -> TableTail {
        self.partitions = Some((index, count.max(1)));
        self
    }

    /// The rows of the partitions this tail hands out.
    fn keep(&self, batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>, DeltaError> {
        let Some((index, count)) = self.partitions else { return Ok(batches) };
        let err = |detail: String| DeltaError::Read {
            location: self.location.clone(),
            source: Box::new(DeltaTableError::Generic(detail)),
        };
        let mut out = Vec::with_capacity(batches.len());
        for b in batches {
            let column = b.column_by_name("kafka_partition").ok_or_else(|| {
                err("a shard reads the column `kafka_partition`, which is not there".into())
            })?;
            let partition = column.as_any().downcast_ref::<Int32Array>().ok_or_else(|| {
                err(format!("column `kafka_partition` is {}, not Int32", column.data_type()))
            })?;
            let mask: BooleanArray =
                partition.iter().map(|p| Some(p.is_some_and(|p| p as u32 % count == index))).collect();
            let kept = filter_record_batch(&b, &mask).map_err(|e| err(e.to_string()))?;
            if kept.num_rows() > 0 {
                out.push(kept);
            }
        }
        Ok(out)
    }

    /// Reads no version after `last`.
    pub fn until(mut self, last: u64) -> TableTail {
        self.until = Some(last);
        self
    }

    /// Continues the tail after `version` of `table` (its partition columns as `table` has
    /// them), as if every commit up to it had been read.
    pub fn resume_after(&mut self, table: &DeltaTable, version: u64) -> Result<(), DeltaError> {
        let snapshot = table.snapshot().map_err(|e| read_err(&self.location, e))?;
        self.partition_columns = snapshot.metadata().partition_columns().to_vec();
        self.next = version + 1;
        self.pending.clear();
        self.commit_ms.clear();
        Ok(())
    }

    /// Whether the log still holds its first entry (version 0), so that the table can be read
    /// commit by commit from its start; false while the table does not exist.
    pub async fn log_starts_at_zero(&mut self) -> Result<bool, DeltaError> {
        let Some(store) = self.log_store().await? else { return Ok(false) };
        log::has_entry(store.as_ref(), 0).await.map_err(|e| read_err(&self.location, e))
    }

    /// The next version to be read from the log.
    pub fn next_version(&self) -> u64 {
        self.next
    }

    /// The table's log, once the table exists (None: not yet).
    async fn log_store(&mut self) -> Result<Option<LogStoreRef>, DeltaError> {
        if let Some(store) = &self.log_store {
            return Ok(Some(store.clone()));
        }
        let err = |e| read_err(&self.location, e);
        let url = ensure_table_uri(&self.location).map_err(err)?;
        let table = DeltaTableBuilder::from_url(url)
            .map_err(err)?
            .with_storage_options(self.storage_options.clone())
            .build()
            .map_err(err)?;
        let store = table.log_store();
        if !log::exists(store.as_ref()).await.map_err(err)? {
            return Ok(None);
        }
        self.log_store = Some(store.clone());
        Ok(Some(store))
    }

    /// Loads the table at its newest version (for a start at the newest version, and for
    /// reading its whole state); None while the table does not exist.
    pub async fn load_newest(&mut self) -> Result<Option<DeltaTable>, DeltaError> {
        if self.log_store().await?.is_none() {
            return Ok(None);
        }
        let table =
            super::open_existing(&self.location, &self.storage_options.clone().into_iter().collect()).await?;
        Ok(Some(table))
    }

    /// Reads every row of `table` (loaded at some version V) with the wanted columns (only
    /// those named in `only`, when given), `parallel` files at a time, and continues the tail
    /// after V. For a start from the earliest version when the log's first entries may be gone,
    /// and for restoring state up to a version.
    pub async fn read_state(
        &mut self,
        table: &DeltaTable,
        parallel: usize,
        only: Option<&[&str]>,
    ) -> Result<Vec<RecordBatch>, DeltaError> {
        use futures::{StreamExt, TryStreamExt};
        let err = |e| read_err(&self.location, e);
        let version =
            table.version().ok_or_else(|| err(DeltaTableError::NotATable(self.location.clone())))?;
        self.partition_columns = table.snapshot().map_err(err)?.metadata().partition_columns().to_vec();
        let files = data_files(table).map_err(err)?;
        let store = table.object_store();
        let schema = match only {
            None => self.out_schema.clone(),
            Some(names) => {
                let fields: Vec<Field> = self
                    .out_schema
                    .fields()
                    .iter()
                    .filter(|f| names.contains(&f.name().as_str()))
                    .map(|f| f.as_ref().clone())
                    .collect();
                Arc::new(Schema::new(fields))
            }
        };
        let partitions = self.partition_columns.clone();
        let per_file: Vec<Vec<RecordBatch>> = futures::stream::iter(files)
            .map(|file| {
                let (store, schema, partitions) = (store.clone(), schema.clone(), partitions.clone());
                async move { read_projected(store, &file, &schema, &partitions).await }
            })
            .buffered(parallel.max(1))
            .try_collect()
            .await
            .map_err(err)?;
        self.next = version + 1;
        self.pending.clear();
        self.keep(per_file.into_iter().flatten().collect())
    }

    /// Reads the log entries committed since the last poll and returns the next batch of added
    /// files' rows; None when there is nothing new (or no table yet).
    pub async fn poll(&mut self) -> Result<Option<TailBatch>, DeltaError> {
        let Some(store) = self.log_store().await? else { return Ok(None) };
        let location = self.location.clone();
        let err = |e| read_err(&location, e);
        // Read entries until enough files (or rows) wait or the log ends.
        let waiting = |pending: &VecDeque<(u64, Vec<DataFile>, u64)>| {
            pending.iter().fold((0, 0), |(files, rows), (_, f, r)| (files + f.len(), rows + r))
        };
        loop {
            let (files, rows) = waiting(&self.pending);
            if files >= self.max_files || rows >= self.max_rows || self.until.is_some_and(|u| self.next > u) {
                break;
            }
            let Some(actions) = log::entry(store.as_ref(), self.next).await.map_err(err)? else {
                if let Some(cp) = log::last_checkpoint(store.as_ref()).await.map_err(err)?
                    && cp >= self.next
                {
                    return Err(DeltaError::Gone {
                        location: location.clone(),
                        detail: format!(
                            "the log entries from version {} on were removed by log clean-up (a checkpoint \
                             of version {cp} is there) before they were read; start again from a version \
                             that is still in the log, or from the newest",
                            self.next
                        ),
                    });
                }
                break;
            };
            self.queue(actions)?;
        }
        if self.pending.is_empty() {
            return Ok(None);
        }
        // Whole commits, at least one, up to `max_files` files and `max_rows` rows.
        let (mut take, mut files, mut rows) = (0, 0, 0);
        for (_, f, r) in &self.pending {
            if take > 0 && (files + f.len() > self.max_files || rows + r > self.max_rows) {
                break;
            }
            take += 1;
            files += f.len();
            rows += r;
        }
        let commits: Vec<(u64, Vec<DataFile>, u64)> = self.pending.drain(..take).collect();
        let store_root = store.object_store(None);
        // The files in order, `parallel` read at once.
        let reads: Vec<(u64, DataFile, Result<Vec<RecordBatch>, DeltaTableError>)> = {
            use futures::StreamExt;
            let files: Vec<(u64, DataFile)> =
                commits.iter().flat_map(|(v, added, _)| added.iter().map(move |f| (*v, f.clone()))).collect();
            let (schema, partitions) = (self.out_schema.clone(), Arc::new(self.partition_columns.clone()));
            futures::stream::iter(files)
                .map(move |(version, file)| {
                    let (store, schema, partitions) =
                        (store_root.clone(), schema.clone(), partitions.clone());
                    async move {
                        let read = read_projected(store, &file, &schema, &partitions).await;
                        (version, file, read)
                    }
                })
                .buffered(self.parallel)
                .collect()
                .await
        };
        let mut batches = Vec::new();
        let mut failed = None;
        for (version, file, read) in reads {
            match read {
                Ok(b) => batches.extend(b),
                Err(e) if not_found(&e) => {
                    return Err(DeltaError::Gone {
                        location: self.location.clone(),
                        detail: format!(
                            "data file {} added by version {version} is gone (vacuumed before it was read?)",
                            file.path
                        ),
                    });
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failed {
            // Put the commits back: a retry reads them again.
            for c in commits.into_iter().rev() {
                self.pending.push_front(c);
            }
            return Err(err(e));
        }
        let complete_through = commits.last().map(|(v, _, _)| *v);
        let first_commit_ms = commits.first().and_then(|(v, _, _)| self.commit_ms.get(v).copied());
        if let Some(last) = complete_through {
            self.commit_ms = self.commit_ms.split_off(&(last + 1));
        }
        // A shard's rows only, and counted after.
        let batches = self.keep(batches)?;
        let rows = batches.iter().map(RecordBatch::num_rows).sum();
        Ok(Some(TailBatch { batches, files, rows, complete_through, first_commit_ms }))
    }

    /// Queues the data files that version `self.next` added (its `actions`), and moves on.
    fn queue(&mut self, actions: Vec<Action>) -> Result<(), DeltaError> {
        let version = self.next;
        let mut added = Vec::new();
        let mut rows = 0;
        for action in actions {
            match action {
                Action::Add(add) if add.data_change => {
                    rows += add.stats.as_deref().map_or(0, num_records);
                    let path = Path::from_url_path(&add.path).map_err(|e| {
                        read_err(
                            &self.location,
                            DeltaTableError::Generic(format!("bad path {}: {e}", add.path)),
                        )
                    })?;
                    added.push(DataFile { path, size: add.size, partition_values: add.partition_values });
                }
                Action::Metadata(m) => self.partition_columns = m.partition_columns().to_vec(),
                Action::CommitInfo(info) => {
                    if let Some(ms) = info.timestamp {
                        self.commit_ms.insert(version, ms);
                    }
                }
                _ => {}
            }
        }
        self.pending.push_back((version, added, rows));
        self.next += 1;
        Ok(())
    }
}

/// The table's id (`metaData.id`): made when the table is created, so a table deleted and
/// made again at the same place has another.
pub fn table_id(table: &DeltaTable) -> Result<String, DeltaError> {
    let location = table.table_url().to_string();
    let snapshot = table.snapshot().map_err(|e| read_err(&location, e))?;
    Ok(snapshot.metadata().id().to_string())
}

/// Whether reading failed because the file is not there (as the object store says it, or as
/// the Parquet reader passes it on).
fn not_found(e: &DeltaTableError) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(deltalake::ObjectStoreError::NotFound { .. }) =
            c.downcast_ref::<deltalake::ObjectStoreError>()
        {
            return true;
        }
        if c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound) {
            return true;
        }
        cause = c.source();
    }
    false
}

/// Whether the table's schema has every one of `columns`.
pub fn has_columns(table: &DeltaTable, columns: &[&str]) -> Result<bool, DeltaError> {
    let location = table.table_url().to_string();
    let snapshot = table.snapshot().map_err(|e| read_err(&location, e))?;
    let schema = snapshot.snapshot().arrow_schema();
    Ok(columns.iter().all(|c| schema.field_with_name(c).is_ok()))
}

/// `numRecords` of a file's statistics (0 when they do not say).
fn num_records(stats: &str) -> u64 {
    #[derive(serde::Deserialize)]
    struct Stats {
        #[serde(rename = "numRecords")]
        num_records: Option<u64>,
    }
    serde_json::from_str::<Stats>(stats).ok().and_then(|s| s.num_records).unwrap_or(0)
}
