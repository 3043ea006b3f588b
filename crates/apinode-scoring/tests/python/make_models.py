#!/usr/bin/env python3
"""Generate Dataiku visual-model exports and dataiku-scoring's predictions on them.

For each model kind this script trains a scikit-learn / XGBoost / LightGBM model on synthetic data
(numeric, categorical, text, date and vector columns, with missing values), writes it in the
export format that `dataikuscoring.load_model` reads (see shared/reference/dss-model-format.md),
scores fresh rows (with missing values and unseen categories) with dataiku-scoring, and writes:

    OUT/manifest.json              versions, and the list of models
    OUT/<model>/model/ | model.zip | export.zip     the export
    OUT/<model>/info.json          {"path": ..., "float32": bool, "notes": ...}
    OUT/<model>/cases.jsonl        one line per row: {"input", "prediction", "probabilities",
                                    "anomaly_score"} as dataiku-scoring returned them

Numbers are written with Python's repr (exact round trip); NaN is the string "NaN". The Rust
integration test `differential_against_dataiku_scoring` reads OUT from APINODE_SCORING_CASES.

A sanity check against the training library (scikit-learn, XGBoost, LightGBM) is printed for
most models: it shows the exports are faithful models, not just files dataiku-scoring accepts.

Usage: python make_models.py OUT_DIR
"""
import gzip
import json
import math
import os
import shutil
import sys
import time
import warnings
import zipfile
from importlib.metadata import version

import numpy as np
import pandas as pd
from sklearn.calibration import CalibratedClassifierCV
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.decomposition import PCA, FastICA
from sklearn.ensemble import (GradientBoostingClassifier, GradientBoostingRegressor, IsolationForest,
                              RandomForestClassifier, RandomForestRegressor)
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge, SGDClassifier
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

import dataikuscoring

OUT = sys.argv[1] if len(sys.argv) > 1 else "scoring-cases"
# dataiku-scoring formats time partition dimensions in the local time zone; pin it.
os.environ["TZ"] = "UTC"
time.tzset()
warnings.filterwarnings("ignore", category=UserWarning)
warnings.filterwarnings("ignore", message=".*converge.*")
MODELS = []
WARNINGS = []

# ----------------------------------------------------------------------------------------------
# Synthetic data
# ----------------------------------------------------------------------------------------------
SCHEMA = [("id", "bigint"), ("num1", "double"), ("num2", "double"), ("num3", "double"),
          ("cat1", "string"), ("cat2", "string"), ("text", "string"), ("region", "string"),
          ("ts", "date"), ("day", "dateonly"), ("vec", "string")]
NUMERIC = {"id", "num1", "num2", "num3", "ts", "day"}
CAT1 = ["red", "green", "blue", "rare1", "rare2", "rare3"]
CAT1_P = [0.35, 0.25, 0.2, 0.008, 0.008, 0.004]
WORDS = ["apple", "banana", "cherry", "delivery", "late", "fast", "good", "bad", "price", "quality",
         "été", "naïve"]
EPOCH_1900 = pd.Timestamp("1900-01-01")


def make_data(n, seed, unseen=False):
    rng = np.random.default_rng(seed)
    num1 = rng.normal(10, 3, n)
    num2 = rng.uniform(0, 100, n)
    num3 = rng.exponential(2.0, n)
    p = np.array(CAT1_P) / np.sum(CAT1_P)
    cat1 = rng.choice(CAT1, n, p=p).astype(object)
    cat2 = rng.choice(["a", "b", "c"], n, p=[0.5, 0.3, 0.2]).astype(object)
    text = np.array([" ".join(rng.choice(WORDS, rng.integers(1, 7))).capitalize() + rng.choice(["", "!", " (ok)"])
                     for _ in range(n)], dtype=object)
    region = rng.choice(["North", "South-East"], n).astype(object)
    secs = rng.integers(int(pd.Timestamp("2015-01-01").timestamp()), int(pd.Timestamp("2024-12-31").timestamp()), n)
    micros = rng.integers(0, 1_000_000, n)
    tsv = [pd.Timestamp(int(s), unit="s") + pd.Timedelta(microseconds=int(m)) for s, m in zip(secs, micros)]
    ts = np.array([t.strftime("%Y-%m-%dT%H:%M:%S.%fZ") for t in tsv], dtype=object)
    day = np.array([t.strftime("%Y-%m-%d") for t in tsv], dtype=object)
    vec = np.array([json.dumps([round(float(v), 4) for v in rng.normal(0, 1, 3)]) for _ in range(n)], dtype=object)
    num1[rng.random(n) < 0.10] = np.nan
    num2[rng.random(n) < 0.05] = np.nan
    num3[rng.random(n) < 0.20] = np.nan
    cat1[rng.random(n) < 0.10] = None
    cat2[rng.random(n) < 0.10] = None
    text[rng.random(n) < 0.05] = None
    ts[rng.random(n) < 0.05] = None
    day[rng.random(n) < 0.08] = None
    if unseen:  # values never seen in training, plus DSS "empty string means missing"
        cat1[rng.random(n) < 0.05] = "purple"
        cat2[rng.random(n) < 0.05] = "z"
        cat1[rng.random(n) < 0.03] = ""
    df = pd.DataFrame({"id": np.arange(n), "num1": num1, "num2": num2, "num3": num3,
                       "cat1": cat1, "cat2": cat2, "text": text, "region": region, "ts": ts, "day": day,
                       "vec": vec})
    c1 = pd.Series(cat1).map({"red": 1.0, "green": -0.5, "blue": 0.3}).fillna(0.0).values
    hour = np.array([t.hour for t in tsv])
    z = (0.4 * np.nan_to_num(num1 - 10) - 0.03 * np.nan_to_num(num2 - 50) + c1 + 0.5 * np.sin(hour / 24 * 6.28)
         + rng.normal(0, 1, n))
    df["y_bin"] = np.where(z > 0, "yes", "no")
    df["y_reg"] = 3.0 * np.nan_to_num(num1) + 0.1 * np.nan_to_num(num2) + 5 * c1 + 2 * np.cos(hour / 24 * 6.28) + rng.normal(0, 1, n)
    df["y_multi"] = pd.cut(z, [-np.inf, -1.0, 1.0, np.inf], labels=["low", "mid", "high"]).astype(str)
    df["y_pos"] = np.exp(0.05 * df["y_reg"] / 3)      # positive target (gamma)
    return df


def clean(v):
    """'' and None are missing, as DSS reads them."""
    return None if v is None or (isinstance(v, float) and math.isnan(v)) or v == "" else v


def records(df, cols=None):
    """List[dict] input: None for missing, plain Python types."""
    cols = cols or [c for c, _ in SCHEMA]
    rows = []
    for rec in df[cols].to_dict(orient="records"):
        rows.append({k: (None if (isinstance(v, float) and np.isnan(v)) else
                         (int(v) if isinstance(v, (np.integer,)) else v)) for k, v in rec.items()})
    return rows


def col(df, name):
    return np.array([clean(v) for v in df[name]], dtype=object)


def date_secs(values, fmt):
    out = []
    for v in values:
        v = clean(v)
        out.append(np.nan if v is None else (pd.Timestamp(pd.to_datetime(v, format=fmt)).tz_localize(None) - EPOCH_1900).total_seconds())
    return np.array(out, dtype=float)


TRAIN = make_data(800, 1)
TEST = make_data(300, 2, unseen=True)


# ----------------------------------------------------------------------------------------------
# Writers
# ----------------------------------------------------------------------------------------------
def _np_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.bool_):
        return bool(o)
    raise TypeError(type(o))


def dump(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, default=_np_default)


def per_feature_for(inputs, target):
    pf = {}
    for name, _ in SCHEMA:
        if name in inputs:
            pf[name] = {"role": "INPUT", "type": inputs[name]}
        else:
            pf[name] = {"role": "REJECT", "type": "NUMERIC" if name in NUMERIC else "CATEGORY"}
    if target is not None:
        pf[target] = {"role": "TARGET", "type": "NUMERIC" if target in ("y_reg", "y_pos") else "CATEGORY"}
    return pf


def write_folder(folder, *, model_type, algorithm_name, columns, params, inputs, target, classes=None,
                 preprocessing=None, user_meta=None, rmodeling=None, drop_rows=None, feature_selection=None,
                 version_info=None, meta_extra=None):
    if os.path.exists(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)
    meta = {"backend": "PY_MEMORY", "algorithm_name": algorithm_name, "columns": list(columns), "type": model_type}
    if classes is not None:
        meta["classes"] = list(classes)
    meta.update(meta_extra or {})
    dump(os.path.join(folder, "dss_pipeline_meta.json"), meta)
    with gzip.open(os.path.join(folder, "dss_pipeline_model.gz"), "wb") as f:
        f.write(json.dumps(params, default=_np_default).encode("utf-8"))
    dump(os.path.join(folder, "rpreprocessing_params.json"), {"per_feature": per_feature_for(inputs, target)})
    schema = SCHEMA + ([(target, "double" if target in ("y_reg", "y_pos") else "string")] if target else [])
    dump(os.path.join(folder, "split", "split.json"), {"schema": {"columns": [{"name": n, "type": t} for n, t in schema]}})
    dump(os.path.join(folder, "rmodeling_params.json"), rmodeling or {})
    dump(os.path.join(folder, "version_info.json"), version_info or {"trainedWithDSSConfVersion": 13400})
    if user_meta is not None:
        dump(os.path.join(folder, "user_meta.json"), user_meta)
    if drop_rows is not None:
        dump(os.path.join(folder, "drop_rows.json"), drop_rows)
    if feature_selection is not None:
        dump(os.path.join(folder, "feature_selection.json"), feature_selection)
    for stem, content in (preprocessing or {}).items():
        dump(os.path.join(folder, stem + ".json"), content)


def zip_folder(folder, zpath):
    with zipfile.ZipFile(zpath, "w") as z:
        for root, _, files in os.walk(folder):
            for fn in files:
                full = os.path.join(root, fn)
                z.write(full, os.path.relpath(full, folder))


def enc(x):
    """JSON value of a reference output: floats by repr, NaN as "NaN"."""
    if x is None:
        return None
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return "NaN" if math.isnan(x) else x
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.str_):
        return str(x)
    return x


def record_cases(name, model_path, *, test=None, float32=False, notes="", prime=None):
    """Score TEST with dataiku-scoring and write the cases. `prime`: an extra row appended to the
    batch (then dropped) so that every vocabulary token occurs in it (word-count quirk)."""
    test = TEST if test is None else test
    rows = records(test)
    model = dataikuscoring.load_model(model_path)
    batch = rows + ([prime] if prime else [])
    preds = list(model.predict(batch))[: len(rows)]
    probas = None
    if hasattr(model, "predict_proba"):
        p = model.predict_proba(batch)
        probas = {k: list(v)[: len(rows)] for k, v in p.items()}
    scores = None
    if hasattr(model, "decision_function") and getattr(model, "algorithm", None) is not None \
            and hasattr(model.algorithm, "decision_function") and type(model).__name__ == "ClusteringModel":
        scores = list(model.decision_function(batch))[: len(rows)]
    d = os.path.join(OUT, name)
    with open(os.path.join(d, "cases.jsonl"), "w") as f:
        for i, r in enumerate(rows):
            line = {"input": r, "prediction": enc(preds[i]),
                    "probabilities": None if probas is None or preds[i] is None else {k: enc(v[i]) for k, v in probas.items()},
                    "anomaly_score": None if scores is None else enc(scores[i])}
            f.write(json.dumps(line) + "\n")
    dump(os.path.join(d, "info.json"), {"path": os.path.relpath(model_path, d), "float32": float32, "notes": notes})
    MODELS.append(name)
    print("%-44s %d cases" % (name, len(rows)))
    return model, preds, probas


def sanity(name, got, expected, atol=1e-6):
    got = np.asarray([np.nan if g is None else g for g in got], dtype=float)
    expected = np.asarray(expected, dtype=float)
    both = np.isnan(got) & np.isnan(expected)
    diff = np.where(both, 0.0, np.abs(got - expected))
    worst = float(np.nanmax(diff)) if diff.size else 0.0
    if not worst <= atol:
        WARNINGS.append("%s: dataiku-scoring differs from the training library by %.3g" % (name, worst))


def folder(name):
    return os.path.join(OUT, name, "model")


# ----------------------------------------------------------------------------------------------
# Feature engineering helpers (DSS semantics re-done in numpy to train the models)
# ----------------------------------------------------------------------------------------------
def impute_rescale(df, stats):
    """stats: {col: (impute, shift, inv)} -> columns imputed then rescaled."""
    return np.column_stack([(np.where(np.isnan(df[c].values.astype(float)), imp, df[c].values.astype(float)) - sh) * inv
                            for c, (imp, sh, inv) in stats.items()])


def fit_stats(cols, how):
    out = {}
    for c in cols:
        v = TRAIN[c].values.astype(float)
        imp = float(np.nanmean(v)) if how.get(c, "mean") != "median" else float(np.nanmedian(v))
        filled = np.where(np.isnan(v), imp, v)
        if how.get(c) == "minmax":
            out[c] = (imp, float(filled.min()), 1.0 / float(filled.max() - filled.min()))
        elif how.get(c) == "none":
            out[c] = (imp, 0.0, 1.0)
        else:
            out[c] = (imp, float(filled.mean()), 1.0 / float(filled.std()))
    return out


def stats_files(stats, rescale=True):
    pre = {"imputed": {"num_columns": list(stats), "num_values": [s[0] for s in stats.values()],
                       "cat_columns": [], "cat_values": []}}
    if rescale:
        pre["rescalers"] = {"columns": list(stats), "shifts": [s[1] for s in stats.values()],
                            "inv_scales": [s[2] for s in stats.values()]}
    return pre


def dummies(df, c, levels, with_others, u=0.0):
    """DSS dummies: one column per level, N/A, and __Others__ if asked."""
    v = col(df, c)
    cols, names = [], []
    for lv in levels:
        cols.append(np.where(v == lv, 1.0, u)); names.append("dummy:%s:%s" % (c, lv))
    cols.append(np.where(v == None, 1.0, u)); names.append("dummy:%s:N/A" % c)  # noqa: E711
    if with_others:
        cols.append(np.where((v != None) & ~np.isin(v, levels), 1.0, u)); names.append("dummy:%s:__Others__" % c)  # noqa: E711
    return np.column_stack(cols), names


def frequent_levels(c, min_count=20):
    s = pd.Series(col(TRAIN, c)).dropna().value_counts()
    return [str(k) for k in s.index if s[k] >= min_count]


def base_linear_features(df, stats):
    """num1 (mean, std), num2 (median, minmax), flag num3, dummies cat1 (others) + cat2 (mode-imputed)."""
    X = impute_rescale(df, stats)
    flag = np.where(np.isnan(df["num3"].values.astype(float)), 0.0, 1.0)[:, None]
    d1, n1 = dummies(df, "cat1", CAT1_LEVELS, True)
    c2 = col(df, "cat2")
    c2 = np.where(c2 == None, CAT2_MODE, c2)  # noqa: E711
    d2, n2 = dummies(pd.DataFrame({"cat2": c2}), "cat2", ["a", "b", "c"], False)
    return np.column_stack([X, flag, d1, d2]), list(stats) + ["num_flagged:num3:not_missing"] + n1 + n2


CAT1_LEVELS = frequent_levels("cat1")
CAT2_MODE = str(pd.Series(col(TRAIN, "cat2")).dropna().mode()[0])
LIN_STATS = fit_stats(["num1", "num2"], {"num2": "minmax"})
LIN_STATS["num2"] = (float(np.nanmedian(TRAIN["num2"])),) + LIN_STATS["num2"][1:]


def base_linear_files():
    pre = stats_files(LIN_STATS)
    pre["imputed"]["cat_columns"] = ["cat2"]
    pre["imputed"]["cat_values"] = [CAT2_MODE]
    pre["flagged"] = {"columns": ["num3"], "output_names": ["num_flagged:num3:not_missing"]}
    pre["dummies"] = {"details": {"cat1": {"levels": CAT1_LEVELS, "with_others": True},
                                  "cat2": {"levels": ["a", "b", "c"], "with_others": False}}}
    return pre


LIN_INPUTS = {"num1": "NUMERIC", "num2": "NUMERIC", "num3": "NUMERIC", "cat1": "CATEGORY", "cat2": "CATEGORY"}


def tree_features(df, u=0.0):
    """num1, num2 raw (NaN kept), dummies of cat2 (no others)."""
    d2, n2 = dummies(df, "cat2", ["a", "b", "c"], False, u)
    return np.column_stack([df["num1"].values.astype(float), df["num2"].values.astype(float), d2]), ["num1", "num2"] + n2


TREE_INPUTS = {"num1": "NUMERIC", "num2": "NUMERIC", "cat2": "CATEGORY"}
TREE_FILES = {"dummies": {"details": {"cat2": {"levels": ["a", "b", "c"], "with_others": False}}}}


# --- scikit-learn tree -> DSS heap-numbered tree -------------------------------------------------
def sk_tree_to_dss(estimator, leaf_kind):
    t = estimator.tree_
    left, right = t.children_left, t.children_right
    out = {"node_id": [], "feature": [], "threshold": [], "missing": [], "leaf_id": [], "label": []}
    n_samples = []
    stack = [(0, 0)]
    while stack:
        idx, hid = stack.pop()
        if left[idx] != -1:
            out["node_id"].append(hid)
            out["feature"].append(int(t.feature[idx]))
            out["threshold"].append(float(t.threshold[idx]))
            mgl = bool(t.missing_go_to_left[idx]) if hasattr(t, "missing_go_to_left") else False
            out["missing"].append("l" if mgl else "r")
            stack.append((right[idx], 2 * hid + 2))
            stack.append((left[idx], 2 * hid + 1))
        else:
            out["leaf_id"].append(hid)
            v = t.value[idx][0]
            if leaf_kind == "proba":
                out["label"].append((v / v.sum()).tolist())
            else:
                out["label"].append(float(v[0]))
            n_samples.append(int(t.n_node_samples[idx]))
    if leaf_kind == "isolation":
        out["n_node_samples"] = n_samples
    return out


# ==============================================================================================
# Linear models
# ==============================================================================================
def logistic_models():
    Xtr, names = base_linear_features(TRAIN, LIN_STATS)
    Xte, _ = base_linear_features(TEST, LIN_STATS)
    pre = base_linear_files()
    lr = LogisticRegression(C=0.7, max_iter=3000).fit(Xtr, TRAIN["y_bin"])
    params = {"policy": "MULTINOMIAL", "coefficients": [[0.0] * Xtr.shape[1]] + lr.coef_.tolist(),
              "intercept": [0.0] + lr.intercept_.tolist(), "calibrator": {}}
    common = dict(model_type="BINARY_PROBABILISTIC", algorithm_name="LOGISTIC", columns=names, inputs=LIN_INPUTS,
                  target="y_bin", classes=list(lr.classes_), preprocessing=pre)
    # folder
    write_folder(folder("binary_logistic"), params=params, user_meta={"activeClassifierThreshold": 0.4}, **common)
    _, _, probas = record_cases("binary_logistic", folder("binary_logistic"))
    sanity("binary_logistic", probas["yes"], lr.predict_proba(Xte)[:, 1])
    # model.zip and export zip forms of the same folder
    d = os.path.join(OUT, "binary_logistic_model_zip")
    os.makedirs(d, exist_ok=True)
    zip_folder(folder("binary_logistic"), os.path.join(d, "model.zip"))
    record_cases("binary_logistic_model_zip", os.path.join(d, "model.zip"))
    d = os.path.join(OUT, "binary_logistic_export_zip")
    os.makedirs(d, exist_ok=True)
    with zipfile.ZipFile(os.path.join(d, "export.zip"), "w") as z:
        z.write(os.path.join(OUT, "binary_logistic_model_zip", "model.zip"), "model.zip")
        z.writestr("requirements.txt", "dataiku-scoring==%s\n" % version("dataiku-scoring"))
    record_cases("binary_logistic_export_zip", os.path.join(d, "export.zip"))

    # sigmoid calibration from the decision function
    cal_df = make_data(400, 3)
    Xc, _ = base_linear_features(cal_df, LIN_STATS)
    cal = CalibratedClassifierCV(FrozenEstimator(lr), method="sigmoid").fit(Xc, cal_df["y_bin"])
    sig = cal.calibrated_classifiers_[0].calibrators[0]
    p2 = dict(params, calibrator={"method": "SIGMOID", "from_proba": False, "a_array": [float(sig.a_)], "b_array": [float(sig.b_)]})
    write_folder(folder("binary_logistic_sigmoid"), params=p2, user_meta={"activeClassifierThreshold": 0.5}, **common)
    _, _, probas = record_cases("binary_logistic_sigmoid", folder("binary_logistic_sigmoid"))
    sanity("binary_logistic_sigmoid", probas["yes"], cal.predict_proba(Xte)[:, 1])

    # multiclass: multinomial, one-versus-all, modified huber
    lrm = LogisticRegression(C=0.7, max_iter=3000).fit(Xtr, TRAIN["y_multi"])
    for policy, est in [("MULTINOMIAL", lrm), ("ONE_VERSUS_ALL", None), ("MODIFIED_HUBER", None)]:
        if policy == "ONE_VERSUS_ALL":
            from sklearn.multiclass import OneVsRestClassifier
            est = OneVsRestClassifier(LogisticRegression(C=0.7, max_iter=3000)).fit(Xtr, TRAIN["y_multi"])
            coef = np.vstack([e.coef_ for e in est.estimators_]); icpt = np.concatenate([e.intercept_ for e in est.estimators_])
        elif policy == "MODIFIED_HUBER":
            est = SGDClassifier(loss="modified_huber", random_state=0, max_iter=2000).fit(Xtr, TRAIN["y_multi"])
            coef, icpt = est.coef_, est.intercept_
        else:
            coef, icpt = est.coef_, est.intercept_
        name = "multiclass_logistic_" + policy.lower()
        write_folder(folder(name), model_type="MULTICLASS_PROBABILISTIC", algorithm_name="LOGISTIC", columns=names,
                     params={"policy": policy, "coefficients": coef.tolist(), "intercept": icpt.tolist()},
                     inputs=LIN_INPUTS, target="y_multi", classes=list(est.classes_), preprocessing=pre, user_meta={})
        _, _, probas = record_cases(name, folder(name))
        sanity(name, np.column_stack([probas[c] for c in est.classes_]), est.predict_proba(Xte))

    # regression: OLS on the same features
    reg = LinearRegression().fit(Xtr, TRAIN["y_reg"])
    write_folder(folder("linear_regression"), model_type="REGRESSION", algorithm_name="LINEAR", columns=names,
                 params={"coefficients": reg.coef_.tolist(), "intercept": float(reg.intercept_)},
                 inputs=LIN_INPUTS, target="y_reg", preprocessing=pre)
    _, preds, _ = record_cases("linear_regression", folder("linear_regression"))
    sanity("linear_regression", preds, reg.predict(Xte))


def ridge_generated_features():
    """Binarize (before rescaling), derivatives (+ their rescaling), num x num, num x cat and cat x cat."""
    imp = {"num1": float(np.nanmean(TRAIN["num1"])), "num2": float(np.nanmedian(TRAIN["num2"]))}

    def base(df):
        a = df["num1"].fillna(imp["num1"]).values
        b = df["num2"].fillna(imp["num2"]).values
        return a, b

    a, _ = base(TRAIN)
    sh1, is1 = a.mean(), 1 / a.std()

    def feats(df):
        a, b = base(df)
        binz = (b > 50.0).astype(float)
        a_r = (a - sh1) * is1
        d_log = np.where(a_r > 0, np.log(np.where(a_r > 0, a_r, 1) + 1e-8), 0.0)
        d_sqrt = np.where(a_r > 0, np.sqrt(np.where(a_r > 0, a_r, 0)), 0.0)
        d_sq = a_r ** 2
        inter = a_r * b
        c1 = np.where(col(df, "cat1") == None, "N/A", col(df, "cat1"))  # noqa: E711
        c2 = np.where(col(df, "cat2") == None, "N/A", col(df, "cat2"))  # noqa: E711
        cc = ((c1 == "red") & (c2 == "a")).astype(float)
        cc2 = ((c1 == "N/A") & (c2 == "b")).astype(float)
        nc = np.where((c2 == "b") & (a_r != 0), a_r, 0.0)
        nc2 = np.where((c2 == "N/A") & (a_r != 0), a_r, 0.0)
        return np.column_stack([a_r, b, binz, d_log, d_sqrt, d_sq, inter, cc, cc2, nc, nc2])

    Ftr = feats(TRAIN)
    dsh, dis = Ftr[:, 3:6].mean(axis=0), 1 / Ftr[:, 3:6].std(axis=0)
    ish, iis = Ftr[:, 6].mean(), 1 / Ftr[:, 6].std()

    def full(df):
        M = feats(df)
        M[:, 3:6] = (M[:, 3:6] - dsh) * dis
        M[:, 6] = (M[:, 6] - ish) * iis
        return M

    ridge = Ridge(alpha=1.0).fit(full(TRAIN), TRAIN["y_reg"])
    columns = ["num1", "num2", "num_binarized:num2:above:50.0", "NUM_DERIVATIVE:log(num1)",
               "NUM_DERIVATIVE:sqrt(num1)", "NUM_DERIVATIVE:num1^2", "interaction:num1:num2",
               "interaction:cat1:cat2:red:a", "interaction:cat1:cat2:N/A:b", "interaction:num1:cat2:b",
               "interaction:num1:cat2:N/A"]
    pre = {
        "imputed": {"num_columns": ["num1", "num2"], "num_values": [imp["num1"], imp["num2"]], "cat_columns": [], "cat_values": []},
        "binarized": {"columns": ["num2"], "output_name": ["num_binarized:num2:above:50.0"], "thresholds": [50.0]},
        "rescalers": {"columns": ["num1", "NUM_DERIVATIVE:log(num1)", "NUM_DERIVATIVE:sqrt(num1)", "NUM_DERIVATIVE:num1^2"],
                      "shifts": [sh1] + dsh.tolist(), "inv_scales": [is1] + dis.tolist()},
        "derivatives": {"columns": ["num1"]},
        "num_num": {"column_1": ["num1"], "column_2": ["num2"], "rescale": [True], "shift": [ish], "inv_scale": [iis]},
        "num_cat": {"num": ["num1"], "cat": ["cat2"], "values": [["b", "N/A"]]},
        "cat_cat": {"column_1": ["cat1"], "column_2": ["cat2"], "values": [[["red", "a"], ["N/A", "b"]]]},
    }
    write_folder(folder("ridge_generated_features"), model_type="REGRESSION", algorithm_name="LINEAR", columns=columns,
                 params={"coefficients": ridge.coef_.tolist(), "intercept": float(ridge.intercept_)}, preprocessing=pre,
                 inputs={"num1": "NUMERIC", "num2": "NUMERIC", "cat1": "CATEGORY", "cat2": "CATEGORY"}, target="y_reg")
    _, preds, _ = record_cases("ridge_generated_features", folder("ridge_generated_features"))
    sanity("ridge_generated_features", preds, ridge.predict(full(TEST)))


def text_models():
    for stem, Vec, norm in [("word_counts", CountVectorizer, None), ("tfidf", TfidfVectorizer, "L2"),
                            ("tfidf_l1", TfidfVectorizer, "L1")]:
        kw = {"norm": "l1"} if norm == "L1" else {}
        vec = Vec(ngram_range=(1, 2), stop_words=["good"], min_df=2, **kw)
        Xtr = vec.fit_transform(TRAIN["text"].fillna("")).toarray()
        reg = LinearRegression().fit(Xtr, TRAIN["y_reg"])
        vocab = vec.get_feature_names_out().tolist()
        if stem == "word_counts":
            names = ["countvec:text:%s" % w for w in vocab]
            res = {"column": ["text"], "vocabulary": [vocab], "stop_words": [["good"]],
                   "min_n_grams": [1], "max_n_grams": [2], "origin": "SCIKIT"}
            file_stem = "word_counts"
        else:
            names = ["tfidfvec:text:%.3f:%s" % (idf, w) for w, idf in zip(vocab, vec.idf_)]
            res = {"column": ["text"], "vocabulary": [vocab], "stop_words": [["good"]], "min_n_grams": [1],
                   "max_n_grams": [2], "idf": [vec.idf_.tolist()], "norm": [norm], "output_names": [names],
                   "origin": "SCIKIT"}
            file_stem = "tfidf"
        name = "text_" + stem
        write_folder(folder(name), model_type="REGRESSION", algorithm_name="LINEAR", columns=names,
                     params={"coefficients": reg.coef_.tolist(), "intercept": float(reg.intercept_)},
                     preprocessing={file_stem: res}, inputs={"text": "TEXT"}, target="y_reg")
        prime = None
        notes = ""
        if stem == "word_counts":
            # dataiku-scoring leaves a vocabulary column NaN when its token occurs in no row of the
            # batch (format doc §10.1); a priming row holding every token makes the reference give
            # the batch-independent values the Rust scorer gives for any batch.
            prime = dict(records(TEST.iloc[[0]])[0], text=" ".join(vocab))
            notes = "expected values scored with a priming row holding every vocabulary token"
        _, preds, _ = record_cases(name, folder(name), prime=prime, notes=notes)
        sanity(name, preds, reg.predict(vec.transform(TEST["text"].map(lambda v: clean(v) or "")).toarray()))
        if stem == "word_counts":
            m = dataikuscoring.load_model(folder(name))
            single = [m.predict(records(TEST.iloc[[i]]))[0] for i in range(20)]
            dump(os.path.join(OUT, name, "quirk_single_row.json"),
                 {"rows": 20, "nan_predictions": int(np.isnan(np.array(single, dtype=float)).sum())})


def selection_models():
    stats = fit_stats(["num1", "num2", "num3"], {})
    Xtr = impute_rescale(TRAIN, stats)
    Xte = impute_rescale(TEST, stats)
    inputs = {"num1": "NUMERIC", "num2": "NUMERIC", "num3": "NUMERIC"}
    for name, sel, est in [("pca_whitened_linear", "PCA", PCA(n_components=2, whiten=True)),
                           ("pca_linear", "PCA", PCA(n_components=2)),
                           ("ica_linear", "ICA", FastICA(n_components=2, random_state=0, whiten="unit-variance"))]:
        est.fit(Xtr)
        Z = est.transform(Xtr)
        reg = LinearRegression().fit(Z, TRAIN["y_reg"])
        if sel == "PCA":
            sp = {"input_names": list(stats), "rot": est.components_.T.tolist(), "means": est.mean_.tolist(),
                  "explained_variance": est.explained_variance_.tolist() if est.whiten else None, "sparse": False}
        else:
            sp = {"input_names": list(stats), "mixing": est.components_.T.tolist(), "means": est.mean_.tolist()}
        write_folder(folder(name), model_type="REGRESSION", algorithm_name="LINEAR", columns=["c0", "c1"],
                     params={"coefficients": reg.coef_.tolist(), "intercept": float(reg.intercept_)},
                     preprocessing=stats_files(stats), feature_selection={"method": sel, "selection_params": sp},
                     inputs=inputs, target="y_reg")
        _, preds, _ = record_cases(name, folder(name))
        sanity(name, preds, reg.predict(est.transform(Xte)))
    # sparse PCA form: no centring, NaN propagates (a num3 NaN gives a NaN prediction)
    pca = PCA(n_components=2).fit(Xtr)
    reg = LinearRegression().fit(Xtr @ pca.components_.T, TRAIN["y_reg"])
    pre = stats_files(stats)
    pre["imputed"] = {"num_columns": ["num1", "num2"], "num_values": [stats["num1"][0], stats["num2"][0]],
                      "cat_columns": [], "cat_values": []}
    write_folder(folder("pca_sparse_linear"), model_type="REGRESSION", algorithm_name="LINEAR", columns=["c0", "c1"],
                 params={"coefficients": reg.coef_.tolist(), "intercept": float(reg.intercept_)}, preprocessing=pre,
                 feature_selection={"method": "PCA", "selection_params": {
                     "input_names": list(stats), "rot": pca.components_.T.tolist(), "means": None,
                     "explained_variance": None, "sparse": True}},
                 inputs=inputs, target="y_reg")
    record_cases("pca_sparse_linear", folder("pca_sparse_linear"))


# ==============================================================================================
# Trees
# ==============================================================================================
def sklearn_trees():
    Xtr, names = tree_features(TRAIN)
    Xte, _ = tree_features(TEST)
    keep = ~np.isnan(TRAIN["num2"].values)
    rf = RandomForestRegressor(n_estimators=25, max_depth=9, random_state=0).fit(Xtr[keep], TRAIN["y_reg"][keep])
    write_folder(folder("rf_regressor_drop_rows"), model_type="REGRESSION", algorithm_name="FOREST_REGRESSOR", columns=names,
                 params={"trees": [sk_tree_to_dss(t, "value") for t in rf.estimators_]}, preprocessing=TREE_FILES,
                 inputs=TREE_INPUTS, target="y_reg", drop_rows={"columns": ["num2"]})
    _, preds, _ = record_cases("rf_regressor_drop_rows", folder("rf_regressor_drop_rows"))
    valid = ~np.isnan(TEST["num2"].values)
    exp = np.full(len(TEST), np.nan); exp[valid] = rf.predict(Xte[valid])
    sanity("rf_regressor_drop_rows", preds, exp)

    dt = DecisionTreeRegressor(max_depth=7, random_state=0).fit(Xtr, TRAIN["y_reg"])
    write_folder(folder("decision_tree_regressor"), model_type="REGRESSION", algorithm_name="DECISION_TREE", columns=names,
                 params=sk_tree_to_dss(dt, "value"), preprocessing=TREE_FILES, inputs=TREE_INPUTS, target="y_reg")
    _, preds, _ = record_cases("decision_tree_regressor", folder("decision_tree_regressor"))
    sanity("decision_tree_regressor", preds, dt.predict(Xte))

    for algo, est in [("FOREST_CLASSIFIER", RandomForestClassifier(n_estimators=20, max_depth=7, random_state=0)),
                      ("DECISION_TREE", DecisionTreeClassifier(max_depth=6, random_state=0))]:
        est.fit(Xtr, TRAIN["y_multi"])
        params = ({"trees": [sk_tree_to_dss(t, "proba") for t in est.estimators_]} if algo == "FOREST_CLASSIFIER"
                  else sk_tree_to_dss(est, "proba"))
        params["calibrator"] = {}
        name = algo.lower() + "_multiclass"
        write_folder(folder(name), model_type="MULTICLASS_PROBABILISTIC", algorithm_name=algo, columns=names, params=params,
                     classes=list(est.classes_), preprocessing=TREE_FILES, inputs=TREE_INPUTS, target="y_multi", user_meta={})
        _, _, probas = record_cases(name, folder(name))
        sanity(name, np.column_stack([probas[c] for c in est.classes_]), est.predict_proba(Xte))
        if algo == "FOREST_CLASSIFIER":
            # one isotonic curve per class on the probabilities, renormalised
            cal_df = make_data(400, 6)
            cal = CalibratedClassifierCV(FrozenEstimator(est), method="isotonic").fit(tree_features(cal_df)[0], cal_df["y_multi"])
            isos = cal.calibrated_classifiers_[0].calibrators
            params = dict(params, calibrator={"method": "ISOTONIC", "from_proba": True,
                                              "x_array": [c.X_thresholds_.tolist() for c in isos],
                                              "y_array": [c.y_thresholds_.tolist() for c in isos]})
            name = "forest_multiclass_isotonic"
            write_folder(folder(name), model_type="MULTICLASS_PROBABILISTIC", algorithm_name=algo, columns=names,
                         params=params, classes=list(est.classes_), preprocessing=TREE_FILES, inputs=TREE_INPUTS,
                         target="y_multi", user_meta={})
            _, _, probas = record_cases(name, folder(name))
            sanity(name, np.column_stack([probas[c] for c in est.classes_]), cal.predict_proba(Xte))

    # binary forest with isotonic calibration from probabilities
    rfc = RandomForestClassifier(n_estimators=15, max_depth=6, random_state=0).fit(Xtr, TRAIN["y_bin"])
    cal_df = make_data(400, 4)
    Xc, _ = tree_features(cal_df)
    cal = CalibratedClassifierCV(FrozenEstimator(rfc), method="isotonic").fit(Xc, cal_df["y_bin"])
    iso = cal.calibrated_classifiers_[0].calibrators[0]
    params = {"trees": [sk_tree_to_dss(t, "proba") for t in rfc.estimators_],
              "calibrator": {"method": "ISOTONIC", "from_proba": True, "x_array": [iso.X_thresholds_.tolist()],
                             "y_array": [iso.y_thresholds_.tolist()]}}
    write_folder(folder("rf_binary_isotonic"), model_type="BINARY_PROBABILISTIC", algorithm_name="FOREST_CLASSIFIER",
                 columns=names, params=params, classes=list(rfc.classes_), preprocessing=TREE_FILES, inputs=TREE_INPUTS,
                 target="y_bin", user_meta={"activeClassifierThreshold": 0.45})
    _, _, probas = record_cases("rf_binary_isotonic", folder("rf_binary_isotonic"))
    sanity("rf_binary_isotonic", probas["yes"], cal.predict_proba(Xte)[:, 1])


def gbt_models():
    stats = fit_stats(["num1", "num2"], {"num1": "none", "num2": "none"})
    pre = stats_files(stats, rescale=False)
    pre.update(TREE_FILES)

    def X(df):
        d2, n2 = dummies(df, "cat2", ["a", "b", "c"], False)
        return np.column_stack([impute_rescale(df, stats), d2]), ["num1", "num2"] + n2

    Xtr, names = X(TRAIN)
    Xte, _ = X(TEST)
    for target in ["y_multi", "y_bin"]:
        gb = GradientBoostingClassifier(n_estimators=40, max_depth=3, learning_rate=0.15, random_state=0).fit(Xtr, TRAIN[target])
        baseline = gb._raw_predict_init(Xtr[:1].astype(np.float32))[0].tolist()
        trees = ([[sk_tree_to_dss(s[0], "value")] for s in gb.estimators_] if len(gb.classes_) == 2
                 else [[sk_tree_to_dss(t, "value") for t in s] for s in gb.estimators_])
        name = "gbt_classifier_" + ("binary" if target == "y_bin" else "multiclass")
        common = dict(model_type="BINARY_PROBABILISTIC" if target == "y_bin" else "MULTICLASS_PROBABILISTIC",
                      algorithm_name="GRADIENT_BOOSTING_CLASSIFIER", columns=names, classes=list(gb.classes_),
                      preprocessing=pre, inputs=TREE_INPUTS, target=target, user_meta={"activeClassifierThreshold": 0.5})
        params = {"trees": trees, "shrinkage": gb.learning_rate, "baseline": baseline, "calibrator": {}}
        write_folder(folder(name), params=params, **common)
        _, _, probas = record_cases(name, folder(name))
        sanity(name, np.column_stack([probas[c] for c in gb.classes_]), gb.predict_proba(Xte))
        if target == "y_multi":
            # one sigmoid per class on the decision function, renormalised
            cal_df = make_data(400, 5)
            cal = CalibratedClassifierCV(FrozenEstimator(gb), method="sigmoid").fit(X(cal_df)[0], cal_df[target])
            sigs = cal.calibrated_classifiers_[0].calibrators
            params = dict(params, calibrator={"method": "SIGMOID", "from_proba": False,
                                              "a_array": [float(c.a_) for c in sigs], "b_array": [float(c.b_) for c in sigs]})
            name = "gbt_multiclass_sigmoid"
            write_folder(folder(name), params=params, **common)
            _, _, probas = record_cases(name, folder(name))
            sanity(name, np.column_stack([probas[c] for c in gb.classes_]), cal.predict_proba(Xte))
    gbr = GradientBoostingRegressor(n_estimators=40, max_depth=3, learning_rate=0.1, random_state=0).fit(Xtr, TRAIN["y_reg"])
    write_folder(folder("gbt_regressor"), model_type="REGRESSION", algorithm_name="GRADIENT_BOOSTING_REGRESSOR", columns=names,
                 params={"trees": [sk_tree_to_dss(s[0], "value") for s in gbr.estimators_], "shrinkage": gbr.learning_rate,
                         "baseline": float(gbr.init_.constant_.ravel()[0])},
                 preprocessing=pre, inputs=TREE_INPUTS, target="y_reg")
    _, preds, _ = record_cases("gbt_regressor", folder("gbt_regressor"))
    sanity("gbt_regressor", preds, gbr.predict(Xte))


# ==============================================================================================
# Dates, vectors, impact coding
# ==============================================================================================
def date_vector_impact_model():
    """RF regressor on: ts (date, seconds since 1900) + its cyclical encodings, day (dateonly, with
    missing values, imputation is a no-op on dates), the unfolded vector, and impact-coded cat1."""
    periods = ["MINUTE", "HOUR", "DAY", "WEEK", "MONTH", "QUARTER", "YEAR"]
    P = {"MINUTE": 60, "HOUR": 3600, "DAY": 86400, "WEEK": 604800, "MONTH": 2678400, "QUARTER": 7948800, "YEAR": 31622400}
    # impact coding of cat1: smoothed target mean per level, the global mean otherwise
    g = float(TRAIN["y_reg"].mean())
    c1 = pd.Series(col(TRAIN, "cat1"))
    levels = [lv for lv in c1.dropna().unique().tolist()]
    enc = {lv: float((TRAIN["y_reg"][c1 == lv].sum() + 10 * g) / ((c1 == lv).sum() + 10)) for lv in levels}

    def feats(df):
        ts = date_secs(df["ts"], "%Y-%m-%dT%H:%M:%S.%fZ")
        day = date_secs(df["day"], "%Y-%m-%d")
        cols = [ts, day]
        names = ["ts", "day"]
        dts = [None if np.isnan(t) else pd.Timestamp("1900-01-01") + pd.Timedelta(seconds=float(t)) for t in ts]
        for p in periods:
            e = []
            for d in dts:
                if d is None:
                    e.append(np.nan); continue
                sec = d.second
                start = {"MINUTE": d.replace(second=0), "HOUR": d.replace(minute=0, second=0),
                         "DAY": d.replace(hour=0, minute=0, second=0),
                         "WEEK": d.replace(hour=0, minute=0, second=0) - pd.Timedelta(days=d.weekday()),
                         "MONTH": d.replace(day=1, hour=0, minute=0, second=0),
                         "QUARTER": d.replace(month=((d.month - 1) // 3) * 3 + 1, day=1, hour=0, minute=0, second=0),
                         "YEAR": d.replace(month=1, day=1, hour=0, minute=0, second=0)}[p]
                e.append((d - start).total_seconds())
                del sec
            a = np.array(e) * 2 * 3.141592653589793 / P[p]
            cols += [np.sin(a), np.cos(a)]
            names += ["datetime_cyclical:ts:%s:sin" % p.lower(), "datetime_cyclical:ts:%s:cos" % p.lower()]
        vec = np.array([json.loads(v) for v in df["vec"]])
        cols += [vec[:, 0], vec[:, 2]]
        names += ["unfold:vec:0", "unfold:vec:2"]
        cv = col(df, "cat1")
        cols.append(np.array([enc.get(v, g) for v in cv]))
        names.append("impact:cat1:y_reg")
        return np.column_stack(cols), names

    Xtr, names = feats(TRAIN.assign(ts=TRAIN["ts"].fillna("2020-01-01T00:00:00.000000Z")))
    test = TEST.copy()
    test["ts"] = test["ts"].fillna("2021-06-15T12:30:00.000000Z")   # the reference raises on a missing cyclical date
    Xte, _ = feats(test)
    rf = RandomForestRegressor(n_estimators=20, max_depth=8, random_state=0).fit(Xtr, TRAIN["y_reg"])
    pre = {"imputed": {"num_columns": ["day"], "num_values": [1000.0], "cat_columns": [], "cat_values": []},
           "datetime_cyclical": {"mapping": {"ts": periods}},
           "vectors-unfold": {"vector_lengths": {"vec": 3}},
           "impact_coded": {"columns": ["cat1"], "levels": [levels], "encodings": [[[enc[lv]] for lv in levels]],
                            "defaults": [[g]], "outputNames": [["impact:cat1:y_reg"]]}}
    name = "dates_vectors_impact_rf"
    write_folder(folder(name), model_type="REGRESSION", algorithm_name="FOREST_REGRESSOR", columns=names,
                 params={"trees": [sk_tree_to_dss(t, "value") for t in rf.estimators_]}, preprocessing=pre,
                 inputs={"ts": "NUMERIC", "day": "NUMERIC", "vec": "VECTOR", "cat1": "CATEGORY"}, target="y_reg")
    _, preds, _ = record_cases(name, folder(name), test=test,
                               notes="no missing `ts` in the inputs: dataiku-scoring raises on a missing cyclical date")
    sanity(name, preds, rf.predict(Xte))

    # datetimenotz storage read as a number, linear model
    global SCHEMA
    saved = SCHEMA
    SCHEMA = [(n, "datetimenotz" if n == "day" else t) for n, t in SCHEMA]
    tr = TRAIN.assign(day=[None if clean(v) is None else v + " 10:20:30.5" for v in TRAIN["day"]])
    te = TEST.assign(day=[None if clean(v) is None else v + " 10:20:30.5" for v in TEST["day"]])
    d = date_secs(tr["day"], "%Y-%m-%d %H:%M:%S.%f")
    fill = float(np.nanmean(d))
    reg = LinearRegression().fit(np.where(np.isnan(d), fill, d)[:, None], tr["y_reg"])
    write_folder(folder("datetimenotz_linear"), model_type="REGRESSION", algorithm_name="LINEAR", columns=["day"],
                 params={"coefficients": reg.coef_.tolist(), "intercept": float(reg.intercept_)},
                 preprocessing={"imputed": {"num_columns": ["day"], "num_values": [fill], "cat_columns": [], "cat_values": []}},
                 inputs={"day": "NUMERIC"}, target="y_reg")
    record_cases("datetimenotz_linear", folder("datetimenotz_linear"), test=te,
                 notes="imputing a date column is a no-op: missing dates give NaN")
    SCHEMA = saved


# ==============================================================================================
# MLP, clustering
# ==============================================================================================
def mlp_models():
    Xtr, names = base_linear_features(TRAIN, LIN_STATS)
    Xte, _ = base_linear_features(TEST, LIN_STATS)
    pre = base_linear_files()
    for name, target, est, mtype in [
            ("mlp_classifier_tanh", "y_multi", MLPClassifier(hidden_layer_sizes=(8, 5), activation="tanh", max_iter=600, random_state=0), "MULTICLASS_PROBABILISTIC"),
            ("mlp_binary_logistic", "y_bin", MLPClassifier(hidden_layer_sizes=(6,), activation="logistic", max_iter=800, random_state=0), "BINARY_PROBABILISTIC"),
            ("mlp_regressor_relu", "y_reg", MLPRegressor(hidden_layer_sizes=(10,), activation="relu", max_iter=800, random_state=0), "REGRESSION"),
            ("mlp_regressor_identity", "y_reg", MLPRegressor(hidden_layer_sizes=(4,), activation="identity", max_iter=800, random_state=0), "REGRESSION")]:
        est.fit(Xtr, TRAIN[target])
        params = {"activation": est.activation.upper(), "biases": [b.tolist() for b in est.intercepts_],
                  "weights": [w.T.tolist() for w in est.coefs_], "calibrator": {}}
        write_folder(folder(name), model_type=mtype, algorithm_name="MULTI_LAYER_PERCEPTRON", columns=names, params=params,
                     classes=list(est.classes_) if mtype != "REGRESSION" else None, preprocessing=pre, inputs=LIN_INPUTS,
                     target=target, user_meta={"activeClassifierThreshold": 0.5} if mtype != "REGRESSION" else None)
        _, preds, probas = record_cases(name, folder(name))
        if mtype == "REGRESSION":
            sanity(name, preds, est.predict(Xte))
        else:
            sanity(name, np.column_stack([probas[c] for c in est.classes_]), est.predict_proba(Xte))


def clustering_models():
    stats = fit_stats(["num1", "num2"], {})

    def X(df):
        d2, n2 = dummies(df, "cat2", ["a", "b", "c"], False)
        return np.column_stack([impute_rescale(df, stats), d2]), ["num1", "num2"] + n2

    Xtr, names = X(TRAIN)
    Xte, _ = X(TEST)
    pre = stats_files(stats)
    pre.update(TREE_FILES)
    inputs = TREE_INPUTS
    for algo, km in [("KMEANS", KMeans(n_clusters=4, n_init=5, random_state=0)),
                     ("MINIBATCH_KMEANS", MiniBatchKMeans(n_clusters=3, n_init=3, random_state=0))]:
        km.fit(Xtr)
        k = km.n_clusters
        cnames = ["cluster_%d" % i for i in range(k)]
        name = algo.lower()
        write_folder(folder(name), model_type="CLUSTERING", algorithm_name=algo, columns=names,
                     params={"cluster_centers": km.cluster_centers_.tolist()}, classes=cnames, preprocessing=pre,
                     inputs=inputs, target=None, user_meta={"clusterMetas": {"cluster_1": {"name": "renamed one"}}})
        _, preds, _ = record_cases(name, folder(name))
        expected = [("renamed one" if i == 1 else cnames[i]) for i in km.predict(Xte)]
        if list(preds) != expected:
            WARNINGS.append("%s: labels differ from scikit-learn" % name)
    iso = IsolationForest(n_estimators=30, max_samples=128, max_features=0.75, random_state=0).fit(Xtr)
    params = {"trees": [sk_tree_to_dss(t, "isolation") for t in iso.estimators_],
              "estimators_features": [f.tolist() for f in iso.estimators_features_],
              "max_samples": int(iso.max_samples_), "offset": float(iso.offset_)}
    write_folder(folder("isolation_forest"), model_type="CLUSTERING", algorithm_name="ISOLATION_FOREST", columns=names,
                 params=params, classes=["regular", "anomalies"], preprocessing=pre, inputs=inputs, target=None)
    m, preds, _ = record_cases("isolation_forest", folder("isolation_forest"))
    sanity("isolation_forest", m.decision_function(records(TEST)), iso.decision_function(Xte))


# ==============================================================================================
# XGBoost (float32 path, unrecorded = NaN) and LightGBM (category_set splits)
# ==============================================================================================
def xgb_tree_to_dss(tree_json, n_features):
    out = {"node_id": [], "feature": [], "threshold": [], "missing": [], "leaf_id": [], "label": [], "xgboost": True}
    stack = [(tree_json, 0)]
    while stack:
        node, hid = stack.pop()
        if "leaf" in node:
            out["leaf_id"].append(hid)
            out["label"].append(float(node["leaf"]))
            continue
        out["node_id"].append(hid)
        out["feature"].append(int(node["split"][1:]))
        out["threshold"].append(float(node["split_condition"]))
        out["missing"].append("l" if node["missing"] == node["yes"] else "r")
        kids = {c["nodeid"]: c for c in node["children"]}
        stack.append((kids[node["no"]], 2 * hid + 2))
        stack.append((kids[node["yes"]], 2 * hid + 1))
    return out


def xgboost_models():
    import xgboost as xgb

    Xtr, names = tree_features(TRAIN, u=np.nan)      # unrecorded (off) dummies read as missing
    Xte, _ = tree_features(TEST, u=np.nan)
    rmodeling = {"xgboost_grid": {"max_depth": [3]}}
    version_info = {"trainedWithDSSConfVersion": 13400}

    def dss_trees(booster):
        return [xgb_tree_to_dss(json.loads(t), Xtr.shape[1]) for t in booster.get_dump(dump_format="json")]

    def margins_minus_leaves(booster, X, n_groups):
        """The base margin per group: the booster's margin minus the sum of its leaves."""
        dm = xgb.DMatrix(X[:1], missing=np.nan)
        margin = np.atleast_1d(booster.predict(dm, output_margin=True)[0])
        leaves = booster.predict(dm, pred_leaf=True)[0]
        trees = [json.loads(t) for t in booster.get_dump(dump_format="json")]
        sums = np.zeros(n_groups, dtype=np.float64)
        for i, (t, leaf) in enumerate(zip(trees, leaves)):
            stack = [t]
            while stack:
                n = stack.pop()
                if n["nodeid"] == leaf:
                    sums[i % n_groups] += n["leaf"]
                    break
                stack.extend(n.get("children", []))
        return (margin - sums).tolist()

    # binary
    clf = xgb.XGBClassifier(n_estimators=30, max_depth=4, learning_rate=0.3, random_state=0).fit(Xtr, (TRAIN["y_bin"] == "yes").astype(int))
    b = clf.get_booster()
    params = {"trees": [[t] for t in dss_trees(b)], "shrinkage": 1.0, "baseline": margins_minus_leaves(b, Xtr, 1), "calibrator": {}}
    write_folder(folder("xgboost_binary"), model_type="BINARY_PROBABILISTIC", algorithm_name="GRADIENT_BOOSTING_CLASSIFIER",
                 columns=names, params=params, classes=["no", "yes"], preprocessing=TREE_FILES, inputs=TREE_INPUTS, target="y_bin",
                 user_meta={"activeClassifierThreshold": 0.5}, rmodeling=rmodeling, version_info=version_info)
    _, _, probas = record_cases("xgboost_binary", folder("xgboost_binary"), float32=True)
    sanity("xgboost_binary", probas["yes"], clf.predict_proba(Xte)[:, 1], atol=1e-5)
    # The same booster as if trained before DSS 13.4: unrecorded cells read 0, not missing.
    write_folder(folder("xgboost_binary_pre134"), model_type="BINARY_PROBABILISTIC", algorithm_name="GRADIENT_BOOSTING_CLASSIFIER",
                 columns=names, params=params, classes=["no", "yes"], preprocessing=TREE_FILES, inputs=TREE_INPUTS, target="y_bin",
                 user_meta={"activeClassifierThreshold": 0.5}, rmodeling=rmodeling, version_info={"trainedWithDSSConfVersion": 13300})
    record_cases("xgboost_binary_pre134", folder("xgboost_binary_pre134"), float32=True,
                 notes="unrecorded value 0 (DSS < 13.4): predictions differ from xgboost_binary")

    # multiclass
    classes = sorted(TRAIN["y_multi"].unique())
    ym = TRAIN["y_multi"].map({c: i for i, c in enumerate(classes)})
    clf = xgb.XGBClassifier(n_estimators=20, max_depth=3, learning_rate=0.3, random_state=0).fit(Xtr, ym)
    b = clf.get_booster()
    flat = dss_trees(b)
    K = len(classes)
    params = {"trees": [flat[i:i + K] for i in range(0, len(flat), K)], "shrinkage": 1.0,
              "baseline": margins_minus_leaves(b, Xtr, K), "calibrator": {}}
    write_folder(folder("xgboost_multiclass"), model_type="MULTICLASS_PROBABILISTIC", algorithm_name="GRADIENT_BOOSTING_CLASSIFIER",
                 columns=names, params=params, classes=classes, preprocessing=TREE_FILES, inputs=TREE_INPUTS, target="y_multi",
                 user_meta={}, rmodeling=rmodeling, version_info=version_info)
    _, _, probas = record_cases("xgboost_multiclass", folder("xgboost_multiclass"), float32=True)
    sanity("xgboost_multiclass", np.column_stack([probas[c] for c in classes]), clf.predict_proba(Xte), atol=1e-5)

    # regressors: default (squared error), gamma, logistic
    for name, objective, target, extra in [("xgboost_regressor", "reg:squarederror", "y_reg", {}),
                                           ("xgboost_regressor_gamma", "reg:gamma", "y_pos", {"gamma_regression": True}),
                                           ("xgboost_regressor_logistic", "reg:logistic", "y_bin", {"logistic_regression": True})]:
        y = (TRAIN["y_bin"] == "yes").astype(float) if target == "y_bin" else TRAIN[target]
        kw = {"base_score": 0.5} if objective == "reg:logistic" else {}
        reg = xgb.XGBRegressor(objective=objective, n_estimators=25, max_depth=3, learning_rate=0.2, random_state=0, **kw).fit(Xtr, y)
        b = reg.get_booster()
        base = margins_minus_leaves(b, Xtr, 1)[0]
        if objective == "reg:gamma":
            base = math.exp(base)
        params = {"trees": dss_trees(b), "shrinkage": 1.0, "baseline": base, **extra}
        write_folder(folder(name), model_type="REGRESSION", algorithm_name="GRADIENT_BOOSTING_REGRESSOR", columns=names,
                     params=params, preprocessing=TREE_FILES, inputs=TREE_INPUTS, target="y_reg",
                     rmodeling=rmodeling, version_info=version_info)
        _, preds, _ = record_cases(name, folder(name), float32=True)
        sanity(name, preds, reg.predict(Xte), atol=1e-4)


def xgboost_categorical():
    """XGBoost's native categorical splits: the raw category codes (category_levels.json) and
    category_set splits whose members go right."""
    import xgboost as xgb

    levels = ["red", "green", "blue", "rare1", "rare2", "rare3", "_DKU_NA_"]

    def frame(df):
        c = [("_DKU_NA_" if v is None else v) for v in col(df, "cat1")]
        return pd.DataFrame({"num1": df["num1"].values.astype(float), "num2": df["num2"].values.astype(float),
                             "cat1": pd.Categorical(c, categories=levels)})

    clf = xgb.XGBClassifier(n_estimators=20, max_depth=3, learning_rate=0.3, random_state=0, enable_categorical=True,
                            tree_method="hist", max_cat_to_onehot=1).fit(frame(TRAIN), (TRAIN["y_bin"] == "yes").astype(int))
    b = clf.get_booster()
    fidx = {n: i for i, n in enumerate(b.feature_names)}
    trees = []
    n_sets = 0
    for tj in b.get_dump(dump_format="json"):
        out = {"node_id": [], "feature": [], "threshold": [], "missing": [], "split_kind": [], "category_set": [],
               "leaf_id": [], "label": [], "xgboost": True}
        stack = [(json.loads(tj), 0)]
        while stack:
            node, hid = stack.pop()
            if "leaf" in node:
                out["leaf_id"].append(hid); out["label"].append(float(node["leaf"])); continue
            kids = {c["nodeid"]: c for c in node["children"]}
            out["node_id"].append(hid)
            out["feature"].append(fidx[node["split"]])
            if isinstance(node["split_condition"], list):      # categories in the list go right ("yes")
                left, right = kids[node["no"]], kids[node["yes"]]
                out["split_kind"].append("category_set"); out["category_set"].append([float(v) for v in node["split_condition"]])
                out["threshold"].append(None); n_sets += 1
            else:
                left, right = kids[node["yes"]], kids[node["no"]]
                out["split_kind"].append("threshold"); out["category_set"].append(None)
                out["threshold"].append(float(node["split_condition"]))
            out["missing"].append("l" if node["missing"] == left["nodeid"] else "r")
            stack.append((right, 2 * hid + 2))
            stack.append((left, 2 * hid + 1))
        trees.append([out])
    dm = xgb.DMatrix(frame(TRAIN)[:1], enable_categorical=True)
    margin = float(b.predict(dm, output_margin=True)[0])
    leaf_ids = b.predict(dm, pred_leaf=True)[0]
    leaf_sum = 0.0
    for tj, leaf in zip(b.get_dump(dump_format="json"), leaf_ids):
        stack = [json.loads(tj)]
        while stack:
            n = stack.pop()
            if n["nodeid"] == leaf and "leaf" in n:
                leaf_sum += n["leaf"]; break
            stack.extend(n.get("children", []))
    params = {"trees": trees, "shrinkage": 1.0, "baseline": [margin - leaf_sum], "calibrator": {}}
    name = "xgboost_binary_categorical"
    write_folder(folder(name), model_type="BINARY_PROBABILISTIC", algorithm_name="GRADIENT_BOOSTING_CLASSIFIER",
                 columns=["num1", "num2", "cat1"], params=params, classes=["no", "yes"],
                 preprocessing={"category_levels": {"cat1": levels}},
                 inputs={"num1": "NUMERIC", "num2": "NUMERIC", "cat1": "CATEGORY"}, target="y_bin",
                 user_meta={"activeClassifierThreshold": 0.5}, rmodeling={"xgboost_grid": {}},
                 version_info={"trainedWithDSSConfVersion": 13400})
    _, _, probas = record_cases(name, folder(name), float32=True, notes="%d category_set splits" % n_sets)
    te = frame(TEST)
    te["cat1"] = pd.Categorical([v if v in levels else None for v in te["cat1"].astype(object)], categories=levels)
    sanity(name, probas["yes"], clf.predict_proba(te)[:, 1], atol=1e-5)
    if n_sets == 0:
        WARNINGS.append("%s: no category_set split was learned" % name)


def lgb_tree_to_dss(tree, cat_codes_feature):
    out = {"node_id": [], "feature": [], "threshold": [], "missing": [], "split_kind": [], "category_set": [],
           "leaf_id": [], "label": [], "lightgbm": True}
    stack = [(tree["tree_structure"], 0)]
    while stack:
        node, hid = stack.pop()
        if "leaf_value" in node:
            out["leaf_id"].append(hid)
            out["label"].append(float(node["leaf_value"]))
            continue
        out["node_id"].append(hid)
        out["feature"].append(int(node["split_feature"]))
        out["missing"].append("l" if node.get("default_left") else "r")
        if node["decision_type"] == "==":
            out["split_kind"].append("category_set")
            out["category_set"].append([float(v) for v in str(node["threshold"]).split("||")])
            out["threshold"].append(None)
        else:
            out["split_kind"].append("threshold")
            out["category_set"].append(None)
            out["threshold"].append(float(node["threshold"]))
        stack.append((node["right_child"], 2 * hid + 2))
        stack.append((node["left_child"], 2 * hid + 1))
    return out


def lightgbm_models():
    import lightgbm as lgb

    levels = ["red", "green", "blue", "rare1", "rare2", "rare3", "_DKU_NA_"]

    def X(df):
        c = col(df, "cat1")
        codes = np.array([levels.index("_DKU_NA_") if v is None else (levels.index(v) if v in levels else -1.0) for v in c], dtype=float)
        return np.column_stack([df["num1"].values.astype(float), df["num2"].values.astype(float), codes]), ["num1", "num2", "cat1"]

    Xtr, names = X(TRAIN)
    Xte, _ = X(TEST)
    inputs = {"num1": "NUMERIC", "num2": "NUMERIC", "cat1": "CATEGORY"}
    pre = {"category_levels": {"cat1": levels}}
    clf = lgb.LGBMClassifier(n_estimators=30, num_leaves=8, learning_rate=0.2, random_state=0, verbose=-1,
                             min_data_per_group=5, cat_smooth=1.0).fit(Xtr, (TRAIN["y_bin"] == "yes").astype(int), categorical_feature=[2])
    dump_ = clf.booster_.dump_model()
    trees = [[lgb_tree_to_dss(t, 2)] for t in dump_["tree_info"]]
    n_cat = sum(k == "category_set" for t in trees for k in t[0]["split_kind"])
    params = {"trees": trees, "shrinkage": 1.0, "baseline": [0.0], "calibrator": {}}
    write_folder(folder("lightgbm_binary_categorical"), model_type="BINARY_PROBABILISTIC", algorithm_name="GRADIENT_BOOSTING_CLASSIFIER",
                 columns=names, params=params, classes=["no", "yes"], preprocessing=pre, inputs=inputs, target="y_bin",
                 user_meta={"activeClassifierThreshold": 0.5})
    _, _, probas = record_cases("lightgbm_binary_categorical", folder("lightgbm_binary_categorical"),
                                notes="%d category_set splits" % n_cat)
    sanity("lightgbm_binary_categorical", probas["yes"], clf.predict_proba(Xte)[:, 1], atol=1e-6)
    if n_cat == 0:
        WARNINGS.append("lightgbm_binary_categorical: no category_set split was learned")

    reg = lgb.LGBMRegressor(n_estimators=30, num_leaves=8, learning_rate=0.2, random_state=0, verbose=-1).fit(Xtr[:, :2], TRAIN["y_reg"])
    trees = [lgb_tree_to_dss(t, None) for t in reg.booster_.dump_model()["tree_info"]]
    write_folder(folder("lightgbm_regressor"), model_type="REGRESSION", algorithm_name="GRADIENT_BOOSTING_REGRESSOR",
                 columns=["num1", "num2"], params={"trees": trees, "shrinkage": 1.0, "baseline": 0.0},
                 inputs={"num1": "NUMERIC", "num2": "NUMERIC"}, target="y_reg")
    _, preds, _ = record_cases("lightgbm_regressor", folder("lightgbm_regressor"))
    sanity("lightgbm_regressor", preds, reg.predict(Xte[:, :2]))


# ==============================================================================================
# Partitioned model
# ==============================================================================================
def escape_partition(s):
    return "".join(ch if ch.isascii() and ch.isalnum() else "_%x" % ch.encode("utf-8")[-1] for ch in s)


def partitioned():
    name = "partitioned_regression"
    root = os.path.join(OUT, name, "model")
    if os.path.exists(root):
        shutil.rmtree(root)
    for part in ["North", "South-East"]:
        m = (TRAIN["region"] == part).values
        imp = [float(np.nanmean(TRAIN["num1"][m])), float(np.nanmean(TRAIN["num2"][m]))]
        Xp = np.column_stack([TRAIN["num1"].fillna(imp[0]), TRAIN["num2"].fillna(imp[1])])[m]
        lr = LinearRegression().fit(Xp, TRAIN["y_reg"][m])
        sub = os.path.join(root, "parts", escape_partition(part))
        write_folder(sub, model_type="REGRESSION", algorithm_name="LINEAR", columns=["num1", "num2"],
                     params={"coefficients": lr.coef_.tolist(), "intercept": float(lr.intercept_)},
                     preprocessing={"imputed": {"num_columns": ["num1", "num2"], "num_values": imp, "cat_columns": [], "cat_values": []}},
                     inputs={"num1": "NUMERIC", "num2": "NUMERIC"}, target="y_reg")
        dump(os.path.join(sub, "dss_pipeline_meta.json"), {"algorithm_name": "LINEAR", "columns": ["num1", "num2"]})
    dump(os.path.join(root, "dss_pipeline_meta.json"),
         {"type": "REGRESSION", "partitions": ["North", "South-East"], "partitioning": ["region"], "partitioningTypes": None})
    test = TEST.copy()
    test.loc[test.index[:7], "region"] = "West"      # no model for this partition
    record_cases(name, root, test=test)


def partitioned_by_year():
    """A binary classifier per year of `ts` (a YEAR time dimension read from ISO timestamps)."""
    name = "partitioned_binary_by_year"
    root = os.path.join(OUT, name, "model")
    if os.path.exists(root):
        shutil.rmtree(root)
    years = ["2016", "2017", "2018", "2019", "2020"]
    tr = TRAIN.assign(ts=TRAIN["ts"].fillna("2018-06-01T00:00:00.000000Z"))
    ty = tr["ts"].str[:4]
    for y in years:
        m = (ty == y).values
        imp = [float(np.nanmean(tr["num1"][m])), float(np.nanmean(tr["num2"][m]))]
        Xp = np.column_stack([tr["num1"].fillna(imp[0]), tr["num2"].fillna(imp[1])])[m]
        lr = LogisticRegression(max_iter=2000).fit(Xp, tr["y_bin"][m])
        sub = os.path.join(root, "parts", escape_partition(y))
        write_folder(sub, model_type="BINARY_PROBABILISTIC", algorithm_name="LOGISTIC", columns=["num1", "num2"],
                     params={"policy": "MULTINOMIAL", "coefficients": [[0.0, 0.0]] + lr.coef_.tolist(),
                             "intercept": [0.0] + lr.intercept_.tolist(), "calibrator": {}},
                     classes=list(lr.classes_),
                     preprocessing={"imputed": {"num_columns": ["num1", "num2"], "num_values": imp, "cat_columns": [], "cat_values": []}},
                     inputs={"num1": "NUMERIC", "num2": "NUMERIC"}, target="y_bin", user_meta={"activeClassifierThreshold": 0.5})
    dump(os.path.join(root, "dss_pipeline_meta.json"),
         {"type": "BINARY_PROBABILISTIC", "partitions": years, "partitioning": ["ts"], "partitioningTypes": ["YEAR"]})
    test = TEST.assign(ts=TEST["ts"].fillna("2019-03-01T08:00:00.000000Z"))   # the reference raises on a null dimension
    record_cases(name, root, test=test, notes="rows of 2015 and 2021-2024 have no partition")


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    for d in os.listdir(OUT):
        if os.path.isdir(os.path.join(OUT, d)):
            shutil.rmtree(os.path.join(OUT, d))
    np.seterr(all="ignore")
    steps = [logistic_models, ridge_generated_features, text_models, selection_models, sklearn_trees, gbt_models,
             date_vector_impact_model, mlp_models, clustering_models, xgboost_models, xgboost_categorical, lightgbm_models,
             partitioned, partitioned_by_year]
    for step in steps:
        step()
    versions = {}
    for p in ["dataiku-scoring", "numpy", "scikit-learn", "pandas", "xgboost-cpu", "xgboost", "lightgbm"]:
        try:
            versions[p] = version(p)
        except Exception:  # xgboost-cpu and xgboost are the same module
            pass
    dump(os.path.join(OUT, "manifest.json"), {"versions": versions, "models": MODELS, "warnings": WARNINGS})
    print("\n%d models written to %s" % (len(MODELS), OUT))
    for w in WARNINGS:
        print("  sanity warning:", w)
