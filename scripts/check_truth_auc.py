#!/usr/bin/env python3
"""The held-out AUC of a txpipe model against the AUC of the generator's true probabilities.

    check_truth_auc.py TABLE MODEL.json TRUTH.csv [TOLERANCE]

TABLE is the clean Delta table the model was trained on, MODEL.json the `model.json` of the
version, TRUTH.csv what `txpipe produce --truth-output` wrote (transaction_id,
fraud_probability, is_fraud, malformed). The held-out rows are found as train finds them: the
table at the model's Delta version, each transaction id once (the first copy by Kafka partition
then offset), labelled, with an event time at or after the model's `holdout_from_us`. On those
rows the true probabilities reach the best AUC any model can expect; the model's held-out AUC
(model.json) should be within TOLERANCE (default 0.005) of it.

Prints one JSON object; exits 1 when the gap is over the tolerance or the held-out rows found
here are not the ones model.json counted.
"""
import json
import sys

import numpy as np
import pyarrow.compute as pc
import pyarrow.csv as pcsv
from deltalake import DeltaTable
from sklearn.metrics import roc_auc_score


def main() -> int:
    if len(sys.argv) not in (4, 5):
        print(__doc__, file=sys.stderr)
        return 2
    table_uri, model_path, truth_path = sys.argv[1:4]
    tolerance = float(sys.argv[4]) if len(sys.argv) == 5 else 0.005
    model = json.load(open(model_path))
    lineage = model["lineage"]
    schema = model["schema"]
    id_field, time_field, label_field = schema["id_field"], schema["time_field"], schema["label_field"]
    dt = DeltaTable(table_uri, version=lineage["delta_version"])
    rows = dt.to_pyarrow_table(columns=[id_field, time_field, label_field, "kafka_partition", "kafka_offset"])
    rows = rows.sort_by([("kafka_partition", "ascending"), ("kafka_offset", "ascending")])
    ids = rows.column(id_field).to_numpy(zero_copy_only=False)
    _, first = np.unique(ids, return_index=True)
    keep = np.zeros(len(ids), dtype=bool)
    keep[first] = True
    times = pc.cast(rows.column(time_field), "int64").to_numpy(zero_copy_only=False)
    labels = rows.column(label_field)
    labelled = pc.is_valid(labels).to_numpy(zero_copy_only=False)
    held = keep & labelled & (times >= lineage["holdout_from_us"])
    held_ids = ids[held]
    y = labels.to_numpy(zero_copy_only=False)[held].astype(np.int64)

    truth = pcsv.read_csv(truth_path, convert_options=pcsv.ConvertOptions(strings_can_be_null=True))
    truth = truth.filter(pc.is_null(truth.column("malformed")))
    t_ids = truth.column("transaction_id").to_numpy(zero_copy_only=False)
    t_p = truth.column("fraud_probability").to_numpy(zero_copy_only=False)
    t_ids, t_first = np.unique(t_ids, return_index=True)
    t_p = t_p[t_first]
    pos = np.searchsorted(t_ids, held_ids)
    found = (pos < len(t_ids)) & (t_ids[np.minimum(pos, len(t_ids) - 1)] == held_ids)
    p = t_p[np.minimum(pos, len(t_ids) - 1)]

    truth_auc = roc_auc_score(y[found], p[found])
    model_auc = model["metrics"]["holdout"]["auc_roc"]
    out = {
        "held_out_rows": int(held.sum()),
        "model_counted": model["metrics"]["holdout"]["rows"],
        "without_truth": int((~found).sum()),
        "positives": int(y.sum()),
        "truth_auc": truth_auc,
        "model_auc": model_auc,
        "gap": truth_auc - model_auc,
        "tolerance": tolerance,
    }
    print(json.dumps(out))
    problems = []
    if abs(out["gap"]) > tolerance:
        problems.append(f"the model's AUC {model_auc:.4f} is {out['gap']:+.4f} from the truth's {truth_auc:.4f}")
    if out["held_out_rows"] != out["model_counted"] or out["without_truth"]:
        problems.append("the held-out rows found here are not the ones model.json counted, or lack a truth")
    if problems:
        print("; ".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
