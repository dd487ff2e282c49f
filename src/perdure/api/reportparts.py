"""A report's multipart body, parsed in memory when it is small and plain (issue 22).

A worker's report carries a few short parts (``perf``, ``stdout``, ``stderr``, ``worknotes``). Starlette's
form parser, built for uploads of any size, spools each part into a temporary file and costs the server
more CPU than the report's whole transaction. Here a body of at most ``MAX_BYTES`` is split on its
boundary directly. Anything this parser does not recognise as plain (a quoted or encoded part name, a
body that does not end where it should, too many parts, a field that is not UTF-8) answers None, and the
caller parses the body with Starlette's parser, which decides what it is: so a malformed body is refused
exactly as before, and only the common case is faster.
"""

from __future__ import annotations

import re

#: Bodies up to this size are parsed here; larger ones (long logs) are streamed by Starlette's parser.
MAX_BYTES = 256 * 1024

_BOUNDARY = re.compile(r'boundary=(?:"([^"\\]{1,200})"|([^\s;"]{1,200}))', re.IGNORECASE)
_DISPOSITION = re.compile(
    rb'^content-disposition:[ \t]*form-data;[ \t]*name="([A-Za-z0-9_.-]{1,64})"'
    rb'(?:;[ \t]*filename="([^"\\\r\n%]{0,255})")?[ \t]*$',
    re.IGNORECASE,
)


def boundary_of(content_type: str) -> bytes | None:
    """The boundary of a ``multipart/form-data`` content type, or None."""
    lowered = content_type.lower()
    if not lowered.startswith("multipart/form-data") or "charset" in lowered:
        return None
    found = _BOUNDARY.search(content_type)
    if found is None:
        return None
    return (found.group(1) or found.group(2)).encode("latin-1")


def parse(body: bytes, boundary: bytes, *, max_files: int, max_fields: int) -> dict[str, bytes | str] | None:
    """The parts by name (a file's content as bytes, a field's as text; the last of a name wins, as
    in Starlette's form), or None when the body is not plain enough to be parsed here."""
    delimiter = b"--" + boundary
    if not body.startswith(delimiter + b"\r\n"):
        return None
    end = body.rfind(b"\r\n" + delimiter + b"--")
    if end < 0 or body[end + len(delimiter) + 4 :] not in (b"", b"\r\n"):
        return None
    chunks = body[len(delimiter) + 2 : end].split(b"\r\n" + delimiter + b"\r\n")
    if len(chunks) > max_files + max_fields:
        return None
    parts: dict[str, bytes | str] = {}
    files = fields = 0
    for chunk in chunks:
        head, separator, content = chunk.partition(b"\r\n\r\n")
        if not separator or delimiter in content:
            return None
        name: bytes | None = None
        is_file = False
        for line in head.split(b"\r\n"):
            lower = line[:20].lower()
            if lower.startswith(b"content-disposition:"):
                match = _DISPOSITION.match(line)
                if match is None or name is not None:
                    return None
                name, is_file = match.group(1), match.group(2) is not None
            elif not lower.startswith(b"content-type:"):
                return None  # another header (an encoding, a charset): Starlette's parser decides
        if name is None:
            return None
        if is_file:
            files += 1
            parts[name.decode("ascii")] = content
        else:
            fields += 1
            try:
                parts[name.decode("ascii")] = content.decode("utf-8")
            except UnicodeDecodeError:
                return None
        if files > max_files or fields > max_fields:
            return None
    return parts


__all__ = ["MAX_BYTES", "boundary_of", "parse"]
