"""Domain errors carry no HTTP status: the API's one table (``perdure.api.errors``) answers each with its
status, in AWE's envelope or the management API's shape, byte for byte as before the table existed."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from perdure import errors
from perdure.api.errors import DOMAIN_ANSWERS, refusal_body, response_for
from perdure.objectstore import StoreUnavailable


def request(path: str) -> Request:
    return Request(
        {
            "type": "http",
            "method": "GET",
            "path": path,
            "root_path": "",
            "scheme": "http",
            "server": ("127.0.0.1", 8001),
            "query_string": b"",
            "headers": [],
        }
    )


#: Each domain error and the exact bytes each API answers with (recorded before the statuses moved).
CASES = [
    (errors.BadRequest("bad"), 400, b'{"status":400,"data":null,"error":["bad"]}', 1003),
    (errors.Unauthorized("who"), 401, b'{"status":401,"data":null,"error":["who"]}', 2001),
    (errors.Forbidden("no"), 403, b'{"status":403,"data":null,"error":["no"]}', 2005),
    (errors.NotPrivileged("admins"), 403, b'{"status":403,"data":null,"error":["admins"]}', 2005),
    (errors.Invalid("v", {"node.ttl": "bad"}), 422, b'{"status":422,"data":null,"error":["v"]}', 1003),
    (errors.NotFound("gone"), 404, b'{"status":404,"data":null,"error":["gone"]}', 1004),
    (errors.Conflict("state"), 400, b'{"status":400,"data":null,"error":["state"]}', 1003),
    (errors.NotImplementedOp("later"), 501, b'{"status":501,"data":null,"error":["later"]}', 1005),
    (StoreUnavailable("s3 down"), 503, b'{"status":503,"data":null,"error":["s3 down"]}', 1000),
]


@pytest.mark.parametrize(("error", "status", "awe", "code"), CASES, ids=lambda v: type(v).__name__)
def test_each_domain_error_answers_as_before_in_both_shapes(
    error: errors.DomainError, status: int, awe: bytes, code: int
) -> None:
    on_awe = response_for(request("/job/j1"), error)
    assert (on_awe.status_code, bytes(on_awe.body)) == (status, awe)
    on_mgmt = response_for(request("/api/v1/config"), error)
    fields = b"" if error.fields is None else b',"fields":{"node.ttl":"bad"}'
    expected = b'{"statusCode":%d,"errorCode":%d,"message":"%s"%s}' % (
        status,
        code,
        error.message.encode(),
        fields,
    )
    assert (on_mgmt.status_code, bytes(on_mgmt.body)) == (status, expected)


def test_the_table_names_every_domain_error_and_the_errors_carry_no_status() -> None:
    declared = {
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, errors.DomainError)
    }
    assert declared == set(DOMAIN_ANSWERS)
    assert not any(hasattr(cls, "status") or hasattr(cls, "error_code") for cls in declared)


def test_a_report_answer_carries_the_same_status_as_an_error_response() -> None:
    """A refusal carried in a report's ``next_error`` (not a response of its own) uses the same table."""
    assert refusal_body(errors.NotFound("gone")) == {"status": 404, "error": ["gone"]}
    assert refusal_body(StoreUnavailable("s3 down"))["status"] == 503
