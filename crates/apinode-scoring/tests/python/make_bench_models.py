#!/usr/bin/env python3
"""Generate the scoring benchmark's two models and its rows (`cargo xtask bench scoring`).

The models are written in the export format `make_models.py` writes (and with its helpers):

    OUT/binary_logistic/model/   LOGISTIC, binary: num1 (mean, standardised), num2 (median,
                                 min-max), num3 missing flag, dummies of cat1 (with __Others__)
                                 and cat2 (mode-imputed) -- `binary_logistic` of make_models.py
    OUT/gbt_binary_300/model/    scikit-learn GradientBoostingClassifier, binary, 300 trees of
                                 depth 4 on num1, num2 (imputed) and dummies of cat2 --
                                 `gbt_classifier_binary` of make_models.py, with more trees
    OUT/rows.jsonl               10,000 fresh rows (one JSON object per line, every column of the
                                 schema), with missing values, unseen categories and empty strings
    OUT/bench.json               what was generated: sizes, rows, library versions

`crates/apinode-scoring/benches/scoring.rs` scores the rows with apinode-scoring, and runs
`bench_dataiku_scoring.py` to score the same rows with dataiku-scoring. Takes a few seconds.

Usage: python make_bench_models.py OUT_DIR
"""
import json
import os
import sys
import time
from importlib.metadata import version

import numpy as np
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression

# make_models reads its output directory from argv[1] at import; it is only used by its own
# writers of the differential cases, which this script does not call.
import make_models as mm

ROWS = 10_000
GBT_TREES = 300
GBT_DEPTH = 4


def logistic(out):
    """make_models.logistic_models' binary model (same features, same export)."""
    Xtr, names = mm.base_linear_features(mm.TRAIN, mm.LIN_STATS)
    lr = LogisticRegression(C=0.7, max_iter=3000).fit(Xtr, mm.TRAIN["y_bin"])
    params = {"policy": "MULTINOMIAL", "coefficients": [[0.0] * Xtr.shape[1]] + lr.coef_.tolist(),
              "intercept": [0.0] + lr.intercept_.tolist(), "calibrator": {}}
    mm.write_folder(os.path.join(out, "binary_logistic", "model"), model_type="BINARY_PROBABILISTIC",
                    algorithm_name="LOGISTIC", columns=names, params=params, inputs=mm.LIN_INPUTS, target="y_bin",
                    classes=list(lr.classes_), preprocessing=mm.base_linear_files(),
                    user_meta={"activeClassifierThreshold": 0.4})
    return {"path": "binary_logistic/model", "algorithm": "LOGISTIC", "features": len(names),
            "inputs": sorted(mm.LIN_INPUTS), "preprocessing": "impute, rescale, flag, dummies"}


def gbt(out):
    """make_models.gbt_models' binary classifier with 300 trees of depth 4."""
    stats = mm.fit_stats(["num1", "num2"], {"num1": "none", "num2": "none"})
    pre = mm.stats_files(stats, rescale=False)
    pre.update(mm.TREE_FILES)
    d2, n2 = mm.dummies(mm.TRAIN, "cat2", ["a", "b", "c"], False)
    Xtr = np.column_stack([mm.impute_rescale(mm.TRAIN, stats), d2])
    names = ["num1", "num2"] + n2
    gb = GradientBoostingClassifier(n_estimators=GBT_TREES, max_depth=GBT_DEPTH, learning_rate=0.05,
                                    random_state=0).fit(Xtr, mm.TRAIN["y_bin"])
    trees = [[mm.sk_tree_to_dss(s[0], "value")] for s in gb.estimators_]
    params = {"trees": trees, "shrinkage": gb.learning_rate,
              "baseline": gb._raw_predict_init(Xtr[:1].astype(np.float32))[0].tolist(), "calibrator": {}}
    mm.write_folder(os.path.join(out, "gbt_binary_300", "model"), model_type="BINARY_PROBABILISTIC",
                    algorithm_name="GRADIENT_BOOSTING_CLASSIFIER", columns=names, params=params,
                    inputs=mm.TREE_INPUTS, target="y_bin", classes=list(gb.classes_), preprocessing=pre,
                    user_meta={"activeClassifierThreshold": 0.5})
    nodes = sum(len(t[0]["node_id"]) + len(t[0]["leaf_id"]) for t in trees)
    return {"path": "gbt_binary_300/model", "algorithm": "GRADIENT_BOOSTING_CLASSIFIER (scikit-learn)",
            "features": len(names), "inputs": sorted(mm.TREE_INPUTS), "trees": len(trees), "max_depth": GBT_DEPTH,
            "nodes": nodes, "preprocessing": "impute, dummies"}


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make_bench_models.py OUT_DIR")
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    start = time.time()
    np.seterr(all="ignore")
    models = {"binary_logistic": logistic(out), "gbt_binary_300": gbt(out)}
    # Fresh rows (a seed no other data set uses), unseen categories and "" included.
    rows = mm.records(mm.make_data(ROWS, 7, unseen=True))
    with open(os.path.join(out, "rows.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    versions = {p: version(p) for p in ["dataiku-scoring", "numpy", "pandas", "scikit-learn"]}
    mm.dump(os.path.join(out, "bench.json"),
            {"rows": len(rows), "rows_file": "rows.jsonl", "models": models, "versions": versions})
    print("scoring bench: %d rows and %d models written to %s in %.1fs"
          % (len(rows), len(models), out, time.time() - start))


if __name__ == "__main__":
    main()
