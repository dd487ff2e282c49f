"""Inputs and outputs of a workunit document the way AWE's worker reads them (issue 19).

AWE's IO is an absolute URL or a ``host`` + ``node`` pair (``lib/core/io.go``: ``Url2Shock`` refuses
anything without a scheme and host). The store keeps node ids only; the host is this server as
workers reach it: ``perdure.externalURL`` when it is set, else the base URL of the request.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from perdure.api.context import ctx


def external_base(request: Request) -> str:
    configured: str = ctx(request).config.effective.perdure.externalURL
    return (configured or str(request.base_url)).rstrip("/")


def _known(node: Any) -> bool:
    return isinstance(node, str) and node not in ("", "-")


def absolute_io(document: dict[str, Any], base: str) -> dict[str, Any]:
    """Give every input and output on this server its ``host`` and every such input its download
    URL (``<host>/node/<node>?download``, to which AWE's worker appends ``&index=…&part=…``)."""
    for key in ("inputs", "outputs"):
        ios = []
        for io in document.get(key) or []:
            io = dict(io)
            url = str(io.get("url") or "")
            if _known(io.get("node")) and not io.get("host"):
                io["host"] = base
                if key == "inputs" and (not url or url.startswith("/")):
                    io["url"] = f"{base}/node/{io['node']}?download"
            elif key == "inputs" and url.startswith("/"):
                io["url"] = base + url
            ios.append(io)
        document[key] = ios
    return document
