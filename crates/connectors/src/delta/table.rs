//! One Delta table that txpipe appends to, with Kafka positions kept in the same commits.
//!
//! In: record batches and, per Kafka partition, the last offset they cover. Out: one Delta
//! commit holding the data files and one application-transaction (`txn`) action per partition,
//! so that data and position land together or not at all ([`super::commit`]). Reading the
//! positions back is how ingest knows where to resume. The handle follows the log's tail
//! through [`super::log`], the reader the stream uses too.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use deltalake::arrow::datatypes::{DataType as ArrowType, SchemaRef, TimeUnit};
use deltalake::kernel::{Action, DataType, StructField};
use deltalake::protocol::SaveMode;
use deltalake::table::config::TablePropertiesExt;
use deltalake::{DeltaTable, DeltaTableError, TableProperty, ensure_table_uri};
use url::Url;

use super::checkpoints::Checkpoints;
use super::errors::{DeltaError, Result};
use super::log;

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
    let options = super::config::store_options(location, storage_options);
    let mut table = DeltaTable::try_from_url_with_storage_options(url, options).await.map_err(open_err)?;
    if table.version().is_none() {
        return Err(open_err(DeltaTableError::NotATable(format!("no Delta table at {location}"))));
    }
    table.update_state().await.map_err(open_err)?;
    Ok(table)
}

/// Whether the table's storage answers, without loading the table: reads the first log entry
/// and `_last_checkpoint`. Ok(true) when a table is there, Ok(false) when the storage answers
/// but holds no table (yet); an error when the storage cannot be reached or read.
pub async fn probe(location: &str, storage_options: &BTreeMap<String, String>) -> Result<bool> {
    let open_err = |source| DeltaError::Open { location: location.to_string(), source: Box::new(source) };
    let url = ensure_table_uri(location).map_err(open_err)?;
    let options = super::config::store_options(location, storage_options);
    let table = deltalake::DeltaTableBuilder::from_url(url)
        .map_err(open_err)?
        .with_storage_options(options)
        .build()
        .map_err(open_err)?;
    log::exists(table.log_store().as_ref()).await.map_err(open_err)
}

/// The `txn` versions of `app_ids` in a loaded table (None: the table holds none).
pub async fn transaction_versions(
    table: &DeltaTable,
    location: &str,
    app_ids: &[String],
) -> Result<Vec<Option<i64>>> {
    let read_err = |source| DeltaError::Read { location: location.to_string(), source: Box::new(source) };
    let snapshot = table.snapshot().map_err(read_err)?;
    let log_store = table.log_store();
    let mut out = Vec::with_capacity(app_ids.len());
    for app_id in app_ids {
        out.push(snapshot.transaction_version(log_store.as_ref(), app_id.clone()).await.map_err(read_err)?);
    }
    Ok(out)
}

/// When version `version` of a table was committed (Unix ms, from its `commitInfo`); None when
/// its log entry is gone (cleaned up) or does not say.
pub async fn commit_time(table: &DeltaTable, location: &str, version: u64) -> Result<Option<i64>> {
    let read_err = |source| DeltaError::Read { location: location.to_string(), source: Box::new(source) };
    let actions = log::entry(table.log_store().as_ref(), version).await.map_err(read_err)?;
    Ok(actions.into_iter().flatten().find_map(|a| match a {
        Action::CommitInfo(info) => info.timestamp,
        _ => None,
    }))
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
    pub(super) table: DeltaTable,
    pub(super) location: String,
    pub(super) url: Url,
    pub(super) storage_options: HashMap<String, String>,
    pub(super) layout: SchemaRef,
    pub(super) app_prefix: String,
    pub(super) partition_by: Option<Vec<String>>,
    /// Columns whose values are (nearly) all distinct: written without a dictionary.
    pub(super) distinct: Vec<String>,
    /// The newest version known: the loaded one, or a later one read from the log's tail or
    /// committed by this handle.
    pub(super) head: Option<u64>,
    /// Positions (application-transaction id → value) stored by the commits after the loaded
    /// version up to `head`.
    pub(super) recent: HashMap<String, i64>,
    /// Whether appends write their log entry directly: the table's protocol asks nothing of a
    /// writer beyond what an append of txpipe's files meets (writer version 2 or less).
    pub(super) direct: bool,
    pub(super) checkpoints: Checkpoints,
    /// Commits whose version another writer took first (the store refused the put), and that
    /// went on to the next version.
    pub(super) lost_races: u64,
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
        let options = super::config::store_options(location, storage_options);
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
            lost_races: 0,
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
    pub(super) fn loaded(&mut self) -> Result<()> {
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

    pub(super) fn arrow_schema(&self) -> Result<SchemaRef> {
        let snapshot = self.table.snapshot().map_err(|source| self.read_err(source))?;
        Ok(snapshot.snapshot().arrow_schema())
    }

    pub(super) fn read_err(&self, source: DeltaTableError) -> DeltaError {
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
    /// How many of this handle's commits found their version taken by another writer and went
    /// on to a later one (races lost, not conflicts: see [`super::commit`]).
    pub fn lost_races(&self) -> u64 {
        self.lost_races
    }

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

    pub(super) fn app_id(&self, partition: i32) -> String {
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
    pub(super) async fn tail(&mut self) -> Result<Tail> {
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
            let entry = log::entry(log_store.as_ref(), next).await.map_err(|source| self.read_err(source))?;
            let Some(actions) = entry else { break };
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
        let checkpoint =
            log::last_checkpoint(log_store.as_ref()).await.map_err(|source| self.read_err(source))?;
        if checkpoint > self.head {
            tracing::info!(location = %self.location, head = ?self.head, "a checkpoint is past this handle's head; loading the table again");
            self.load().await?;
            tail.reloaded = true;
        }
        Ok(tail)
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

    /// Waits (up to `limit`) for a checkpoint being written in the background to be done.
    pub fn wait_for_checkpoint(&mut self, limit: Duration) {
        self.checkpoints.wait(limit);
    }
}

/// What reading the log's tail found.
#[derive(Default)]
pub(super) struct Tail {
    /// The table was loaded again in full (schema or protocol changed, or the log moved past
    /// the tail).
    pub reloaded: bool,
    /// Application-transaction ids whose positions the entries read stored.
    pub apps: HashSet<String>,
}
