#!/usr/bin/env python3
"""Parity of txpipe's logistic regression with scikit-learn, on the features txpipe exported.

    check_sklearn.py FEATURES.parquet MODEL.json

FEATURES.parquet comes from `txpipe train --export-features FILE` (a Float32 column per feature,
named as in model.json, then `_label` and `_slice`: 0 fitted, 1 validation, 2 held out);
MODEL.json is the `model.json` of the version that run published.

scikit-learn fits the fitted slice with the same objective as txpipe: the columns standardised
(mean and population standard deviation of the fitted slice, computed here from the file, 1 for
a constant column), L2 with C = 1 / train.l2 on the standardised coefficients, the intercept not
penalised, the same class weights (`balanced` is n / (2 n_class) in both). Prints one JSON object
and exits 1 when a figure is out of its tolerance:

- `max_coef_diff`: the largest |difference| of the standardised coefficients (tolerance 1e-3);
- `intercept_diff`: of the standardised intercept, before txpipe's class-weight shift (1e-3);
- `auc_diff`: held-out AUC of scikit-learn's model against txpipe's (0.001);
- `reported_auc_diff`: txpipe's held-out AUC as model.json reports it against the one computed
  here from txpipe's coefficients on the exported rows (0.001);
- `max_std_rel_diff`: txpipe's standardisation against the one computed here (1e-6, relative).

It also prints `sklearn_fit_s`: the time of a fit of the same rows by scikit-learn's
newton-cholesky solver with its default tolerance (the speed reference for txpipe's `fit_s`).
"""
import json
import math
import sys
import time

import numpy as np
import pyarrow.parquet as pq
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

TOLERANCES = {
    "max_coef_diff": 1e-3,
    "intercept_diff": 1e-3,
    "auc_diff": 1e-3,
    "reported_auc_diff": 1e-3,
    "max_std_rel_diff": 1e-6,
}


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    table = pq.read_table(sys.argv[1])
    artifact = json.load(open(sys.argv[2]))
    model = artifact["model"]
    names = artifact["features"]["names"]
    missing = [n for n in names + ["_label", "_slice"] if n not in table.column_names]
    if missing:
        print(f"{sys.argv[1]} lacks the columns {missing} (is it the export of this model's run?)", file=sys.stderr)
        return 2
    x = np.column_stack([table.column(n).to_numpy() for n in names]).astype(np.float64)
    y = table.column("_label").to_numpy().astype(np.int64)
    part = table.column("_slice").to_numpy()
    fitted, held = part == 0, part == 2
    xf, yf, xh, yh = x[fitted], y[fitted], x[held], y[held]

    mean = xf.mean(axis=0)
    std = xf.std(axis=0)
    std[std <= 1e-12] = 1.0
    fit = artifact["hyper_parameters"]["fit"]
    l2 = float(fit["l2"])
    weight = fit["class_weight"]
    if weight == "none":
        class_weight, shift = None, 0.0
    elif weight == "balanced":
        n, npos = len(yf), int(yf.sum())
        class_weight = "balanced"
        shift = math.log((n / (2 * npos)) / (n / (2 * (n - npos))))
    else:
        given = weight["given"]
        class_weight = {0: given["negative"], 1: given["positive"]}
        shift = math.log(given["positive"] / given["negative"])
    # The speed reference: scikit-learn's fastest solver for this shape with its default
    # tolerance, on the standardised fitted slice (the standardisation not timed).
    xs = (xf - mean) / std
    started = time.perf_counter()
    LogisticRegression(
        C=(1.0 / l2) if l2 > 0 else np.inf,
        solver="newton-cholesky",
        class_weight=class_weight,
    ).fit(xs, yf)
    sklearn_fit_s = time.perf_counter() - started
    sk = LogisticRegression(
        C=(1.0 / l2) if l2 > 0 else np.inf,
        solver="newton-cholesky",
        tol=1e-10,
        max_iter=1000,
        class_weight=class_weight,
    ).fit(xs, yf)

    ours_std = np.array(model["standardized"])
    ours_coef = np.array(model["coefficients"])
    # txpipe's intercept applies to raw features and carries the class-weight shift.
    ours_b_std = model["intercept"] + float(ours_coef @ np.array(model["means"])) + shift
    ours_p = 1.0 / (1.0 + np.exp(-(xh @ ours_coef + model["intercept"])))
    sk_p = sk.predict_proba((xh - mean) / std)[:, 1]
    ours_auc = roc_auc_score(yh, ours_p)
    sk_auc = roc_auc_score(yh, sk_p)
    out = {
        "features": len(names),
        "fitted_rows": int(fitted.sum()),
        "held_out_rows": int(held.sum()),
        "l2": l2,
        "class_weight": weight,
        "sklearn_iterations": int(sk.n_iter_[0]),
        "sklearn_fit_s": sklearn_fit_s,
        "txpipe_iterations": model["iterations"],
        "max_coef_diff": float(np.max(np.abs(sk.coef_[0] - ours_std))),
        "intercept_diff": abs(float(sk.intercept_[0]) - ours_b_std),
        "txpipe_auc": ours_auc,
        "sklearn_auc": sk_auc,
        "auc_diff": abs(ours_auc - sk_auc),
        "reported_auc_diff": abs(artifact["metrics"]["holdout"]["auc_roc"] - ours_auc),
        "max_std_rel_diff": float(
            max(np.max(np.abs(np.array(model["stds"]) - std) / std), np.max(np.abs(np.array(model["means"]) - mean) / std))
        ),
    }
    print(json.dumps(out))
    over = [f"{k} = {out[k]:.3g} (tolerance {t:g})" for k, t in TOLERANCES.items() if not out[k] <= t]
    if over:
        print("out of tolerance: " + "; ".join(over), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
