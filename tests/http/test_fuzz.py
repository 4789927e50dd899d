"""No client input makes the server answer 5xx: arbitrary JSON values,
JSON shaped like each body with arbitrary values inside, arbitrary bytes and
arbitrary ids in paths, thrown at every write endpoint. Every 4xx carries
the error body of API.md."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

edge_numbers = st.sampled_from([2**63, 2**64, -(2**63) - 1, 10**30, 1e308, -0.0, 5e-324])
scalars = (st.none() | st.booleans() | st.integers() | edge_numbers | st.floats(allow_nan=False, allow_infinity=False)
           | st.text(max_size=20) | st.sampled_from(["inapp", "push", "email", "sms", "viewed", "clicked",
                                                     "delivered", "t", "u-1", "2026-11-27T10:00:00.000Z"]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=5), max_leaves=25)


def shaped(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with the endpoint's own keys (each maybe present) holding anything."""
    return st.fixed_dictionaries({}, optional={k: v | json_values for k, v in fields.items()})


step = shaped(channel=st.sampled_from(["inapp", "push", "email", "sms"]),
              stopCondition=st.sampled_from(["delivered", "viewed", "clicked"]),
              waitMinutes=st.sampled_from([5, 10, 15, 30]), content=st.dictionaries(st.text(max_size=5), json_values))
event = shaped(messageId=st.text(max_size=25), sendId=st.text(max_size=20), channel=st.text(max_size=6),
               type=st.sampled_from(["viewed", "clicked", "delivered", "failed"]), at=st.text(max_size=30))
ids = st.text(st.characters(codec="ascii", exclude_characters=" /\t\n\r"), min_size=1, max_size=10)
objects = st.dictionaries(st.text(max_size=8), json_values, max_size=5)
BODIES: dict[str, st.SearchStrategy[Any]] = {
    "PUT /v1/templates/t": shaped(name=st.text(), channels=st.lists(step, max_size=5),
                                  config=shaped(sequenceEnabled=st.booleans()))
    | st.fixed_dictionaries({"channels": st.lists(st.fixed_dictionaries(
        {"channel": st.sampled_from(["inapp", "push", "email", "sms"])}, optional={"content": objects}),
        min_size=1, max_size=2, unique_by=lambda d: d["channel"])}),
    "PUT /v1/recipients/u-1": shaped(email=st.text(), phone=st.text(), pushTokens=st.lists(st.text()),
                                     preferences=st.dictionaries(st.text(max_size=6), st.booleans())),
    "POST /v1/sends": shaped(template=st.just("t"), recipient=st.text(max_size=10) | shaped(id=st.text(max_size=5)),
                             data=json_values, idempotencyKey=st.text(max_size=5))
    | st.fixed_dictionaries({"template": st.just("t"), "recipient": ids | st.fixed_dictionaries({"id": ids})},
                            optional={"data": objects, "idempotencyKey": st.sampled_from(["k1", "k2"])}),
    "POST /v1/events": event | shaped(events=st.lists(event | json_values, max_size=5)),
    "POST /v1/admin/clock": shaped(advanceSeconds=st.integers(-10, 10**7) | st.floats()),
}
NO_BODY = ["POST /v1/recipients/u-1/inbox/{m}/viewed", "POST /v1/recipients/u-1/inbox/{m}/clicked",
           "DELETE /v1/sends/{m}", "DELETE /v1/templates/{m}"]
PATHS = ["/v1/templates/{x}", "/v1/templates/{x}/metrics", "/v1/recipients/{x}", "/v1/recipients/{x}/inbox",
         "/v1/sends/{x}", "/v1/recipients/{x}/inbox/{x}/viewed"]
TEMPLATE = {"channels": [{"channel": "inapp", "stopCondition": "viewed", "waitMinutes": 5, "content": {"b": "{{x}}"}},
                         {"channel": "email", "content": {}}], "config": {"sequenceEnabled": True}}


async def check(resp: Any, error_of: Any) -> None:
    assert resp.status < 500, await resp.text()
    if resp.status >= 400:
        error_of(json.loads(await resp.read()))
    elif resp.status != 204:
        json.loads(await resp.read())


@pytest.fixture
async def fuzzed(client: TestClient) -> TestClient:
    assert (await client.put("/v1/templates/t", json=TEMPLATE)).status == 201
    return client


@pytest.mark.parametrize("endpoint", list(BODIES))
@FUZZ
@given(data=st.data())
async def test_json_values_never_cause_5xx(fuzzed: TestClient, error_of: Any, endpoint: str, data: Any) -> None:
    body = data.draw(BODIES[endpoint] | json_values)
    method, path = endpoint.split(" ")
    await check(await fuzzed.request(method, path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}), error_of)


@pytest.mark.parametrize("endpoint", list(BODIES))
@FUZZ
@given(raw=st.binary(max_size=300), content_type=st.sampled_from(
    ["application/json", "application/x-ndjson", "text/plain", "application/json; charset=latin-1"]))
async def test_arbitrary_bytes_never_cause_5xx(fuzzed: TestClient, error_of: Any, endpoint: str, raw: bytes,
                                               content_type: str) -> None:
    method, path = endpoint.split(" ")
    await check(await fuzzed.request(method, path, data=raw, headers={"Content-Type": content_type}), error_of)


@FUZZ
@given(lines=st.lists(json_values.map(json.dumps) | st.text(max_size=30) | event.map(json.dumps), max_size=8))
async def test_ndjson_lines_never_cause_5xx(fuzzed: TestClient, error_of: Any, lines: list[str]) -> None:
    resp = await fuzzed.post("/v1/events", data="\n".join(lines).encode("utf-8", "surrogatepass"),
                             headers={"Content-Type": "application/x-ndjson"})
    await check(resp, error_of)


@pytest.mark.parametrize("endpoint", NO_BODY + [f"GET {p}" for p in PATHS] + [f"PUT {PATHS[2]}"])
@FUZZ
@given(segment=st.text(min_size=1, max_size=40) | st.sampled_from(["snd_000000000000001.1", "snd_ffffffffffffff.99"]))
async def test_arbitrary_ids_in_paths_never_cause_5xx(fuzzed: TestClient, error_of: Any, endpoint: str,
                                                      segment: str) -> None:
    method, path = endpoint.split(" ")
    url = path.replace("{m}", quote(segment, safe="")).replace("{x}", quote(segment, safe=""))
    kwargs: dict[str, Any] = {"json": {"email": "a@b.c"}} if method == "PUT" else {}
    await check(await fuzzed.request(method, url, **kwargs), error_of)


async def test_invalid_utf8_and_control_bytes_in_paths_never_cause_5xx(fuzzed: TestClient, error_of: Any) -> None:
    for raw in ["%ED%A0%80", "%FF", "%C0%AF", "%00", "a%2Fb", "%F4%90%80%80", "%20"]:
        for url in [f"/v1/recipients/{raw}/inbox", f"/v1/recipients/{raw}", f"/v1/templates/{raw}", f"/v1/sends/{raw}",
                    f"/v1/recipients/u/inbox/{raw}/viewed", f"/v1/templates/{raw}/metrics"]:
            for method in ("GET", "PUT", "POST", "DELETE"):
                resp = await fuzzed.request(method, url, json={"email": "a@b.c"}, headers={"X-Request-Id": raw})
                await check(resp, error_of)
