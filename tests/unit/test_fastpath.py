"""The worker fast path takes exactly the checkout, report and checkpoint-deletion requests, and leaves
the rest to the app."""

from __future__ import annotations

from typing import Any

import pytest

from perdure.api import fastpath, work


def scope(method: str, path: str, query: bytes = b"") -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "query_string": query, "headers": []}


@pytest.mark.parametrize(
    ("method", "path", "query"),
    [
        ("GET", "/work", b"client=c1"),
        ("GET", "/work", b"available=10&client=c1&wait=5"),
        ("PUT", "/work/abc_0_1", b"status=done&client=c1"),
        ("PUT", "/work/base64:YWJj", b"status=done&client=c1&next"),
        ("DELETE", "/work/abc_0_1/ckpt", b"client=c1"),
    ],
)
def test_worker_calls_take_the_fast_path(method: str, path: str, query: bytes) -> None:
    assert fastpath._handler(scope(method, path, query)) is not None


@pytest.mark.parametrize(
    ("method", "path", "query"),
    [
        ("GET", "/work", b""),  # the listing, for admins
        ("GET", "/work", b"state=queued"),
        ("GET", "/work/abc_0_1", b""),
        ("GET", "/work/abc_0_1", b"status=done&client=c1"),  # the document's GET form: the route takes it
        ("PUT", "/work/", b"status=done"),
        ("PUT", "/work/abc_0_1/ckpt/manifest", b"client=c1"),
        ("DELETE", "/work/abc_0_1/ckpt/manifest", b"client=c1"),
        ("DELETE", "/work//ckpt", b"client=c1"),
        ("GET", "/work/abc_0_1/ckpt", b"client=c1"),
        ("POST", "/work", b"client=c1"),
        ("GET", "/job", b"client=c1"),
    ],
)
def test_everything_else_goes_to_the_app(method: str, path: str, query: bytes) -> None:
    assert fastpath._handler(scope(method, path, query)) is None


def test_the_fast_path_calls_the_routes_own_handlers() -> None:
    assert fastpath._handler(scope("GET", "/work", b"client=c1")) is work.checkout_or_list
