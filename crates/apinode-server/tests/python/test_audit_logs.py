"""The query audit log on S3, read back as a dataset: a node whose configuration declares the
`customer-audit-log` connection (an S3-compatible server on loopback: moto, from the tests'
virtualenv) logs the official client's queries there, and `apinode logs query` / `logs tail`
read them back, through the node's configuration or through an explicit `--store`.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import dataikuapi
import pytest
import requests

from conftest import SERVICE_ID, Bundles, Node
from test_conformance import TIMEOUT, admin

BUCKET = "audit"
PREFIX = "apinode"
S3_OPTIONS = {
    "aws_region": "us-east-1",
    "aws_access_key_id": "test",
    "aws_secret_access_key": "test",
    "aws_allow_http": "true",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def moto() -> str:
    """moto's S3 server on a free loopback port with the bucket `audit`; its endpoint."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import boto3

        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test",
                          aws_secret_access_key="test", region_name="us-east-1")
        deadline = time.monotonic() + 60
        while True:
            try:
                s3.create_bucket(Bucket=BUCKET)
                break
            except Exception:  # not listening yet
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto did not start on {endpoint} (exit {proc.poll()})")
                time.sleep(0.2)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def logs(apinode_bin: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(apinode_bin), "logs", *args], capture_output=True, text=True,
                          timeout=120)


def wait_uploaded(node: Node) -> dict:
    """The node's audit metrics once every record is in the store."""
    deadline = time.monotonic() + 60
    while True:
        r = requests.get(f"{node.url}/admin/api/metrics", auth=(node.admin_key, ""),
                         timeout=TIMEOUT)
        assert r.status_code == 200, r.text
        audit = r.json()["audit"]
        if audit["spoolBytes"] == 0 and audit["queued"] == audit["written"]:
            return audit
        assert time.monotonic() < deadline, f"the audit spool did not drain: {audit}"
        time.sleep(0.1)


def test_queries_logged_to_the_s3_connection_read_back_with_logs_query(
    start_node, apinode_bin: Path, bundles: Bundles, moto: str, tmp_path: Path
):
    config = tmp_path / "node.toml"
    config.write_text(
        "[connections.customer-audit-log]\n"
        f'url = "s3://{BUCKET}/{PREFIX}"\n'
        f'endpoint = "{moto}"\n'
        'region = "us-east-1"\n'
        "allow_http = true\n"
        "[connections.customer-audit-log.options]\n"
        'aws_access_key_id = "test"\n'
        'aws_secret_access_key = "test"\n\n'
        "[audit]\n"
        'node_id = "e2e"\n'
        "segment_max_age_ms = 200\n"
    )
    node = start_node(config=config)
    adm = admin(node)
    adm.create_service(SERVICE_ID)
    adm.service(SERVICE_ID).import_generation_from_archive(str(bundles.get(public=True)))
    adm.service(SERVICE_ID).switch_to_newest()

    rows = bundles.rows["v1"]
    ids = []
    for row in rows[:20]:
        r = requests.post(f"{node.url}/public/api/v1/{SERVICE_ID}/by-id/lookup",
                          json={"data": {"customer_id": row["customer_id"]}}, timeout=TIMEOUT)
        assert r.status_code == 200, r.text
        ids.append(r.headers["X-Request-Id"])
    # The official client: one lookup-multi call of 5 items is 5 records.
    client = dataikuapi.APINodeClient(node.url, SERVICE_ID)
    answer = client.lookup_records("by-id", [{"data": {"customer_id": r["customer_id"]}}
                                             for r in rows[20:25]])
    assert len(answer["results"]) == 5
    # An admin request with a wrong key: the auth stream.
    r = requests.get(f"{node.url}/admin/api/services", auth=("wrong", ""), timeout=TIMEOUT)
    assert r.status_code == 401
    wait_uploaded(node)

    def query(sql: str, *store: str) -> list[dict]:
        out = logs(apinode_bin, "query", *store, "--format", "json", sql)
        assert out.returncode == 0, out.stderr
        return [json.loads(line) for line in out.stdout.splitlines()]

    through_config = ("--config", str(config))
    assert query("SELECT service, count(*) AS n FROM queries GROUP BY service",
                 *through_config) == [{"service": SERVICE_ID, "n": 25}]
    got = query(
        "SELECT request_id, status, endpoint, outputs FROM queries "
        f"WHERE request_id IN ({', '.join(repr(i) for i in ids[:3])}) ORDER BY time",
        *through_config,
    )
    assert [g["request_id"] for g in got] == ids[:3]
    assert all(g["status"] == 200 and g["endpoint"] == "by-id" for g in got), got
    # The payloads come back as JSON: the row each lookup answered.
    assert got[0]["outputs"]["customer_id"] == rows[0]["customer_id"], got[0]
    multi = query("SELECT count(DISTINCT request_id) AS calls, count(*) AS items, "
                  "min(item) AS first, max(item) AS last FROM queries WHERE item IS NOT NULL",
                  *through_config)
    assert multi == [{"calls": 1, "items": 5, "first": 0, "last": 4}]
    assert query("SELECT count(*) AS n FROM auth WHERE status = 401", *through_config)[0]["n"] >= 1
    assert query("SELECT count(*) AS n FROM admin", *through_config)[0]["n"] >= 3

    # The same store named on the command line.
    explicit = ["--store", f"s3://{BUCKET}/{PREFIX}", "--option", f"aws_endpoint={moto}"]
    for key, value in S3_OPTIONS.items():
        explicit += ["--option", f"{key}={value}"]
    assert query(f"SELECT count(*) AS n FROM queries WHERE request_id = '{ids[7]}'",
                 *explicit) == [{"n": 1}]
    table = logs(apinode_bin, "query", *explicit, "SELECT date, hour, count(*) AS n FROM queries "
                 "GROUP BY date, hour")
    assert table.returncode == 0, table.stderr
    assert "| date" in table.stdout and "25" in table.stdout, table.stdout

    tail = logs(apinode_bin, "tail", *explicit, "--service", SERVICE_ID, "-n", "3")
    assert tail.returncode == 0, tail.stderr
    records = [json.loads(line) for line in tail.stdout.splitlines()]
    assert len(records) == 3 and all(r["service"] == SERVICE_ID for r in records), records

    # Bad SQL is an error naming what is wrong; an unknown bucket, the store.
    bad = logs(apinode_bin, "query", *through_config, "SELECT nope FROM queries")
    assert bad.returncode != 0 and "nope" in bad.stderr, bad.stderr
    missing = logs(apinode_bin, "query", "--store", "s3://no-such-bucket", "--option",
                   f"aws_endpoint={moto}", *[f"--option={k}={v}" for k, v in S3_OPTIONS.items()],
                   "SELECT count(*) FROM queries")
    assert missing.returncode != 0 and "cannot read the log store" in missing.stderr, missing.stderr
