"""An SDK client whose server is a script of answers (``httpx.MockTransport``): no network, and waits
between retries of a millisecond."""

from __future__ import annotations

import httpx

from perdure.sdk import Client
from perdure.sdk.transport import Transport

URL = "http://perdure.test"


def scripted_client(
    answers: list[httpx.Response | Exception], token: str | None = None
) -> tuple[Client, list[httpx.Request]]:
    """A client whose server answers from ``answers`` in order (an exception is raised as the request's
    failure), and the list of requests it was sent."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    client = Client(URL, token=token)
    headers = {"Authorization": f"bearer {token}"} if token else None
    http = httpx.Client(base_url=URL, transport=httpx.MockTransport(handler), headers=headers)
    client.transport = Transport(URL, http=http, backoff=0.001)
    client.worker.transport = client.transport
    return client, seen
