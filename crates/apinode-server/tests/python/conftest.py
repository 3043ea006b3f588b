"""Fixtures for the conformance tests: the apinode binary, generated service bundles, and
running nodes (each on a fresh data directory, on a free port, with a known admin key).

The binary comes from the environment variable APINODE_BIN (e.g. target/debug/apinode);
without it the tests fail (they never skip).
"""

from __future__ import annotations

import csv
import datetime as dt
import os
import queue
import random
import re
import secrets
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
LISTENING_RE = re.compile(r"apinode listening on (http://\S+)")

# ---------------------------------------------------------------------------------------------
# The binary
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def apinode_bin() -> Path:
    value = os.environ.get("APINODE_BIN")
    if not value:
        pytest.fail(
            "APINODE_BIN is not set: point it at the apinode binary, e.g. "
            "APINODE_BIN=$PWD/target/debug/apinode (build it with `cargo build -p apinode-server`)",
            pytrace=False,
        )
    path = Path(value).resolve()
    if not path.is_file():
        pytest.fail(f"APINODE_BIN={value!r}: no such file ({path})", pytrace=False)
    if not os.access(path, os.X_OK):
        pytest.fail(f"APINODE_BIN={value!r}: {path} is not executable", pytrace=False)
    return path


# ---------------------------------------------------------------------------------------------
# The generated dataset and bundles
# ---------------------------------------------------------------------------------------------

SERVICE_ID = "customers"
SERVICE_KEY = "conformance-service-key"
ROWS = 1000

# Cities per country; "São Paulo" and "Saint-Étienne" check UTF-8 round trips.
CITIES = {
    "FR": ["Paris", "Lyon", "Saint-Étienne"],
    "DE": ["Berlin", "Hamburg"],
    "US": ["Boston", "Denver", "Austin"],
    "JP": ["Tokyo", "Osaka"],
    "BR": ["São Paulo", "Recife"],
}
# Customer #0 lives in a city nobody else lives in, and moves between v1 and v2.
UNIQUE_CITY = {"v1": "Annecy", "v2": "Chamonix"}

COLUMNS = [
    ("customer_id", "int64"),
    ("email", "string"),
    ("country", "string"),
    ("city", "string"),
    ("account_number", "int64"),
    ("score", "float64"),
    ("is_active", "boolean"),
    ("signup_date", "date"),
    ("version_tag", "string"),
]


def generate_customers(version: str) -> list[dict]:
    """The customers table as Python values (None for an empty cell); deterministic."""
    rng = random.Random(20240601)
    countries = list(CITIES)
    next_account: dict[str, int] = {c: 1 for c in countries}
    rows = []
    for i in range(ROWS):
        country = countries[i % len(countries)]
        city = UNIQUE_CITY[version] if i == 0 else rng.choice(CITIES[country])
        account = next_account[country]
        next_account[country] += 1
        # Never a whole number, so a float can be told from an int on the wire.
        score = None if i % 10 == 3 else round(rng.randrange(0, 10_000) / 100 + 0.005, 3)
        rows.append(
            {
                # Ids are not row numbers, so an index-for-key confusion shows.
                "customer_id": 10_000 + 3 * i,
                "email": f"user{i:04d}@example.com",
                "country": country,
                "city": city,
                # Account numbers repeat across countries: unique only with the country.
                "account_number": account,
                "score": score,
                "is_active": i % 3 != 0,
                "signup_date": (dt.date(2020, 1, 1) + dt.timedelta(days=i)).isoformat(),
                "version_tag": version,
            }
        )
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([name for name, _ in COLUMNS])
        for row in rows:
            out = []
            for name, _ in COLUMNS:
                value = row[name]
                if value is None:
                    out.append("")
                elif isinstance(value, bool):
                    out.append("true" if value else "false")
                else:
                    out.append(str(value))
            writer.writerow(out)


def service_toml(service_id: str, auth: str, explicit_schema: bool) -> str:
    schema = ""
    if explicit_schema:
        schema = "schema = [\n" + "".join(
            f'  {{ name = "{name}", type = "{kind}" }},\n' for name, kind in COLUMNS
        ) + "]\n"
    return f"""
[service]
id = "{service_id}"
description = "apinode conformance-test service"

{auth}

[[datasets]]
name = "customers"
path = "data/customers.csv"
{schema}

# Every column, by id; an unknown id is ignored (the default).
[[endpoints]]
id = "by-id"
kind = "dataset-lookup"
[endpoints.lookup]
dataset = "customers"
keys = ["customer_id"]

# Renamed input key and renamed output columns; an unknown email fails.
[[endpoints]]
id = "by-email"
kind = "dataset-lookup"
[endpoints.lookup]
dataset = "customers"
keys = [{{ column = "email", input = "mail" }}]
columns = [
  "customer_id",
  {{ column = "city", output = "town" }},
  {{ column = "score", output = "customerScore" }},
  "version_tag",
]
on_no_match = "fail"

# A composite key; no match keeps the record with nulls.
[[endpoints]]
id = "account"
kind = "dataset-lookup"
[endpoints.lookup]
dataset = "customers"
keys = [{{ column = "country", input = "country" }}, {{ column = "account_number", input = "account" }}]
columns = ["customer_id", "email"]
on_missing_key = "fail"
on_no_match = "null"
on_multiple_matches = "fail"

# Several customers per city: fail, take the first, or ignore.
[[endpoints]]
id = "by-city-strict"
kind = "dataset-lookup"
[endpoints.lookup]
dataset = "customers"
keys = ["city"]
columns = ["customer_id"]
on_multiple_matches = "fail"

[[endpoints]]
id = "by-city-first"
kind = "dataset-lookup"
[endpoints.lookup]
dataset = "customers"
keys = ["city"]
columns = ["customer_id", "city"]
on_multiple_matches = "first"

[[endpoints]]
id = "by-country"
kind = "dataset-lookup"
[endpoints.lookup]
dataset = "customers"
keys = ["country"]
columns = ["customer_id"]
on_multiple_matches = "ignore"

# A missing key is ignored instead of failing.
[[endpoints]]
id = "by-id-lenient"
kind = "dataset-lookup"
[endpoints.lookup]
dataset = "customers"
keys = ["customer_id"]
columns = ["email"]
on_missing_key = "ignore"
on_no_match = "ignore"
"""


class Bundles:
    """Builds (once each) bundle archives of the customers service under any service id, at
    generation v1 or v2 (v2: another `version_tag`, and customer #0 in another city)."""

    def __init__(self, apinode_bin: Path, root: Path):
        self._bin = apinode_bin
        self._root = root
        self._built: dict[tuple[str, str, bool], Path] = {}
        self.rows = {v: generate_customers(v) for v in ("v1", "v2")}

    def get(self, service_id: str = SERVICE_ID, version: str = "v1", public: bool = False) -> Path:
        """The absolute path of the archive of `service_id` at `version`: api-keys auth with
        SERVICE_KEY and an explicit schema, or public auth with inferred column types."""
        spec = (service_id, version, public)
        if spec not in self._built:
            folder = self._root / f"{service_id}-{version}{'-public' if public else ''}"
            (folder / "data").mkdir(parents=True)
            write_csv(folder / "data" / "customers.csv", self.rows[version])
            if public:
                auth = '[auth]\nmode = "public"'
            else:
                auth = (
                    '[auth]\nmode = "api-keys"\n'
                    f'keys = [{{ id = "k1", label = "conformance", key = "{SERVICE_KEY}" }}]'
                )
            (folder / "service.toml").write_text(
                service_toml(service_id, auth, explicit_schema=not public), encoding="utf-8"
            )
            self._built[spec] = build_bundle(self._bin, folder, folder.with_suffix(".zip"), version)
        return self._built[spec]

    def row(self, version: str, index: int) -> dict:
        return self.rows[version][index]


def build_bundle(apinode_bin: Path, folder: Path, out: Path, version: str) -> Path:
    result = subprocess.run(
        [str(apinode_bin), "bundle", "build", str(folder), "-o", str(out), "--version", version],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0 or not out.is_file():
        raise RuntimeError(
            f"`apinode bundle build {folder}` failed (exit {result.returncode}):\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return out.resolve()


@pytest.fixture(scope="session")
def bundles(apinode_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    bundles = Bundles(apinode_bin, tmp_path_factory.mktemp("bundles"))
    # Build the main ones up front: a broken build shows here, before any node starts.
    bundles.get(SERVICE_ID, "v1")
    bundles.get(SERVICE_ID, "v2")
    return bundles


# ---------------------------------------------------------------------------------------------
# Running nodes
# ---------------------------------------------------------------------------------------------

# Every node started by this session, so a failing test's report can show their logs.
_NODES: list["Node"] = []


@dataclass(eq=False)
class Node:
    """One `apinode serve` process."""

    binary: Path
    data_dir: Path
    admin_key: str
    log_dir: Path
    url: str = ""
    # A node configuration file (`apinode serve --config`), if any.
    config: Path | None = None
    proc: subprocess.Popen | None = None
    stderr_path: Path | None = None
    starts: int = 0
    _stdout_lines: list[str] = field(default_factory=list)

    def start(self) -> "Node":
        assert self.proc is None, "node already running"
        self.starts += 1
        self.stderr_path = self.log_dir / f"apinode-{self.data_dir.name}-{self.starts}.stderr.log"
        env = dict(os.environ)
        env["APINODE_ADMIN_KEY"] = self.admin_key
        env.setdefault("APINODE_LOG", "info")
        env["NO_COLOR"] = "1"
        stderr = self.stderr_path.open("wb")
        try:
            config = ["--config", str(self.config)] if self.config is not None else []
            self.proc = subprocess.Popen(
                [str(self.binary), "serve", "--data-dir", str(self.data_dir), "--bind", "127.0.0.1:0",
                 *config],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=env,
                text=True,
                bufsize=1,
            )
        finally:
            stderr.close()
        if self not in _NODES:
            _NODES.append(self)
        self.url = self._wait_listening()
        self._wait_alive()
        return self

    def _wait_listening(self) -> str:
        """Reads stdout (on a thread, which keeps draining it afterwards) until the
        `apinode listening on URL` line, the process's death, or the timeout."""
        lines: "queue.Queue[str | None]" = queue.Queue()
        proc = self.proc

        def pump() -> None:
            assert proc is not None and proc.stdout is not None
            for line in proc.stdout:
                self._stdout_lines.append(line)
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, name="apinode-stdout", daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._abort(f"did not print its listening line within {START_TIMEOUT_S:.0f} s")
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                proc.wait(timeout=STOP_TIMEOUT_S)
                self._abort(f"exited with status {proc.returncode} before listening")
            match = LISTENING_RE.search(line)
            if match:
                return match.group(1).rstrip("/")

    def _wait_alive(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._abort(f"exited with status {self.proc.returncode} before /isAlive/ answered")
            try:
                r = requests.get(f"{self.url}/isAlive/", timeout=2)
                if r.status_code == 200:
                    return
                last = f"HTTP {r.status_code}: {r.text[:200]}"
            except requests.RequestException as e:
                last = repr(e)
            time.sleep(0.05)
        self._abort(f"/isAlive/ did not answer 200 within {START_TIMEOUT_S:.0f} s (last: {last})")

    def _abort(self, why: str) -> None:
        self.stop()
        raise RuntimeError(
            f"apinode serve --data-dir {self.data_dir} {why}.\n"
            f"stdout:\n{''.join(self._stdout_lines)}\nstderr:\n{self.stderr()}"
        )

    def stderr(self) -> str:
        if self.stderr_path is None or not self.stderr_path.exists():
            return ""
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after a grace period. Returns the exit status."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT_S)
        if proc.stdout is not None:
            proc.stdout.close()
        return proc.returncode

    def restart(self) -> "Node":
        """Stops the node and starts a new process on the same data directory (new port)."""
        self.stop()
        return self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture(scope="session")
def start_node(apinode_bin: Path, tmp_path_factory: pytest.TempPathFactory):
    """A factory: `start_node()` starts a node on a fresh data directory and returns it;
    `node.restart()` restarts it on the same data directory. All are stopped at the end."""
    started: list[Node] = []

    def start(data_dir: Path | None = None, config: Path | None = None) -> Node:
        if data_dir is None:
            data_dir = tmp_path_factory.mktemp("apinode-data")
        node = Node(
            binary=apinode_bin,
            data_dir=data_dir,
            admin_key="admin-" + secrets.token_hex(16),
            log_dir=tmp_path_factory.getbasetemp(),
            config=config,
        )
        started.append(node)
        return node.start()

    yield start
    for node in started:
        node.stop()


@pytest.fixture(scope="module")
def node(start_node) -> Node:
    """The node most tests share (one per test module)."""
    return start_node()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failure, attach the stderr of every node started so far to the report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for n in _NODES:
            text = n.stderr()
            if len(text) > 20_000:
                text = "…(truncated)…\n" + text[-20_000:]
            state = "running" if n.running else "stopped"
            report.sections.append((f"apinode stderr ({n.data_dir.name}, {state}, {n.url})", text))
