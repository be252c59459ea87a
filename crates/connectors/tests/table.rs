//! The appending handle and the reader of txpipe's Delta tables, on real tables in temporary
//! folders: date partitions, stale handles and the conflict rule, checkpoints and log clean-up,
//! a schema change, projections at a version.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use deltalake::kernel::{DataType, StructField};
use txpipe_connectors::delta::arrow::array::{
    Array, Date32Array, Float64Array, Int64Array, RecordBatch, TimestampMicrosecondArray,
};
use txpipe_connectors::delta::{
    CleanRows, DeltaError, EVENT_DATE, Table, clean_schema, data_files, open_existing, read_columns,
    read_rows,
};
use txpipe_core::event::{EventParser, Value};
use txpipe_core::schema::Schema;

#[path = "common/s3.rs"]
mod s3;
use s3::s3_location;

/// A clean batch of one event per time, ids made of the time and the position.
fn rows(parser: &EventParser, times: &[&str]) -> RecordBatch {
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
    let parser = EventParser::new(Schema::default_schema());
    let location = dir.path().join("t").to_string_lossy().into_owned();
    let mut table = open(&location, &parser, 10).await;
    // One day (written straight to its partition), then three rows over two days (split).
    let one_day = rows(&parser, &["2026-11-01T08:00:00Z", "2026-11-01T23:59:59Z"]);
    let mixed = rows(&parser, &["2026-11-02T00:00:00Z", "2026-11-01T12:00:00Z", "2026-11-02T09:30:00Z"]);
    table.append(&[one_day, mixed], &BTreeMap::from([(0, 2)]), serde_json::Map::new()).await.unwrap();
    table.load().await.unwrap();

    let days: Vec<Option<String>> =
        data_files(table.delta()).unwrap().iter().map(|f| f.partition_values[EVENT_DATE].clone()).collect();
    assert!(
        days.contains(&Some("2026-11-01".into())) && days.contains(&Some("2026-11-02".into())),
        "{days:?}"
    );
    let mut seen = 0;
    for batch in read_rows(table.delta()).await.unwrap() {
        let dates = batch.column_by_name(EVENT_DATE).unwrap().as_any().downcast_ref::<Date32Array>().unwrap();
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
    open_with(location, &BTreeMap::new(), parser, interval).await
}

async fn open_with(
    location: &str,
    options: &BTreeMap<String, String>,
    parser: &EventParser,
    interval: u32,
) -> Table {
    let layout = clean_schema(parser.schema());
    Table::open_or_create(location, options, layout, Some(EVENT_DATE), "test", interval).await.unwrap()
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
    let location = dir.path().join("t").to_string_lossy().into_owned();
    stale_handle(&location, &BTreeMap::new()).await;
}

/// On the S3 store, two writers' commits of one version are told apart by the store's
/// conditional put (`If-None-Match`), with no lock service: the second finds the version taken.
#[tokio::test]
async fn on_s3_a_stale_handle_commits_after_the_others_through_the_stores_conditional_put() {
    let (location, options) = s3_location("stale");
    stale_handle(&location, &options).await;
}

/// Two handles on one table: `b` commits while stale (version 1 is taken by `a` since it looked)
/// and lands after `a`'s commits; `a` then commits while stale on a partition `b` moved: a
/// conflict, nothing written.
async fn stale_handle(location: &str, options: &BTreeMap<String, String>) {
    let parser = EventParser::new(Schema::default_schema());
    let mut a = open_with(location, options, &parser, 100).await;
    let mut b = open_with(location, options, &parser, 100).await;
    assert_eq!((a.version(), b.version()), (Some(0), Some(0)));
    let none = serde_json::Map::new;
    // a takes versions 1 and 2 (partitions 0 and 1); b still knows version 0.
    assert_eq!(a.append(&[one_row(&parser)], &BTreeMap::from([(0, 5)]), none()).await.unwrap(), 1);
    assert_eq!(a.append(&[one_row(&parser)], &BTreeMap::from([(1, 7)]), none()).await.unwrap(), 2);
    // b's commit for partition 2 finds version 1 taken, reads 1 and 2, and lands as 3.
    assert_eq!(b.append(&[one_row(&parser)], &BTreeMap::from([(2, 9)]), none()).await.unwrap(), 3);
    assert_eq!(b.lost_races(), 1, "b's put of version 1 was refused once");
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
    let mut fresh = open_existing(location, options).await.unwrap();
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
        a.append(&[one_row(&parser)], &BTreeMap::from([(0, offset)]), serde_json::Map::new()).await.unwrap();
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
        stale.append(&[one_row(&parser)], &BTreeMap::from([(0, 5)]), serde_json::Map::new()).await.unwrap(),
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

#[tokio::test]
async fn only_the_requested_columns_at_the_requested_version() {
    let dir = tempfile::tempdir().unwrap();
    let parser = EventParser::new(Schema::default_schema());
    let location = dir.path().join("t").to_string_lossy().into_owned();
    let mut table = open(&location, &parser, 10).await;
    let rows = rows(&parser, &["2026-11-01T08:00:00Z", "2026-11-02T08:00:00Z"]);
    let v1 = table
        .append(std::slice::from_ref(&rows), &BTreeMap::from([(0, 1)]), serde_json::Map::new())
        .await
        .unwrap();
    table.append(&[rows], &BTreeMap::from([(0, 3)]), serde_json::Map::new()).await.unwrap();
    let wanted = ["amount", "event_date", "kafka_offset", "no_such_column"];
    let latest = read_columns(&location, &BTreeMap::new(), None, &wanted, 4).await.unwrap();
    assert_eq!(latest.version, 2);
    assert_eq!(latest.absent, ["no_such_column"]);
    let n: usize = latest.batches.iter().map(RecordBatch::num_rows).sum();
    assert_eq!(n, 4);
    for b in &latest.batches {
        let schema = b.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, wanted);
        assert!(b.column(0).as_any().downcast_ref::<Float64Array>().is_some());
        assert_eq!(b.column(1).null_count(), 0, "the partition column comes back from the log");
        assert!(b.column(2).as_any().downcast_ref::<Int64Array>().is_some());
        assert_eq!(b.column(3).logical_null_count(), b.num_rows());
    }
    let first = read_columns(&location, &BTreeMap::new(), Some(v1), &wanted, 1).await.unwrap();
    assert_eq!((first.version, first.batches.iter().map(RecordBatch::num_rows).sum::<usize>()), (1, 2));
}
