"""One access-log line per request: time, client, user, method, path, status, bytes, duration.

Written by :class:`perdure.api.front.FrontMiddleware` once a request is answered. A line per request
is a cost every request pays (issue 22), so nothing is formatted when the logger would drop the line,
the time stamp is formatted once a second, and the line goes straight to the access-log file when
that file is all the logger writes to. Otherwise (other handlers, filters) the record is handed to
the logger's handlers (``Logger.handle``: those of ``log.info``, without its search of the stack for
the caller's file and line, which no access-log format shows).
"""

from __future__ import annotations

import logging
import re
import time

from starlette.types import Scope

from perdure.logescape import EscapingFormatter, escape, escape_quoted
from perdure.logs import ACCESS_LOGGER, RotatingLog, redact_query

log = logging.getLogger(ACCESS_LOGGER)

#: A query can hold a secret only if it names one (``perdure.logs.redact_query`` then masks it).
_MAY_HOLD_SECRET = re.compile("token|secret|password|key", re.IGNORECASE)
_stamp: tuple[int, str] = (0, "")


def write(scope: Scope, status: int, sent: int, seconds: float) -> None:
    """Log the request of ``scope``, answered ``status`` with ``sent`` body bytes in ``seconds``."""
    if not log.isEnabledFor(logging.INFO):
        return
    client = scope.get("client")
    principal = scope.get("state", {}).get("principal")
    query = scope.get("query_string", b"").decode("latin-1")
    if query and _MAY_HOLD_SECRET.search(query):
        query = redact_query(query)
    path = scope["path"] + ("?" + query if query else "")
    user = _quoted(str(getattr(principal, "user", "-")))
    line = (
        f'{_now()} {client[0] if client else "-"} {user} "{_quoted(scope["method"])} {_quoted(path)}" '
        f"{status:d} {sent:d} {seconds * 1000:.1f}ms"
    )
    handler = _own_file(log)
    if handler is None or not handler.write_formatted(line if line.isprintable() else escape(line)):
        log.handle(log.makeRecord(log.name, logging.INFO, __file__, 0, line, (), None))


def _own_file(logger: logging.Logger) -> RotatingLog | None:
    """The logger's file when it is all the logger writes to, unfiltered, one message a line (what
    :class:`perdure.logs.ServerLogs` sets up): a line then goes to it without a ``LogRecord``. None
    otherwise (any other handler or filter, as in tests capturing records, gets a record)."""
    handlers = logger.handlers
    if len(handlers) != 1 or logger.propagate or logger.filters:
        return None
    handler = handlers[0]
    formatter = handler.formatter
    if (
        type(handler) is not RotatingLog
        or handler.filters
        or handler.level > logging.INFO
        or type(formatter) is not EscapingFormatter
        or formatter._fmt != "%(message)s"
    ):
        return None
    return handler


def _now() -> str:
    """The local time to the second, formatted once per second."""
    global _stamp
    second = int(time.time())
    if _stamp[0] != second:
        _stamp = (second, time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(second)))
    return _stamp[1]


def _quoted(text: str) -> str:
    """``text`` for a double-quoted field (``escape_quoted``; most fields have nothing to escape)."""
    return text if text.isprintable() and '"' not in text else escape_quoted(text)


__all__ = ["write"]
