"""The boundary rule, held mechanically (printernizer_stats.common.boundary):

- every RPC of the contract is served by a method that hands exactly one
  domain call to the shared boundary and does nothing else with the call
  (no status chosen, no refusal raised, no context touched);
- one field-error type: no part defines its own (field, description) error;
- each limit more than one part applies is defined once, in its home, and
  its users import it from there.

Each checker is also run on a broken example here, so it can fail."""

from __future__ import annotations

import ast
import datetime as dt
import importlib
import inspect
import logging
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import grpc
import pytest
from printernizer_stats.common import contract, errors
from printernizer_stats.common.boundary import Boundary, Outcome
from printernizer_stats.common.errors import PERIOD_NOT_ENDED, Context
from printernizer_stats.common.refusals import (
    FailedPrecondition,
    FieldError,
    FieldViolation,
    PermissionDenied,
    Refusal,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from printernizer_stats.common.weeks import Week, last_complete_week

from ..conftest import ROOT

SERVICER_MODULES = (
    "printernizer_stats.agent.servicer",
    "printernizer_stats.aggregation.servicer",
    "printernizer_stats.analytics.servicer",
)
# The folders whose printernizer_stats/ holds the project's code.
DISTRIBUTIONS = (
    "stats_common",
    "sdk",
    "stats_agent",
    "stats_store",
    "aggregation_server",
    "analytics_server",
    "gateway",
    "stats_demo",
)
FIELD_ERROR_HOME = Path("stats_common/printernizer_stats/common/refusals.py")


# --- the servicers ------------------------------------------------------------------------


def _is_self_attribute(node: ast.AST, name: str | None = None) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
        and (name is None or node.attr == name)
    )


def _boundary_calls(function: ast.AST) -> list[ast.Call]:
    return [
        node
        for node in ast.walk(function)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("answer", "answer_each")
        and _is_self_attribute(node.func.value, "boundary")
    ]


def _domain_uses(node: ast.AST) -> list[ast.Attribute]:
    """Every `self.<part>.<method>` but the boundary's."""
    return [
        sub
        for sub in ast.walk(node)
        if isinstance(sub, ast.Attribute)
        and _is_self_attribute(sub.value)
        and not _is_self_attribute(sub.value, "boundary")
    ]


def method_problems(source: str) -> list[str]:
    """What breaks the rule in one servicer method's source."""
    function = ast.parse(textwrap.dedent(source)).body[0]
    assert isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef)
    problems = []
    calls = _boundary_calls(function)
    if len(calls) != 1:
        problems.append(f"{len(calls)} calls of self.boundary.answer/answer_each (one expected)")
    uses = _domain_uses(function)
    if len(uses) != 1:
        problems.append(f"{len(uses)} domain calls ({', '.join(ast.unparse(u) for u in uses)}; one expected)")
    elif calls and not any(uses[0] in list(ast.walk(arg)) for arg in calls[0].args[1:]):
        problems.append(f"{ast.unparse(uses[0])} is not called through the boundary")
    context = function.args.args[-1].arg
    handed = [call.args[0] for call in calls if call.args]
    for node in ast.walk(function):
        if isinstance(node, ast.Try | ast.Raise):
            problems.append(
                f"line {node.lineno}: {type(node).__name__.lower()} (the boundary answers failures)"
            )
        if isinstance(node, ast.Name) and node.id == context and not any(node is arg for arg in handed):
            problems.append(f"line {node.lineno}: uses {context} (only the boundary may)")
    return problems


def module_problems(source: str) -> list[str]:
    """A servicer module may not choose statuses: no gRPC, no abort helpers."""
    problems = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            problems += [f"imports {a.name}" for a in node.names if a.name.split(".")[0] == "grpc"]
        elif isinstance(node, ast.ImportFrom):
            names = {a.name for a in node.names}
            if (node.module or "").split(".")[0] == "grpc":
                problems.append(f"imports from {node.module}")
            if node.module == "printernizer_stats.common.errors" and names - {"Context"}:
                problems.append(
                    f"imports {sorted(names - {'Context'})} from printernizer_stats.common.errors"
                )
            if node.module == "printernizer_stats.common" and "errors" in names:
                problems.append("imports printernizer_stats.common.errors")
    return problems


def services() -> Iterator[tuple[ModuleType, str, list[str]]]:
    """Each service of the contract: its generated gRPC module, name, and RPC names."""
    for module in contract.CONTRACT_MODULES:
        for service in module.DESCRIPTOR.services_by_name.values():
            grpc_module = importlib.import_module(f"{module.__name__}_grpc")
            yield grpc_module, service.name, [method.name for method in service.methods]


def test_every_rpc_hands_one_domain_call_to_the_shared_boundary() -> None:
    modules = [importlib.import_module(name) for name in SERVICER_MODULES]
    served = 0
    for grpc_module, service, rpcs in services():
        base = getattr(grpc_module, f"{service}Servicer")
        implementations = [
            value
            for module in modules
            for value in vars(module).values()
            if inspect.isclass(value) and issubclass(value, base) and value is not base
        ]
        assert len(implementations) == 1, (service, implementations)
        (servicer,) = implementations
        init = ast.parse(textwrap.dedent(inspect.getsource(servicer.__init__)))
        assert any(
            isinstance(node, ast.Assign)
            and any(_is_self_attribute(t, "boundary") for t in node.targets)
            and isinstance(node.value, ast.Call)
            and ast.unparse(node.value.func) == "Boundary"
            for node in ast.walk(init)
        ), f"{servicer.__name__} makes no self.boundary = Boundary(...)"
        assert vars(inspect.getmodule(servicer))["Boundary"] is Boundary
        for rpc in rpcs:
            assert rpc in vars(servicer), f"{servicer.__name__} does not serve {rpc}"
            problems = method_problems(inspect.getsource(vars(servicer)[rpc]))
            assert not problems, (f"{servicer.__name__}.{rpc}", problems)
            served += 1
    assert served >= 25  # the agent's, the ingest and admin APIs', the analytics'
    for module in modules:
        problems = module_problems(inspect.getsource(module))
        assert not problems, (module.__name__, problems)


BROKEN_METHODS = {
    "two domain calls": """
        async def SetConsent(self, request, context):
            before = await self.agent.consent()
            return await self.boundary.answer(context, "x", lambda: self.agent.set_consent(request.state))
    """,
    "a status chosen here": """
        async def SubmitNow(self, request, context):
            delivery = await self.boundary.answer(context, "x", self.courier.submit_now)
            if not delivery.receipts:
                await errors.unavailable(context, "not taken")
            return delivery
    """,
    "no boundary": """
        async def GetStatus(self, request, context):
            return await self.agent.status()
    """,
    "a refusal raised here": """
        async def GetOverview(self, request, context):
            if not request.window.weeks:
                raise ValueError("window")
            return await self.boundary.answer(context, "x", lambda: self.analytics.overview(request))
    """,
    "a domain call outside the boundary": """
        async def PreviewReport(self, request, context):
            week = self.agent.requested_week(request.week.year, request.week.week)
            return await self.boundary.answer(context, "x", lambda: None)
    """,
}


@pytest.mark.parametrize("broken", BROKEN_METHODS)
def test_the_servicer_check_catches_each_kind_of_break(broken: str) -> None:
    assert method_problems(BROKEN_METHODS[broken])


def test_the_module_check_catches_a_servicer_choosing_statuses() -> None:
    assert module_problems("import grpc\n")
    assert module_problems("from printernizer_stats.common import errors\n")
    assert module_problems("from printernizer_stats.common.errors import Context, invalid_argument\n")
    assert not module_problems("from printernizer_stats.common.errors import Context\n")


# --- one field-error type --------------------------------------------------------------------


def source_files() -> Iterator[tuple[Path, str]]:
    for distribution in DISTRIBUTIONS:
        for path in sorted((ROOT / distribution).glob("printernizer_stats/**/*.py")):
            if "_generated" not in path.parts and "migrations" not in path.parts:
                yield path.relative_to(ROOT), path.read_text()


def field_error_classes(source: str) -> list[str]:
    """Classes that carry a wrong field: a (field, description) pair (as
    attributes, constructor parameters or record fields) or a list of
    violations; and any subclass of FieldError (it would answer the same status)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        carried: set[str] = set()
        for sub in ast.walk(node):
            if isinstance(sub, ast.Assign | ast.AnnAssign):
                for target in sub.targets if isinstance(sub, ast.Assign) else [sub.target]:
                    carried |= {e.attr for e in ast.walk(target) if _is_self_attribute(e)}
            if isinstance(sub, ast.FunctionDef) and sub.name == "__init__":
                carried |= {a.arg for a in sub.args.args + sub.args.kwonlyargs}
        carried |= {
            s.target.id for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
        }
        subclass = any(ast.unparse(base).split(".")[-1] == "FieldError" for base in node.bases)
        if {"field", "description"} <= carried or "violations" in carried or subclass:
            found.append(node.name)
    return found


def test_one_field_error_type() -> None:
    found = {
        (path, name)
        for path, source in source_files()
        for name in field_error_classes(source)
        if path != FIELD_ERROR_HOME
    }
    assert found == set()
    assert set(field_error_classes((ROOT / FIELD_ERROR_HOME).read_text())) == {"FieldViolation", "FieldError"}


@pytest.mark.parametrize(
    "defined",
    [
        # The four there were before (the agent's two, the aggregation server's, the analytics').
        """
class RequestError(ValueError):
    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description
""",
        """
class QueryError(ValueError):
    def __init__(self, path, why):
        self.field, self.description = path, why
""",
        """
@dataclass(frozen=True)
class Violation:
    field: str
    description: str
""",
        """
class InvalidRequest(Refused):
    def __init__(self, problems, server_time=None):
        self.violations = list(problems)
""",
        """
class PageSizeError(refusals.FieldError):
    pass
""",
    ],
)
def test_the_field_error_check_catches_a_type_of_its_own(defined: str) -> None:
    assert field_error_classes(defined)


# --- each shared limit once ---------------------------------------------------------------

# Each limit more than one part applies: its home, and the modules that apply it.
SHARED_LIMITS = {
    "MAX_VERSION_PART": (
        "printernizer_stats.common.limits",
        ["printernizer_stats.common.events", "printernizer_stats.aggregation.validation"],
    ),
    "MAX_PRINTERS_PER_TYPE": (
        "printernizer_stats.common.limits",
        [
            "printernizer_stats.common.events",
            "printernizer_stats.agent.report",
            "printernizer_stats.aggregation.validation",
        ],
    ),
    "HOST_CLOCK_SKEW": ("printernizer_stats.common.limits", ["printernizer_stats.common.events"]),
    "AGENT_CLOCK_SKEW": (
        "printernizer_stats.common.limits",
        ["printernizer_stats.aggregation.validation", "printernizer_stats.aggregation.ingest"],
    ),
    "WEEK_HOURS": (
        "printernizer_stats.common.weeks",
        ["printernizer_stats.agent.report", "printernizer_stats.aggregation.validation"],
    ),
    "last_complete_week": (
        "printernizer_stats.common.weeks",
        [
            "printernizer_stats.agent.agent",
            "printernizer_stats.analytics.queries",
            "printernizer_stats.analytics.email_reports",
            "printernizer_stats.analytics.server",
        ],
    ),
}
# Names that would define one of them again under another name.
_LOOKALIKE = ("SKEW", "VERSION_PART", "PRINTERS_PER_TYPE", "WEEK_HOURS", "COMPLETE_WEEK", "LAST_FINISHED")


def definitions(source: str) -> list[str]:
    """The module-level names a module defines (constants, functions, classes;
    not a constant derived from a shared limit, such as its milliseconds), and
    `<inline last complete week>` for each Week.containing(...).previous()."""
    tree = ast.parse(source)
    names = []
    for node in tree.body:
        value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
        if value is not None and any(
            isinstance(n, ast.Name) and n.id in SHARED_LIMITS for n in ast.walk(value)
        ):
            continue
        if isinstance(node, ast.Assign):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.append(node.target.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.append(node.name)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "previous"
            and isinstance(node.func.value, ast.Call)
            and ast.unparse(node.func.value.func) == "Week.containing"
        ):
            names.append("<inline last complete week>")
    return names


def _module_name(path: Path) -> str:
    parts = path.with_suffix("").parts
    return ".".join(parts[parts.index("printernizer_stats") :])


def test_each_shared_limit_is_defined_once_and_imported_from_its_home() -> None:
    homes = {home for home, _ in SHARED_LIMITS.values()}
    for path, source in source_files():
        module = _module_name(path)
        for name in definitions(source):
            shared = name in SHARED_LIMITS or any(part in name.upper() for part in _LOOKALIKE)
            if (shared or name == "<inline last complete week>") and module not in homes:
                pytest.fail(f"{path} defines {name}: a shared limit has its home in {sorted(homes)}")
    for name, (home, users) in SHARED_LIMITS.items():
        assert name in definitions(inspect.getsource(importlib.import_module(home))), (name, home)
        for user in users:
            tree = ast.parse(inspect.getsource(importlib.import_module(user)))
            imported_from = {
                node.module
                for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and name in {a.name for a in node.names}
            }
            assert imported_from == {home}, (user, name, imported_from)


@pytest.mark.parametrize(
    "source",
    [
        "CLOCK_SKEW = dt.timedelta(hours=1)\n",
        "MAX_VERSION_PART = 10_000\n",
        "def last_finished(now):\n    return Week.containing(now).previous()\n",
    ],
)
def test_the_limit_check_catches_a_second_definition(source: str) -> None:
    names = definitions(source)
    assert "<inline last complete week>" in names or any(
        name in SHARED_LIMITS or any(part in name.upper() for part in _LOOKALIKE) for name in names
    )


def test_the_last_complete_week_is_the_newest_week_whose_end_has_passed() -> None:
    now = dt.datetime(2026, 11, 23, 0, 0, tzinfo=dt.UTC)  # a Monday, 00:00: week 48 begins
    assert last_complete_week(now) == Week(2026, 47)
    assert last_complete_week(now - dt.timedelta(microseconds=1)) == Week(2026, 46)


# --- what the boundary answers, over a real gRPC server ------------------------------------


async def _answered(boundary: Boundary, failure: Exception | None) -> grpc.aio.AioRpcError | bytes:
    async def call() -> bytes:
        if failure is not None:
            raise failure
        return b"answer"

    async def handler(request: bytes, context: Context) -> bytes:
        return await boundary.answer(context, "the call", call)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("Test", {"Call": grpc.unary_unary_rpc_method_handler(handler)})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            try:
                return bytes(await channel.unary_unary("/Test/Call")(b"", timeout=10))
            except grpc.aio.AioRpcError as error:
                return error
    finally:
        await server.stop(None)


class _DatabaseAway(Exception):
    pass


async def test_the_boundary_answers_each_refusal_with_its_status_and_details() -> None:
    seen: list[Outcome] = []
    boundary = Boundary(
        logging.getLogger("test"),
        failures=lambda exc: (
            Unavailable("away", dt.timedelta(seconds=10)) if isinstance(exc, _DatabaseAway) else None
        ),
        observe=seen.append,
    )
    assert await _answered(boundary, None) == b"answer"
    two = FieldError.of(
        [FieldViolation("period", "2026-W48 has not ended yet", PERIOD_NOT_ENDED), FieldViolation("a", "b")],
        {"server_time": "2026-11-23T00:00:00+00:00"},
    )
    expected = [
        (FieldError("week", "is in the future"), grpc.StatusCode.INVALID_ARGUMENT, "week: is in the future"),
        (two, grpc.StatusCode.INVALID_ARGUMENT, "period: 2026-W48 has not ended yet"),
        (
            ResourceExhausted("slow down", dt.timedelta(seconds=3)),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "slow down",
        ),
        (Unavailable("later"), grpc.StatusCode.UNAVAILABLE, "later"),
        (_DatabaseAway("secret row"), grpc.StatusCode.UNAVAILABLE, "away"),
        (FailedPrecondition("opt in first"), grpc.StatusCode.FAILED_PRECONDITION, "opt in first"),
        (Unauthenticated("bad signature"), grpc.StatusCode.UNAUTHENTICATED, "bad signature"),
        (PermissionDenied("deleted"), grpc.StatusCode.PERMISSION_DENIED, "deleted"),
        (KeyError("secret key"), grpc.StatusCode.INTERNAL, "internal error; see the server's log"),
        (Refusal("no status of its own"), grpc.StatusCode.INTERNAL, "internal error; see the server's log"),
    ]
    answers = []
    for failure, code, message in expected:
        answer = await _answered(boundary, failure)
        assert isinstance(answer, grpc.aio.AioRpcError), failure
        assert (answer.code(), answer.details()) == (code, message), failure
        answers.append(answer)
    one, two_fields, exhausted, unavailable, database_away = answers[:5]
    assert errors.field_violations(one) == [("week", "is in the future")]
    assert errors.error_reason(one) is None
    assert errors.field_violations(two_fields) == [("period", "2026-W48 has not ended yet"), ("a", "b")]
    assert errors.error_reason(two_fields) == (PERIOD_NOT_ENDED, {"server_time": "2026-11-23T00:00:00+00:00"})
    assert errors.retry_delay(exhausted) == dt.timedelta(seconds=3)
    assert errors.retry_delay(unavailable) is None
    assert errors.retry_delay(database_away) == dt.timedelta(seconds=10)
    # Observed: the answer, eight refusals, the bug, and the refusal without a status.
    assert [(o.refusal is None, o.failed) for o in seen] == [
        (True, False),
        *[(False, False)] * 8,
        (True, True),
        (False, False),
    ]
