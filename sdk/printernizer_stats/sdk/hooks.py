"""Uncaught exceptions recorded as errors: chained onto `sys.excepthook`,
`threading.excepthook` and the running asyncio loop's exception handler. Only
the exception goes on (the recorder keeps its class alone, never the message or
traceback), and the previous hooks still run, so logging and tracebacks on the
console are unchanged."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

from ._generated.enums import Component

RecordError = Callable[[BaseException, Component], None]


def install_exception_hooks(record_error: RecordError, component: Component) -> Callable[[], None]:
    """Chain `record_error(exception, component)` onto the three hooks (the
    loop's only when called inside a running loop). Returns what puts back
    the previous hooks, each only while it is still the one installed here."""
    previous = sys.excepthook
    previous_thread = threading.excepthook

    def excepthook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        record_error(value, component)
        previous(kind, value, tb)

    def thread_excepthook(arguments: threading.ExceptHookArgs) -> None:
        if arguments.exc_value is not None:
            record_error(arguments.exc_value, component)
        previous_thread(arguments)

    previous_loop: Any = None

    def loop_handler(running: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exception = context.get("exception")
        if isinstance(exception, BaseException):
            record_error(exception, component)
        if previous_loop is not None:
            previous_loop(running, context)
        else:
            running.default_exception_handler(context)

    sys.excepthook = excepthook
    threading.excepthook = thread_excepthook
    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is not None:
        previous_loop = loop.get_exception_handler()
        loop.set_exception_handler(loop_handler)

    def uninstall() -> None:
        if sys.excepthook is excepthook:
            sys.excepthook = previous
        if threading.excepthook is thread_excepthook:
            threading.excepthook = previous_thread
        if loop is not None and not loop.is_closed() and loop.get_exception_handler() is loop_handler:
            loop.set_exception_handler(previous_loop)

    return uninstall
