"""Reads ingest's tables with Apache Spark + Delta, for scripts/check_spark.

  check_spark.py before DIR   batch counts of DIR/clean and DIR/q, and a stream of DIR/clean
                              with its checkpoint in DIR/ck; writes DIR/before.json
  check_spark.py after DIR    after `txpipe optimize`: batch counts again, the same stream
                              (expects no new rows), and a fresh stream replaying every commit
                              from version 0; compares with DIR/before.json

Prints one JSON line of figures; exits 1 when a check fails.
"""

import json
import sys

from delta import configure_spark_with_delta_pip
from pyspark.sql import SparkSession


def session(workdir):
    builder = (
        SparkSession.builder.master("local[2]")
        .appName("txpipe-check-spark")
        .config("spark.driver.memory", "2g")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.warehouse.dir", f"{workdir}/warehouse")
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
    )
    spark = configure_spark_with_delta_pip(builder).getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def batch(spark, workdir):
    clean = spark.read.format("delta").load(f"{workdir}/clean")
    history = spark.sql(f"DESCRIBE HISTORY delta.`{workdir}/clean`")
    return {
        "rows": clean.count(),
        "distinct_ids": clean.select("transaction_id").distinct().count(),
        "dates": clean.select("event_date").distinct().count(),
        "quarantine_rows": spark.read.format("delta").load(f"{workdir}/q").count(),
        "version": history.agg({"version": "max"}).first()[0],
        "operations": sorted({r[0] for r in history.select("operation").collect()}),
    }


def stream(spark, workdir, checkpoint, **options):
    """Rows (and distinct ids) a stream of the clean table reads until it is caught up."""
    seen = {"rows": 0, "ids": set()}

    def each(df, _batch_id):
        ids = [r[0] for r in df.select("transaction_id").collect()]
        seen["rows"] += len(ids)
        seen["ids"].update(ids)

    reader = spark.readStream.format("delta")
    for key, value in options.items():
        reader = reader.option(key, value)
    query = (
        reader.load(f"{workdir}/clean")
        .writeStream.foreachBatch(each)
        .option("checkpointLocation", checkpoint)
        .trigger(availableNow=True)
        .start()
    )
    query.awaitTermination()
    return {"rows": seen["rows"], "distinct_ids": len(seen["ids"])}


def main():
    mode, workdir = sys.argv[1], sys.argv[2]
    spark = session(workdir)
    out = {"spark": spark.version, **batch(spark, workdir)}
    failures = []
    if mode == "before":
        out["stream"] = stream(spark, workdir, f"{workdir}/ck")
        with open(f"{workdir}/before.json", "w") as f:
            json.dump(out, f)
        if out["stream"]["rows"] != out["rows"]:
            failures.append("the stream read another number of rows than the batch read")
    else:
        with open(f"{workdir}/before.json") as f:
            before = json.load(f)
        out["stream_new_rows"] = stream(spark, workdir, f"{workdir}/ck")["rows"]
        out["replay"] = stream(
            spark, workdir, f"{workdir}/ck-replay", startingVersion="0", maxFilesPerTrigger="5"
        )
        for key in ("rows", "distinct_ids", "dates", "quarantine_rows"):
            if out[key] != before[key]:
                failures.append(f"{key}: {before[key]} before optimize, {out[key]} after")
        if "OPTIMIZE" not in out["operations"]:
            failures.append("no OPTIMIZE commit in the history")
        if out["stream_new_rows"] != 0:
            failures.append(f"the stream read {out['stream_new_rows']} rows again after optimize")
        if out["replay"] != {"rows": before["rows"], "distinct_ids": before["rows"]}:
            failures.append(f"replay from version 0 read {out['replay']}, expected each of {before['rows']} rows once")
    if out["rows"] != out["distinct_ids"]:
        failures.append("a transaction id is in the table twice")
    out["failures"] = failures
    print(json.dumps(out), flush=True)
    spark.stop()
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
