"""The node's CPU per multi call (`lookup-multi`, `predict-multi`), two or more node binaries side by side.

What docs/benchmarks.md's "multi calls read without a tree" figures come from: each binary serves
the same endpoint on core 0, four keep-alive client threads on core 1 send the same bodies of
ITEMS items, and the node's CPU time (user + system, from /proc) is divided by the requests it
answered; binaries alternate by round (forward, then reversed), after a 1 s warm-up each.

- lookup: `apinode demo --rows 100000`, `customer-by-id/lookup-multi`, random existing ids;
- predict: the `binary_logistic` model of the generated scoring cases (`APINODE_SCORING_CASES`,
  made by `cargo xtask ci`), served as `models/churn` without enrichment, its cases' features.

    python3 benches/http/multi_calls.py lookup|predict ITEMS ROUNDS SECONDS label=BINARY ...

e.g. `python3 benches/http/multi_calls.py predict 100 4 5 before=/var/tmp/apinode.before
after=target/release/apinode`. The CPU per request is the figure: these Python clients cannot
saturate a node on small calls, so requests/s is only reported.
"""

import base64
import http.client
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

ADMIN_KEY = "multi-calls-admin"
DEMO_KEY = "customers-demo-key"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def basic(key):
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


def request(port, method, path, body=b"", auth=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request(method, path, body=body, headers={"Authorization": auth} if auth else {})
    response = connection.getresponse()
    return response.status, response.read()


def wait_ready(port, process, path, body, auth):
    deadline = time.time() + 180
    while time.time() < deadline:
        if process.poll() is not None:
            sys.exit(f"the node exited ({process.returncode})")
        try:
            status, answer = request(port, "POST", path, body, auth)
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit(f"the node did not answer {path} within 180 s")


class Lookup:
    path = "/public/api/v1/customers/customer-by-id/lookup-multi"
    auth = basic(DEMO_KEY)

    def __init__(self, items):
        rng = random.Random(7)
        self.bodies = [
            json.dumps({"items": [{"data": {"customer_id": rng.randint(1, 100_000)}} for _ in range(items)]}).encode()
            for _ in range(200)
        ]

    def start(self, binary, port, work):
        command = [binary, "demo", "--rows", "100000", "--data-dir", work, "--bind", f"127.0.0.1:{port}"]
        process = subprocess.Popen(["taskset", "-c", "0", *command], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_ready(port, process, self.path, self.bodies[0], self.auth)
        return process


class Predict:
    path = "/public/api/v1/models/churn/predict-multi"
    auth = None

    def __init__(self, items):
        cases_dir = os.environ.get("APINODE_SCORING_CASES")
        if not cases_dir:
            sys.exit("APINODE_SCORING_CASES is not set: `cargo xtask ci` generates the scoring cases")
        self.model = os.path.join(cases_dir, "binary_logistic", "model")
        with open(os.path.join(cases_dir, "binary_logistic", "cases.jsonl")) as lines:
            cases = [json.loads(line)["input"] for line in lines]
        rng = random.Random(7)
        self.bodies = [
            json.dumps({"items": [{"features": rng.choice(cases)} for _ in range(items)]}).encode() for _ in range(100)
        ]
        self.bundle = None

    def build(self, binary, work):
        service = os.path.join(work, "service")
        shutil.copytree(self.model, os.path.join(service, "models", "churn"))
        with open(os.path.join(service, "service.toml"), "w") as toml:
            toml.write('[service]\nid = "models"\n\n[[endpoints]]\nid = "churn"\nkind = "prediction"\n'
                       'model = { path = "models/churn" }\n')
        self.bundle = os.path.join(work, "models.zip")
        subprocess.run([binary, "bundle", "build", service, "-o", self.bundle], check=True, stdout=subprocess.DEVNULL)

    def start(self, binary, port, work):
        if self.bundle is None:
            self.build(binary, os.path.dirname(work))
        env = dict(os.environ, APINODE_ADMIN_KEY=ADMIN_KEY, APINODE_LOG="warn")
        command = [binary, "serve", "--data-dir", work, "--bind", f"127.0.0.1:{port}"]
        process = subprocess.Popen(["taskset", "-c", "0", *command], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        admin = basic(ADMIN_KEY)
        deadline = time.time() + 60
        while True:
            try:
                request(port, "GET", "/admin/api/metrics", auth=admin)
                break
            except OSError:
                if time.time() > deadline or process.poll() is not None:
                    sys.exit("the node did not start")
                time.sleep(0.1)
        with open(self.bundle, "rb") as archive:
            bundle = archive.read()
        for path, body in [
            ("/admin/api/services", b'{"serviceId": "models"}'),
            ("/admin/api/services/models/generations/actions/upload", bundle),
            ("/admin/api/services/models/actions/switchToNewest", b""),
        ]:
            status, answer = request(port, "POST", path, body, admin)
            if status != 200:
                sys.exit(f"{path}: {status} {answer[:300]!r}")
        wait_ready(port, process, self.path, self.bodies[0], self.auth)
        return process


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(kind, port, seconds):
    answered = [0] * 4
    stop = time.time() + seconds
    headers = {"Authorization": kind.auth} if kind.auth else {}

    def client(i):
        connection = http.client.HTTPConnection("127.0.0.1", port)
        n = 0
        while time.time() < stop:
            connection.request("POST", kind.path, body=kind.bodies[(i + 7 * n) % len(kind.bodies)], headers=headers)
            response = connection.getresponse()
            answer = response.read()
            if response.status != 200:
                sys.exit(f"{response.status}: {answer[:300]!r}")
            n += 1
        answered[i] = n

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(answered)


def main():
    if len(sys.argv) < 6 or sys.argv[1] not in ("lookup", "predict"):
        sys.exit(__doc__)
    kind_name, items, rounds, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    binaries = [argument.split("=", 1) for argument in sys.argv[5:]]
    os.sched_setaffinity(0, {1})
    kind = (Lookup if kind_name == "lookup" else Predict)(items)
    work = tempfile.mkdtemp(prefix="apinode-multi-calls-", dir="/var/tmp")
    nodes = []
    try:
        for label, binary in binaries:
            port = free_port()
            nodes.append((label, kind.start(binary, port, os.path.join(work, label)), port))
        per_request = {label: [] for label, _ in binaries}
        for round_ in range(rounds):
            for label, process, port in nodes if round_ % 2 == 0 else nodes[::-1]:
                load(kind, port, 1.0)
                before = cpu_seconds(process.pid)
                answered = load(kind, port, seconds)
                micros = (cpu_seconds(process.pid) - before) / answered * 1e6
                per_request[label].append(micros)
                print(f"round {round_} {label}: {micros:.1f} µs of node CPU per request, {answered / seconds:.0f} req/s",
                      flush=True)
        print(f"\n{kind_name}-multi of {items} items, {rounds} rounds of {seconds} s:")
        for label, values in per_request.items():
            print(f"- {label}: {sum(values) / len(values):.1f} µs of node CPU per request "
                  f"({', '.join(f'{v:.1f}' for v in values)})")
    finally:
        for _, process, _ in nodes:
            process.terminate()
            process.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
