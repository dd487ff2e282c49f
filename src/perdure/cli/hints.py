"""What to do next, for the errors a person meets first: each CLI error line names the next step."""

from __future__ import annotations

from perdure.sdk.errors import ApiError, AuthError, PerdureError, ServerUnavailable

_TLS_WORDS = ("ssl", "certificate", "tls", "wrong version number", "record layer")


def hint(exc: PerdureError) -> str:
    """The error as one line, with the next step when there is an obvious one."""
    text = str(exc)
    if isinstance(exc, ServerUnavailable):
        reason = exc.reason.lower()
        if any(word in reason for word in _TLS_WORDS):
            if "certificate" in reason or "verify" in reason:
                return f"{text}; the server's certificate is not trusted: pass --ca-file (or PERDURE_CA_FILE)"
            scheme = "http://" if exc.url.startswith("https://") else "https://"
            return f"{text}; TLS mismatch: does the server speak {scheme}? check the scheme of --server"
        return f"{text}; is the server running there? check --server or PERDURE_SERVER"
    if isinstance(exc, AuthError) and exc.status == 401:
        return f"{text}; log in with: perdure login (or pass --token / PERDURE_TOKEN)"
    if isinstance(exc, ApiError) and not isinstance(exc.payload, dict):
        return f"{text}; the server did not answer like a Perdure server: check --server or PERDURE_SERVER"
    return text
