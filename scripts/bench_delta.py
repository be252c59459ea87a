#!/usr/bin/env python3
"""Figures of an ingest run, read from the Delta log of the clean table.

    bench_delta.py TABLE rate        steady-state rows/s between the first and the last commit
    bench_delta.py TABLE latency     produce -> visible latency per row (commit time - event_time),
                                     p50 / p99 / max in seconds, and data files per hour
    bench_delta.py TABLE positions QUARANTINE COUNT
                                     Kafka positions in TABLE and QUARANTINE together: how many
                                     are there twice, and how many of COUNT (the topic's
                                     messages, offsets without gaps) are missing

Prints one JSON object. Event times must follow the clock (`produce --start-time now`).
"""
import json
import os
import sys

import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import DeltaTable


def commits(table):
    # history(): newest first; keep the appends (WRITE), oldest first.
    return sorted(
        (h for h in table.history() if h.get("operation") == "WRITE"),
        key=lambda h: h["version"],
    )


def added_files(path, version):
    """Data files added by one commit, from its log entry."""
    with open(os.path.join(path, "_delta_log", f"{version:020d}.json")) as log:
        for line in log:
            action = json.loads(line)
            if "add" in action:
                yield action["add"]["path"], action["add"]["partitionValues"]


def rate(path):
    table = DeltaTable(path)
    history = commits(table)
    rows = [int(h.get("txpipe.messages", 0)) for h in history]
    first, last = history[0]["timestamp"], history[-1]["timestamp"]
    seconds = (last - first) / 1000
    steady = sum(rows[1:])
    return {"commits": len(history), "rows": sum(rows), "seconds": seconds, "rows_per_s": steady / seconds if seconds else None}


def latency(path):
    table = DeltaTable(path)
    history = commits(table)
    latencies = []
    files = 0
    for h in history:
        commit_us = h["timestamp"] * 1000
        for rel, _ in added_files(path, h["version"]):
            files += 1
            times = pq.read_table(os.path.join(path, rel), columns=["event_time"]).column("event_time")
            micros = pc.cast(times, "int64").to_pylist()
            latencies.extend((commit_us - m) / 1e6 for m in micros)
    latencies.sort()
    n = len(latencies)
    span_s = (history[-1]["timestamp"] - history[0]["timestamp"]) / 1000 or 1
    return {
        "rows": n,
        "p50_s": latencies[n // 2],
        "p99_s": latencies[min(n - 1, int(n * 0.99))],
        "max_s": latencies[-1],
        "commits": len(history),
        "data_files": files,
        "files_per_hour": files * 3600 / span_s,
    }


def positions(path, quarantine, count):
    seen = {}
    for table in (path, quarantine):
        if not os.path.exists(os.path.join(table, "_delta_log")):
            continue
        data = DeltaTable(table).to_pyarrow_table(columns=["kafka_partition", "kafka_offset"])
        for p, o in zip(data.column("kafka_partition").to_pylist(), data.column("kafka_offset").to_pylist()):
            seen[(p, o)] = seen.get((p, o), 0) + 1
    twice = sum(n - 1 for n in seen.values() if n > 1)
    return {"positions": sum(seen.values()), "twice": twice, "missing": int(count) - len(seen)}


if __name__ == "__main__":
    what = {"rate": rate, "latency": latency, "positions": positions}[sys.argv[2]]
    print(json.dumps(what(sys.argv[1], *sys.argv[3:])))
    sys.stdout.flush()
    os._exit(0)
