"""What a client may send the gateway, class by class: weeks, counts, query
strings, JSON bodies and their size, Host headers. Each class is searched
(hypothesis) as well as pinned by the examples that once got through.

- The parsers and the body limit on their own (the gateway's params and bodies).
- A real gateway (uvicorn) whose backends are down: every wrong request must be
  refused there, naming its field (the privacy API, the SDK's router: naming it
  in the message), before any backend is asked. A request that reached a
  backend would be answered 503, so a 400 proves the gateway decided.
- The body limit on the wire: a raw socket shows the 413 comes before the body.

The gateway keeps nothing between requests: one serves the whole module, on the
module's event loop, where the tests that ask it run (ON_THE_GATEWAYS_LOOP).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from printernizer_stats.common.contract import CURRENT_SCHEMA_VERSION
from printernizer_stats.common.weeks import MAX_YEAR, MIN_YEAR, parse_week
from printernizer_stats.demo.services import free_port
from printernizer_stats.gateway.bodies import MAX_BODY_BYTES, BodyLimit
from printernizer_stats.gateway.params import MAX_WEEKS, WEEK_PATTERN
from printernizer_stats.gateway.stats_api import DIMENSIONS, AnalyticsClient
from printernizer_stats.gateway.usage_api import local_agent
from printernizer_stats.sdk.fastapi import MAX_LIMIT
from starlette.types import Message, Receive, Scope, Send

from .conftest import running_gateway

TOKEN = "t" * 40
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
USAGE = "/api/v1/usage-stats"
JSON = {"Content-Type": "application/json"}
SEARCH = settings(
    max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)
# For a search whose every example is tried on every endpoint (and method).
BROAD = settings(SEARCH, max_examples=20)


def real_week(year: int, week: int) -> bool:
    if not MIN_YEAR <= year <= MAX_YEAR:
        return False
    try:
        dt.date.fromisocalendar(year, week, 1)
    except ValueError:
        return False
    return True


# --- weeks --------------------------------------------------------------------------------


# The examples that once reached the analytics server, or were taken for another week.
@example(0, 0)  # IsoWeek(0, 0) reads as "not given": the default week was answered
@example(2026, 0)
@example(2026, 54)
@example(2025, 53)  # 2025 has 52 ISO weeks
@example(2026, 53)  # 2026 has 53
@example(1, 1)
@example(9999, 52)
@example(1899, 52)
@example(1900, 1)
@example(9000, 52)
@example(9001, 1)
@given(year=st.integers(0, 9999), week=st.integers(0, 99))
@SEARCH
def test_a_week_is_accepted_exactly_when_it_is_a_real_iso_week_of_the_known_years(
    year: int, week: int
) -> None:
    text = f"{year:04d}-W{week:02d}"
    if real_week(year, week):
        assert str(parse_week(text)) == text
    else:
        with pytest.raises(ValueError, match="is not an ISO week"):
            parse_week(text)
    # What OpenAPI documents agrees with Week's years; only week 53 is left to parse_week.
    documented = re.fullmatch(WEEK_PATTERN.strip("^$"), text) is not None
    assert documented == (MIN_YEAR <= year <= MAX_YEAR and 1 <= week <= 53)


@example(
    "\u0662\u0660\u0662\u0666-W01"
)  # Arabic-Indic digits: int() reads them, so it was taken for 2026-W01
@example("2026-W01\n")
@example("2026-w01")
@example(" 2026-W01")
@example("2026-W1")
@example("+2026-W01")
@example("")
@given(st.text(max_size=12))
@SEARCH
def test_text_not_written_like_2026_W46_is_not_a_week(text: str) -> None:
    if re.fullmatch(r"[0-9]{4}-W[0-9]{2}", text):
        return  # the test above
    with pytest.raises(ValueError, match="is not a week like 2026-W46"):
        parse_week(text)


# --- JSON values, for the bodies below ----------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


# --- the body limit, on its own ----------------------------------------------------------------


async def through_the_limit(
    chunks: list[bytes], content_length: int | None
) -> tuple[bytes | None, list[Message], int]:
    """Send `chunks` through BodyLimit: (the body the app read, or None when it
    was never called; what was sent back; how many chunks were read)."""
    read, received, sent = 0, None, []
    messages = [
        {"type": "http.request", "body": chunk, "more_body": index < len(chunks) - 1}
        for index, chunk in enumerate(chunks)
    ]

    async def receive() -> Message:
        nonlocal read
        read += 1
        return messages[read - 1]

    async def send(message: Message) -> None:
        sent.append(message)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal received
        parts = []
        while True:
            message = await receive()
            parts.append(message["body"])
            if not message["more_body"]:
                break
        received = b"".join(parts)

    headers = [] if content_length is None else [(b"content-length", str(content_length).encode())]
    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers}
    await BodyLimit(app)(scope, receive, send)
    return received, sent, read


@given(sizes=st.lists(st.integers(0, 2 * MAX_BODY_BYTES), min_size=1, max_size=6), declared=st.booleans())
@example(sizes=[MAX_BODY_BYTES], declared=False)
@example(sizes=[MAX_BODY_BYTES + 1], declared=False)
@example(sizes=[MAX_BODY_BYTES, 1], declared=False)
@example(sizes=[10 * MAX_BODY_BYTES], declared=True)
@SEARCH
def test_a_body_is_refused_exactly_when_it_passes_the_limit_and_never_read_beyond(
    sizes: list[int], declared: bool
) -> None:
    chunks = [bytes([65 + i]) * size for i, size in enumerate(sizes)]
    total = sum(sizes)
    received, sent, read = asyncio.run(through_the_limit(chunks, total if declared else None))
    if total <= MAX_BODY_BYTES:
        assert received == b"".join(chunks)  # the app reads the same bytes, in any chunking
        return
    assert received is None  # the app never saw it
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["field"] == "body"
    # Read no further than the chunk that passed the limit; with a declared length, not at all.
    passed = next(i for i in range(len(sizes)) if sum(sizes[: i + 1]) > MAX_BODY_BYTES)
    assert read == (0 if declared else passed + 1)


# --- a real gateway, with its backends down ------------------------------------------------------


ON_THE_GATEWAYS_LOOP = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway() -> AsyncIterator[str]:
    """Both APIs, in front of an analytics server and an agent that are not
    running: whatever reaches them is 503."""
    analytics = AnalyticsClient(f"localhost:{free_port()}", None, TOKEN)
    http, task, url = await running_gateway(analytics, local_agent("/nonexistent/agent.sock"))
    try:
        yield url
    finally:
        http.should_exit = True
        await asyncio.wait_for(task, 30)


def refused(answer: httpx.Response, status: int = 400) -> dict[str, Any]:
    """The error body of an answer that must be `status`, in the error shape."""
    assert answer.status_code == status, (answer.request.url, answer.status_code, answer.text)
    body = answer.json()
    assert isinstance(body["error"], str)
    assert isinstance(body["code"], str)
    assert isinstance(body.get("field", ""), str)
    return body  # type: ignore[no-any-return]


def names(body: dict[str, Any], path: str, name: str) -> bool:
    """Whether an error body names the wrong parameter: the statistics API in
    `field`, the privacy API (the SDK's router, whose errors are Printernizer's
    HTTPExceptions) at the start of its message."""
    if path.startswith(USAGE):
        return body["error"].startswith(f"{name} ")  # type: ignore[no-any-return]
    return body["field"] == name  # type: ignore[no-any-return]


def reached_the_backend(answer: httpx.Response) -> bool:
    return answer.status_code == 503 and answer.json()["code"] == "UNAVAILABLE"


@pytest.fixture
def client(gateway: str) -> Iterator[httpx.Client]:
    """A synchronous client for the searches, which run in a worker thread
    while the gateway serves on the test's event loop."""
    with httpx.Client(base_url=gateway, timeout=10) as client:
        yield client


def endpoints(client: httpx.Client, under: str = "/api/") -> list[tuple[str, str, set[str]]]:
    """(method, path, query parameter names) of every API operation under `under`, from the schema."""
    schema = client.get("/openapi.json").json()
    return [
        (
            method,
            path.replace("{dimension}", "country"),
            {p["name"] for p in op.get("parameters", []) if p["in"] == "query"},
        )
        for path, operations in schema["paths"].items()
        if path.startswith(under)
        for method, op in operations.items()
    ]


def call(client: httpx.Client, method: str, path: str, params: Any = None) -> httpx.Response:
    headers = ADMIN if path.startswith("/api/v1/stats") else {}
    body = b"{}" if method in ("post", "delete") else None
    return client.request(method, path, params=params, headers={**headers, **JSON}, content=body)


parameter_names = st.text(st.characters(exclude_categories=["Cs"]), max_size=10)


# The statistics API refuses what it does not know. The privacy API is the SDK's
# router, which reads Printernizer's requests as Printernizer did (and takes ?lang=).
STATS = "/api/v1/stats"


@ON_THE_GATEWAYS_LOOP
async def test_unknown_query_parameters_are_refused_by_name_on_every_endpoint(client: httpx.Client) -> None:
    def search() -> None:
        operations = endpoints(client, STATS)
        assert len(operations) == 13

        @given(name=parameter_names)
        @example(name="")
        @example(name="Weeks")
        @example(name="weeks[]")
        @BROAD
        def unknown(name: str) -> None:
            for method, path, declared in operations:
                if name in declared:
                    continue
                body = refused(call(client, method, path, [(name, "1")]))
                assert body["field"] == (name or "query"), (path, body)

        unknown()

    await asyncio.to_thread(search)


@ON_THE_GATEWAYS_LOOP
async def test_a_parameter_given_twice_is_refused_by_name(client: httpx.Client) -> None:
    def search() -> None:
        for method, path, declared in endpoints(client, STATS):
            for name in declared:
                value = {
                    "weeks": "4",
                    "limit": "4",
                    "and": "platform",
                    "group_by": "component",
                    "by": "deployment-mode",
                }.get(name, "2026-W01")
                body = refused(call(client, method, path, [(name, value), (name, value)]))
                assert body["field"] == name

    await asyncio.to_thread(search)


COUNTS = [
    ("/api/v1/stats/overview", "weeks", MAX_WEEKS),
    (f"{USAGE}/details", "weeks", MAX_WEEKS),
    (f"{USAGE}/ledger", "limit", MAX_LIMIT),
]


@pytest.mark.parametrize(("path", "name", "most"), COUNTS)
@ON_THE_GATEWAYS_LOOP
async def test_a_count_is_decimal_digits_within_its_bounds(
    client: httpx.Client, path: str, name: str, most: int
) -> None:
    def search() -> None:
        @given(text=st.text(st.characters(exclude_categories=["Cs"]), max_size=8))
        @example(text="+5")  # pydantic alone read each of these as 5, or 50
        @example(text=" 5")
        @example(text="5.0")
        @example(text="5_0")
        @example(text="\u0665")  # ARABIC-INDIC DIGIT FIVE
        @example(text="1e1")
        @example(text="")
        @SEARCH
        def not_decimal(text: str) -> None:
            if re.fullmatch(r"-?[0-9]+", text):
                return
            assert names(refused(call(client, "get", path, {name: text})), path, name)

        @given(number=st.integers(-(10**30), 10**30))
        @example(number=0)
        @example(number=1)
        @example(number=most)
        @example(number=most + 1)
        @example(number=-1)
        @example(number=10**4000)  # a huge integer: refused, not a crash
        @SEARCH
        def bounded(number: int) -> None:
            answer = call(client, "get", path, {name: str(number)})
            if 1 <= number <= most:
                assert reached_the_backend(answer), answer.text
            else:
                assert names(refused(answer), path, name)

        not_decimal()
        bounded()

    await asyncio.to_thread(search)


WEEK_PARAMETERS = [
    ("/api/v1/stats/overview", "until"),
    ("/api/v1/stats/distribution/country", "week"),
    ("/api/v1/stats/features", "week"),
    (f"{USAGE}/preview", "week"),
]


@pytest.mark.parametrize(("path", "name"), WEEK_PARAMETERS)
@ON_THE_GATEWAYS_LOOP
async def test_a_week_that_is_not_real_never_reaches_a_backend(
    client: httpx.Client, path: str, name: str
) -> None:
    def search() -> None:
        @given(year=st.integers(0, 9999), week=st.integers(0, 99))
        @example(year=0, week=0)
        @example(year=2025, week=53)
        @example(year=1899, week=52)
        @example(year=9999, week=52)
        @settings(max_examples=40, deadline=None, derandomize=True, database=None)
        def week_parameter(year: int, week: int) -> None:
            answer = call(client, "get", path, {name: f"{year:04d}-W{week:02d}"})
            if real_week(year, week):
                assert reached_the_backend(answer), answer.text
            else:
                body = refused(answer)
                assert names(body, path, name)
                assert body["code"] == "INVALID_ARGUMENT"

        week_parameter()

    await asyncio.to_thread(search)


@ON_THE_GATEWAYS_LOOP
async def test_a_combination_of_a_dimension_with_itself_is_refused(gateway: str) -> None:
    async with httpx.AsyncClient(base_url=gateway, headers=ADMIN) as client:
        for dimension in DIMENSIONS:
            path = f"/api/v1/stats/distribution/{dimension}"
            assert refused(await client.get(path, params={"and": dimension}))["field"] == "and"
            other = "country" if dimension != "country" else "platform"
            assert reached_the_backend(await client.get(path, params={"and": other}))


# The privacy API's changes: (method, path, a body each takes).
CHANGES = [("POST", f"{USAGE}/opt-in"), ("POST", f"{USAGE}/opt-out"), ("DELETE", USAGE)]
VALID_BODY = {f"{USAGE}/opt-in": b'{"schema_version": 1}', f"{USAGE}/opt-out": b"{}", USAGE: b"{}"}


@ON_THE_GATEWAYS_LOOP
async def test_schema_version_is_an_integer_the_disclosure_had(client: httpx.Client) -> None:
    def search() -> None:
        @given(value=json_values)
        @example(value="1")  # each of these was taken for 1
        @example(value=True)
        @example(value=1.0)
        @example(value=0)
        @example(value=CURRENT_SCHEMA_VERSION + 1)
        @example(value=10**30)
        @SEARCH
        def schema_version(value: Any) -> None:
            raw = json.dumps({"schema_version": value}).encode()
            answer = client.post(f"{USAGE}/opt-in", content=raw, headers=JSON)
            if type(value) is int and 1 <= value <= CURRENT_SCHEMA_VERSION:
                assert reached_the_backend(answer), answer.text
            else:
                assert names(refused(answer), USAGE, "schema_version")

        schema_version()

    await asyncio.to_thread(search)


NOT_ONE_OBJECT = [b"[]", b"null", b"1", b"{", b"\xff\xfe{}", b"[" * 2000 + b"]" * 2000]
# What a cross-site HTML form can send without asking.
FORMS = ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]


@ON_THE_GATEWAYS_LOOP
async def test_a_change_another_site_could_send_is_refused(gateway: str) -> None:
    """A change sent as a form, or marked cross-site by the browser, is refused
    before the agent is asked; a JSON body (or none: Printernizer's own page
    sends none) reaches it. An opt-in's body is one JSON object."""
    async with httpx.AsyncClient(base_url=gateway) as client:
        for method, path in CHANGES:
            for content_type in FORMS:
                answer = await client.request(
                    method, path, content=VALID_BODY[path], headers={"Content-Type": content_type}
                )
                refused(answer, 415)
            cross_site = {**JSON, "Sec-Fetch-Site": "cross-site"}
            refused(await client.request(method, path, content=VALID_BODY[path], headers=cross_site), 403)
            utf8 = {"Content-Type": "application/json; charset=UTF-8", "Sec-Fetch-Site": "same-origin"}
            assert reached_the_backend(
                await client.request(method, path, content=VALID_BODY[path], headers=utf8)
            )
            assert reached_the_backend(await client.request(method, path))
        for raw in NOT_ONE_OBJECT:
            refused(await client.post(f"{USAGE}/opt-in", content=raw, headers=JSON))


LOOPBACK = ["localhost", "127.0.0.1", "[::1]", "LOCALHOST", "localhost:8470", "127.0.0.1:1", "[::1]:8470"]
NOT_LOOPBACK = [
    "evil.example",
    "evil.example:8470",
    "localhost.",
    "localhost.evil.example",
    "127.0.0.1.nip.io",
    "127.0.0.2",
    "[::1",  # malformed: once taken for [::1]
    "[::ffff:127.0.0.1]",
    "localhost:8470:1",
    "user@localhost",
    "",
]


@pytest.mark.slow
@ON_THE_GATEWAYS_LOOP
async def test_the_privacy_api_answers_only_loopback_host_names_whatever_is_asked(
    client: httpx.Client,
) -> None:
    """For every path under the API (known or not) and the page, every method,
    any host name that is not a loopback one, whatever else is wrong with the
    request: 403 before anything else is looked at."""

    def search() -> None:
        paths = [path for _, path, _ in endpoints(client) if path.startswith(USAGE)]
        paths += [USAGE, f"{USAGE}/", f"{USAGE}/nope", "/privacy", "/privacy/"]

        def elsewhere(host: str) -> None:
            for path in paths:
                for method in ("GET", "POST", "PUT", "DELETE"):
                    # A malformed body and parameter too: the host is refused first.
                    answer = client.request(
                        method, path, params={"weeks": "x"}, content=b"{", headers={**JSON, "Host": host}
                    )
                    assert refused(answer, 403)["code"] == "PERMISSION_DENIED", (method, path, host)

        @given(host=st.from_regex(r"[a-z0-9.-]{1,20}(:[0-9]{1,5})?", fullmatch=True))
        @BROAD
        def any_host_name(host: str) -> None:
            if host.rsplit(":", 1)[0] not in {"localhost", "127.0.0.1"}:
                elsewhere(host)

        for host in NOT_LOOPBACK:
            elsewhere(host)
        any_host_name()
        for host in LOOPBACK:
            assert reached_the_backend(client.get(f"{USAGE}/local", headers={"Host": host})), host
            assert client.get("/privacy", headers={"Host": host}).status_code == 307, host

    await asyncio.to_thread(search)


@ON_THE_GATEWAYS_LOOP
async def test_every_error_the_gateway_answers_has_the_error_shape(gateway: str) -> None:
    async with httpx.AsyncClient(base_url=gateway) as client:
        answers = {
            "unknown path": (await client.get("/api/v1/stats/nope", headers=ADMIN), 404),
            "unknown usage path": (await client.get(f"{USAGE}/nope"), 404),
            "method": (await client.put(f"{USAGE}/local"), 405),
            "method on stats": (await client.post("/api/v1/stats/overview", headers=ADMIN), 405),
            "no token": (await client.get("/api/v1/stats/overview?weeks=x"), 401),
            "missing asset": (await client.get("/static/missing.js"), 404),
        }
    for what, (answer, status) in answers.items():
        body = refused(answer, status)
        assert "detail" not in body, what
    assert answers["method"][0].headers["allow"] == "GET"


# --- the body limit on the wire ----------------------------------------------------------------------


async def raw_exchange(url: str, head: bytes, body: bytes) -> tuple[int, dict[str, Any]]:
    """Send a request's head and the start of its body on a raw socket, never
    finishing it, and read the answer that comes anyway."""
    host, port = httpx.URL(url).host, httpx.URL(url).port
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(head + body)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
        headers = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = int(re.search(rb"content-length: (\d+)", headers.lower()).group(1))  # type: ignore[union-attr]
        answer = await asyncio.wait_for(reader.readexactly(length), 10)
    finally:
        writer.close()
    return int(status_line.split()[1]), json.loads(answer)


@ON_THE_GATEWAYS_LOOP
async def test_a_declared_length_over_the_limit_is_refused_before_any_of_the_body(gateway: str) -> None:
    head = (
        f"POST {USAGE}/opt-in HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"Content-Length: {100 * 1024 * 1024}\r\n\r\n"
    ).encode()
    status, body = await raw_exchange(gateway, head, b"")  # not one byte of the 100 MB is sent
    assert (status, body["field"], body["code"]) == (413, "body", "INVALID_ARGUMENT")


@ON_THE_GATEWAYS_LOOP
async def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_limit(gateway: str) -> None:
    head = (
        f"POST {USAGE}/opt-in HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    chunk = b" " * (MAX_BODY_BYTES + 1)
    status, body = await raw_exchange(gateway, head, b"%x\r\n%s\r\n" % (len(chunk), chunk))  # and no end
    assert (status, body["field"]) == (413, "body")


@pytest.mark.parametrize("chunked", [False, True])
@ON_THE_GATEWAYS_LOOP
async def test_a_body_at_the_limit_is_read_and_one_byte_more_is_413(gateway: str, chunked: bool) -> None:
    at_limit = b"{}" + b" " * (MAX_BODY_BYTES - 2)

    def content(raw: bytes) -> Any:
        if not chunked:
            return raw

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(raw), 1000):
                yield raw[start : start + 1000]

        return chunks()

    async with httpx.AsyncClient(base_url=gateway) as client:
        read = await client.request("DELETE", USAGE, content=content(at_limit), headers=JSON)
        over = await client.request("DELETE", USAGE, content=content(at_limit + b" "), headers=JSON)
        # A client that sends all of a large body before reading still gets the answer.
        large = await client.request("DELETE", USAGE, content=content(b" " * 10_000_000), headers=JSON)
    assert reached_the_backend(read)
    assert refused(over, 413)["field"] == "body"
    assert refused(large, 413)["field"] == "body"
