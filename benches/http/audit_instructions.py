"""The audit log's user-space instructions per query, under callgrind: a figure the host's noise does not move.

Over HTTP on a shared VM a round's throughput moves by 10% and more (docs/benchmarks.md), far
more than a change of a tenth of a microsecond to the log's path; instructions counted by
valgrind's callgrind do not move. For each binary, each mode (`off`, `async`, `write`) serves
`apinode demo`'s customers service (100,000 rows) under callgrind; eight keep-alive clients send
500 warm-up lookups, then N measured ones (instrumentation on only between the two), and the
node's instructions are divided by N. `async` gets a 1 s window so its batches are as large as a
busy node's although callgrind runs it ~50x slower. Kernel time (the spool's writes, the
sockets) is not counted: this is the user-space part of a query.

    python3 benches/http/audit_instructions.py N label=BINARY [label=BINARY ...] [--functions K] [--keep DIR]

e.g. `python3 benches/http/audit_instructions.py 4000 before=/var/tmp/apinode.before
after=target/release/apinode --functions 25`: per binary and mode, instructions per query and
the log's (the mode's minus `off`'s); with `--functions`, the K functions whose instructions per
query differ most between `off` and `async` (callgrind_annotate's flat profile, exclusive).
`--keep DIR` keeps each run's callgrind output as `DIR/<label>-<mode>.callgrind` (for
`callgrind_annotate --tree=caller`, say). Needs valgrind (`apt install valgrind`). Large copies done with `rep movsb` count one instruction
per byte under valgrind, so `memcpy`'s share is overstated.
"""

import base64
import http.client
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

DEMO_KEY = "customers-demo-key"
PATH = "/public/api/v1/customers/customer-by-id/lookup"
CLIENTS = 8
WARM_UP = 500


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def auth():
    return "Basic " + base64.b64encode(f"{DEMO_KEY}:".encode()).decode()


def wait_ready(port, process, body):
    deadline = time.time() + 300
    while time.time() < deadline:
        if process.poll() is not None:
            sys.exit(f"the node exited ({process.returncode})")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            connection.request("POST", PATH, body=body, headers={"Authorization": auth()})
            response = connection.getresponse()
            response.read()
            if response.status == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    sys.exit(f"the node did not answer {PATH} within 300 s")


def demo_state(binary, work):
    """The demo's data directory (service imported and active), made once by `apinode demo`."""
    data = os.path.join(work, "demo-data")
    port = free_port()
    process = subprocess.Popen(
        [binary, "demo", "--rows", "100000", "--data-dir", data, "--bind", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(port, process, json.dumps({"data": {"customer_id": 1}}).encode())
    finally:
        process.terminate()
        process.wait(timeout=60)
    return data


def send(port, bodies, count):
    """`count` lookups over CLIENTS keep-alive connections; every answer must be a 200."""
    failures = []

    def client(k):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        for i in range(k, count, CLIENTS):
            connection.request("POST", PATH, body=bodies[i % len(bodies)], headers={"Authorization": auth()})
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                failures.append(response.status)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        sys.exit(f"{len(failures)} lookups failed: {failures[:5]}")


def measure(binary, mode, queries, state, work, bodies):
    """Callgrind's output file for `queries` lookups of `binary` with the log in `mode`."""
    run = os.path.join(work, f"run-{len(os.listdir(work))}")
    shutil.copytree(state, os.path.join(run, "data"))
    config = os.path.join(run, "node.toml")
    with open(config, "w") as f:
        if mode != "off":
            f.write(f'[audit]\ndurability = "{mode}"\nstore = "{run}/store"\nspool_dir = "{run}/spool"\n')
            if mode == "async":
                f.write("async_window_ms = 1000\n")
    out = os.path.join(run, "callgrind.out")
    port = free_port()
    command = [
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--instr-atstart=no",
        binary, "serve", "--config", config, "--data-dir", os.path.join(run, "data"),
        "--bind", f"127.0.0.1:{port}",
    ]
    # Huge pages change nothing under callgrind but the start-up's re-execution.
    env = dict(os.environ, APINODE_HUGE_PAGES="0")
    node = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(port, node, bodies[0])
        send(port, bodies, WARM_UP)
        subprocess.run(["callgrind_control", "-i", "on", str(node.pid)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        send(port, bodies, queries)
        subprocess.run(["callgrind_control", "-i", "off", str(node.pid)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        node.terminate()
        node.wait(timeout=300)
    return out


def functions(out, queries):
    """Instructions per query by function (exclusive), from callgrind_annotate's flat profile."""
    text = subprocess.run(
        ["callgrind_annotate", "--threshold=100", out], capture_output=True, text=True, check=True
    ).stdout
    per_function, total = {}, None
    for line in text.splitlines():
        match = re.match(r"\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*?)\s*(\[.*\])?$", line)
        if not match:
            continue
        count = int(match.group(1).replace(",", "")) / queries
        name = match.group(2)
        if "PROGRAM TOTALS" in name:
            total = count
            continue
        # `file:function`, the file `???` without debug information.
        name = re.sub(r"^(\?\?\?|\./[^:]*|/[^:]*):", "", name)
        per_function[name] = per_function.get(name, 0) + count
    return total, per_function


def main():
    args = sys.argv[1:]
    top, keep = 0, None
    if "--functions" in args:
        at = args.index("--functions")
        top = int(args[at + 1])
        del args[at : at + 2]
    if "--keep" in args:
        at = args.index("--keep")
        keep = args[at + 1]
        del args[at : at + 2]
        os.makedirs(keep, exist_ok=True)
    if len(args) < 2 or not args[0].isdigit() or any("=" not in a for a in args[1:]):
        sys.exit(__doc__)
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt install valgrind)")
    queries = int(args[0])
    binaries = [a.split("=", 1) for a in args[1:]]
    rng = random.Random(7)
    bodies = [json.dumps({"data": {"customer_id": rng.randint(1, 100_000)}}).encode() for _ in range(1000)]
    work = tempfile.mkdtemp(prefix="apinode-audit-instructions-")
    try:
        state = demo_state(os.path.abspath(binaries[0][1]), work)
        print(f"| binary | mode | instructions per query | the log's (mode − off) |")
        print("|---|---|---|---|")
        for label, binary in binaries:
            profiles = {}
            for mode in ["off", "async", "write"]:
                out = measure(os.path.abspath(binary), mode, queries, state, work, bodies)
                profiles[mode] = functions(out, queries)
                if keep:
                    shutil.copy(out, os.path.join(keep, f"{label}-{mode}.callgrind"))
                total = profiles[mode][0]
                log = "" if mode == "off" else f"{total - profiles['off'][0]:,.0f}"
                print(f"| {label} | {mode} | {total:,.0f} | {log} |", flush=True)
            if top:
                off, logged = profiles["off"][1], profiles["async"][1]
                names = sorted(set(off) | set(logged), key=lambda n: -abs(logged.get(n, 0) - off.get(n, 0)))
                print(f"\n{label}: the {top} functions whose instructions per query differ most, off → async")
                for name in names[:top]:
                    a, b = off.get(name, 0), logged.get(name, 0)
                    print(f"  {a:7.0f} {b:7.0f} {b - a:+7.0f}  {name[:100]}")
                print()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
