//! The serving layer's tables (DESIGN §4): `transactions_realtime`, `transactions_batch` and
//! the view `transactions_serving` over both, their DDL, and inserts of predictions.
//!
//! In: the event fields to copy beside each prediction (the ones a person filters by) and
//! predictions. Out: rows in ClickHouse. Both tables are ReplacingMergeTree keyed by
//! transaction id, so a replayed insert is merged away; the view groups by transaction id, so
//! it shows one row per transaction even before ClickHouse merged anything: the batch row where
//! one exists (the newest batch run), else the newest realtime row.
//!
//! With `[clickhouse] cluster`, every table is made `ON CLUSTER`: the data in
//! ReplicatedReplacingMergeTree tables `<name>_local` (replicas of one shard agree through
//! ZooKeeper), Distributed tables of the usual names over them (rows spread over the shards by
//! `cityHash64(transaction_id)`, so a transaction's rows always meet on one shard, where
//! replacing and the view's grouping see them together), the view over the Distributed tables,
//! and the progress in one replicated table that every server holds whole. Inserts go to the
//! Distributed tables and return once every shard has its rows (`insert_distributed_sync`);
//! an insert retried after a lost answer sends the same bytes, hence the same blocks, which the
//! replicas drop as already inserted.
//!
//! The SQL uses only what ClickHouse 18.16 (Debian's, the tests' server) and current releases
//! both accept: DateTime (seconds), Nullable, Array(String), ReplacingMergeTree with PARTITION BY
//! and ORDER BY, a view with `argMax` over `UNION ALL`. Rows go in as RowBinary through the
//! `clickhouse` crate's formatted insert, built here because the columns follow the schema.

use bytes::Bytes;
use txpipe_core::event::Value;
use txpipe_core::schema::{FieldType, Schema};

use super::ClickHouseConfig;

pub const REALTIME: &str = "transactions_realtime";
pub const BATCH: &str = "transactions_batch";
pub const SERVING: &str = "transactions_serving";
/// Where `score` keeps how far it got: per source table, the highest Delta version whose rows
/// are all in `transactions_realtime`.
pub const PROGRESS: &str = "txpipe_score_progress";

/// What can go wrong with ClickHouse.
#[derive(Debug, thiserror::Error)]
pub enum ClickHouseError {
    #[error("clickhouse at {url}: {what} failed: {source}")]
    Request { url: String, what: String, source: clickhouse::error::Error },
    #[error("clickhouse: {0}")]
    Layout(String),
}

impl ClickHouseError {
    /// Whether trying again can succeed (the server down or slow, a connection cut), as opposed
    /// to a statement the server refuses.
    pub fn retryable(&self) -> bool {
        use clickhouse::error::Error as E;
        match self {
            ClickHouseError::Request { source, .. } => matches!(source, E::Network(_) | E::TimedOut),
            ClickHouseError::Layout(_) => false,
        }
    }
}

pub type Result<T, E = ClickHouseError> = std::result::Result<T, E>;

/// An event field copied beside each prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct ServingColumn {
    pub name: String,
    pub kind: FieldType,
    /// Whether the field may be absent (then the column is Nullable).
    pub nullable: bool,
}

impl ServingColumn {
    fn sql_type(&self) -> String {
        let base = match self.kind {
            FieldType::String => "String",
            FieldType::Double => "Float64",
            FieldType::Long => "Int64",
            FieldType::Boolean => "UInt8",
            FieldType::Timestamp => "DateTime",
        };
        if self.nullable { format!("Nullable({base})") } else { base.to_string() }
    }
}

/// Which of the two tables a batch of predictions goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Realtime,
    Batch,
}

impl Target {
    pub fn table(self) -> &'static str {
        match self {
            Target::Realtime => REALTIME,
            Target::Batch => BATCH,
        }
    }
}

/// The serving tables of one database, for one schema's copied fields.
#[derive(Clone)]
pub struct Serving {
    client: clickhouse::Client,
    /// A client without a database, for creating the database.
    server: clickhouse::Client,
    url: String,
    database: String,
    /// The cluster the tables are made on (None: one server).
    cluster: Option<String>,
    columns: Vec<ServingColumn>,
}

/// Fixed columns of both tables, after the transaction id, the event time and the copied fields:
/// `reasons` are stable machine codes (`has(reasons, 'new_country')`), `explanation` the same
/// reasons as text with the transaction's values.
const PREDICTION_COLUMNS: [(&str, &str); 6] = [
    ("fraud_probability", "Float64"),
    ("predicted_label", "UInt8"),
    ("reasons", "Array(String)"),
    ("explanation", "String"),
    ("model_version", "String"),
    ("scored_at", "DateTime"),
];

fn quote(name: &str) -> String {
    format!("`{}`", name.replace('\\', "\\\\").replace('`', "\\`"))
}

impl Serving {
    /// The columns to copy: `fields` from the schema (absent: the default ones it has of
    /// account id, amount and merchant category). The id and time fields are always there.
    pub fn columns_for(schema: &Schema, fields: Option<&[String]>) -> Result<Vec<ServingColumn>> {
        let defaults = ["account_id", "amount", "merchant_category"];
        let id = &schema.fields()[schema.id_index()].name;
        let time = &schema.fields()[schema.time_index()].name;
        let reserved = |n: &str| {
            n == id
                || n == time
                || PREDICTION_COLUMNS.iter().any(|(c, _)| *c == n)
                || ["transaction_id", "event_time", "batch_run_id"].contains(&n)
        };
        let names: Vec<String> = match fields {
            Some(f) => f.to_vec(),
            None => defaults
                .iter()
                .filter(|d| schema.fields().iter().any(|f| f.name == **d))
                .map(|d| d.to_string())
                .collect(),
        };
        let mut out: Vec<ServingColumn> = Vec::with_capacity(names.len());
        for name in names {
            let field = schema.fields().iter().find(|f| f.name == name).ok_or_else(|| {
                ClickHouseError::Layout(format!(
                    "clickhouse.fields: `{name}` is not a field of the schema (expected some of: {})",
                    schema.fields().iter().map(|f| f.name.as_str()).collect::<Vec<_>>().join(", ")
                ))
            })?;
            if reserved(&name) || out.iter().any(|c| c.name == name) {
                return Err(ClickHouseError::Layout(format!(
                    "clickhouse.fields: `{name}` is listed twice or is a column the tables always have"
                )));
            }
            out.push(ServingColumn { name, kind: field.kind, nullable: !field.required });
        }
        Ok(out)
    }

    pub fn new(config: &ClickHouseConfig, columns: Vec<ServingColumn>) -> Serving {
        let compression =
            if config.compressed() { clickhouse::Compression::Lz4 } else { clickhouse::Compression::None };
        let mut server = clickhouse::Client::default()
            .with_url(&config.url)
            .with_validation(false)
            .with_compression(compression);
        if !config.user.is_empty() {
            server = server.with_user(&config.user);
        }
        if !config.password.is_empty() {
            server = server.with_password(&config.password);
        }
        let cluster = (!config.cluster.is_empty()).then(|| config.cluster.clone());
        if cluster.is_some() {
            // An insert into a Distributed table returns once every shard has its rows: an
            // acknowledged insert is then in a replicated table (the progress rule holds).
            server = server.with_setting("insert_distributed_sync", "1");
        }
        let client = server.clone().with_database(&config.database);
        Serving {
            client,
            server,
            url: config.url.clone(),
            database: config.database.clone(),
            cluster,
            columns,
        }
    }

    pub fn columns(&self) -> &[ServingColumn] {
        &self.columns
    }

    fn name(&self, table: &str) -> String {
        format!("{}.{}", quote(&self.database), quote(table))
    }

    /// ` ON CLUSTER name` with a cluster, else nothing.
    fn on_cluster(&self) -> String {
        self.cluster.as_deref().map(|c| format!(" ON CLUSTER {}", quote(c))).unwrap_or_default()
    }

    /// A replicated engine's ZooKeeper path and replica name: per shard (`{shard}` macro), or
    /// `all` for a table every server holds whole (its replicas then named by shard and replica).
    fn replicated(&self, table: &str, per_shard: bool, version: &str) -> String {
        let cluster = self.cluster.as_deref().unwrap_or_default();
        let (shard, replica) =
            if per_shard { ("{shard}", "{replica}") } else { ("all", "{shard}-{replica}") };
        format!(
            "ReplicatedReplacingMergeTree('/clickhouse/tables/{cluster}/{shard}/{db}/{table}', '{replica}', {version})",
            db = self.database
        )
    }

    /// The statements that make one serving table: one, or with a cluster the replicated local
    /// table and the Distributed table over it.
    fn table_ddl(&self, table: &str, batch: bool) -> Vec<String> {
        let mut cols = vec!["transaction_id String".to_string(), "event_time DateTime".to_string()];
        cols.extend(self.columns.iter().map(|c| format!("{} {}", quote(&c.name), c.sql_type())));
        cols.extend(PREDICTION_COLUMNS.iter().map(|(n, t)| format!("{n} {t}")));
        if batch {
            cols.push("batch_run_id String".into());
        }
        let layout = "PARTITION BY toYYYYMM(event_time) ORDER BY transaction_id";
        let Some(cluster) = &self.cluster else {
            return vec![format!(
                "CREATE TABLE IF NOT EXISTS {} ({}) ENGINE = ReplacingMergeTree(scored_at) {layout}",
                self.name(table),
                cols.join(", ")
            )];
        };
        let local = format!("{table}_local");
        vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {}{} ({}) ENGINE = {} {layout}",
                self.name(&local),
                self.on_cluster(),
                cols.join(", "),
                self.replicated(table, true, "scored_at")
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {}{} AS {} ENGINE = Distributed({}, {}, {}, cityHash64(transaction_id))",
                self.name(table),
                self.on_cluster(),
                self.name(&local),
                quote(cluster),
                quote(&self.database),
                quote(&local)
            ),
        ]
    }

    fn view_ddl(&self) -> String {
        let mut shown: Vec<String> = vec!["event_time".into()];
        shown.extend(self.columns.iter().map(|c| quote(&c.name)));
        shown.extend(PREDICTION_COLUMNS.iter().map(|(n, _)| n.to_string()));
        let common = format!("transaction_id, {}", shown.join(", "));
        let picked: Vec<String> = shown
            .iter()
            .chain(["source".to_string(), "batch_run_id".to_string()].iter())
            .map(|c| format!("argMax({c}, rank) AS {c}"))
            .collect();
        // A batch row outranks any realtime row; within a table the newest scoring wins.
        format!(
            "CREATE VIEW IF NOT EXISTS {view}{on_cluster} AS SELECT transaction_id, {picked} FROM (\
             SELECT {common}, 'batch' AS source, batch_run_id, 4294967296 + toUInt64(toUInt32(scored_at)) AS rank FROM {batch} \
             UNION ALL \
             SELECT {common}, 'realtime' AS source, '' AS batch_run_id, toUInt64(toUInt32(scored_at)) AS rank FROM {realtime}\
             ) GROUP BY transaction_id",
            view = self.name(SERVING),
            on_cluster = self.on_cluster(),
            picked = picked.join(", "),
            batch = self.name(BATCH),
            realtime = self.name(REALTIME),
        )
    }

    /// Every statement [`Serving::ensure`] runs, in order: the database, the realtime table(s),
    /// the batch table(s), the view, the progress table.
    pub fn statements(&self) -> Vec<String> {
        let progress_engine = match self.cluster {
            Some(_) => self.replicated(PROGRESS, false, "delta_version"),
            None => "ReplacingMergeTree(delta_version)".to_string(),
        };
        let mut out =
            vec![format!("CREATE DATABASE IF NOT EXISTS {}{}", quote(&self.database), self.on_cluster())];
        out.extend(self.table_ddl(REALTIME, false));
        out.extend(self.table_ddl(BATCH, true));
        out.push(self.view_ddl());
        out.push(format!(
            "CREATE TABLE IF NOT EXISTS {}{} (source String, delta_version UInt64, updated_at DateTime) \
             ENGINE = {progress_engine} ORDER BY source",
            self.name(PROGRESS),
            self.on_cluster()
        ));
        out
    }

    /// The tables and view [`Serving::ensure`] makes, by name.
    fn objects(&self) -> Vec<String> {
        let mut names: Vec<String> =
            [REALTIME, BATCH, SERVING, PROGRESS].iter().map(|t| t.to_string()).collect();
        if self.cluster.is_some() {
            names.extend([format!("{REALTIME}_local"), format!("{BATCH}_local")]);
        }
        names
    }

    /// Whether this server already has every table and the view (a cluster's DDL waits for
    /// every server: a start while one is down would wait for it needlessly).
    async fn all_there(&self) -> Result<bool> {
        let names = self.objects();
        let sql = format!(
            "SELECT count() FROM system.tables WHERE database = ? AND name IN ({})",
            vec!["?"; names.len()].join(", ")
        );
        let mut query = self.server.query(&sql).bind(&self.database);
        for n in &names {
            query = query.bind(n);
        }
        let found: u64 = query.fetch_one().await.map_err(self.request_err("reading the tables"))?;
        Ok(found as usize == names.len())
    }

    /// Whether the tables are made on a cluster.
    pub fn clustered(&self) -> bool {
        self.cluster.is_some()
    }

    /// The highest Delta version of `source` whose rows are all in `transactions_realtime`
    /// (None: nothing recorded).
    pub async fn progress(&self, source: &str) -> Result<Option<u64>> {
        #[derive(clickhouse::Row, serde::Deserialize)]
        struct Found {
            rows: u64,
            version: u64,
        }
        let sql = format!(
            "SELECT count() AS rows, max(delta_version) AS version FROM {} WHERE source = ?",
            self.name(PROGRESS)
        );
        let found: Found = self
            .client
            .query(&sql)
            .bind(source)
            .fetch_one()
            .await
            .map_err(self.request_err("reading progress"))?;
        Ok((found.rows > 0).then_some(found.version))
    }

    /// The newest `scored_at` of the batch scores (None: none yet). A batch run stamps its rows
    /// later than this, so that the newest run is the one the view and the table keep even when
    /// two runs fall in one second.
    pub async fn last_batch_stamp(&self) -> Result<Option<u32>> {
        #[derive(clickhouse::Row, serde::Deserialize)]
        struct Found {
            rows: u64,
            stamp: u32,
        }
        let sql =
            format!("SELECT count() AS rows, max(toUInt32(scored_at)) AS stamp FROM {}", self.name(BATCH));
        let found: Found = self
            .client
            .query(&sql)
            .fetch_one()
            .await
            .map_err(self.request_err("reading the batch scores"))?;
        Ok((found.rows > 0).then_some(found.stamp))
    }

    /// The progress of the score shards of `source` (recorded as `<source>#shard=I/N`), by
    /// shard (`I/N`): the highest version of each shard that recorded any.
    pub async fn shard_progress(&self, source: &str) -> Result<Vec<(String, u64)>> {
        let prefix = format!("{source}#shard=");
        let sql = format!(
            "SELECT substring(source, {}) AS shard, max(delta_version) AS version FROM {} \
             WHERE substring(source, 1, {}) = ? GROUP BY source ORDER BY source",
            prefix.len() + 1,
            self.name(PROGRESS),
            prefix.len()
        );
        self.client
            .query(&sql)
            .bind(&prefix)
            .fetch_all::<(String, u64)>()
            .await
            .map_err(self.request_err("reading shard progress"))
    }

    /// Records that every row of `source` up to `version` is in `transactions_realtime`.
    pub async fn record_progress(&self, source: &str, version: u64) -> Result<()> {
        let sql = format!(
            "INSERT INTO {} (source, delta_version, updated_at) VALUES (?, ?, now())",
            self.name(PROGRESS)
        );
        self.client
            .query(&sql)
            .bind(source)
            .bind(version)
            .execute()
            .await
            .map_err(self.request_err("recording progress"))
    }

    fn request_err(
        &self,
        what: impl Into<String>,
    ) -> impl FnOnce(clickhouse::error::Error) -> ClickHouseError {
        let url = self.url.clone();
        let what = what.into();
        move |source| ClickHouseError::Request { url, what, source }
    }

    /// Creates the database, the tables and the view when missing, and brings tables made by
    /// an earlier release up to date (see [`Serving::upgrades`]).
    pub async fn ensure(&self) -> Result<()> {
        let statements = self.statements();
        if self.cluster.is_some() {
            // Tables made by an earlier release on a cluster do not exist (clusters came
            // later): no upgrades, only what is missing.
            if self.all_there().await? {
                return Ok(());
            }
            self.refuse_single_server_tables().await?;
            for sql in &statements {
                self.run(&self.server, sql).await?;
            }
            return Ok(());
        }
        let (first, rest) = statements.split_at(1);
        self.run(&self.server, &first[0]).await?;
        // Upgrades before the view: a view made by an earlier release is made again after.
        self.run(&self.client, &rest[0]).await?;
        self.run(&self.client, &rest[1]).await?;
        for sql in self.upgrades().await? {
            tracing::info!(%sql, "upgrading a serving table made by an earlier release");
            self.run(&self.client, &sql).await?;
        }
        for sql in &rest[2..] {
            self.run(&self.client, sql).await?;
        }
        Ok(())
    }

    /// On a cluster, tables of the prediction names made without one (by a run of one server,
    /// in the same database) would be kept by `CREATE ... IF NOT EXISTS`, and rows would go
    /// to them on that server alone: refused, saying what to do.
    async fn refuse_single_server_tables(&self) -> Result<()> {
        #[derive(clickhouse::Row, serde::Deserialize)]
        struct Table {
            name: String,
            engine: String,
        }
        let sql = "SELECT name, engine FROM system.tables WHERE database = ? AND name IN (?, ?)";
        let found: Vec<Table> = self
            .server
            .query(sql)
            .bind(&self.database)
            .bind(REALTIME)
            .bind(BATCH)
            .fetch_all()
            .await
            .map_err(self.request_err("reading the tables' engines"))?;
        match found.iter().find(|t| t.engine != "Distributed") {
            Some(t) => Err(ClickHouseError::Layout(format!(
                "table {}.{} is a {} table made without a cluster; on cluster '{}' the serving tables \
                 are Distributed tables over replicated {}_local tables. Use another database \
                 ([clickhouse] database) for the cluster, and copy the rows over \
                 (INSERT INTO <new>.{} SELECT * FROM {}.{}) if they are wanted",
                self.database,
                t.name,
                t.engine,
                self.cluster.as_deref().unwrap_or_default(),
                t.name,
                t.name,
                self.database,
                t.name
            ))),
            None => Ok(()),
        }
    }

    /// Runs one statement that returns nothing (names qualified with the database), for tools
    /// and tests.
    pub async fn execute(&self, sql: &str) -> Result<()> {
        self.run(&self.server, sql).await
    }

    async fn run(&self, client: &clickhouse::Client, sql: &str) -> Result<()> {
        let what = sql.split(" (").next().unwrap_or(sql).to_string();
        client.query(sql).execute().await.map_err(self.request_err(what))
    }

    /// The statements that add the prediction columns a table made by an earlier release lacks
    /// (`explanation`, added after `reasons`), and drop a view that lacks one (the view holds
    /// no data; [`Serving::ensure`] makes it again).
    pub async fn upgrades(&self) -> Result<Vec<String>> {
        #[derive(clickhouse::Row, serde::Deserialize)]
        struct Column {
            table: String,
            name: String,
        }
        let tables = [REALTIME, BATCH, SERVING];
        let sql = "SELECT table, name FROM system.columns WHERE database = ? AND table IN (?, ?, ?)";
        let mut query = self.server.query(sql).bind(&self.database);
        for t in tables {
            query = query.bind(t);
        }
        let found: Vec<Column> =
            query.fetch_all().await.map_err(self.request_err("reading the tables' columns"))?;
        let mut out = Vec::new();
        for table in tables {
            let has = |c: &str| found.iter().any(|f| f.table == table && f.name == c);
            if !found.iter().any(|f| f.table == table) {
                continue;
            }
            let mut after = "event_time";
            for (name, kind) in PREDICTION_COLUMNS {
                if !has(name) {
                    if table == SERVING {
                        out.push(format!("DROP TABLE IF EXISTS {}", self.name(SERVING)));
                        break;
                    }
                    out.push(format!(
                        "ALTER TABLE {} ADD COLUMN {name} {kind} AFTER {after}",
                        self.name(table)
                    ));
                }
                after = name;
            }
        }
        Ok(out)
    }

    /// Whether the server answers a query (without the database, which may not exist yet).
    pub async fn ping(&self) -> Result<()> {
        let sql = "SELECT 1";
        let mut cursor = self.server.query(sql).fetch_bytes("TSV").map_err(self.request_err(sql))?;
        cursor.collect().await.map_err(self.request_err(sql))?;
        Ok(())
    }

    /// Runs a query and reads its one-line text answer (for checks and summaries).
    pub async fn fetch_text(&self, sql: &str) -> Result<String> {
        let mut cursor = self.client.query(sql).fetch_bytes("TSV").map_err(self.request_err(sql))?;
        let bytes = cursor.collect().await.map_err(self.request_err(sql))?;
        Ok(String::from_utf8_lossy(&bytes).trim_end().to_string())
    }

    /// Inserts the encoded rows into their table, in one request (again on a retry: the bytes
    /// are shared, not copied).
    pub async fn insert(&self, rows: &SealedRows) -> Result<()> {
        let target = rows.target;
        if rows.count == 0 {
            return Ok(());
        }
        let mut names = vec!["transaction_id".to_string(), "event_time".to_string()];
        names.extend(self.columns.iter().map(|c| quote(&c.name)));
        names.extend(PREDICTION_COLUMNS.iter().map(|(n, _)| n.to_string()));
        if target == Target::Batch {
            names.push("batch_run_id".into());
        }
        let sql =
            format!("INSERT INTO {} ({}) FORMAT RowBinary", self.name(target.table()), names.join(", "));
        let what = format!("inserting {} rows into {}", rows.count, target.table());
        let mut insert = self.client.insert_formatted_with(sql);
        insert.send(rows.buf.clone()).await.map_err(self.request_err(what.clone()))?;
        insert.end().await.map_err(self.request_err(what))
    }
}

/// One prediction, as it goes to ClickHouse.
pub struct Prediction<'a> {
    pub transaction_id: &'a str,
    /// UTC microseconds.
    pub event_time_us: i64,
    /// The copied fields' values, in the order of [`Serving::columns`].
    pub fields: &'a [Value<'a>],
    pub probability: f64,
    pub label: bool,
    pub reasons: &'a [&'a str],
    /// The reasons as text with the transaction's values, `; ` between them.
    pub explanation: &'a str,
    pub model_version: &'a str,
    /// UTC seconds.
    pub scored_at: u32,
    /// The batch run (batch table only).
    pub batch_run_id: Option<&'a str>,
}

/// Predictions encoded as RowBinary for one insert into one table.
#[derive(Debug, Clone)]
pub struct PredictionRows {
    target: Target,
    buf: Vec<u8>,
    count: usize,
}

fn varint(buf: &mut Vec<u8>, mut n: u64) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            buf.push(byte);
            return;
        }
        buf.push(byte | 0x80);
    }
}

fn string(buf: &mut Vec<u8>, s: &str) {
    varint(buf, s.len() as u64);
    buf.extend_from_slice(s.as_bytes());
}

/// DateTime: UTC seconds as UInt32 (clamped to its range).
fn seconds(us: i64) -> u32 {
    us.div_euclid(1_000_000).clamp(0, u32::MAX as i64) as u32
}

/// Predictions encoded for one insert, done with: [`Serving::insert`] sends them.
#[derive(Debug, Clone)]
pub struct SealedRows {
    target: Target,
    buf: Bytes,
    count: usize,
}

impl SealedRows {
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

impl PredictionRows {
    pub fn new(target: Target) -> PredictionRows {
        PredictionRows { target, buf: Vec::new(), count: 0 }
    }

    /// The rows, ready to send (the buffer handed over, not copied).
    pub fn seal(self) -> SealedRows {
        SealedRows { target: self.target, buf: Bytes::from(self.buf), count: self.count }
    }

    /// The rows so far, sealed; this one is left empty with room for as many bytes again (the
    /// next rows then do not grow the buffer and copy it row by row).
    pub fn take(&mut self) -> SealedRows {
        let room = Vec::with_capacity(self.buf.len());
        let full = PredictionRows {
            target: self.target,
            buf: std::mem::replace(&mut self.buf, room),
            count: self.count,
        };
        self.count = 0;
        full.seal()
    }

    pub fn target(&self) -> Target {
        self.target
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Encoded size in bytes.
    pub fn bytes(&self) -> usize {
        self.buf.len()
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.count = 0;
    }

    /// Appends one prediction; `columns` are the serving tables' copied fields.
    pub fn push(&mut self, columns: &[ServingColumn], p: &Prediction<'_>) {
        let buf = &mut self.buf;
        string(buf, p.transaction_id);
        buf.extend_from_slice(&seconds(p.event_time_us).to_le_bytes());
        for (column, value) in columns.iter().zip(p.fields) {
            if column.nullable {
                if matches!(value, Value::Null) {
                    buf.push(1);
                    continue;
                }
                buf.push(0);
            }
            match (column.kind, value) {
                (FieldType::String, Value::Str(s)) => string(buf, s),
                (FieldType::Double, Value::Double(v)) => buf.extend_from_slice(&v.to_le_bytes()),
                (FieldType::Long, Value::Long(v)) => buf.extend_from_slice(&v.to_le_bytes()),
                (FieldType::Boolean, Value::Bool(v)) => buf.push(u8::from(*v)),
                (FieldType::Timestamp, Value::Timestamp(us)) => {
                    buf.extend_from_slice(&seconds(*us).to_le_bytes())
                }
                // A required field without a value (not possible for parsed events): its zero.
                (FieldType::String, _) => string(buf, ""),
                (FieldType::Double | FieldType::Long, _) => buf.extend_from_slice(&0u64.to_le_bytes()),
                (FieldType::Boolean, _) => buf.push(0),
                (FieldType::Timestamp, _) => buf.extend_from_slice(&0u32.to_le_bytes()),
            }
        }
        buf.extend_from_slice(&p.probability.to_le_bytes());
        buf.push(u8::from(p.label));
        varint(buf, p.reasons.len() as u64);
        for r in p.reasons {
            string(buf, r);
        }
        string(buf, p.explanation);
        string(buf, p.model_version);
        buf.extend_from_slice(&p.scored_at.to_le_bytes());
        if self.target == Target::Batch {
            string(buf, p.batch_run_id.unwrap_or_default());
        }
        self.count += 1;
    }
}
