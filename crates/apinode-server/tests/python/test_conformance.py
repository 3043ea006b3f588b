"""Conformance of apinode with Dataiku's API node protocol, driven by the official client
`dataiku-api-client` 15.2.0 (`dataikuapi`), unchanged, plus raw `requests` for what the client
cannot express (dispatch on lookups, the upload route, status codes, headers).

The sequence follows /work/shared/reference/dataiku-protocol.md §5 (lookup endpoints). Tests do
not depend on each other's order: each group of tests uses its own service id (and the lifecycle
and restart tests their own node).
"""

from __future__ import annotations

import io
import json
import re
import zipfile

import dataikuapi
import pytest
import requests
from dataikuapi.utils import DataikuException

from conftest import SERVICE_ID, SERVICE_KEY, UNIQUE_CITY, Bundles, Node

ERROR_PREFIX = "com.dataiku.dip.apinode."
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
TIMEOUT = 30

# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def admin(node: Node, url: str | None = None, key: str | None = None) -> dataikuapi.APINodeAdminClient:
    return dataikuapi.APINodeAdminClient(url or node.url, key or node.admin_key)


def user(node: Node, service: str = SERVICE_ID, api_key: str | None = SERVICE_KEY, **kwargs):
    return dataikuapi.APINodeClient(node.url, service, api_key=api_key, **kwargs)


def deploy(node: Node, service: str, *archives, activate: bool = True):
    """Creates `service` (unless it exists), imports the archives in order, and switches to
    the newest. Returns the admin handle of the service."""
    adm = admin(node)
    if service not in {s["serviceId"] for s in adm.list_services()}:
        adm.create_service(service)
    handle = adm.service(service)
    for archive in archives:
        handle.import_generation_from_archive(str(archive))
    if activate:
        handle.switch_to_newest()
    return handle


def raw_lookup(node: Node, service: str, endpoint: str, body, key: str | None = SERVICE_KEY,
               route: str = "lookup") -> requests.Response:
    """POSTs `body` (a dict sent as JSON without Content-Type, like the client, or raw
    bytes/str) to the user API."""
    data = json.dumps(body) if isinstance(body, (dict, list)) else body
    return requests.post(
        f"{node.url}/public/api/v1/{service}/{endpoint}/{route}",
        data=data,
        auth=(key, "") if key is not None else None,
        timeout=TIMEOUT,
    )


def raw_admin(node: Node, method: str, path: str, key: str | None = None, **kwargs) -> requests.Response:
    return requests.request(
        method,
        f"{node.url}/admin/api/{path}",
        auth=(key or node.admin_key, ""),
        timeout=TIMEOUT,
        **kwargs,
    )


def assert_client_error(excinfo: pytest.ExceptionInfo, error_type: str) -> str:
    """The client's message is `<errorType>: <detailedMessage>`; checks the errorType."""
    message = str(excinfo.value)
    assert message.startswith(f"{ERROR_PREFIX}{error_type}: "), (
        f"expected a DataikuException carrying errorType {ERROR_PREFIX}{error_type}, got: {message!r}"
    )
    assert len(message) > len(f"{ERROR_PREFIX}{error_type}: "), "the error has no message"
    return message


def assert_error_response(r: requests.Response, status: int, error_type: str | None = None) -> dict:
    """Checks the protocol's error shape: status, JSON {errorType, message, detailedMessage}."""
    assert r.status_code == status, f"expected HTTP {status}, got {r.status_code}: {r.text[:500]}"
    try:
        body = r.json()
    except ValueError:
        pytest.fail(f"error body is not JSON (HTTP {r.status_code}): {r.text[:500]!r}")
    assert isinstance(body, dict), body
    for field in ("errorType", "message", "detailedMessage"):
        assert isinstance(body.get(field), str) and body[field], f"`{field}` missing in {body}"
    assert body["errorType"].startswith(ERROR_PREFIX), body
    if error_type is not None:
        assert body["errorType"] == ERROR_PREFIX + error_type, body
    return body


def expected_data(row: dict) -> dict:
    """A dataset row as the lookup answers it with every column: the CSV's values, typed."""
    return dict(row)


def generation_of(response: dict) -> str:
    return response["apiContext"]["serviceGeneration"]


# ---------------------------------------------------------------------------------------------
# Shared services on the module's node
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def customers(node: Node, bundles: Bundles) -> str:
    """The api-keys service `customers` at v1, active, on the shared node."""
    deploy(node, SERVICE_ID, bundles.get(SERVICE_ID, "v1"))
    return SERVICE_ID


# ---------------------------------------------------------------------------------------------
# 1. Create, import, list, query before activation, activate
# ---------------------------------------------------------------------------------------------


def test_create_import_list_and_activate(start_node, bundles: Bundles):
    node = start_node()
    adm = admin(node)
    assert adm.list_services() == []

    adm.create_service(SERVICE_ID)
    services = adm.list_services()
    assert [s["serviceId"] for s in services] == [SERVICE_ID]
    assert isinstance(services[0]["enabled"], bool)

    svc = adm.service(SERVICE_ID)
    assert svc.list_generations() == []
    svc.import_generation_from_archive(str(bundles.get(SERVICE_ID, "v1")))
    generations = svc.list_generations()
    assert [g["generation"] for g in generations] == ["v1"]
    assert isinstance(generations[0]["importedOn"], int) and generations[0]["importedOn"] > 0
    assert isinstance(generations[0]["preloaded"], bool)

    # Imported is not active: queries fail until a generation is activated.
    client = user(node)
    with pytest.raises(DataikuException) as excinfo:
        client.lookup_record("by-id", {"customer_id": bundles.row("v1", 0)["customer_id"]})
    assert_client_error(excinfo, "ServiceUnavailable")
    r = raw_lookup(node, SERVICE_ID, "by-id", {"data": {"customer_id": 10_000}})
    assert_error_response(r, 503, "ServiceUnavailable")

    answer = svc.switch_to_newest()
    assert isinstance(answer, dict)
    assert answer.get("generation") == "v1"

    row = bundles.row("v1", 0)
    assert client.lookup_record("by-id", {"customer_id": row["customer_id"]}) == {
        "data": expected_data(row),
        "ignored": False,
    }
    full = raw_admin(node, "GET", f"services/{SERVICE_ID}/generations").json()
    assert full["enabled"] is True
    assert full["mapping"]["entries"] == [{"generation": "v1", "proba": 1.0}]


# ---------------------------------------------------------------------------------------------
# 2. Lookups through APINodeClient
# ---------------------------------------------------------------------------------------------


def test_lookup_record_returns_typed_data(node, customers, bundles: Bundles):
    client = user(node)
    for index in (1, 3, 4):  # 3: empty score cell and is_active false; 1, 4: float scores
        row = bundles.row("v1", index)
        result = client.lookup_record("by-id", {"customer_id": row["customer_id"]})
        assert result == {"data": expected_data(row), "ignored": False}
        data = result["data"]
        assert type(data["customer_id"]) is int
        assert type(data["account_number"]) is int
        assert type(data["is_active"]) is bool
        assert DATE_RE.match(data["signup_date"]), data["signup_date"]
        if row["score"] is None:
            assert data["score"] is None
        else:
            assert type(data["score"]) is float
    assert bundles.row("v1", 3)["score"] is None
    assert bundles.row("v1", 3)["is_active"] is False


def test_lookup_record_passes_unicode_and_context(node, customers, bundles: Bundles):
    client = user(node)
    row = next(r for r in bundles.rows["v1"] if r["city"] == "São Paulo")
    result = client.lookup_record("by-id", {"customer_id": row["customer_id"]}, context={"caller": "ci"})
    assert result["data"]["city"] == "São Paulo"
    assert result["data"]["email"] == row["email"]


def test_lookup_records_one_result_per_item_in_order(node, customers, bundles: Bundles):
    client = user(node)
    rows = [bundles.row("v1", i) for i in (7, 2, 500)]
    items = [
        {"data": {"customer_id": rows[0]["customer_id"]}},
        {"data": {"customer_id": 1}},  # no such customer: ignored (the endpoint's default)
        {"data": {"customer_id": rows[1]["customer_id"]}, "context": {"n": 2}},
        {"data": {"customer_id": rows[2]["customer_id"]}},
    ]
    response = client.lookup_records("by-id", items)
    results = response["results"]
    assert len(results) == len(items)
    assert results[0] == {"data": expected_data(rows[0]), "ignored": False}
    assert results[1] == {"ignored": True, "ignoreReason": "NO_LOOKUP_MATCH"}
    assert results[2] == {"data": expected_data(rows[1]), "ignored": False}
    assert results[3] == {"data": expected_data(rows[2]), "ignored": False}
    assert response["apiContext"] == {
        "serviceId": SERVICE_ID,
        "endpointId": "by-id",
        "serviceGeneration": "v1",
    }
    assert isinstance(response["timing"], dict)
    assert client.lookup_records("by-id", [])["results"] == []


def test_ignore_reasons(node, customers, bundles: Bundles):
    client = user(node)
    row = bundles.row("v1", 10)
    multi = client.lookup_records("by-country", [{"data": {"country": "FR"}}])["results"]
    assert multi == [{"ignored": True, "ignoreReason": "MULTIPLE_LOOKUP_MATCHES"}]

    lenient = client.lookup_records(
        "by-id-lenient",
        [{"data": {}}, {"data": {"customer_id": row["customer_id"]}}, {"data": {"customer_id": 2}}],
    )["results"]
    assert lenient == [
        {"ignored": True, "ignoreReason": "MISSING_LOOKUP_KEY"},
        {"data": {"email": row["email"]}, "ignored": False},
        {"ignored": True, "ignoreReason": "NO_LOOKUP_MATCH"},
    ]


def test_composite_key(node, customers, bundles: Bundles):
    client = user(node)
    fr1 = next(r for r in bundles.rows["v1"] if r["country"] == "FR" and r["account_number"] == 42)
    de1 = next(r for r in bundles.rows["v1"] if r["country"] == "DE" and r["account_number"] == 42)
    assert fr1["customer_id"] != de1["customer_id"]
    assert client.lookup_record("account", {"country": "FR", "account": 42}) == {
        "data": {"customer_id": fr1["customer_id"], "email": fr1["email"]},
        "ignored": False,
    }
    assert client.lookup_record("account", {"country": "DE", "account": 42})["data"] == {
        "customer_id": de1["customer_id"],
        "email": de1["email"],
    }
    # on_no_match = "null": the record is kept, its columns null.
    assert client.lookup_record("account", {"country": "FR", "account": 999_999}) == {
        "data": {"customer_id": None, "email": None},
        "ignored": False,
    }
    # One key of two missing: on_missing_key = "fail".
    with pytest.raises(DataikuException) as excinfo:
        client.lookup_record("account", {"country": "FR"})
    assert "account" in assert_client_error(excinfo, "InvalidLookupKey")


def test_renamed_input_key_and_output_columns(node, customers, bundles: Bundles):
    client = user(node)
    for index in (0, 13):  # 13: empty score
        row = bundles.row("v1", index)
        result = client.lookup_record("by-email", {"mail": row["email"]})
        assert result == {
            "data": {
                "customer_id": row["customer_id"],
                "town": row["city"],
                "customerScore": row["score"],
                "version_tag": "v1",
            },
            "ignored": False,
        }
    # The column's own name is not the input name.
    with pytest.raises(DataikuException) as excinfo:
        client.lookup_record("by-email", {"email": bundles.row("v1", 0)["email"]})
    assert "mail" in assert_client_error(excinfo, "InvalidLookupKey")


def test_missing_key_fails(node, customers):
    client = user(node)
    with pytest.raises(DataikuException) as excinfo:
        client.lookup_record("by-id", {"id": 10_000})
    assert "customer_id" in assert_client_error(excinfo, "InvalidLookupKey")
    r = raw_lookup(node, SERVICE_ID, "by-id", {"data": {"id": 10_000}})
    assert_error_response(r, 400, "InvalidLookupKey")


def test_no_match_configured_to_fail(node, customers):
    client = user(node)
    with pytest.raises(DataikuException) as excinfo:
        client.lookup_record("by-email", {"mail": "nobody@example.com"})
    assert_client_error(excinfo, "NoLookupMatch")
    r = raw_lookup(node, SERVICE_ID, "by-email", {"data": {"mail": "nobody@example.com"}})
    assert_error_response(r, 404, "NoLookupMatch")
    # In a multi lookup, one failing item fails the call.
    with pytest.raises(DataikuException) as excinfo:
        client.lookup_records("by-email", [{"data": {"mail": "user0001@example.com"}},
                                           {"data": {"mail": "nobody@example.com"}}])
    assert_client_error(excinfo, "NoLookupMatch")


def test_multiple_matches(node, customers, bundles: Bundles):
    client = user(node)
    with pytest.raises(DataikuException) as excinfo:
        client.lookup_record("by-city-strict", {"city": "Lyon"})
    assert_client_error(excinfo, "MultipleLookupMatches")
    r = raw_lookup(node, SERVICE_ID, "by-city-strict", {"data": {"city": "Lyon"}})
    assert_error_response(r, 409, "MultipleLookupMatches")
    # A city with one customer matches even when several matches would fail.
    assert client.lookup_record("by-city-strict", {"city": UNIQUE_CITY["v1"]}) == {
        "data": {"customer_id": bundles.row("v1", 0)["customer_id"]},
        "ignored": False,
    }
    first_in_lyon = next(r for r in bundles.rows["v1"] if r["city"] == "Lyon")
    assert client.lookup_record("by-city-first", {"city": "Lyon"}) == {
        "data": {"customer_id": first_in_lyon["customer_id"], "city": "Lyon"},
        "ignored": False,
    }


# ---------------------------------------------------------------------------------------------
# 3. Authentication
# ---------------------------------------------------------------------------------------------


def test_wrong_or_missing_service_key_is_unauthorized(node, customers):
    query = {"customer_id": 10_000}
    with pytest.raises(DataikuException) as excinfo:
        user(node, api_key="not-the-key").lookup_record("by-id", query)
    assert_client_error(excinfo, "Unauthorized")
    with pytest.raises(DataikuException) as excinfo:
        user(node, api_key=None).lookup_record("by-id", query)
    assert_client_error(excinfo, "Unauthorized")
    with pytest.raises(DataikuException) as excinfo:
        user(node, api_key=None, bearer_token="not-a-jwt").lookup_record("by-id", query)
    assert_client_error(excinfo, "Unauthorized")
    # The admin key is not a service key.
    with pytest.raises(DataikuException) as excinfo:
        user(node, api_key=node.admin_key).lookup_record("by-id", query)
    assert_client_error(excinfo, "Unauthorized")
    assert_error_response(raw_lookup(node, SERVICE_ID, "by-id", {"data": query}, key="nope"), 401, "Unauthorized")
    assert_error_response(raw_lookup(node, SERVICE_ID, "by-id", {"data": query}, key=None), 401, "Unauthorized")


def test_public_service_needs_no_credentials(node, bundles: Bundles):
    service = "open-customers"
    deploy(node, service, bundles.get(service, "v1", public=True))
    client = dataikuapi.APINodeClient(node.url, service)
    row = bundles.row("v1", 3)
    # Column types inferred from the CSV (no schema) match the explicit ones.
    assert client.lookup_record("by-id", {"customer_id": row["customer_id"]}) == {
        "data": expected_data(row),
        "ignored": False,
    }
    response = client.lookup_records("by-email", [{"data": {"mail": row["email"]}}])
    assert response["results"][0]["data"]["customer_id"] == row["customer_id"]
    assert response["apiContext"]["serviceId"] == service


# ---------------------------------------------------------------------------------------------
# 4. Generations mapping and dispatch
# ---------------------------------------------------------------------------------------------


def test_hash_based_mapping_and_dispatch(node, bundles: Bundles):
    service = "ab-customers"
    svc = deploy(node, service, bundles.get(service, "v1"))
    svc.import_generation_from_archive(str(bundles.get(service, "v2")))
    assert [g["generation"] for g in svc.list_generations()] == ["v1", "v2"]
    mapping = {
        "entries": [{"generation": "v1", "proba": 0.5}, {"generation": "v2", "proba": 0.5}],
        "hashBased": True,
    }
    svc.set_generations_mapping(mapping)
    listed = raw_admin(node, "GET", f"services/{service}/generations").json()
    assert listed["mapping"] == mapping
    assert listed["enabled"] is True

    row = bundles.row("v1", 0)
    session = requests.Session()
    session.auth = (SERVICE_KEY, "")
    url = f"{node.url}/public/api/v1/{service}/by-id/lookup"

    def lookup(dispatch: dict) -> requests.Response:
        body = {"data": {"customer_id": row["customer_id"]}, "dispatch": dispatch}
        return session.post(url, data=json.dumps(body), timeout=TIMEOUT)

    seen: dict[str, str] = {}
    for k in range(24):
        key = f"user-{k}"
        generations = set()
        for _ in range(10):
            r = lookup({"dispatchKey": key})
            assert r.status_code == 200, r.text
            answer = r.json()
            generation = generation_of(answer)
            generations.add(generation)
            # The data comes from the generation the context names.
            assert answer["results"][0]["data"]["version_tag"] == generation
        assert len(generations) == 1, f"dispatch key {key!r} reached {sorted(generations)}"
        seen[key] = generations.pop()
    assert set(seen.values()) == {"v1", "v2"}, seen

    forced = lookup({"forcedGeneration": "v2"})
    assert forced.status_code == 200, forced.text
    assert generation_of(forced.json()) == "v2"
    assert forced.json()["results"][0]["data"]["city"] == UNIQUE_CITY["v2"]
    forced = lookup({"forcedGeneration": "v1"})
    assert generation_of(forced.json()) == "v1"
    assert forced.json()["results"][0]["data"]["city"] == UNIQUE_CITY["v1"]
    # forcedGeneration wins over dispatchKey.
    key_on_v1 = next(k for k, g in seen.items() if g == "v1")
    both = lookup({"forcedGeneration": "v2", "dispatchKey": key_on_v1})
    assert generation_of(both.json()) == "v2"

    assert_error_response(lookup({"forcedGeneration": "v9"}), 404, "NotFound")

    # Without a key, the mapping still only picks mapped generations.
    client = user(node, service)
    for _ in range(10):
        answer = client.lookup_records("by-id", [{"data": {"customer_id": row["customer_id"]}}])
        assert generation_of(answer) in {"v1", "v2"}


def test_invalid_mapping_is_rejected(node, bundles: Bundles):
    service = "bad-mapping"
    svc = deploy(node, service, bundles.get(service, "v1"))
    with pytest.raises(DataikuException) as excinfo:
        svc.set_generations_mapping({"entries": [{"generation": "v1", "proba": 0.3}], "hashBased": False})
    assert_client_error(excinfo, "BadRequest")
    with pytest.raises(DataikuException):
        svc.set_generations_mapping({"entries": [{"generation": "v7", "proba": 1.0}], "hashBased": False})
    # The previous mapping still serves.
    assert generation_of(user(node, service).lookup_records("by-id", [{"data": {"customer_id": 10_000}}])) == "v1"


# ---------------------------------------------------------------------------------------------
# 5. Single-generation switch, preload
# ---------------------------------------------------------------------------------------------


def test_switch_to_single_generation_and_preload(node, bundles: Bundles):
    service = "switchable"
    svc = deploy(node, service, bundles.get(service, "v1"), bundles.get(service, "v2"))
    client = user(node, service)
    query = [{"data": {"customer_id": bundles.row("v1", 0)["customer_id"]}}]
    assert generation_of(client.lookup_records("by-id", query)) == "v2"

    svc.switch_to_single_generation("v1")
    for _ in range(10):
        answer = client.lookup_records("by-id", query)
        assert generation_of(answer) == "v1"
        assert answer["results"][0]["data"]["city"] == UNIQUE_CITY["v1"]
    listed = raw_admin(node, "GET", f"services/{service}/generations").json()
    assert listed["mapping"]["entries"] == [{"generation": "v1", "proba": 1.0}]

    svc.switch_to_single_generation("v2")
    for _ in range(10):
        assert generation_of(client.lookup_records("by-id", query)) == "v2"

    with pytest.raises(DataikuException) as excinfo:
        svc.switch_to_single_generation("v9")
    assert_client_error(excinfo, "NotFound")
    assert generation_of(client.lookup_records("by-id", query)) == "v2"

    svc.preload_generation("v1")
    assert {g["generation"]: g["preloaded"] for g in svc.list_generations()}["v1"] is True
    with pytest.raises(DataikuException) as excinfo:
        svc.preload_generation("v9")
    assert_client_error(excinfo, "NotFound")


# ---------------------------------------------------------------------------------------------
# 6. Disable / enable, metrics, admin keys
# ---------------------------------------------------------------------------------------------


def test_disable_and_enable(node, bundles: Bundles):
    service = "toggle"
    svc = deploy(node, service, bundles.get(service, "v1"))
    adm = admin(node)
    client = user(node, service)
    query = {"customer_id": bundles.row("v1", 5)["customer_id"]}
    assert client.lookup_record("by-id", query)["ignored"] is False

    svc.disable()
    with pytest.raises(DataikuException) as excinfo:
        client.lookup_record("by-id", query)
    assert_client_error(excinfo, "ServiceUnavailable")
    assert_error_response(raw_lookup(node, service, "by-id", {"data": query}), 503, "ServiceUnavailable")
    assert {s["serviceId"]: s["enabled"] for s in adm.list_services()}[service] is False
    # Admin calls still work on a disabled service.
    assert [g["generation"] for g in svc.list_generations()] == ["v1"]

    svc.enable()
    assert client.lookup_record("by-id", query)["data"]["customer_id"] == query["customer_id"]
    assert {s["serviceId"]: s["enabled"] for s in adm.list_services()}[service] is True


def test_metrics(node, customers):
    user(node).lookup_record("by-id", {"customer_id": 10_000})
    metrics = admin(node).get_metrics()
    assert isinstance(metrics, dict) and metrics
    assert SERVICE_ID in json.dumps(metrics)


def test_admin_keys(node, customers):
    adm = admin(node)
    created = adm.auth().add_key(label="ci-key", description="conformance test", created_by="pytest")
    secret = created["key"]
    assert isinstance(secret, str) and len(secret) >= 16
    assert secret != node.admin_key

    second = admin(node, key=secret)
    assert SERVICE_ID in {s["serviceId"] for s in second.list_services()}

    keys = adm.auth().list_keys()
    assert isinstance(keys, list)
    mine = [k for k in keys if k.get("label") == "ci-key"]
    assert len(mine) == 1, keys
    assert "key" not in mine[0]
    assert mine[0].get("description") == "conformance test"
    assert secret not in json.dumps(keys), "list_keys leaks a secret"

    adm.auth().delete_key(secret)
    with pytest.raises(DataikuException) as excinfo:
        second.list_services()
    assert_client_error(excinfo, "Unauthorized")
    assert all(k.get("label") != "ci-key" for k in adm.auth().list_keys())

    # And by id.
    other = adm.auth().add_key(label="ci-key-2")
    third = admin(node, key=other["key"])
    assert isinstance(third.list_services(), list)
    adm.auth().delete_key_by_id(other["id"])
    with pytest.raises(DataikuException) as excinfo:
        third.list_services()
    assert_client_error(excinfo, "Unauthorized")

    # The original key still works; a wrong one never did.
    assert SERVICE_ID in {s["serviceId"] for s in adm.list_services()}
    with pytest.raises(DataikuException) as excinfo:
        admin(node, key="wrong-admin-key").list_services()
    assert_client_error(excinfo, "Unauthorized")
    assert_error_response(raw_admin(node, "GET", "services", key="wrong-admin-key"), 401, "Unauthorized")


# ---------------------------------------------------------------------------------------------
# 7. Trailing-slash base URL
# ---------------------------------------------------------------------------------------------


def test_trailing_slash_base_url(node, customers, bundles: Bundles):
    base = node.url + "/"
    adm = dataikuapi.APINodeAdminClient(base, node.admin_key)
    assert adm.base_uri == node.url + "//admin/api"
    assert SERVICE_ID in {s["serviceId"] for s in adm.list_services()}
    assert "v1" in [g["generation"] for g in adm.service(SERVICE_ID).list_generations()]
    assert isinstance(adm.get_metrics(), dict)

    client = dataikuapi.APINodeClient(base, SERVICE_ID, api_key=SERVICE_KEY)
    assert client.base_uri == f"{node.url}//public/api/v1/{SERVICE_ID}"
    row = bundles.row("v1", 9)
    assert client.lookup_record("by-id", {"customer_id": row["customer_id"]}) == {
        "data": expected_data(row),
        "ignored": False,
    }
    assert len(client.lookup_records("by-id", [{"data": {"customer_id": row["customer_id"]}}] * 3)["results"]) == 3

    # Admin mutations through `//` too.
    adm.create_service("slashed")
    adm.service("slashed").import_generation_from_archive(str(bundles.get("slashed", "v1")))
    assert adm.service("slashed").switch_to_newest().get("generation") == "v1"
    slashed = dataikuapi.APINodeClient(base, "slashed", api_key=SERVICE_KEY)
    assert slashed.lookup_record("by-id", {"customer_id": row["customer_id"]})["data"] == expected_data(row)


# ---------------------------------------------------------------------------------------------
# 8. Upload route, bad archives
# ---------------------------------------------------------------------------------------------


def upload(node: Node, service: str, body: bytes, key: str | None = None) -> requests.Response:
    return raw_admin(node, "POST", f"services/{service}/generations/actions/upload", key=key, data=body)


def test_upload_route_imports_a_generation(node, bundles: Bundles):
    service = "uploaded"
    admin(node).create_service(service)
    archive = bundles.get(service, "v1").read_bytes()
    assert_error_response(upload(node, service, archive, key="wrong-admin-key"), 401, "Unauthorized")

    r = upload(node, service, archive)
    assert r.status_code == 200, r.text
    assert r.json()["generation"] == "v1"
    assert "DSS-API-Version" in r.headers
    svc = admin(node).service(service)
    assert [g["generation"] for g in svc.list_generations()] == ["v1"]
    # Not active until switched.
    assert_error_response(raw_lookup(node, service, "by-id", {"data": {"customer_id": 10_000}}), 503)
    svc.switch_to_newest()
    row = bundles.row("v1", 0)
    assert user(node, service).lookup_record("by-id", {"customer_id": row["customer_id"]}) == {
        "data": expected_data(row),
        "ignored": False,
    }
    # Uploading into an unknown service is a 404.
    assert_error_response(upload(node, "no-such-service", archive), 404, "NotFound")


def test_upload_of_a_corrupt_archive_is_rejected(node, bundles: Bundles):
    service = "corrupt"
    admin(node).create_service(service)
    good = bundles.get(service, "v1").read_bytes()

    truncated = upload(node, service, good[: len(good) // 2])
    body = assert_error_response(truncated, 400, "InvalidBundle")
    assert re.search(r"zip|archive|bundle", body["message"], re.I), body

    not_a_zip = upload(node, service, b"this is not a zip archive at all")
    body = assert_error_response(not_a_zip, 400, "InvalidBundle")
    assert re.search(r"zip|archive|bundle", body["message"], re.I), body

    # A valid zip without a manifest.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("hello.txt", "hello")
    body = assert_error_response(upload(node, service, buffer.getvalue()), 400, "InvalidBundle")
    assert "manifest" in body["detailedMessage"].lower(), body

    # A bundle whose file was altered after the build (checksums no longer match).
    with zipfile.ZipFile(io.BytesIO(good)) as z:
        entries = {name: z.read(name) for name in z.namelist()}
    victim = next(name for name in entries if name != "manifest.json")
    entries[victim] = entries[victim] + b"tampered"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    assert_error_response(upload(node, service, buffer.getvalue()), 400, "InvalidBundle")

    assert_error_response(upload(node, service, b""), 400)
    assert admin(node).service(service).list_generations() == []


def test_import_from_nonexistent_path(node, tmp_path):
    service = "missing-archive"
    admin(node).create_service(service)
    missing = tmp_path / "does-not-exist.zip"
    with pytest.raises(DataikuException) as excinfo:
        admin(node).service(service).import_generation_from_archive(str(missing))
    assert str(missing) in str(excinfo.value)
    r = raw_admin(node, "POST", f"services/{service}/generations/actions/importFromArchive",
                  params={"filePath": str(missing)})
    assert_error_response(r, 400)
    assert admin(node).service(service).list_generations() == []


# ---------------------------------------------------------------------------------------------
# 9. Restart on the same data directory
# ---------------------------------------------------------------------------------------------


def test_restart_keeps_services_generations_and_mapping(start_node, bundles: Bundles):
    node = start_node()
    svc = deploy(node, SERVICE_ID, bundles.get(SERVICE_ID, "v1"), bundles.get(SERVICE_ID, "v2"))
    mapping = {
        "entries": [{"generation": "v1", "proba": 0.5}, {"generation": "v2", "proba": 0.5}],
        "hashBased": True,
    }
    svc.set_generations_mapping(mapping)
    admin(node).create_service("disabled-one")
    admin(node).service("disabled-one").disable()

    def dispatch_answers(n: Node) -> dict[str, str]:
        out = {}
        for k in range(12):
            r = raw_lookup(n, SERVICE_ID, "by-id",
                           {"data": {"customer_id": 10_000}, "dispatch": {"dispatchKey": f"k{k}"}})
            assert r.status_code == 200, r.text
            out[f"k{k}"] = generation_of(r.json())
        return out

    before_generations = raw_admin(node, "GET", f"services/{SERVICE_ID}/generations").json()
    before_services = admin(node).list_services()
    before_dispatch = dispatch_answers(node)

    node.restart()
    assert node.running

    row = bundles.row("v1", 42)
    client = user(node)
    result = client.lookup_record("by-id", {"customer_id": row["customer_id"]})
    assert result["ignored"] is False
    assert result["data"]["customer_id"] == row["customer_id"]

    after_generations = raw_admin(node, "GET", f"services/{SERVICE_ID}/generations").json()
    assert [g["generation"] for g in after_generations["generations"]] == ["v1", "v2"]
    assert [g["importedOn"] for g in after_generations["generations"]] == [
        g["importedOn"] for g in before_generations["generations"]
    ]
    assert after_generations["mapping"] == before_generations["mapping"] == mapping
    assert after_generations["enabled"] is True
    assert sorted(admin(node).list_services(), key=lambda s: s["serviceId"]) == sorted(
        before_services, key=lambda s: s["serviceId"]
    )
    assert dispatch_answers(node) == before_dispatch
    forced = raw_lookup(node, SERVICE_ID, "by-id",
                        {"data": {"customer_id": 10_000}, "dispatch": {"forcedGeneration": "v2"}})
    assert forced.json()["results"][0]["data"]["version_tag"] == "v2"


# ---------------------------------------------------------------------------------------------
# 10. Delete
# ---------------------------------------------------------------------------------------------


def test_delete_service(node, bundles: Bundles):
    service = "doomed"
    svc = deploy(node, service, bundles.get(service, "v1"))
    adm = admin(node)
    assert service in {s["serviceId"] for s in adm.list_services()}
    assert user(node, service).lookup_record("by-id", {"customer_id": 10_000})["ignored"] is False

    svc.delete()
    assert service not in {s["serviceId"] for s in adm.list_services()}
    with pytest.raises(DataikuException) as excinfo:
        user(node, service).lookup_record("by-id", {"customer_id": 10_000})
    assert_client_error(excinfo, "NotFound")
    assert_error_response(raw_lookup(node, service, "by-id", {"data": {"customer_id": 10_000}}), 404, "NotFound")
    with pytest.raises(DataikuException) as excinfo:
        svc.list_generations()
    assert_client_error(excinfo, "NotFound")
    with pytest.raises(DataikuException) as excinfo:
        svc.delete()
    assert_client_error(excinfo, "NotFound")

    # The id can be reused.
    deploy(node, service, bundles.get(service, "v1"))
    assert [g["generation"] for g in adm.service(service).list_generations()] == ["v1"]


def test_create_existing_service_conflicts(node, customers):
    with pytest.raises(DataikuException) as excinfo:
        admin(node).create_service(SERVICE_ID)
    assert_client_error(excinfo, "Conflict")
    r = raw_admin(node, "POST", "services", data=json.dumps({"serviceId": SERVICE_ID}))
    assert_error_response(r, 409, "Conflict")


# ---------------------------------------------------------------------------------------------
# 11. Protocol quirks (raw requests)
# ---------------------------------------------------------------------------------------------


def test_empty_body_is_an_empty_object(node, customers):
    r = raw_lookup(node, SERVICE_ID, "by-id", b"")
    body = assert_error_response(r, 400, "InvalidQuery")
    assert "data" in body["message"]
    r = raw_lookup(node, SERVICE_ID, "by-id", b"", route="lookup-multi")
    body = assert_error_response(r, 400, "InvalidQuery")
    assert "items" in body["message"]


def test_json_without_content_type_is_accepted(node, customers, bundles: Bundles):
    row = bundles.row("v1", 1)
    request = requests.Request(
        "POST",
        f"{node.url}/public/api/v1/{SERVICE_ID}/by-id/lookup",
        data=json.dumps({"data": {"customer_id": row["customer_id"]}}),
        auth=(SERVICE_KEY, ""),
    ).prepare()
    assert "Content-Type" not in request.headers
    with requests.Session() as session:
        r = session.send(request, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    assert r.json()["results"] == [{"data": expected_data(row), "ignored": False}]
    # Declared as something else, still read as JSON.
    r = requests.post(
        f"{node.url}/public/api/v1/{SERVICE_ID}/by-id/lookup",
        data=json.dumps({"data": {"customer_id": row["customer_id"]}}),
        headers={"Content-Type": "text/plain"},
        auth=(SERVICE_KEY, ""),
        timeout=TIMEOUT,
    )
    assert r.status_code == 200, r.text


def test_invalid_json_is_a_400_with_the_error_shape(node, customers):
    for bad in (b"{", b'{"data": ', b"not json", b"\xff\xfe"):
        assert_error_response(raw_lookup(node, SERVICE_ID, "by-id", bad), 400)
    # JSON, but not an object.
    assert_error_response(raw_lookup(node, SERVICE_ID, "by-id", b"[1, 2]"), 400)
    assert_error_response(raw_lookup(node, SERVICE_ID, "by-id", b'{"data": [1]}'), 400, "InvalidQuery")


def test_unknown_service_and_endpoint_are_404(node, customers):
    assert_error_response(raw_lookup(node, "no-such-service", "by-id", {"data": {"customer_id": 1}}), 404, "NotFound")
    assert_error_response(raw_lookup(node, SERVICE_ID, "no-such-endpoint", {"data": {"customer_id": 1}}), 404, "NotFound")
    with pytest.raises(DataikuException) as excinfo:
        user(node).lookup_record("no-such-endpoint", {"customer_id": 1})
    assert_client_error(excinfo, "NotFound")
    with pytest.raises(DataikuException) as excinfo:
        admin(node).service("no-such-service").list_generations()
    assert_client_error(excinfo, "NotFound")


def test_every_response_has_version_headers(node, customers):
    query = {"data": {"customer_id": 10_000}}
    responses = {
        "lookup 200": raw_lookup(node, SERVICE_ID, "by-id", query),
        "lookup-multi 200": raw_lookup(node, SERVICE_ID, "by-id", {"items": [query]}, route="lookup-multi"),
        "lookup 400": raw_lookup(node, SERVICE_ID, "by-id", b"{"),
        "lookup 401": raw_lookup(node, SERVICE_ID, "by-id", query, key="wrong"),
        "lookup 404": raw_lookup(node, "no-such-service", "by-id", query),
        "admin 200": raw_admin(node, "GET", "services"),
        "admin 401": raw_admin(node, "GET", "services", key="wrong"),
        "admin 404": raw_admin(node, "GET", "services/no-such-service/generations"),
        "isAlive": requests.get(f"{node.url}/isAlive/", timeout=TIMEOUT),
        "unknown route": requests.get(f"{node.url}/no/such/route", timeout=TIMEOUT),
    }
    expected_status = {"lookup 200": 200, "lookup-multi 200": 200, "lookup 400": 400, "lookup 401": 401,
                       "lookup 404": 404, "admin 200": 200, "admin 401": 401, "admin 404": 404,
                       "isAlive": 200, "unknown route": 404}
    for name, r in responses.items():
        assert r.status_code == expected_status[name], f"{name}: HTTP {r.status_code} {r.text[:300]}"
        for header in ("DSS-API-Version", "DSS-Version"):
            assert r.headers.get(header), f"{name}: no {header} header (headers: {dict(r.headers)})"
