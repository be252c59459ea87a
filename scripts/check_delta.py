#!/usr/bin/env python3
"""Independent check of a Delta table written by txpipe.

Reads the table with Python's `deltalake` (the delta-rs bindings) and pyarrow, and prints one
JSON object: version, row count, columns (name, Arrow type, nullable), partition columns, the
txn version of each application id given (reading them must work: no fallback), the last Kafka
offset per partition in the data, and digests of the values: the number of distinct transaction
ids and the ids sorted, the sum of amounts and of event times (microseconds), and the
exact bytes of every quarantined payload that was not UTF-8 (hex), keyed by partition/offset.

    check_delta.py TABLE_PATH [APP_ID ...]     (the txn version of each APP_ID, null when none)

TABLE_PATH may be an object-store URL (s3://bucket/path): the storage options are then the
AWS_* variables of the environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...).
"""
import json
import os
import sys

import pyarrow as pa
from deltalake import DeltaTable


def main() -> None:
    options = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    table = DeltaTable(sys.argv[1], storage_options=options or None)
    data = table.to_pyarrow_table()
    out = {
        "version": table.version(),
        "rows": data.num_rows,
        "columns": [[f.name, str(f.type), f.nullable] for f in data.schema],
        "partition_columns": list(table.metadata().partition_columns),
    }
    if "transaction_id" in data.column_names:
        ids = sorted(data.column("transaction_id").to_pylist())
        out["distinct_ids"] = len(set(ids))
        out["ids"] = ids
        out["amount_sum"] = sum(data.column("amount").to_pylist())
        # As a string: the sum of microseconds outgrows 64 bits.
        out["event_time_sum"] = str(sum(data.column("event_time").cast(pa.int64()).to_pylist()))
    last = {}
    for p, o in zip(data.column("kafka_partition").to_pylist(), data.column("kafka_offset").to_pylist()):
        last[str(p)] = max(last.get(str(p), -1), o)
    out["last_offsets"] = last
    if "raw_bytes" in data.column_names:
        out["raw_bytes"] = {
            f"{p}/{o}": b.hex()
            for p, o, b in zip(
                data.column("kafka_partition").to_pylist(),
                data.column("kafka_offset").to_pylist(),
                data.column("raw_bytes").to_pylist(),
            )
            if b is not None
        }
    out["txn"] = {app: table.transaction_version(app) for app in sys.argv[2:]}
    print(json.dumps(out))
    sys.stdout.flush()
    # delta-rs bindings can abort at interpreter exit after correct output; leave at once.
    os._exit(0)


if __name__ == "__main__":
    main()
