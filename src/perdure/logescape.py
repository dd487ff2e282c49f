"""Log lines a request cannot forge (issue 17): every control character is written escaped.

A path such as ``/job/x%0a2026-12-07T10:00:00 127.0.0.1 admin "DELETE /job/y" 200`` reaches the
server decoded, newline included; written raw it would add a whole line to the access log. The
:class:`EscapingFormatter` escapes C0 and C1 control characters, DEL and the Unicode line and paragraph
separators of the message as ``\\xNN``/``\\uNNNN`` (escaping twice changes nothing). A traceback
keeps its line breaks but each of its lines is indented, so none can pass for a record of its own.
"""

from __future__ import annotations

import logging

_TABLE: dict[int, str] = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)]}
_TABLE.update({0x2028: "\\u2028", 0x2029: "\\u2029"})
#: For fields written inside double quotes (the access log's request): quotes escaped too.
_QUOTED = {**_TABLE, ord('"'): '\\"'}
_TRACEBACK = {c: e for c, e in _TABLE.items() if c != ord("\n")}


def escape(text: str) -> str:
    """``text`` with no raw control character."""
    return text.translate(_TABLE)


def escape_quoted(text: str) -> str:
    """``text`` for a double-quoted log field: :func:`escape`, and ``"`` as ``\\"``."""
    return text.translate(_QUOTED)


class EscapingFormatter(logging.Formatter):
    """A :class:`logging.Formatter` whose messages (and tracebacks) carry no raw control character."""

    def format(self, record: logging.LogRecord) -> str:
        # Another handler may have cached the traceback unescaped in ``exc_text``: escape that copy
        # for this line only, and leave the record as it was.
        cached = record.exc_text
        if cached:
            record.exc_text = _indent(cached)
        try:
            return super().format(record)
        finally:
            record.exc_text = cached

    def formatMessage(self, record: logging.LogRecord) -> str:
        message = record.message
        record.message = escape(message)
        try:
            return super().formatMessage(record)
        finally:
            record.message = message

    def formatException(self, ei: logging._SysExcInfoType) -> str:
        return _indent(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indent(super().formatStack(stack_info))


def _indent(text: str) -> str:
    return "    " + text.translate(_TRACEBACK).replace("\n", "\n    ")


__all__ = ["EscapingFormatter", "escape", "escape_quoted"]
