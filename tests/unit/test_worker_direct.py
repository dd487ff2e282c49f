"""The worker's direct transfers (worker/direct.py): when it uses presigned URLs and when the server."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import ClientError, EndpointConnectionError

from perdure.retry import Policy
from perdure.s3config import MAX_SINGLE_PUT
from perdure.worker import direct as direct_module
from perdure.worker.direct import DirectData, DirectError, StoreAway, deliver_s3, stage_s3


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


def client_error(status: int, code: str) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "PutObject",
    )


def wrapped(error: Exception) -> Exception:
    """As boto3's upload_file raises a refusal: an S3UploadFailedError raised while handling it."""
    try:
        raise error
    except Exception:
        try:
            raise S3UploadFailedError(f"Failed to upload: {error}")  # boto3 does the same
        except S3UploadFailedError as outer:
            return outer


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (client_error(404, "NoSuchBucket"), False),
        (client_error(403, "AccessDenied"), False),
        (wrapped(client_error(404, "NoSuchBucket")), False),
        (client_error(503, "SlowDown"), True),
        (wrapped(client_error(500, "InternalError")), True),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), True),
    ],
)
def test_only_s3_answers_that_mean_not_now_are_retried(error: Exception, transient: bool) -> None:
    assert direct_module._s3_transient(error) is transient


def test_a_delivery_to_an_unreachable_store_is_retried_then_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }.items():
        monkeypatch.setenv(key, value)
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("PERDURE_WORKER_S3_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(
        direct_module, "TRANSFER_POLICY", Policy(attempts=3, first_wait_s=0.01, max_wait_s=0.01)
    )
    tries = []
    real_transient = direct_module._s3_transient

    def counting(exc: BaseException) -> bool:
        tries.append(exc)
        return real_transient(exc)

    monkeypatch.setattr(direct_module, "_s3_transient", counting)
    path = tmp_path / "result.txt"
    path.write_text("hi\n")
    with pytest.raises(StoreAway, match=r"cannot deliver to s3://user-bucket/result\.txt"):
        deliver_s3(path, "s3://user-bucket/result.txt")
    assert len(tries) == 3  # every try of the policy, then the workunit fails


def test_a_bad_delivery_location_is_a_direct_error(tmp_path: Path) -> None:
    with pytest.raises(DirectError, match="bucket and a key"):
        deliver_s3(tmp_path / "x", "s3://only-a-bucket")
