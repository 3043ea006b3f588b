"""The in-process reference of `cargo xtask bench python`: what calling `add` costs inside
the interpreter, with nothing around it, and with the JSON work any server must do (the
request body decoded, the answer encoded). Prints one JSON object (nanoseconds per call).

Usage: in_process.py SECONDS BODY
"""

import json
import sys
import timeit

from functions import add


def per_call_ns(stmt, namespace, seconds):
    """The median of 5 timings, each of as many calls as fill about SECONDS / 5."""
    timer = timeit.Timer(stmt, globals=namespace)
    calls, elapsed = timer.autorange()
    calls = max(1, int(calls * (seconds / 5) / max(elapsed, 1e-9)))
    runs = sorted(timer.repeat(repeat=5, number=calls))
    return runs[2] / calls * 1e9


def main():
    seconds = float(sys.argv[1])
    body = sys.argv[2].encode()
    namespace = {"add": add, "json": json, "body": body}
    call = per_call_ns("add(1, 2)", namespace, seconds / 2)
    round_trip = per_call_ns(
        'json.dumps({"response": add(**json.loads(body))})', namespace, seconds / 2
    )
    print(json.dumps({
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "call_ns": call,
        "json_round_trip_ns": round_trip,
    }))


if __name__ == "__main__":
    main()
