"""The worker's settings: flags > environment > TOML."""

from __future__ import annotations

from pathlib import Path

import pytest

from perdure.worker.config import WorkerConfig

# ---- WorkerConfig: TOML file < PERDURE_WORKER_* < flags ---------------------------------------------

SETTINGS = (
    "server",
    "group",
    "name",
    "apps",
    "workpath",
    "slots",
    "token",
    "token_file",
    "allow_file_root",
    "ca_file",
    "heartbeat_s",
    "checkout_wait_s",
    "keep_failed_s",
    "imds_endpoint",
    "log_files",
    "log_ship_s",
    "handover_deadline_s",
    "imds_poll_s",
    "checkpoint_engine",
    "criu_path",
    "checkpoint_path",
    "checkpoint_threads",
    "transfer_tries",
    "transfer_timeout_s",
    "containers",
    "container_network",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SETTINGS:
        monkeypatch.delenv(f"PERDURE_WORKER_{name.upper()}", raising=False)


def toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "worker.toml"
    path.write_text(text)
    return path


def test_settings_cover_every_field() -> None:
    assert set(WorkerConfig.model_fields) == set(SETTINGS)


def test_defaults_without_file_environment_or_flags() -> None:
    config = WorkerConfig.load()
    assert config.server == "http://127.0.0.1:8001"
    assert config.group == "default"
    assert config.apps == ["*"]
    assert config.slots == 1
    assert config.heartbeat_s == 10.0
    assert config.workpath == Path("./perdure-work")
    config.validate()


def test_file_then_environment_then_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = toml(
        tmp_path,
        """
        [worker]
        server = "http://from-file:8001"
        group = "file-group"
        slots = 2
        heartbeat_s = 3
        apps = ["blastn", "bowtie2"]
        workpath = "/srv/work"
        """,
    )
    config = WorkerConfig.load(path)
    assert (config.server, config.group, config.slots) == ("http://from-file:8001", "file-group", 2)
    assert config.heartbeat_s == 3.0 and isinstance(config.heartbeat_s, float)
    assert config.apps == ["blastn", "bowtie2"]
    assert config.workpath == Path("/srv/work")

    monkeypatch.setenv("PERDURE_WORKER_SLOTS", "3")
    monkeypatch.setenv("PERDURE_WORKER_GROUP", "env-group")
    monkeypatch.setenv("PERDURE_WORKER_APPS", "sh, awk,,")
    monkeypatch.setenv("PERDURE_WORKER_HEARTBEAT_S", "0.5")
    config = WorkerConfig.load(path)
    assert (config.server, config.group, config.slots) == ("http://from-file:8001", "env-group", 3)
    assert config.apps == ["sh", "awk"]
    assert config.heartbeat_s == 0.5

    config = WorkerConfig.load(path, slots=4, apps="*", server=None, workpath=tmp_path, group=None)
    assert (config.server, config.group, config.slots) == ("http://from-file:8001", "env-group", 4)
    assert config.apps == ["*"]
    assert config.workpath == tmp_path


def test_top_level_keys_without_a_worker_table(tmp_path: Path) -> None:
    config = WorkerConfig.load(toml(tmp_path, 'server = "https://awe.example:443"\nslots = 8\n'))
    assert (config.server, config.slots) == ("https://awe.example:443", 8)


def test_empty_environment_value_is_a_value(monkeypatch: pytest.MonkeyPatch) -> None:
    # The test suite relies on this to turn the cloud metadata lookup off.
    monkeypatch.setenv("PERDURE_WORKER_IMDS_ENDPOINT", "")
    assert WorkerConfig.load().imds_endpoint == ""


def test_unknown_key_in_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="slotz"):
        WorkerConfig.load(toml(tmp_path, "[worker]\nslotz = 2\n"))


@pytest.mark.parametrize(
    "text",
    ['slots = "two"', "slots = [1]", 'heartbeat_s = "soon"', "slots = 1.5x"],
)
def test_bad_values_in_file_are_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(ValueError):
        WorkerConfig.load(toml(tmp_path, f"[worker]\n{text}\n"))


@pytest.mark.parametrize(
    ("name", "value"),
    [("SLOTS", "two"), ("SLOTS", ""), ("SLOTS", "1.5"), ("HEARTBEAT_S", "fast"), ("LOG_SHIP_S", "")],
)
def test_bad_values_in_environment_are_refused(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(f"PERDURE_WORKER_{name}", value)
    with pytest.raises(ValueError, match=name.lower()):
        WorkerConfig.load()


def test_missing_or_malformed_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read"):
        WorkerConfig.load(tmp_path / "absent.toml")
    with pytest.raises(ValueError, match="cannot read"):
        WorkerConfig.load(toml(tmp_path, "[worker\nslots = 1\n"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"server": "ftp://x"}, "http"),
        ({"server": "127.0.0.1:8001"}, "http"),
        ({"slots": 0}, "slots"),
        ({"slots": -1}, "slots"),
        ({"apps": ""}, "apps"),
        ({"apps": " , "}, "apps"),
    ],
)
def test_validate_refuses(overrides: dict[str, object], message: str) -> None:
    # The worker section's bounds are checked as the settings are read, before the worker starts.
    with pytest.raises(ValueError, match=message):
        WorkerConfig.load(**overrides).validate()


@pytest.mark.parametrize("server", ["http://a:1", "https://a", "https://a:8443/prefix"])
def test_validate_accepts_http_and_https_and_only_the_scheme_decides(server: str) -> None:
    config = WorkerConfig.load(server=server)
    config.validate()  # raises ValueError if refused
    assert config.server == server
    _, rest = server.split(":", 1)
    with pytest.raises(ValueError, match="server must be an http"):
        WorkerConfig.load(server=f"ftp:{rest}")


@pytest.mark.parametrize("heartbeat", ["0", "-1"])
def test_validate_refuses_a_heartbeat_that_is_not_positive(
    monkeypatch: pytest.MonkeyPatch, heartbeat: str
) -> None:
    monkeypatch.setenv("PERDURE_WORKER_HEARTBEAT_S", heartbeat)
    with pytest.raises(ValueError, match="heartbeat"):
        WorkerConfig.load().validate()
