//! `txpipe optimize` on tables written by ingest: fewer files, the same rows, commits that
//! stream readers skip (dataChange=false), and vacuum's retention check.

mod common;

use txpipe_connectors::delta::{self, TablesConfig};
use txpipe_core::schema::Schema;
use txpipe_jobs::Shutdown;
use txpipe_jobs::ingest::{self, IngestConfig, IngestJob};
use txpipe_jobs::optimize::{self, OptimizeConfig};
use txpipe_jobs::produce::{self, ProduceConfig, ProduceJob};

async fn ids(location: &str) -> Vec<String> {
    let table = delta::open_existing(location, &Default::default()).await.unwrap();
    let rows = delta::read_rows(&table).await.unwrap();
    let mut out = delta::string_values(&rows, "transaction_id").unwrap();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_every_row_in_fewer_files_without_data_change() {
    let kafka = common::fresh_topic("optimize", 2).await;
    let produce_config =
        ProduceConfig { count: 3_000, seed: 61, malformed_rate: 0.02, ..ProduceConfig::default() };
    let job = ProduceJob {
        settings: produce_config.validate().unwrap(),
        kafka: kafka.clone(),
        schema: Schema::default_schema(),
    };
    produce::run(job, Shutdown::new()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tables = TablesConfig {
        clean: dir.path().join("clean").display().to_string(),
        quarantine: dir.path().join("quarantine").display().to_string(),
        ..TablesConfig::default()
    };
    // Small commits: many small files, as a long-running ingest leaves them.
    let settings = IngestConfig { flush_rows: 400, exit_when_idle: Some(2.0), ..IngestConfig::default() };
    let job = IngestJob {
        settings: settings.validate().unwrap(),
        kafka,
        tables: tables.clone(),
        schema: Schema::default_schema(),
        hooks: Default::default(),
    };
    let report = ingest::run(job, Shutdown::new()).await.unwrap();
    assert!(report.commits >= 5, "{report:?}");
    let before_ids = ids(&tables.clean).await;
    let before = delta::open_existing(&tables.clean, &Default::default()).await.unwrap();
    let files_before = delta::data_files(&before).unwrap().len();
    let version_before = before.version().unwrap();

    let config = OptimizeConfig { vacuum: false, ..OptimizeConfig::default() };
    // Two runs at once, as when a scheduled run overlaps a slow one: whichever commits a bin
    // second stops there, so every file is rewritten once (the exact race is a unit test of the
    // connectors crate).
    let (a, b) = tokio::join!(optimize::run(&tables, &config), optimize::run(&tables, &config));
    let (a, b) = (a.unwrap(), b.unwrap());
    let (a, b) = (&a[0].compaction, &b[0].compaction);
    assert_eq!(a.files_before.max(b.files_before), files_before, "{a:?} {b:?}");
    assert!(a.commits + b.commits >= 1, "{a:?} {b:?}");
    let files_after =
        delta::data_files(&delta::open_existing(&tables.clean, &Default::default()).await.unwrap())
            .unwrap()
            .len();
    assert!(files_after < files_before / 2, "{files_after} of {files_before}; {a:?} {b:?}");
    assert_eq!(ids(&tables.clean).await, before_ids, "the same rows, each once");

    // Every commit of the compaction changes no data: a stream reader skips them.
    let after = delta::open_existing(&tables.clean, &Default::default()).await.unwrap();
    let log = after.log_store();
    for v in version_before + 1..=after.version().unwrap() {
        let bytes = log.read_commit_entry(v).await.unwrap().unwrap();
        for action in deltalake::logstore::get_actions(v, &bytes).unwrap() {
            match action {
                deltalake::kernel::Action::Add(a) => assert!(!a.data_change, "add in v{v}"),
                deltalake::kernel::Action::Remove(r) => assert!(!r.data_change, "remove in v{v}"),
                _ => {}
            }
        }
    }
    // Compacting again finds nothing to do.
    let again = optimize::run(&tables, &config).await.unwrap();
    assert_eq!(again[0].compaction.commits, 0);

    // Vacuum keeps the removed files within the retention period, and refuses a retention
    // below the table's minimum.
    let kept =
        optimize::run(&tables, &OptimizeConfig { dry_run: true, ..OptimizeConfig::default() }).await.unwrap();
    assert!(kept[0].vacuumed.is_empty());
    let refused =
        optimize::run(&tables, &OptimizeConfig { retention_hours: 0, ..OptimizeConfig::default() }).await;
    assert!(refused.unwrap_err().to_string().contains("retention"));
}
