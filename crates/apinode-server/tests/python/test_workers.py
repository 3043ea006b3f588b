"""Python and R endpoints through the official client (`run_function`, `predict_record`,
`predict_records`): user code in worker processes, and what happens when it misbehaves
(an exception, `sys.exit`, a hang past the timeout, a segfault, a full queue, 64 concurrent
calls, a generation switch under load): each gets its answer, and the node stays healthy.

Python predictors need pandas: the node builds their environment once (pip, from PyPI) into
APINODE_ENVS_DIR, which `cargo xtask ci` points at a cache under the target directory.
R endpoints need `Rscript` with jsonlite (`cargo xtask ci` installs r-base-core and
r-cran-jsonlite when they are missing).
"""

from __future__ import annotations

import concurrent.futures
import json
import shutil
import threading
import time
from pathlib import Path

import dataikuapi
import pytest
import requests
from dataikuapi.utils import DataikuException

from conftest import Node, build_bundle
from test_conformance import TIMEOUT, admin, assert_client_error, assert_error_response

SERVICE = "workers"

FUNCTIONS_PY = '''
import os, sys, time, signal

def add(a, b, scale=1):
    return {"sum": (a + b) * scale, "folder_files": sorted(os.listdir(folders[0]))}

def fail(reason):
    raise ValueError("cannot use " + reason)

def leave(code=3):
    sys.exit(code)

def crash():
    os.kill(os.getpid(), signal.SIGSEGV)

def sleep(seconds):
    time.sleep(seconds)
    return seconds

def echo(**kwargs):
    return kwargs
'''

PREDICTOR_PY = '''
import pandas as pd
from dataiku.apinode.predict.predictor import ClassificationPredictor

class ChurnPredictor(ClassificationPredictor):
    """Written the way Dataiku's documentation shows a custom classification predictor."""

    def __init__(self, data_folder=None):
        with open(data_folder + "/threshold.txt") as f:
            self.threshold = float(f.read())

    def predict(self, features_df):
        score = features_df["basket"].fillna(0) / 100.0
        p_yes = score.clip(0, 1)
        labels = p_yes.map(lambda p: "yes" if p >= self.threshold else "no")
        probas = pd.DataFrame({"no": 1 - p_yes, "yes": p_yes})
        custom = [{"rows_in_batch": len(features_df)} for _ in range(len(features_df))]
        return labels, probas, custom
'''

FUNCTIONS_R = '''
add <- function(a, b) {
  list(sum = a + b, language = "R")
}

risk <- function(df) {
  list(prediction = ifelse(df$basket > 50, "high", "low"),
       probas = data.frame(high = df$basket / 100, low = 1 - df$basket / 100))
}
'''

SERVICE_TOML = f'''
[service]
id = "{SERVICE}"

[auth]
mode = "public"

[[datasets]]
name = "customers"
path = "customers.csv"

[[folders]]
name = "assets"
path = "assets"

[[endpoints]]
id = "add"
kind = "python-function"
python = {{ code = "functions.py", function = "add", folders = ["assets"] }}

[[endpoints]]
id = "fail"
kind = "python-function"
python = {{ code = "functions.py", function = "fail", folders = ["assets"] }}

[[endpoints]]
id = "leave"
kind = "python-function"
python = {{ code = "functions.py", function = "leave", folders = ["assets"] }}

[[endpoints]]
id = "crash"
kind = "python-function"
python = {{ code = "functions.py", function = "crash", folders = ["assets"] }}

[[endpoints]]
id = "sleep"
kind = "python-function"
python = {{ code = "functions.py", function = "sleep", folders = ["assets"] }}
pool = {{ min_workers = 1, max_workers = 1, queue = 1, timeout_ms = 1500 }}

[[endpoints]]
id = "echo"
kind = "python-function"
python = {{ code = "functions.py", function = "echo", folders = ["assets"] }}
pool = {{ min_workers = 2, max_workers = 4, queue = 64 }}

[[endpoints]]
id = "churn"
kind = "python-prediction"
python = {{ code = "predictor.py", class = "ChurnPredictor", folders = ["assets"] }}
[[endpoints.enrich]]
dataset = "customers"
keys = [{{ column = "id", input = "customer" }}]
columns = ["basket"]
on_no_match = "ignore"

[[endpoints]]
id = "r-add"
kind = "r-function"
r = {{ code = "functions.R", function = "add" }}

[[endpoints]]
id = "r-risk"
kind = "r-prediction"
r = {{ code = "functions.R", function = "risk" }}
'''


@pytest.fixture(scope="module")
def workers(node: Node, apinode_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The public service `workers` at v1, active; returns its service folder."""
    if shutil.which("Rscript") is None:
        pytest.fail("Rscript is not installed: apt-get install r-base-core r-cran-jsonlite "
                    "(cargo xtask ci does it)", pytrace=False)
    folder = tmp_path_factory.mktemp("workers-service")
    (folder / "assets").mkdir()
    (folder / "assets" / "threshold.txt").write_text("0.5")
    (folder / "functions.py").write_text(FUNCTIONS_PY)
    (folder / "predictor.py").write_text(PREDICTOR_PY)
    (folder / "functions.R").write_text(FUNCTIONS_R)
    (folder / "customers.csv").write_text("id,basket\n1,80\n2,20\n3,\n")
    (folder / "service.toml").write_text(SERVICE_TOML)
    deploy_version(node, apinode_bin, folder, "v1")
    return folder


def deploy_version(node: Node, apinode_bin: Path, folder: Path, version: str) -> None:
    archive = build_bundle(apinode_bin, folder, folder.parent / f"{folder.name}-{version}.zip", version)
    adm = admin(node)
    if SERVICE not in {s["serviceId"] for s in adm.list_services()}:
        adm.create_service(SERVICE)
    adm.service(SERVICE).import_generation_from_archive(str(archive))
    adm.service(SERVICE).switch_to_newest()


def client(node: Node) -> dataikuapi.APINodeClient:
    return dataikuapi.APINodeClient(node.url, SERVICE)


def raw_run(node: Node, endpoint: str, body: dict) -> requests.Response:
    return requests.post(f"{node.url}/public/api/v1/{SERVICE}/{endpoint}/run",
                         data=json.dumps(body), timeout=TIMEOUT)


def test_python_function_through_the_client(node, workers):
    answer = client(node).run_function("add", a=2, b=3, scale=10)
    assert answer["response"] == {"sum": 50, "folder_files": ["threshold.txt"]}
    assert answer["apiContext"]["serviceGeneration"] == "v1"
    assert {"execution", "total"} <= set(answer["timing"])
    # No arguments: an empty body.
    assert client(node).run_function("echo")["response"] == {}


def test_python_predictor_with_probabilities_custom_keys_and_enrichment(node, workers):
    c = client(node)
    one = c.predict_record("churn", {"customer": 1})["result"]
    assert one["prediction"] == "yes"
    assert one["probas"] == pytest.approx({"no": 0.2, "yes": 0.8})
    assert one["customKeys"] == {"rows_in_batch": 1}
    # A batch reaches the predictor as ONE DataFrame; an unknown customer is ignored by
    # enrichment and never sent.
    many = c.predict_records("churn", [{"features": {"customer": i}} for i in (1, 2, 99, 3)])
    results = many["results"]
    assert [r.get("prediction") for r in results] == ["yes", "no", None, "no"]
    assert results[2]["ignored"] is True and results[2]["ignoreReason"] == "NO_LOOKUP_MATCH"
    assert results[0]["customKeys"] == {"rows_in_batch": 3}


def test_r_function_and_predictor(node, workers):
    c = client(node)
    assert c.run_function("r-add", a=2, b=40)["response"] == {"sum": 42, "language": "R"}
    results = c.predict_records("r-risk", [{"features": {"basket": 80}}, {"features": {"basket": 10}}])["results"]
    assert [r["prediction"] for r in results] == ["high", "low"]
    assert results[0]["probas"] == pytest.approx({"high": 0.8, "low": 0.2})


def test_a_user_exception_is_a_500_with_its_type_and_message(node, workers):
    with pytest.raises(DataikuException) as excinfo:
        client(node).run_function("fail", reason="the moon")
    assert str(excinfo.value).startswith("ValueError: ValueError: cannot use the moon"), str(excinfo.value)
    r = raw_run(node, "fail", {"reason": "x"})
    assert r.status_code == 500
    assert r.json()["errorType"] == "ValueError" and r.json()["message"] == "cannot use x"
    # A missing argument is the caller's mistake, reported by Python.
    r = raw_run(node, "fail", {})
    assert r.status_code == 500 and r.json()["errorType"] == "TypeError", r.text


def test_exit_and_segfault_cost_one_call_and_the_worker_is_replaced(node, workers):
    for endpoint in ("leave", "crash"):
        body = assert_error_response(raw_run(node, endpoint, {}), 500, "WorkerDied")
        assert "died" in body["message"], body
    # The endpoints' workers were replaced, and the others never noticed.
    assert assert_error_response(raw_run(node, "leave", {}), 500, "WorkerDied")
    assert client(node).run_function("add", a=1, b=1)["response"]["sum"] == 2


def test_a_hang_past_the_timeout_is_a_504_and_the_worker_is_replaced(node, workers):
    start = time.monotonic()
    body = assert_error_response(raw_run(node, "sleep", {"seconds": 30}), 504, "WorkerTimeout")
    assert time.monotonic() - start < 10, "the timeout (1.5 s) ended the call"
    assert "timed out" in body["message"]
    assert client(node).run_function("sleep", seconds=0)["response"] == 0


def test_a_full_queue_answers_503(node, workers):
    # One worker, one queued call: of three slow calls at once, one is refused.
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda _: raw_run(node, "sleep", {"seconds": 0.8}), range(3)))
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [200, 200, 503], [r.text for r in answers]
    refused = next(r for r in answers if r.status_code == 503)
    assert_error_response(refused, 503, "EndpointOverloaded")


def test_64_concurrent_calls(node, workers):
    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(lambda i: client(node).run_function("echo", i=i), range(64)))
    assert sorted(a["response"]["i"] for a in answers) == list(range(64))


def test_a_generation_switch_under_load(node, workers, apinode_bin, tmp_path):
    folder = tmp_path / "v2"
    shutil.copytree(workers, folder)
    (folder / "functions.py").write_text(FUNCTIONS_PY.replace("(a + b) * scale", "(a + b) * scale + 1000"))
    errors, sums = [], []
    done = threading.Event()

    def hammer():
        while not done.is_set():
            try:
                sums.append(client(node).run_function("add", a=1, b=1)["response"]["sum"])
            except Exception as e:  # noqa: BLE001 - any failure is what this test looks for
                errors.append(repr(e))

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        running = [pool.submit(hammer) for _ in range(4)]
        # Switch once the load is on (v1 has answered), and keep the load on until v2 has
        # answered some of it: waits on what happened, not on a fixed time (starting v2's
        # pools takes seconds on a busy machine).
        deadline = time.monotonic() + 60
        while not sums and time.monotonic() < deadline:
            time.sleep(0.01)
        deploy_version(node, apinode_bin, folder, "v2")
        while sums.count(1002) < 20 and not errors and time.monotonic() < deadline:
            time.sleep(0.01)
        done.set()
        for f in running:
            f.result()
    assert errors == []
    assert 2 in sums and 1002 in sums, set(sums)
    assert client(node).run_function("add", a=1, b=1)["response"]["sum"] == 1002


def test_a_failing_requirement_fails_the_import_with_pips_error(node, workers, apinode_bin, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(workers, folder)
    (folder / "requirements.txt").write_text("apinode-no-such-package-anywhere==9.9.9\n")
    toml = (folder / "service.toml").read_text().replace(
        'python = { code = "functions.py", function = "add", folders = ["assets"] }',
        'python = { code = "functions.py", function = "add", folders = ["assets"], '
        'requirements = "requirements.txt" }',
    )
    (folder / "service.toml").write_text(toml)
    archive = build_bundle(apinode_bin, folder, tmp_path / "broken.zip", "v-broken")
    with pytest.raises(DataikuException) as excinfo:
        admin(node).service(SERVICE).import_generation_from_archive(str(archive))
    message = assert_client_error(excinfo, "UnservableGeneration")
    assert "apinode-no-such-package-anywhere" in message, message
    assert "No matching distribution" in message or "Could not find a version" in message, message
    # The serving generation never stopped.
    assert client(node).run_function("add", a=1, b=1)["response"]["sum"] in (2, 1002)


def test_deleting_the_service_drains_its_workers(start_node, apinode_bin, workers):
    """On its own node: the pools of a deleted service end their processes."""
    own = start_node()
    deploy_version(own, apinode_bin, workers, "v1")
    assert client(own).run_function("add", a=1, b=2)["response"]["sum"] == 3
    children = worker_pids(own)
    assert children, "the node runs worker processes"
    admin(own).service(SERVICE).delete()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and worker_pids(own):
        time.sleep(0.1)
    assert worker_pids(own) == [], "the workers ended"


def worker_pids(node: Node) -> list[int]:
    """The node's child processes that are still running."""
    # Every thread's children: the workers are spawned by the node's worker threads.
    children = []
    for task in Path(f"/proc/{node.proc.pid}/task").iterdir():
        children += (task / "children").read_text().split()
    alive = []
    for child in children:
        stat = Path(f"/proc/{child}/stat")
        if stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z":
            alive.append(int(child))
    return alive
