"""Referenced data on PostgreSQL through the official client: `apinode data sync` loads the
customers CSV into a table, a node whose configuration declares the connection serves a
bundle that references that table, and `lookup_record` / `lookup_records` and `sql_query`
answer exactly what the same bundle with the data bundled answers (lookups in memory, SQL on
DataFusion).

PostgreSQL comes from APINODE_TEST_PG_URL (`cargo xtask ci` sets it); without it the tests
fail, never skip.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

import dataikuapi
import pytest
import requests

from conftest import Bundles, Node, build_bundle, write_csv
from test_conformance import TIMEOUT, admin, assert_error_response

SERVICE = "referenced"
CONNECTION = "api-node-referenced-data"
ENDPOINTS = """
[[endpoints]]
id = "by-id"
kind = "dataset-lookup"
[endpoints.lookup]
dataset = "customers"
keys = ["customer_id"]

[[endpoints]]
id = "account"
kind = "dataset-lookup"
[endpoints.lookup]
dataset = "customers"
keys = [{ column = "country", input = "country" }, { column = "account_number", input = "account" }]
columns = ["customer_id", "email", "score", "signup_date", "is_active"]
on_no_match = "null"

[[endpoints]]
id = "by-city"
kind = "dataset-lookup"
[endpoints.lookup]
dataset = "customers"
keys = ["city"]
columns = ["customer_id"]
on_multiple_matches = "ignore"
"""

# An R predictor whose records are enriched from the customers (bundled, or referenced).
ENRICHED = """
[[endpoints]]
id = "tier"
kind = "r-prediction"
r = { code = "tier.R", function = "tier" }
[[endpoints.enrich]]
dataset = "customers"
keys = [{ column = "customer_id", input = "customer" }]
columns = ["score", "country"]
on_no_match = "ignore"
"""

TIER_R = """
tier <- function(df) {
  list(prediction = ifelse(is.na(df$score), "unknown",
                           ifelse(df$score > 50, paste0("high-", df$country), "low")))
}
"""

# SQL endpoints, on the bundled dataset (DataFusion) or the synced table (PostgreSQL).
SQL_ENDPOINTS = """
[[endpoints]]
id = "sql-by-country"
kind = "sql-query"
[endpoints.sql]
{source}
statements = [{{ sql = "SELECT customer_id, email, score, is_active, signup_date FROM {table} WHERE country = ? AND score >= ? ORDER BY customer_id LIMIT ?", params = ["country", "min_score", "limit"] }}]
parameters = [
  {{ name = "country", type = "string" }},
  {{ name = "min_score", type = "float64", default = 0 }},
  {{ name = "limit", type = "int64", default = 5 }},
]

[[endpoints]]
id = "sql-counts"
kind = "sql-query"
[endpoints.sql]
{source}
statements = [{{ sql = "SELECT country, count(*) AS customers, CAST(sum(account_number) AS BIGINT) AS accounts FROM {table} GROUP BY country ORDER BY country" }}]
"""


def pg_url() -> str:
    url = os.environ.get("APINODE_TEST_PG_URL")
    if not url:
        pytest.fail("APINODE_TEST_PG_URL is not set: `cargo xtask ci` sets it "
                    "(postgres://postgres@127.0.0.1:5432/test)", pytrace=False)
    return url


def sync(apinode_bin: Path, csv: Path, table: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(apinode_bin), "data", "sync", str(csv), "--url", pg_url(), "--table", table, *extra],
        capture_output=True, text=True, timeout=300,
    )


@pytest.fixture(scope="module")
def both(start_node, apinode_bin: Path, bundles: Bundles, tmp_path_factory) -> tuple[Node, Node]:
    """Two nodes: one serving the customers bundled, one serving them from PostgreSQL."""
    work = tmp_path_factory.mktemp("referenced")
    csv = work / "customers.csv"
    write_csv(csv, bundles.rows["v1"])
    table = f"conformance_customers_{secrets.token_hex(4)}"
    synced = sync(apinode_bin, csv, table, "--index", "customer_id",
                  "--index", "country,account_number")
    assert synced.returncode == 0, synced.stderr
    assert f"synced 1000 rows and 9 columns" in synced.stdout, synced.stdout
    assert "indexed on (customer_id) and (country, account_number)" in synced.stdout, synced.stdout

    nodes = []
    for mode in ("bundled", "referenced"):
        folder = work / mode
        folder.mkdir()
        (folder / "tier.R").write_text(TIER_R)
        if mode == "bundled":
            (folder / "customers.csv").write_bytes(csv.read_bytes())
            dataset = 'path = "customers.csv"'
            sql = SQL_ENDPOINTS.format(source='datasets = ["customers"]', table="customers")
            config = None
        else:
            dataset = f'table = "{table}"'
            sql = SQL_ENDPOINTS.format(source=f'connection = "{CONNECTION}"', table=table)
            # Only PostgreSQL data changes: bundled data is immutable.
            sql += (
                '\n[[endpoints]]\nid = "sql-touch"\nkind = "sql-query"\n[endpoints.sql]\n'
                f'connection = "{CONNECTION}"\n'
                f'statements = [{{ sql = "UPDATE {table} SET score = score WHERE city = ?", '
                'params = ["city"] }]\nparameters = [{ name = "city", type = "string" }]\n'
            )
            config = work / "node.toml"
            config.write_text(
                f'[connections.pg-main]\nurl = "{pg_url()}"\npool_size = 4\n\n'
                f'[connection_remap]\n"{CONNECTION}" = "pg-main"\n'
            )
        (folder / "service.toml").write_text(
            f'[service]\nid = "{SERVICE}"\n\n[auth]\nmode = "public"\n\n'
            f'[[datasets]]\nname = "customers"\n{dataset}\n{ENDPOINTS}{ENRICHED}{sql}'
        )
        archive = build_bundle(apinode_bin, folder, work / f"{mode}.zip", "v1")
        node = start_node(config=config)
        adm = admin(node)
        adm.create_service(SERVICE)
        adm.service(SERVICE).import_generation_from_archive(str(archive))
        adm.service(SERVICE).switch_to_newest()
        nodes.append(node)
    return nodes[0], nodes[1]


def client(node: Node) -> dataikuapi.APINodeClient:
    return dataikuapi.APINodeClient(node.url, SERVICE)


def test_sync_refuses_to_overwrite_without_replace(apinode_bin, bundles: Bundles, tmp_path):
    csv = tmp_path / "customers.csv"
    write_csv(csv, bundles.rows["v2"])
    table = f"conformance_sync_{secrets.token_hex(4)}"
    assert sync(apinode_bin, csv, table).returncode == 0
    again = sync(apinode_bin, csv, table)
    assert again.returncode != 0
    assert "already exists" in again.stderr and "--replace" in again.stderr, again.stderr
    replaced = sync(apinode_bin, csv, table, "--replace")
    assert replaced.returncode == 0, replaced.stderr
    # A file it cannot read: the error names it.
    bad = tmp_path / "customers.txt"
    bad.write_text("x")
    failed = sync(apinode_bin, bad, table)
    assert failed.returncode != 0 and "customers.txt" in failed.stderr, failed.stderr
    # An index on a column the file lacks: refused, naming it, before anything changes.
    unindexable = sync(apinode_bin, csv, table, "--replace", "--index", "customer")
    assert unindexable.returncode != 0
    assert "index on `customer`" in unindexable.stderr, unindexable.stderr


def test_referenced_answers_equal_bundled_answers(both, bundles: Bundles):
    bundled, referenced = both
    rows = bundles.rows["v1"]
    queries = {
        "by-id": [{"customer_id": r["customer_id"]} for r in rows[:25]] + [{"customer_id": 1}],
        "account": [{"country": r["country"], "account": r["account_number"]} for r in rows[:25]]
        + [{"country": "FR", "account": 10**6}],
        "by-city": [{"city": "Annecy"}, {"city": "Paris"}, {"city": "Nowhere"}],
    }
    for endpoint, records in queries.items():
        for record in records:
            want = client(bundled).lookup_record(endpoint, record)
            got = client(referenced).lookup_record(endpoint, record)
            assert got == want, (endpoint, record)
        items = [{"data": r} for r in records]
        many_want = client(bundled).lookup_records(endpoint, items)["results"]
        many_got = client(referenced).lookup_records(endpoint, items)
        assert many_got["results"] == many_want, endpoint
        assert many_got["apiContext"]["serviceGeneration"] == "v1"


def test_the_raw_bytes_are_the_same_too(both, bundles: Bundles):
    bundled, referenced = both
    body = '{"items": [{"data": {"customer_id": %d}}, {"data": {"customer_id": 7}}]}' % (
        bundles.rows["v1"][3]["customer_id"]
    )

    def results(node: Node) -> bytes:
        r = requests.post(f"{node.url}/public/api/v1/{SERVICE}/by-id/lookup-multi", data=body,
                          timeout=TIMEOUT)
        assert r.status_code == 200, r.text
        return r.content.split(b',"timing"')[0]

    assert results(referenced) == results(bundled)


def test_enrichment_from_a_referenced_table_equals_bundled(both, bundles: Bundles):
    bundled, referenced = both
    rows = bundles.rows["v1"]
    records = [{"features": {"customer": r["customer_id"]}} for r in rows[:40]]
    records.append({"features": {"customer": 1}})  # no such customer: ignored
    want = client(bundled).predict_records("tier", records)["results"]
    got = client(referenced).predict_records("tier", records)["results"]
    assert got == want
    assert want[-1]["ignored"] is True and want[-1]["ignoreReason"] == "NO_LOOKUP_MATCH"
    predictions = {r.get("prediction") for r in want[:-1]}
    assert any(p.startswith("high-") for p in predictions if p), predictions
    one = client(referenced).predict_record("tier", {"customer": rows[0]["customer_id"]})
    assert one["result"] == want[0]


def test_sql_queries_answer_the_same_in_both_modes(both, bundles: Bundles):
    bundled, referenced = both
    rows = bundles.rows["v1"]
    queries = [
        ("sql-by-country", {"country": "FR"}),
        ("sql-by-country", {"country": "FR", "min_score": 50.5, "limit": 3}),
        # Strings for numbers, as clients often send them.
        ("sql-by-country", {"country": "US", "min_score": "10", "limit": "2"}),
        ("sql-by-country", {"country": "nowhere"}),
        ("sql-by-country", {"country": "FR' OR '1'='1"}),
        ("sql-counts", {}),
    ]
    for endpoint, params in queries:
        want = client(bundled).sql_query(endpoint, params)
        got = client(referenced).sql_query(endpoint, params)
        assert got["columns"] == want["columns"] and got["rows"] == want["rows"], (endpoint, params)
    answer = client(referenced).sql_query("sql-by-country", {"country": "FR", "limit": 2})
    assert [c["name"] for c in answer["columns"]] == [
        "customer_id", "email", "score", "is_active", "signup_date"]
    expected = sorted((r for r in rows if r["country"] == "FR" and (r["score"] or -1) >= 0),
                      key=lambda r: r["customer_id"])[:2]
    assert [row[0] for row in answer["rows"]] == [str(r["customer_id"]) for r in expected]
    assert all(isinstance(v, str) or v is None for row in answer["rows"] for v in row)
    counts = client(bundled).sql_query("sql-counts", {})
    assert sum(int(row[1]) for row in counts["rows"]) == len(rows)
    assert answer["apiContext"]["serviceGeneration"] == "v1"
    assert set(answer["timing"]) == {"execution", "total"}


def test_sql_changes_answer_updated_rows(both, bundles: Bundles):
    _, referenced = both
    city = bundles.rows["v1"][0]["city"]
    expected = sum(1 for r in bundles.rows["v1"] if r["city"] == city)
    got = client(referenced).sql_query("sql-touch", {"city": city})
    assert got["updatedRows"] == expected and expected > 0, got
    assert client(referenced).sql_query("sql-touch", {"city": "Nowhere"})["updatedRows"] == 0


def test_sql_parameter_errors_name_the_parameter(both):
    for node in both:
        base = f"{node.url}/public/api/v1/{SERVICE}/sql-by-country/query"
        r = requests.post(base, data="", timeout=TIMEOUT)
        body = assert_error_response(r, 400, "InvalidParameter")
        assert "`country`" in body["message"], body
        r = requests.post(base, data='{"country": "FR", "limit": "many"}', timeout=TIMEOUT)
        body = assert_error_response(r, 400, "InvalidParameter")
        assert "`limit`" in body["message"] and "integer" in body["message"], body
        r = requests.post(base, data='{"country": "FR", "limt": 3}', timeout=TIMEOUT)
        body = assert_error_response(r, 400, "InvalidParameter")
        assert "`limt`" in body["message"], body
        with pytest.raises(dataikuapi.utils.DataikuException, match="InvalidParameter"):
            client(node).sql_query("sql-by-country", {})


def test_a_missing_key_is_the_same_error(both):
    bundled, referenced = both
    for node in (bundled, referenced):
        r = requests.post(f"{node.url}/public/api/v1/{SERVICE}/by-id/lookup", data="{\"data\": {}}",
                          timeout=TIMEOUT)
        assert_error_response(r, 400, "InvalidLookupKey")


def test_a_connection_that_is_down_answers_503_and_the_rest_serves(start_node, apinode_bin, tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    config = tmp_path / "node.toml"
    config.write_text(
        f'[connections.pg-down]\nurl = "postgres://postgres@127.0.0.1:{dead_port}/test"\n'
        f'statement_timeout_ms = 2000\n\n[connection_remap]\n"{CONNECTION}" = "pg-down"\n'
    )
    folder = tmp_path / "svc"
    folder.mkdir()
    (folder / "local.csv").write_text("id,name\n1,Ann\n")
    (folder / "service.toml").write_text(
        f'[service]\nid = "{SERVICE}"\n\n[auth]\nmode = "public"\n\n'
        '[[datasets]]\nname = "customers"\ntable = "customers"\n\n'
        '[[datasets]]\nname = "local"\npath = "local.csv"\n\n'
        '[[endpoints]]\nid = "remote"\nkind = "dataset-lookup"\n'
        '[endpoints.lookup]\ndataset = "customers"\nkeys = ["customer_id"]\ncolumns = ["email"]\n\n'
        '[[endpoints]]\nid = "local"\nkind = "dataset-lookup"\n'
        '[endpoints.lookup]\ndataset = "local"\nkeys = ["id"]\n'
    )
    archive = build_bundle(apinode_bin, folder, tmp_path / "svc.zip", "v1")
    node = start_node(config=config)
    adm = admin(node)
    adm.create_service(SERVICE)
    # The database does not answer at import: the generation loads anyway.
    adm.service(SERVICE).import_generation_from_archive(str(archive))
    adm.service(SERVICE).switch_to_newest()
    r = requests.post(f"{node.url}/public/api/v1/{SERVICE}/remote/lookup",
                      data='{"data": {"customer_id": 1}}', timeout=TIMEOUT)
    body = assert_error_response(r, 503, "ServiceUnavailable")
    assert "pg-down" in body["message"] or CONNECTION in body["message"], body
    assert client(node).lookup_record("local", {"id": 1})["data"] == {"id": 1, "name": "Ann"}


def test_a_service_remap_wins_over_the_node_remap(start_node, apinode_bin, bundles: Bundles, tmp_path):
    """One bundle, one node: the node maps the bundle's connection to a database that is down,
    the service's own remap sends it to the live one."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    csv = tmp_path / "customers.csv"
    write_csv(csv, bundles.rows["v1"])
    table = f"conformance_remap_{secrets.token_hex(4)}"
    assert sync(apinode_bin, csv, table).returncode == 0
    config = tmp_path / "node.toml"
    config.write_text(
        f'[connections.live]\nurl = "{pg_url()}"\n\n'
        f'[connections.down]\nurl = "postgres://postgres@127.0.0.1:{dead_port}/test"\n\n'
        f'[connection_remap]\n"{CONNECTION}" = "down"\n\n'
        f'[services.{SERVICE}.connection_remap]\n"{CONNECTION}" = "live"\n'
    )
    folder = tmp_path / "svc"
    folder.mkdir()
    (folder / "service.toml").write_text(
        f'[service]\nid = "{SERVICE}"\n\n[auth]\nmode = "public"\n\n'
        f'[[datasets]]\nname = "customers"\ntable = "{table}"\n{ENDPOINTS}'
    )
    archive = build_bundle(apinode_bin, folder, tmp_path / "svc.zip", "v1")
    node = start_node(config=config)
    adm = admin(node)
    adm.create_service(SERVICE)
    adm.service(SERVICE).import_generation_from_archive(str(archive))
    adm.service(SERVICE).switch_to_newest()
    row = bundles.rows["v1"][5]
    answer = client(node).lookup_record("by-id", {"customer_id": row["customer_id"]})
    assert answer["data"]["email"] == row["email"]
