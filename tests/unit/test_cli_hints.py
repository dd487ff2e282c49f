"""Each first-met CLI error names the next step."""

from __future__ import annotations

from perdure.cli.hints import hint
from perdure.sdk.errors import ApiError, ServerUnavailable, error_for


def test_a_401_says_to_log_in() -> None:
    message = hint(error_for(401, {"status": 401, "data": None, "error": ["invalid token"]}, ""))
    assert message == "401: invalid token; log in with: perdure login (or pass --token / PERDURE_TOKEN)"


def test_a_403_is_not_told_to_log_in() -> None:
    assert "login" not in hint(error_for(403, {"statusCode": 403, "message": "not an admin"}, ""))


def test_an_untrusted_certificate_says_to_pass_a_ca_file() -> None:
    error = ServerUnavailable("https://h:8001", "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    assert hint(error).endswith("pass --ca-file (or PERDURE_CA_FILE)")


def test_http_to_an_https_server_is_a_tls_mismatch() -> None:
    error = ServerUnavailable("http://h:8001", "Server disconnected without sending a response")
    assert "check --server or PERDURE_SERVER" in hint(error)
    error = ServerUnavailable("https://h:8001", "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    assert "TLS mismatch: does the server speak http://?" in hint(error)


def test_an_answer_in_neither_api_shape_is_not_a_perdure_server() -> None:
    assert "not answer like a Perdure server" in hint(ApiError(404, "<html>", "<html>nope</html>"))
    assert "Perdure server" not in hint(error_for(404, {"status": 404, "data": None, "error": ["x"]}, ""))
