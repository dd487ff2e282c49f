"""The one place the SDK speaks HTTP: auth header, TLS trust, retries, and both APIs' error shapes."""

from __future__ import annotations

import json
import random
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from perdure.sdk.errors import ApiError, ServerUnavailable, error_for
from perdure.sdk.lean import TRANSPORT_ERRORS, LeanHTTP

#: Methods whose repetition cannot do anything twice; only these are retried.
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
#: Answers that mean "not now" rather than "no": a proxy or server restarting, or overloaded.
RETRY_STATUSES = frozenset({502, 503, 504})


class Transport:
    """An ``httpx.Client`` with Perdure's conventions. ``retries`` is how many times an idempotent request
    is repeated after a transport error or a 502/503/504, with jittered exponential backoff."""

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

    def _pause(self, seconds: float) -> None:
        if self.stop is None:
            time.sleep(seconds)
        elif self.stop.wait(seconds):
            raise ServerUnavailable(self.url, "stopped while waiting to retry")

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
        """Run ``call`` (which raises ``ServerUnavailable`` when it may be tried again) under the policy."""
        attempts = self.attempts(method, retry)
        delay = self.backoff
        for attempt in range(attempts):
            try:
                return call()
            except ServerUnavailable:
                if attempt == attempts - 1:
                    raise
            self._pause(random.uniform(delay / 2, delay))
            delay = min(self.max_backoff, delay * 2)
        raise AssertionError("unreachable")

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
            status, reason, data = self._lean.request(
                method, path, params=params, body=body, content_type=content_type, timeout=timeout
            )
        except TRANSPORT_ERRORS as exc:
            raise ServerUnavailable(self.url, str(exc) or type(exc).__name__) from None
        text = data.decode(errors="replace")
        if status >= 400:
            raise _error(status, reason, text, self.url)
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
    """Raise for an error status: ``ServerUnavailable`` for 502-504, ``ApiError`` for the rest."""
    if response.status_code >= 400:
        raise _error(response.status_code, response.reason_phrase, response.text, url)


def _error(status: int, reason: str, text: str, url: str) -> Exception:
    """``ServerUnavailable`` for 502-504 (try again), else the ``ApiError`` for the status and body."""
    if status in RETRY_STATUSES:
        return ServerUnavailable(url, f"{status} {reason}".strip())
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
