"""End-to-end latency: event produced -> queryable in ClickHouse transactions_realtime.

    bench_e2e.py TOPIC DATABASE SECONDS [CLICKHOUSE_URL]

Reads the topic with kcat (every event's transaction id and event time, which `txpipe produce
--start-time now` sets to the moment it sends the event), and polls ClickHouse every 50 ms for
rows that appeared since the last poll; a row's latency is the wall-clock time of the poll that
first returned it minus its event time (so up to 50 ms of polling interval is included). A
fixed 2 % sample of the ids (by hash) is polled, to keep the observer's load small.
Prints one JSON object: rows seen, p50 / p99 / max in seconds.
"""

import json
import subprocess
import os
import sys
import threading
import time
import urllib.parse
import urllib.request
from datetime import datetime


def main() -> None:
    topic, database, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    # The addresses scripts/services uses (the same variables as the other scripts).
    url = os.environ.get("TXPIPE_CLICKHOUSE_URL", f"http://127.0.0.1:{os.environ.get('TXPIPE_CLICKHOUSE_HTTP_PORT', '8123')}")
    brokers = os.environ.get("TXPIPE_BROKERS", f"127.0.0.1:{os.environ.get('TXPIPE_KAFKA_PORT', '9092')}")
    sent: dict[str, float] = {}
    kcat = subprocess.Popen(
        ["kcat", "-C", "-b", brokers, "-t", topic, "-o", "beginning", "-q", "-f", "%s\n"],
        stdout=subprocess.PIPE,
        text=True,
    )

    def read() -> None:
        assert kcat.stdout is not None
        for line in kcat.stdout:
            try:
                e = json.loads(line)
                t = datetime.fromisoformat(e["event_time"].replace("Z", "+00:00")).timestamp()
                sent[e["transaction_id"]] = t
            except (ValueError, KeyError, TypeError, AttributeError):
                pass

    threading.Thread(target=read, daemon=True).start()
    seen: dict[str, float] = {}
    since = int(time.time()) - 2
    watched_from = time.time() - 2
    end = time.time() + seconds
    query = (
        f"SELECT transaction_id, toUnixTimestamp(scored_at) FROM {database}.transactions_realtime "
        "WHERE scored_at >= toDateTime({since}) AND cityHash64(transaction_id) % 50 = 0 FORMAT TSV"
    )
    while time.time() < end:
        started = time.time()
        sql = query.replace("{since}", str(since))
        try:
            with urllib.request.urlopen(url + "/?" + urllib.parse.urlencode({"query": sql}), timeout=5) as r:
                body = r.read().decode()
        except OSError:
            body = ""
        now = time.time()
        newest = since
        for line in body.splitlines():
            tid, scored = line.split("\t")
            seen.setdefault(tid, now)
            newest = max(newest, int(scored))
        since = max(since, newest - 2)
        time.sleep(max(0.0, 0.05 - (time.time() - started)))
    kcat.terminate()
    # Only the events produced while it watched: the history (older event times) is scored
    # by the catch-up, which is not what this measures.
    lat = sorted(seen[t] - sent[t] for t in seen if t in sent and sent[t] >= watched_from)
    if not lat:
        print(json.dumps({"rows": 0}))
        return
    q = lambda p: round(lat[min(len(lat) - 1, int(p * len(lat)))], 3)  # noqa: E731
    print(json.dumps({"rows": len(lat), "p50_s": q(0.5), "p99_s": q(0.99), "max_s": round(lat[-1], 3)}))


if __name__ == "__main__":
    main()
