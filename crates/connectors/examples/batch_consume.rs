//! What one `poll` per message costs, for BENCHMARKS.md: reads a topic from the beginning with
//! ingest's fetch settings, partitions assigned directly (no group), in one of two ways, and
//! touches each payload. `poll`: one `poll` per message, as ingest's reader read before it took
//! batches. `batch`: every partition's queue forwarded, before any fetch starts, to one queue
//! that is read up to 1,024 messages at a time (librdkafka's `rd_kafka_consume_batch_queue`),
//! as the reader reads now; the consumer's own queue is still polled once per batch, where
//! rebalances would arrive. Run under `/usr/bin/time` to compare the CPU of the two with kcat's.
//!
//!     cargo run --release -p txpipe-connectors --example batch_consume -- TOPIC COUNT poll|batch [BROKERS]

use std::ffi::CString;
use std::time::{Duration, Instant};

use rdkafka::bindings as rd;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: batch_consume TOPIC COUNT poll|batch [BROKERS]";
    let (Some(topic), Some(count), Some(mode)) =
        (args.get(1), args.get(2).and_then(|c| c.parse::<u64>().ok()), args.get(3))
    else {
        return Err(usage.into());
    };
    let brokers = args.get(4).cloned().unwrap_or_else(|| "127.0.0.1:9092".into());
    // Ingest's fetch settings (crates/connectors/src/kafka/consumer.rs).
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("batch-consume-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("fetch.max.bytes", "4194304")
        .set("max.partition.fetch.bytes", "1048576")
        .set("queued.min.messages", "10000")
        .set("queued.max.messages.kbytes", "2048")
        .set("fetch.queue.backoff.ms", "10")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> = metadata.topics()[0].partitions().iter().map(|p| p.id()).collect();
    let (mut read, mut checksum) = (0u64, 0u64);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(600);
    match mode.as_str() {
        "poll" => {
            consumer.assign(&from_the_start(topic, &partitions)?)?;
            let mut idle = true;
            while read < count && Instant::now() < deadline {
                match consumer.poll(if idle { Duration::from_millis(20) } else { Duration::ZERO }) {
                    Some(Ok(m)) => {
                        idle = false;
                        read += 1;
                        checksum += touch(m.payload().unwrap_or_default());
                    }
                    _ => idle = true,
                }
            }
        }
        "batch" => {
            let name = CString::new(topic.as_str())?;
            let rk = consumer.client().native_ptr();
            // SAFETY: the client outlives the queues, every queue handle taken is destroyed once,
            // and each message is read before it is destroyed.
            unsafe {
                let queue = rd::rd_kafka_queue_new(rk);
                for &p in &partitions {
                    let fetched = rd::rd_kafka_queue_get_partition(rk, name.as_ptr(), p);
                    rd::rd_kafka_queue_forward(fetched, queue);
                    rd::rd_kafka_queue_destroy(fetched);
                }
                consumer.assign(&from_the_start(topic, &partitions)?)?;
                let mut messages = vec![std::ptr::null_mut(); 1024];
                while read < count && Instant::now() < deadline {
                    let n =
                        rd::rd_kafka_consume_batch_queue(queue, 20, messages.as_mut_ptr(), messages.len());
                    for &m in &messages[..n.max(0) as usize] {
                        if (*m).err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                            read += 1;
                            checksum +=
                                touch(std::slice::from_raw_parts((*m).payload as *const u8, (*m).len));
                        }
                        rd::rd_kafka_message_destroy(m);
                    }
                    let _ = consumer.poll(Duration::ZERO);
                }
                rd::rd_kafka_queue_destroy(queue);
            }
        }
        _ => return Err(usage.into()),
    }
    if read < count {
        return Err(format!("read {read} of {count} messages in 600 s").into());
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{mode}: {read} messages in {seconds:.2} s: {:.0} messages/s (checksum {checksum})",
        read as f64 / seconds
    );
    Ok(())
}

fn from_the_start(topic: &str, partitions: &[i32]) -> rdkafka::error::KafkaResult<TopicPartitionList> {
    let mut list = TopicPartitionList::new();
    for &p in partitions {
        list.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    Ok(list)
}

fn touch(payload: &[u8]) -> u64 {
    payload.get(payload.len() / 2).copied().unwrap_or(0).into()
}
