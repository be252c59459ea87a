#!/usr/bin/env python3
"""scikit-learn on the rows `fit_bench` wrote, for BENCHMARKS.md.

    fit_bench.py DIR

DIR holds x.f32 (column-major float32, 20 columns), y.u8 and model.json (txpipe's fit) from
`cargo run --release -p txpipe-core --example fit_bench -- ROWS DIR`. The first 80 % of the rows
are fitted, the last 20 % held out, as there. Prints one JSON object:

- `lbfgs_s`, `newton_cholesky_s`: scikit-learn's fit time on the raw features with its defaults
  (C = 1), best of 3, and the held-out AUC of each;
- `max_coef_diff`, `auc_diff`: scikit-learn (newton-cholesky, tight tolerance) on the features
  standardised with txpipe's means and standard deviations, C = 1 / txpipe's L2 (1), against
  txpipe's standardised coefficients and held-out AUC.
"""
import json
import os
import sys
import time

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score


def main() -> None:
    d = sys.argv[1]
    y = np.fromfile(os.path.join(d, "y.u8"), dtype=np.uint8)
    n = len(y)
    x = np.fromfile(os.path.join(d, "x.f32"), dtype=np.float32).reshape(-1, n).T.astype(np.float64)
    cut = n * 4 // 5
    xtr, ytr, xte, yte = x[:cut], y[:cut], x[cut:], y[cut:]
    out = {"rows": n, "features": x.shape[1]}
    for solver in ("lbfgs", "newton-cholesky"):
        best, model = float("inf"), None
        for _ in range(3):
            t = time.perf_counter()
            model = LogisticRegression(solver=solver, max_iter=1000).fit(xtr, ytr)
            best = min(best, time.perf_counter() - t)
        key = solver.replace("-", "_")
        out[f"{key}_s"] = round(best, 3)
        out[f"{key}_auc"] = round(roc_auc_score(yte, model.predict_proba(xte)[:, 1]), 4)
    ours = json.load(open(os.path.join(d, "model.json")))
    means, stds = np.array(ours["means"]), np.array(ours["stds"])
    std = LogisticRegression(solver="newton-cholesky", C=1.0, tol=1e-10, max_iter=1000).fit((xtr - means) / stds, ytr)
    out["max_coef_diff"] = float(np.max(np.abs(std.coef_[0] - np.array(ours["standardized"]))))
    ours_p = 1 / (1 + np.exp(-(xte @ np.array(ours["coefficients"]) + ours["intercept"])))
    out["auc_diff"] = abs(roc_auc_score(yte, ours_p) - roc_auc_score(yte, std.predict_proba((xte - means) / stds)[:, 1]))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
