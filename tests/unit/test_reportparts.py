"""The in-memory parser of small report bodies agrees with Starlette's, and leaves it what it does not
recognise (issue 22)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartParser

from perdure.api import reportparts


def body(files: Any = None, data: Any = None) -> tuple[bytes, str]:
    """A multipart body as httpx (the SDK's transport) builds it; fields alone need a file beside them
    to be sent as multipart, so such a body gets an empty ``unread`` part."""
    request = httpx.Request("PUT", "http://server/work/x", files=files or {"unread": ("u", b"")}, data=data)
    return request.read(), request.headers["content-type"]


def starlette_parts(raw: bytes, content_type: str) -> dict[str, bytes | str]:
    async def stream() -> Any:
        yield raw

    async def parse() -> dict[str, bytes | str]:
        form = await MultiPartParser(Headers({"content-type": content_type}), stream()).parse()
        parts: dict[str, bytes | str] = {}
        for name, value in form.multi_items():
            parts[name] = await value.read() if isinstance(value, UploadFile) else value
        await form.close()
        return parts

    return asyncio.run(parse())


def fast_parts(raw: bytes, content_type: str) -> dict[str, bytes | str] | None:
    boundary = reportparts.boundary_of(content_type)
    assert boundary is not None
    return reportparts.parse(raw, boundary, max_files=8, max_fields=16)


@pytest.mark.parametrize(
    ("files", "data"),
    [
        (
            {"perf": ("perf.json", b'{"runtime": 1}', "text/plain"), "stdout": ("stdout", b"", "text/plain")},
            None,
        ),
        ({"stderr": ("stderr.txt", "héllo\x00\r\n--not-a-boundary\r\n".encode(), "text/plain")}, None),
        ({"stdout": ("a", b"\xff\xfe binary", "application/octet-stream")}, {"notes": "ünïcode note"}),
        (None, {"worknotes": "", "perf": "{}"}),
    ],
)
def test_a_plain_body_parses_as_starlette_parses_it(files: Any, data: Any) -> None:
    raw, content_type = body(files, data)
    assert fast_parts(raw, content_type) == starlette_parts(raw, content_type)


def test_the_last_part_of_a_name_wins_as_in_starlettes_form() -> None:
    raw, content_type = body([("stdout", ("1", b"first")), ("stdout", ("2", b"second"))])
    assert fast_parts(raw, content_type) == {"stdout": b"second"}


def unusual(raw: bytes, old: bytes, new: bytes) -> bytes:
    assert old in raw
    return raw.replace(old, new, 1)


@pytest.mark.parametrize(
    "change",
    [
        lambda raw: unusual(raw, b"Content-Type: text/plain", b"Content-Transfer-Encoding: base64"),
        lambda raw: unusual(raw, b'name="stdout"', b"name*=UTF-8''std%6Fut"),
        lambda raw: unusual(raw, b'name="stdout"', b'name="std\\"out"'),
        lambda raw: raw[:-20],  # cut short: no closing delimiter
        lambda raw: raw + b"trailing",
        lambda raw: unusual(raw, b"\r\n\r\n", b"\r\n"),  # no end of the part's headers
    ],
)
def test_a_body_that_is_not_plain_is_left_to_starlette(change: Any) -> None:
    raw, content_type = body({"stdout": ("stdout.txt", b"out", "text/plain")})
    assert fast_parts(change(raw), content_type) is None


def test_too_many_parts_or_a_field_that_is_not_utf8_is_left_to_starlette() -> None:
    raw, content_type = body([(f"f{n}", ("x", b"x")) for n in range(9)])
    assert fast_parts(raw, content_type) is None
    raw, content_type = body(data={"notes": "x"})
    assert fast_parts(unusual(raw, b"\r\n\r\nx\r\n", b"\r\n\r\n\xff\r\n"), content_type) is None


@pytest.mark.parametrize(
    ("content_type", "boundary"),
    [
        ("multipart/form-data; boundary=abc123", b"abc123"),
        ('multipart/form-data; boundary="a b"', b"a b"),
        ("multipart/form-data", None),
        ("multipart/form-data; charset=latin-1; boundary=abc", None),
        ("application/json", None),
    ],
)
def test_the_boundary_is_read_only_from_a_plain_multipart_content_type(
    content_type: str, boundary: bytes | None
) -> None:
    assert reportparts.boundary_of(content_type) == boundary
