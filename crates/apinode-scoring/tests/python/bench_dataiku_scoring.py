#!/usr/bin/env python3
"""Time dataiku-scoring on one model and a rows file: the Python side of the scoring benchmark.

`crates/apinode-scoring/benches/scoring.rs` runs this with the virtualenv's python on the same
model folder and the same rows it scores, and prints the ratio. It times what a user calls:

- per record: `model.predict_proba(x)` on one row, the rows taken in turn, each call timed alone;
  the median per call. Two input forms: a list holding one dict (`[row]`), and a one-row pandas
  DataFrame built beforehand (its construction is not timed).
- per batch: `model.predict_proba(x)` on all the rows at once, as a pandas DataFrame built
  beforehand, and as a list of dicts; the median of several runs.

Prints one JSON object on stdout: each form's timings, the fastest form per mode (the one the
ratio is taken against), and a check of the work done (the sum of each class's probability over
the batch, and the number of rows with no prediction) that the Rust side compares with its own.

Usage: python bench_dataiku_scoring.py --model DIR --rows FILE [--limit N] [--quick]
"""
import argparse
import gc
import json
import math
import platform
import sys
import time
from importlib.metadata import version

import pandas as pd

import dataikuscoring


def timed_calls(call, inputs, min_calls, min_seconds, max_calls):
    """Calls `call` on the inputs in turn, timing each call alone, until at least `min_calls`
    calls and `min_seconds` have passed, or `max_calls` calls. Returns the times in ns."""
    times = []
    for x in inputs[: min(3, len(inputs))]:  # warm-up: first-call costs (imports, caches)
        call(x)
    gc.collect()
    start = time.perf_counter()
    i = 0
    while True:
        x = inputs[i % len(inputs)]
        t0 = time.perf_counter_ns()
        call(x)
        times.append(time.perf_counter_ns() - t0)
        i += 1
        if i >= max_calls or (i >= min_calls and time.perf_counter() - start >= min_seconds):
            return times


def summary(times, unit):
    s = sorted(times)
    return {"median_ns": s[len(s) // 2], "min_ns": s[0], "p90_ns": s[int(len(s) * 0.9)],
            "mean_ns": sum(s) / len(s), unit: len(s)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="the model folder (or zip) to load")
    ap.add_argument("--rows", required=True, help="JSON lines, one record (object) per line")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N rows")
    ap.add_argument("--quick", action="store_true", help="a few calls, one batch run (smoke test)")
    args = ap.parse_args()

    with open(args.rows) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if args.limit:
        rows = rows[: args.limit]
    if not rows:
        sys.exit("no rows in %s" % args.rows)
    model = dataikuscoring.load_model(args.model)
    frame = pd.DataFrame(rows)
    one_row_frames = [frame.iloc[[i]] for i in range(min(len(rows), 1000))]

    if args.quick:
        per_call = dict(min_calls=5, min_seconds=0.0, max_calls=5)
        per_batch = dict(min_calls=1, min_seconds=0.0, max_calls=1)
    else:
        per_call = dict(min_calls=300, min_seconds=3.0, max_calls=100_000)
        # A batch of the 300-tree model takes about 25 s in Python: 3 runs; more for fast ones.
        per_batch = dict(min_calls=3, min_seconds=5.0, max_calls=15)

    record_forms = {
        "list_of_one_dict": summary(timed_calls(model.predict_proba, [[r] for r in rows], **per_call), "calls"),
        "one_row_dataframe": summary(timed_calls(model.predict_proba, one_row_frames, **per_call), "calls"),
    }
    batch_forms = {
        "dataframe": summary(timed_calls(model.predict_proba, [frame], **per_batch), "runs"),
        "list_of_dicts": summary(timed_calls(model.predict_proba, [rows], **per_batch), "runs"),
    }

    # The work done, for the Rust side to compare: probabilities of the whole batch.
    probas = model.predict_proba(frame)
    sums = {str(k): math.fsum(float(p) for p in v if p is not None and not math.isnan(float(p)))
            for k, v in probas.items()}
    first = next(iter(probas.values()))
    ignored = sum(1 for p in first if p is None)

    best = lambda forms: min(forms, key=lambda k: forms[k]["median_ns"])
    json.dump({
        "model": args.model, "rows": len(rows), "quick": args.quick,
        "per_record": {"forms": record_forms, "best": best(record_forms)},
        "per_batch": {"forms": batch_forms, "best": best(batch_forms)},
        "check": {"probability_sums": sums, "ignored_rows": ignored},
        "python": platform.python_version(),
        "versions": {p: version(p) for p in ["dataiku-scoring", "numpy", "pandas"]},
    }, sys.stdout)
    print()


if __name__ == "__main__":
    main()
