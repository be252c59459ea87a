//! A bare consumer for benchmarks: reads a topic from the beginning with ingest's own consumer
//! settings and its way of reading (batches), touches each payload and keeps nothing. Its rate
//! is the ceiling for ingest on the same machine (`scripts/bench ingest` prints it beside the
//! rate of kcat).
//!
//!     cargo run --release --example bare_consume -- TOPIC COUNT [BROKERS]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use txpipe_connectors::kafka::{Consumer, KafkaConfig, MissingOffsets, OffsetSource, Positioning, StartAt};

/// Nothing stored: every partition from its start.
struct FromTheStart;

impl OffsetSource for FromTheStart {
    fn stored(&self, partitions: &[i32]) -> Result<HashMap<i32, Option<i64>>, String> {
        Ok(partitions.iter().map(|&p| (p, None)).collect())
    }

    fn pin(&self, positions: &HashMap<i32, i64>) -> Result<HashMap<i32, Option<i64>>, String> {
        Ok(positions.keys().map(|&p| (p, None)).collect())
    }

    fn revoking(&self, _: &[i32]) {}
}

/// Counts a message and reads one byte of it.
fn touch(
    payload: Option<&[u8]>,
    started: &mut Option<Instant>,
    checksum: &mut u8,
    bytes: &mut u64,
    read: &mut u64,
) {
    started.get_or_insert_with(Instant::now);
    let payload = payload.unwrap_or_default();
    *checksum ^= payload.first().copied().unwrap_or(0);
    *bytes += payload.len() as u64;
    *read += 1;
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(topic), Some(count)) = (args.get(1), args.get(2).and_then(|c| c.parse::<u64>().ok())) else {
        return Err("usage: bare_consume TOPIC COUNT [BROKERS]".into());
    };
    let config = KafkaConfig {
        topic: topic.clone(),
        group_id: format!("bare-consume-{}", std::process::id()),
        brokers: args.get(3).cloned().unwrap_or_else(|| KafkaConfig::default().brokers),
        ..KafkaConfig::default()
    };
    let positioning = Positioning { start: StartAt::Earliest, missing: MissingOffsets::Fail };
    let consumer = Consumer::subscribe(&config, Arc::new(FromTheStart), positioning)?;
    let (mut read, mut bytes, mut checksum) = (0u64, 0u64, 0u8);
    let mut started: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    while read < count && Instant::now() < deadline {
        // As ingest's reader: the consumer's own queue for rebalances, then the messages of the
        // assigned partitions in batches.
        if let Some(Ok(m)) = consumer.poll(Duration::ZERO) {
            touch(m.payload(), &mut started, &mut checksum, &mut bytes, &mut read);
        }
        consumer.poll_batch(Duration::from_millis(100), 1024, |m| {
            if let Ok((_, _, payload)) = m {
                touch(payload, &mut started, &mut checksum, &mut bytes, &mut read);
            }
        });
    }
    let seconds = started.map_or(0.0, |s| s.elapsed().as_secs_f64());
    if read < count {
        return Err(format!("read {read} of {count} messages in 600 s").into());
    }
    println!(
        "{read} messages, {bytes} bytes in {seconds:.2} s: {:.0} messages/s (checksum {checksum})",
        read as f64 / seconds
    );
    Ok(())
}
