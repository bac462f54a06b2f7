"""The ingest server against generated requests, over real TLS on SQLite and
PostgreSQL (Hypothesis, one server per engine for all its examples).

Every RPC (SubmitReports, DeleteInstallation, and the three admin calls with
and without the token) gets: random bytes as the whole body; envelopes with
random identifiers, keys and signatures; well-formed reports with wrong
values anywhere (a valid report with fields overwritten by arbitrary values,
or a report generated field by field); arbitrary bytes under a valid
signature; deletion orders with arbitrary times; and unknown fields at random
depths. Identifiers and public keys of installations that already reported
are in the mix (an attacker knows them; never their private keys).

After every example:
- the status is never INTERNAL or UNKNOWN;
- an INVALID_ARGUMENT names the field at fault (google.rpc.BadRequest), but
  for a body that is not the method's message at all, which the shared
  interceptor (printernizer_stats.common.interceptors) refuses before the servicer runs,
  with a fixed message and no details;
- everything stored for the installations that reported before is unchanged.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from google.protobuf import timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from printernizer.stats.v1 import (
    aggregated_stats_pb2,
    ingest_admin_service_pb2,
    ingest_service_pb2,
)
from printernizer_stats.common.admin import bearer_metadata
from printernizer_stats.common.errors import field_violations
from printernizer_stats.common.weeks import Week
from printernizer_stats.store import schema
from printernizer_stats.store.database import create_sync_engine
from sqlalchemy import select
from sqlalchemy.engine import Engine

from .. import databases
from .conftest import (
    ADMIN_TOKEN,
    PATHS,
    TIMEOUT,
    Installation,
    RunningServer,
    report_of,
    running_server,
    spliced_at_path,
    varint,
)

database_url = databases.database_url
ADMIN = bearer_metadata(ADMIN_TOKEN)
INGEST = "/printernizer.stats.v1.IngestService/"
ADMIN_SERVICE = "/printernizer.stats.v1.IngestAdminService/"
METHODS = [
    INGEST + "SubmitReports",
    INGEST + "DeleteInstallation",
    ADMIN_SERVICE + "GetIngestStatus",
    ADMIN_SERVICE + "DeleteInstallationAsOperator",
    ADMIN_SERVICE + "PurgeExpiredReports",
]
LAST_WEEK = Week.containing(dt.datetime.now(dt.UTC)).previous()

# Installations that reported before the examples (what must stay unchanged),
# one that was deleted, and the fuzzer's own keys (with version-4 IDs).
KNOWN = [Installation(uuid.uuid4().bytes) for _ in range(3)]
GONE = Installation(uuid.uuid4().bytes)
SIGNERS = [Installation(uuid.uuid4().bytes) for _ in range(3)]


@dataclass(frozen=True)
class Call:
    method: str
    body: bytes
    metadata: tuple[tuple[str, str], ...] = ()


# --- strategies ---------------------------------------------------------------------

installation_ids = st.one_of(
    st.binary(max_size=20),
    st.uuids(version=4).map(lambda u: u.bytes),
    st.uuids().map(lambda u: u.bytes),
    st.sampled_from([i.installation_id for i in [*KNOWN, GONE, *SIGNERS]]),
)
public_keys = st.one_of(
    st.binary(max_size=40), st.sampled_from([i.public_key for i in [*KNOWN, GONE, *SIGNERS]])
)
weeks = st.one_of(
    st.sampled_from([LAST_WEEK, LAST_WEEK.previous(), LAST_WEEK.next(), Week(1900, 1), Week(9000, 1)]),
    st.builds(lambda y, w: (y, w), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
)


def scalar_values(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    """Any value the field's wire type can carry, with its edges likely."""
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type == FieldDescriptor.TYPE_BYTES:
        return st.one_of(st.binary(max_size=24), installation_ids)
    if field.type == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        return st.one_of(
            st.sampled_from(list(field.enum_type.values_by_number)), st.integers(-(2**31), 2**31 - 1)
        )
    if field.type == FieldDescriptor.TYPE_UINT32:
        return st.one_of(st.integers(0, 200), st.integers(0, 2**32 - 1))
    if field.type == FieldDescriptor.TYPE_UINT64:
        return st.integers(0, 2**64 - 1)
    if field.type == FieldDescriptor.TYPE_INT64:
        return st.integers(-(2**63), 2**63 - 1)
    if field.type == FieldDescriptor.TYPE_INT32:
        return st.integers(-(2**31), 2**31 - 1)
    raise AssertionError(f"no strategy for {field.full_name}")  # the contract grew a type: add it


@st.composite
def messages(draw: st.DrawFn, descriptor: Descriptor, depth: int = 0) -> Message:
    """A message of `descriptor` generated field by field."""
    message = GetMessageClass(descriptor)()
    for field in descriptor.fields:
        if not draw(st.booleans()):
            continue
        if field.message_type is not None:
            if depth >= 4:
                continue
            items = (
                draw(st.lists(messages(field.message_type, depth + 1), max_size=3))
                if field.is_repeated
                else [draw(messages(field.message_type, depth + 1))]
            )
            for item in items:
                (
                    getattr(message, field.name).add() if field.is_repeated else getattr(message, field.name)
                ).CopyFrom(item)
        elif field.is_repeated:
            getattr(message, field.name).extend(draw(st.lists(scalar_values(field), max_size=3)))
        else:
            setattr(message, field.name, draw(scalar_values(field)))
    return message


def leaf_paths(
    descriptor: Descriptor, prefix: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], FieldDescriptor]]:
    """Every scalar field reachable from `descriptor` (entry 0 of each list)."""
    found = []
    for field in descriptor.fields:
        if field.message_type is not None:
            found += leaf_paths(field.message_type, (*prefix, field.name))
        elif not field.is_repeated:
            found.append(((*prefix, field.name), field))
    return found


LEAVES = leaf_paths(aggregated_stats_pb2.AggregatedStats.DESCRIPTOR)


@st.composite
def signers(draw: st.DrawFn) -> Installation:
    """The fuzzer's keys: a few reused (so duplicates and the hourly rule come
    up), or a new installation (so reports can be accepted)."""
    if draw(st.booleans()):
        return draw(st.sampled_from(SIGNERS))
    signer = Installation(draw(st.uuids(version=4)).bytes)
    signer.key = Ed25519PrivateKey.from_private_bytes(draw(st.binary(min_size=32, max_size=32)))
    signer.public_key = signer.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return signer


@st.composite
def wrong_reports(draw: st.DrawFn, signer: Installation, coherent: bool) -> Message:
    """A valid report of `signer` (or, unless `coherent`, of an installation it
    does not hold, for any week) with fields overwritten by anything their
    type can carry (a coherent one is left valid half of the time)."""
    owner = signer if coherent else draw(st.sampled_from([signer, *KNOWN, GONE]))
    week = draw(st.sampled_from([LAST_WEEK, LAST_WEEK.previous()])) if coherent else draw(weeks)
    # An earlier schema's report or the current one's (with its jobs per printer family).
    report = report_of(owner, week if isinstance(week, Week) else LAST_WEEK, current=draw(st.booleans()))
    if not isinstance(week, Week):
        report.period.year, report.period.week = week
    overwritten = (
        st.just([]) if coherent and draw(st.booleans()) else st.lists(st.sampled_from(LEAVES), max_size=4)
    )
    for path, field in draw(overwritten):
        holder: Any = report
        for name in path[:-1]:
            holder = getattr(holder, name)
            if hasattr(holder, "add"):  # a list: its first entry
                holder = holder[0] if len(holder) else holder.add()
        setattr(holder, path[-1], draw(scalar_values(field)))
    return report


def encoded_field(number: int, wire_type: int, payload: bytes) -> bytes:
    """Field `number` of any wire type, its value taken from `payload`; a
    group (wire type 3) holds one varint field and is closed."""
    values = {
        0: varint(int.from_bytes(payload[:8], "little")),
        1: payload[:8].ljust(8, b"\0"),
        2: varint(len(payload)) + payload,
        3: varint(1 << 3) + varint(len(payload)) + varint(number << 3 | 4),
        5: payload[:4].ljust(4, b"\0"),
    }
    return varint(number << 3 | wire_type) + values[wire_type]


# Fields a message may not know: any number (its own ones included, then with a
# wire type they do not have), every wire type.
unknown_field_bytes = st.builds(
    encoded_field, st.integers(1, 2**29 - 1), st.sampled_from([0, 1, 2, 3, 5]), st.binary(max_size=40)
)


@st.composite
def report_bytes(draw: st.DrawFn, signer: Installation, coherent: bool) -> bytes:
    kind = "wrong" if coherent else draw(st.sampled_from(["wrong", "generated", "random"]))
    if kind == "random":
        return draw(st.binary(max_size=600))
    message = (
        draw(wrong_reports(signer, coherent))
        if kind == "wrong"
        else draw(messages(aggregated_stats_pb2.AggregatedStats.DESCRIPTOR))
    )
    if draw(st.booleans()):
        path = draw(st.sampled_from(PATHS))
        try:
            return spliced_at_path(message, path, draw(unknown_field_bytes))
        except IndexError:  # that list is empty in this message
            pass
    return message.SerializeToString()


def signature_for(draw: st.DrawFn, signer: Installation, data: bytes, coherent: bool = False) -> bytes:
    if coherent:
        return signer.key.sign(data)
    return draw(st.one_of(st.just(signer.key.sign(data)), st.binary(max_size=70)))


@st.composite
def submissions(draw: st.DrawFn) -> Call:
    """Half of them coherent: the signer's own ID and key, its reports validly
    signed (and often valid), so that acceptance, duplicates and the hourly
    rule are reached; the rest mix anything."""
    signer, coherent = draw(signers()), draw(st.booleans())
    request = ingest_service_pb2.SubmitReportsRequest(
        installation_id=signer.installation_id
        if coherent
        else draw(st.one_of(st.just(signer.installation_id), installation_ids)),
        public_key=signer.public_key
        if coherent
        else draw(st.one_of(st.just(signer.public_key), public_keys)),
    )
    for _ in range(draw(st.integers(1 if coherent else 0, 3))):
        data = draw(report_bytes(signer, coherent))
        request.reports.add(report=data, signature=signature_for(draw, signer, data, coherent))
    return Call(INGEST + "SubmitReports", request.SerializeToString())


@st.composite
def deletions(draw: st.DrawFn) -> Call:
    signer = draw(signers())
    if draw(st.booleans()):
        order = draw(messages(ingest_service_pb2.DeletionOrder.DESCRIPTOR))
    else:
        order = ingest_service_pb2.DeletionOrder(
            installation_id=draw(st.one_of(st.just(signer.installation_id), installation_ids))
        )
        order.requested_at.CopyFrom(
            timestamp_pb2.Timestamp(
                seconds=draw(st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(0, 2**31))),
                nanos=draw(st.one_of(st.integers(-(2**31), 2**31 - 1), st.integers(0, 999_999_999))),
            )
        )
    data = order.SerializeToString()
    if draw(st.booleans()):
        data += draw(unknown_field_bytes)
    if draw(st.integers(0, 9)) == 0:
        data = draw(st.binary(max_size=100))
    request = ingest_service_pb2.DeleteInstallationRequest(
        order=data,
        signature=signature_for(draw, signer, data),
        public_key=draw(st.one_of(st.just(signer.public_key), public_keys)),
    )
    return Call(INGEST + "DeleteInstallation", request.SerializeToString())


admin_metadata = st.sampled_from([ADMIN, (), (("authorization", "Bearer " + "z" * 40),)])
# The operator may delete anything but what must stay unchanged.
operator_targets = st.one_of(
    st.binary(max_size=20), st.uuids().map(lambda u: u.bytes), st.uuids(version=4).map(lambda u: u.bytes)
).filter(lambda i: i not in {k.installation_id for k in [*KNOWN, GONE]})
admin_calls = st.one_of(
    st.builds(lambda m: Call(ADMIN_SERVICE + "GetIngestStatus", b"", m), admin_metadata),
    st.builds(lambda m: Call(ADMIN_SERVICE + "PurgeExpiredReports", b"", m), admin_metadata),
    st.builds(
        lambda target, extra, m: Call(
            ADMIN_SERVICE + "DeleteInstallationAsOperator",
            ingest_admin_service_pb2.DeleteInstallationAsOperatorRequest(
                installation_id=target
            ).SerializeToString()
            + extra,
            m,
        ),
        operator_targets,
        st.one_of(st.just(b""), unknown_field_bytes),
        admin_metadata,
    ),
)
# Any body to any method; the operator's deletion only with a body that cannot
# name a known installation (a random one might, and the operator may delete).
raw_calls = st.builds(
    lambda method, body, m: Call(method, body, m),
    st.sampled_from([m for m in METHODS if not m.endswith("AsOperator")]),
    st.binary(max_size=300),
    admin_metadata,
)
calls = st.one_of(submissions(), deletions(), admin_calls, raw_calls)


# --- the server and what must stay ---------------------------------------------------


def kept_rows(engine: Engine) -> dict[str, list[tuple[object, ...]]]:
    """Every stored row about the installations that reported before (and the
    tombstone of the one that was deleted)."""
    ids = [k.installation_id for k in KNOWN]
    reports = schema.reports
    with engine.connect() as connection:
        rows: dict[str, list[tuple[object, ...]]] = {
            "installations": list(
                connection.execute(
                    select(schema.installations).where(schema.installations.c.installation_id.in_(ids))
                )
            ),
            "reports": list(connection.execute(select(reports).where(reports.c.installation_id.in_(ids)))),
            "tombstones": list(
                connection.execute(
                    select(schema.tombstones).where(
                        schema.tombstones.c.installation_id == GONE.installation_id
                    )
                )
            ),
        }
        keys = [row.id for row in rows["reports"]]
        for table in (
            schema.report_printers,
            schema.report_features,
            schema.report_errors,
            schema.report_job_failures,
            schema.report_job_durations,
            schema.report_printer_jobs,
        ):
            rows[table.name] = list(connection.execute(select(table).where(table.c.report.in_(keys))))
        return {name: sorted((tuple(r) for r in found), key=repr) for name, found in rows.items()}


@dataclass
class Fuzzed:
    server: RunningServer
    engine: Engine  # to read what is stored
    before: dict[str, list[tuple[object, ...]]]


@pytest.fixture
async def fuzzed(database_url: str, tmp_path: Path) -> AsyncIterator[Fuzzed]:
    async with running_server(database_url, tmp_path, peer_calls_per_second=0) as server:
        for owner in [*KNOWN, GONE]:
            submission = owner.submission(report_of(owner, LAST_WEEK.previous()), report_of(owner, LAST_WEEK))
            await server.stub.SubmitReports(submission, timeout=TIMEOUT)
        await server.stub.DeleteInstallation(GONE.deletion(dt.datetime.now(dt.UTC)), timeout=TIMEOUT)
        engine = create_sync_engine(database_url)
        try:
            before = kept_rows(engine)
            assert len(before["reports"]) == 2 * len(KNOWN)
            assert len(before["tombstones"]) == 1
            yield Fuzzed(server, engine, before)
        finally:
            engine.dispose()


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(call=calls)
async def test_no_request_breaks_the_server_or_what_it_stored(fuzzed: Fuzzed, call: Call) -> None:
    raw = fuzzed.server.channel.unary_unary(
        call.method, request_serializer=lambda data: data, response_deserializer=lambda data: data
    )
    error = None
    try:
        await raw(call.body, metadata=call.metadata, timeout=TIMEOUT)
    except grpc.aio.AioRpcError as refused:
        error = refused
    code = error.code() if error is not None else grpc.StatusCode.OK
    event(f"{call.method.rsplit('/', 1)[1]}: {code.name}")
    assert code not in {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}, error
    if error is not None and code == grpc.StatusCode.INVALID_ARGUMENT:
        assert field_violations(error), error.details()
    assert kept_rows(fuzzed.engine) == fuzzed.before
