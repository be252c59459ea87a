"""Runs txpipe's ClickHouse statements on the current ClickHouse engine (chdb-core, in process).

Input (stdin): JSON {"statements": [...], "database": "...", "columns": [[name, type], ...]},
the statements txpipe's serving layer sends, in order, and the copied event columns. The script
creates everything, inserts a realtime row and a batch row of one transaction and a realtime row
of another, and prints JSON with what the serving view returns, so the caller checks that current
ClickHouse accepts the SQL and the view picks the batch row.
"""

import json
import sys
import tempfile

import chdb
from chdb import session as chs


def sample(kind: str) -> str:
    if kind.startswith("Nullable("):
        return "NULL"
    return {"String": "'x'", "Float64": "1.5", "Int64": "7", "UInt8": "1", "DateTime": "'2026-11-30 10:00:00'"}[kind]


def main() -> None:
    spec = json.load(sys.stdin)
    db = spec["database"]
    with tempfile.TemporaryDirectory() as path:
        s = chs.Session(path)
        for sql in spec["statements"]:
            s.query(sql)
        # Twice: statements are idempotent.
        for sql in spec["statements"]:
            s.query(sql)
        copied = [c for c, _ in spec["columns"]]
        values = [sample(t) for _, t in spec["columns"]]

        def row(tid: str, p: float, version: str, scored: str, run: str | None) -> str:
            cols = ["transaction_id", "event_time", *[f"`{c}`" for c in copied], "fraud_probability",
                    "predicted_label", "reasons", "explanation", "model_version", "scored_at"]
            vals = [f"'{tid}'", "'2026-11-30 10:00:00'", *values, str(p), "1" if p >= 0.5 else "0",
                    "['amount', 'hour_of_day']", "'amount 12; at 03:00 UTC'", f"'{version}'", f"'{scored}'"]
            table = "transactions_realtime"
            if run is not None:
                cols.append("batch_run_id")
                vals.append(f"'{run}'")
                table = "transactions_batch"
            return f"INSERT INTO {db}.{table} ({', '.join(cols)}) VALUES ({', '.join(vals)})"

        s.query(row("t1", 0.9, "000001", "2026-11-30 10:00:01", None))
        s.query(row("t1", 0.9, "000001", "2026-11-30 10:00:01", None))
        s.query(row("t1", 0.2, "000002", "2026-11-30 11:00:00", "run-2"))
        s.query(row("t2", 0.7, "000001", "2026-11-30 10:00:02", None))
        out = s.query(
            f"SELECT transaction_id, source, model_version, fraud_probability, reasons, explanation "
            f"FROM {db}.transactions_serving ORDER BY transaction_id",
            "JSONCompact",
        )
        rows = json.loads(out.bytes())["data"]
        print(json.dumps({"chdb": chdb.__version__, "rows": rows}))


if __name__ == "__main__":
    main()
