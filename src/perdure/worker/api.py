"""The worker's narrow view of the server: every call it makes, over the SDK's worker protocol, with
the worker's stop conditions for the one retry policy (``perdure.retry``) on top.

The SDK is created with no retries of its own: a worker must outlast any outage, so this module's
``retrying`` decides how long (until the node stops or drains, or until a deadline), and
``ServerRefused`` means the server answered and refused, so retrying cannot help.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from perdure.protocol import Refusal
from perdure.retry import Policy, TransientError, retry_call
from perdure.sdk import errors as sdk_errors
from perdure.sdk.client import Client

T = TypeVar("T")
#: Tries of a report that the server answers with a 500. A report is idempotent for its lease, and a
#: 500 is most often the database failing for a moment (a lost connection, a busy SQLite), so dropping
#: the result at once would throw away the whole run; a 500 that persists is a bug, so it is bounded.
REPORT_TRIES_ON_500 = 5


class ServerRefused(Exception):
    """The server answered, and refused: retrying the same request cannot help. ``refusal`` says why,
    for the refusals of the worker protocol the worker acts on (``perdure.protocol``)."""

    def __init__(self, status: int, message: str, refusal: Refusal | None = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.refusal = refusal


class Stopped(Exception):
    """The worker is shutting down (or out of time) while waiting for the server."""


def _report_retrying_500(call: Callable[[], T]) -> Callable[[], T]:
    """``call``, with its first ``REPORT_TRIES_ON_500 - 1`` answers of 500 made transient."""
    tries = 0

    def attempt() -> T:
        nonlocal tries
        tries += 1
        try:
            return call()
        except sdk_errors.ApiError as exc:
            if exc.status == 500 and tries < REPORT_TRIES_ON_500:
                raise sdk_errors.ServerUnavailable("report", f"500: {exc.message}") from None
            raise

    return attempt


def _refusal(call: Callable[[], T]) -> T:
    """Run an SDK call; the server's answered error becomes this module's ``ServerRefused``."""
    try:
        return call()
    except sdk_errors.ApiError as exc:
        raise ServerRefused(exc.status, exc.message, exc.refusal) from None


class ServerAPI:
    def __init__(self, base_url: str, *, token: str = "", ca_file: str = "", stop: threading.Event) -> None:
        self.client = Client(
            base_url, token=token or None, ca_file=ca_file or None, scheme="CG_TOKEN", retries=0, stop=stop
        )
        self.protocol = self.client.worker
        self.spot = self.client.worker.spot
        self.stop = stop

    def close(self) -> None:
        self.client.close()

    # ---- retry policy -------------------------------------------------------------------------

    def retrying(
        self,
        what: str,
        call: Callable[[], T],
        *,
        max_delay: float = 30.0,
        deadline: float | None = None,
        give_up: Callable[[], bool] | None = None,
    ) -> T:
        """Retry while the server is unreachable or overloaded (``perdure.retry``): until the node stops
        or, given a ``time.monotonic()`` deadline, until then (a node being reclaimed cannot wait
        forever, and its hand-over report goes on while it stops), or until ``give_up()`` says the call
        is no longer wanted (a draining node stops trying to register or check out, so SIGTERM is
        prompt whatever the server's state). ``Stopped`` when one of these ends it."""
        if (self.stop.is_set() and deadline is None) or (give_up is not None and give_up()):
            raise Stopped(what)
        if deadline is None:
            policy, stop = Policy(max_wait_s=max_delay), self.stop
        else:
            policy, stop = Policy(within_s=deadline - time.monotonic(), max_wait_s=max_delay), None
        try:
            return retry_call(lambda: _refusal(call), policy, what=what, stop=stop, give_up=give_up)
        except TransientError as exc:
            raise Stopped(what if deadline is None else f"{what}: out of time") from exc

    # ---- the protocol -------------------------------------------------------------------------

    def register(
        self, profile: dict[str, Any], *, give_up: Callable[[], bool] | None = None
    ) -> dict[str, Any]:
        return self.retrying("register", lambda: self.protocol.register(profile), give_up=give_up)

    def heartbeat(self, client_id: str, current_work: list[str]) -> dict[str, str]:
        return _refusal(lambda: self.protocol.heartbeat(client_id, current_work))

    def checkout(self, client_id: str, wait_s: float, available: int) -> dict[str, Any] | None:
        """One workunit, or None when the server has nothing for us after waiting."""
        return _refusal(lambda: self.protocol.checkout(client_id, wait_s, available))

    def secret(self, wu_id: str, client_id: str, which: str) -> str:
        return self.retrying(which, lambda: self.protocol.secret(wu_id, client_id, which))

    def report(
        self,
        wu_id: str,
        client_id: str,
        status: str,
        computetime: int,
        files: dict[str, Path | bytes],
        *,
        deadline: float | None = None,
        then_next: tuple[float, int] | None = None,
    ) -> dict[str, Any] | None:
        """Deliver a result until the server accepts it (or refuses it for good). With ``then_next``
        (wait seconds, available bytes) the same request checks out the next workunit, returned here:
        a busy worker makes one request per workunit instead of two."""
        if then_next is None:
            self.retrying(
                f"report {status} for {wu_id}",
                _report_retrying_500(
                    lambda: self.protocol.report(wu_id, client_id, status, computetime, files, retry=False)
                ),
                max_delay=60.0,
                deadline=deadline,
            )
            return None
        wait_s, available = then_next
        workunit, _no_next = self.retrying(
            f"report {status} for {wu_id}",
            _report_retrying_500(
                lambda: self.protocol.report_and_next(
                    wu_id,
                    client_id,
                    status,
                    computetime,
                    files,
                    wait_s=wait_s,
                    available=available,
                    retry=False,
                )
            ),
            max_delay=60.0,
            deadline=deadline,
        )
        return workunit

    def upload_output(self, wu_id: str, client_id: str, filename: str, path: Path, sha256: str) -> None:
        self.retrying(
            f"upload {filename} of {wu_id}",
            lambda: self.protocol.upload_output(wu_id, client_id, filename, path, sha256),
        )

    def download(
        self,
        url: str,
        dest: Path,
        *,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> int:
        """Stream a URL (server-relative or absolute http(s)) to a file; returns its size."""
        return self.retrying(
            f"download {url}", lambda: self.client.download(url, dest, params=params, headers=headers)
        )

    def fetch_once(self, url: str, dest: Path, *, headers: dict[str, str] | None = None) -> int:
        """One try at an absolute http(s) URL of another host; the caller bounds the retries. Raises
        ``ServerRefused`` when the host refused, the SDK's error when it could not be reached."""
        return _refusal(lambda: self.client.download(url, dest, headers=headers))

    def deregister(self, client_id: str) -> None:
        """Leave: the server re-queues whatever this client held at once, instead of after the TTL."""
        _refusal(lambda: self.protocol.deregister(client_id))

    def put_node(self, node_id: str, info: dict[str, Any], files: list[str]) -> None:
        _refusal(lambda: self.protocol.put_node(node_id, info, files))

    def put_node_file(self, node_id: str, path: str, data: bytes) -> None:
        _refusal(lambda: self.protocol.put_node_file(node_id, path, data))

    # ---- spot protection ----------------------------------------------------------------------

    def checkpoint_taken(self, wu_id: str, client_id: str, record: dict[str, Any]) -> None:
        _refusal(lambda: self.spot.checkpoint_taken(wu_id, client_id, record))

    def restore_result(self, wu_id: str, client_id: str, record: dict[str, Any]) -> None:
        _refusal(lambda: self.spot.restore_result(wu_id, client_id, record))

    def collectable(self, job_ids: list[str]) -> list[str]:
        """Of these jobs, those whose checkpoints nobody needs any more."""
        return _refusal(lambda: self.spot.collectable(job_ids))


__all__ = ["ServerAPI", "ServerRefused", "Stopped"]
