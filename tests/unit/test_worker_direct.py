"""The worker's direct transfers (worker/direct.py): when it uses presigned URLs and when the server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from perdure.s3config import MAX_SINGLE_PUT
from perdure.worker.direct import DirectData, DirectError, stage_s3


def direct(presigned: dict[str, Any] | None) -> DirectData:
    wu: dict[str, Any] = {"id": "job_t_0", **({"presigned": presigned} if presigned else {})}
    return DirectData(api=None, wu=wu, client_id="c1")  # type: ignore[arg-type]  # no call reaches the server


def test_without_presigned_urls_everything_goes_through_the_server() -> None:
    data = direct(None)
    assert not data.active
    assert not data.has_input("in.txt") and not data.has_output("out.txt")


def test_presigned_urls_are_used_for_the_files_they_name_up_to_a_single_puts_limit() -> None:
    data = direct(
        {
            "expires_in": 900,
            "inputs": {"in.txt": [{"url": "http://127.0.0.1:9/x", "offset": 0, "length": 1, "size": 1}]},
            "outputs": {"out.txt": {"url": "http://127.0.0.1:9/y", "key": "k"}},
        }
    )
    assert data.active and data.has_input("in.txt") and not data.has_input("other.txt")
    assert data.has_output("out.txt", 10) and not data.has_output("other.txt", 10)
    assert not data.has_output("out.txt", MAX_SINGLE_PUT + 1)  # sent through the server, in parts


def test_a_bad_s3_url_is_a_stage_error(tmp_path: Path) -> None:
    with pytest.raises(DirectError, match="bucket and a key"):
        stage_s3("s3://only-a-bucket", tmp_path / "x")
