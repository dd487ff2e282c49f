"""The one place the SDK speaks HTTP: auth header, TLS trust, retries, and both APIs' error shapes."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from perdure.retry import Policy, retry_after_seconds, retry_call
from perdure.sdk.errors import ApiError, ServerUnavailable, error_for
from perdure.sdk.lean import TRANSPORT_ERRORS, LeanHTTP

#: Methods whose repetition cannot do anything twice; only these are retried.
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
#: Answers that mean "not now" rather than "no": a proxy or server restarting, or overloaded.
RETRY_STATUSES = frozenset({502, 503, 504})
#: "Too many requests": not now either, when the server says how long to wait (Retry-After).
TOO_MANY = 429


class Transport:
    """An ``httpx.Client`` with Perdure's conventions. ``retries`` is how many times an idempotent request
    is repeated after a transient failure, under the one policy of ``perdure.retry``."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        ca_file: str | None = None,
        scheme: str = "bearer",
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        stop: threading.Event | None = None,
        http: httpx.Client | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.retries = max(0, retries)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.stop = stop
        headers = {"Authorization": f"{scheme} {token}"} if token else {}
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_file) if ca_file else True
        self.http = http or httpx.Client(base_url=self.url, headers=headers, verify=verify, timeout=timeout)
        #: The worker's hot calls go through plain http.client (``lean.py``), unless a client of the
        #: caller's own was given (or later swapped in), or a proxy applies.
        self._lean = (
            LeanHTTP(self.url, headers, verify if isinstance(verify, ssl.SSLContext) else None)
            if http is None and LeanHTTP.usable(self.url)
            else None
        )
        self._lean_for = self.http

    def close(self) -> None:
        self.http.close()
        if self._lean is not None:
            self._lean.close()

    def attempts(self, method: str, retry: bool | None) -> int:
        allowed = method.upper() in IDEMPOTENT if retry is None else retry
        return 1 + self.retries if allowed else 1

    def send(self, method: str, path: str, *, retry: bool | None = None, **kwargs: Any) -> httpx.Response:
        """One request (repeated only if idempotent, or ``retry=True``); 4xx/5xx raise ``ApiError``."""
        response: httpx.Response = self.call_retrying(
            method, retry, lambda: self._once(method, path, **kwargs)
        )
        return response

    def call_retrying(self, method: str, retry: bool | None, call: Callable[[], Any]) -> Any:
        """Run ``call`` (which raises ``ServerUnavailable`` when it may be tried again) under the policy:
        ``attempts`` tries at most, no more once ``stop`` is set."""
        policy = Policy(
            attempts=self.attempts(method, retry), first_wait_s=self.backoff, max_wait_s=self.max_backoff
        )
        try:
            return retry_call(call, policy, what=f"{method} {self.url}", stop=self.stop)
        except ServerUnavailable:
            if self.stop is not None and self.stop.is_set() and (policy.attempts or 1) > 1:
                raise ServerUnavailable(self.url, "stopped while waiting to retry") from None
            raise

    def _once(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServerUnavailable(self.url, str(exc) or type(exc).__name__) from None
        check(response, self.url)
        return response

    @contextmanager
    def stream(self, method: str, url: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """A streamed response (not retried: the caller may have consumed part of it)."""
        http = self.http if url.startswith("/") else httpx.Client(timeout=60.0, follow_redirects=True)
        try:
            with http.stream(method, url, **kwargs) as response:
                if response.status_code >= 400:
                    response.read()
                    check(response, self.url if http is self.http else url)
                yield response
        except httpx.TransportError as exc:
            raise ServerUnavailable(self.url if http is self.http else url, str(exc)) from None
        finally:
            if http is not self.http:
                http.close()

    def retrying_stream(self, url: str, consume: Callable[[httpx.Response], Any], **kwargs: Any) -> Any:
        """GET ``url`` and hand the streamed response to ``consume``, starting over on a retryable failure."""

        def once() -> Any:
            with self.stream("GET", url, **kwargs) as response:
                try:
                    return consume(response)
                except httpx.TransportError as exc:  # cut off midway
                    raise ServerUnavailable(self.url, str(exc)) from None

        return self.call_retrying("GET", None, once)

    # ---- the two APIs' bodies --------------------------------------------------------------------

    def awe(self, method: str, path: str, **kwargs: Any) -> Any:
        """A workflow endpoint: the ``data`` of AWE's envelope."""
        return _body(self.send(method, path, **kwargs)).get("data")

    def awe_page(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """A listing: the whole envelope, for ``data``, ``total_count``, ``limit`` and ``offset``."""
        return _body(self.send(method, path, **kwargs))

    @property
    def lean_ready(self) -> bool:
        """Whether ``lean`` goes through ``LeanHTTP`` (not through the httpx client)."""
        return self._lean is not None and self.http is self._lean_for

    def lean(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str],
        body: bytes | None = None,
        content_type: str | None = None,
        timeout: float,
    ) -> dict[str, Any]:
        """One try at an AWE call whose body is in memory, the whole envelope; through ``LeanHTTP``
        when it can be used, else as ``awe_page`` (not retried: the caller's loop decides)."""
        if self._lean is None or not self.lean_ready:
            headers = {"Content-Type": content_type} if content_type is not None else None
            return self.awe_page(
                method, path, params=params, content=body, headers=headers, timeout=timeout, retry=False
            )
        try:
            status, reason, data, retry_after = self._lean.request(
                method, path, params=params, body=body, content_type=content_type, timeout=timeout
            )
        except TRANSPORT_ERRORS as exc:
            raise ServerUnavailable(self.url, str(exc) or type(exc).__name__) from None
        text = data.decode(errors="replace")
        if status >= 400:
            raise _error(status, reason, text, self.url, retry_after)
        try:
            body_json = json.loads(text)
        except ValueError:
            raise ApiError(status, "the server's answer is not JSON", text) from None
        if not isinstance(body_json, dict):
            raise ApiError(status, "the server's answer is not an AWE envelope", body_json)
        return body_json

    def mgmt(self, method: str, path: str, **kwargs: Any) -> Any:
        """A management endpoint: its JSON body as is."""
        return self.send(method, path, **kwargs).json()


def check(response: httpx.Response, url: str) -> None:
    """Raise for an error status: ``ServerUnavailable`` (transient) for 502-504 and for a 429 that says
    when to come back, ``ApiError`` for the rest."""
    if response.status_code >= 400:
        raise _error(
            response.status_code,
            response.reason_phrase,
            response.text,
            url,
            response.headers.get("Retry-After"),
        )


def _error(status: int, reason: str, text: str, url: str, retry_after_header: str | None = None) -> Exception:
    """``ServerUnavailable`` for 502-504 and for a 429 with a Retry-After (try again), else the
    ``ApiError`` for the status and body."""
    retry_after = retry_after_seconds(retry_after_header)
    if status in RETRY_STATUSES or (status == TOO_MANY and retry_after is not None):
        return ServerUnavailable(url, f"{status} {reason}".strip(), retry_after)
    try:
        payload = json.loads(text)
    except ValueError:
        payload = None
    return error_for(status, payload, text)


def _body(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        raise ApiError(response.status_code, "the server's answer is not JSON", response.text) from None
    if not isinstance(body, dict):
        raise ApiError(response.status_code, "the server's answer is not an AWE envelope", body)
    return body


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
