"""Capability detection against fake ``criu`` binaries: what a node says it can checkpoint, and the
engine a worker set to ``auto`` picks from that."""

from __future__ import annotations

from pathlib import Path

import pytest

from perdure.spot import capabilities
from perdure.spot.capabilities import Capabilities, choose, probe, probe_criu


def fake_criu(path: Path, *, check: int = 0, dirty: int = 0, version: str = "4.1.1", why: str = "") -> Path:
    """A ``criu`` answering ``--version``, ``check`` and ``check --feature mem_dirty_track``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = 'echo "Error (criu/util.c:1): rlimit: Can\'t setup RLIMIT_NOFILE" >&2'
    reason = f"echo {why!r} >&2;" if why else ""
    path.write_text(
        "#!/bin/sh\n"
        'case "$*" in\n'
        f'  --version) echo "Version: {version}";;\n'
        '  "check --feature mem_dirty_track")'
        f' echo "Warn  (criu/cr-check.c:824): Dirty tracking is OFF." >&2; exit {dirty};;\n'
        f'  check) {noise}; {reason} [ {check} = 0 ] && echo "Looks good."; exit {check};;\n'
        "esac\n"
    )
    path.chmod(0o755)
    return path


@pytest.fixture(autouse=True)
def no_repo_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The repository's own CRIU must not leak into these tests."""
    monkeypatch.setattr(capabilities, "REPO_CRIU", tmp_path / "no-repo" / "criu")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))


def test_without_criu_the_node_says_so_and_auto_uses_workdir() -> None:
    caps = Capabilities(**probe_criu())
    assert caps.criu is None and caps.criu_problem.startswith("criu is not installed")
    assert choose("auto", caps) == ("workdir", caps.criu_problem)
    assert choose("criu", caps) == ("workdir", caps.criu_problem)


def test_a_failing_criu_check_is_the_reason_not_the_rlimit_noise(tmp_path: Path) -> None:
    criu = fake_criu(tmp_path / "bin" / "criu", check=1, why="Error (criu/kerndat.c:1): vDSO is broken")
    caps = Capabilities(**probe_criu(str(criu)))
    assert caps.criu_problem == "`criu check` failed on this kernel: Error (criu/kerndat.c:1): vDSO is broken"
    assert not caps.criu_ok
    assert caps.facts()["checkpointEngines"]["criu"] == {"available": False, "reason": caps.criu_problem}


def test_criu_without_dirty_tracking_takes_full_dumps(tmp_path: Path) -> None:
    criu = fake_criu(tmp_path / "bin" / "criu", dirty=1)
    caps = Capabilities(**probe_criu(str(criu)))
    assert (caps.criu, caps.criu_version, caps.criu_problem) == (str(criu), "4.1.1", "")
    assert caps.mem_dirty_track is False and "Dirty tracking is OFF" in caps.mem_dirty_track_problem
    assert choose("auto", caps) == ("criu", "")
    assert "criu 4.1.1, full dumps" in caps.summary()
    facts = caps.facts()
    assert facts["checkpointEngines"]["criu"] == {"available": True}
    assert facts["memDirtyTrack"] is False and facts["criuVersion"] == "4.1.1"


def test_criu_with_dirty_tracking_chains_pre_dumps(tmp_path: Path) -> None:
    caps = Capabilities(**probe_criu(str(fake_criu(tmp_path / "bin" / "criu"))))
    assert caps.mem_dirty_track is True
    assert "pre-dump chains" in caps.summary()


def test_a_broken_criu_on_path_gives_way_to_the_repositorys_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Debian 12's CRIU 3.17 on PATH fails ``criu check``; scripts/install-criu.sh's 4.1 passes (the
    tests and the bench look there too)."""
    fake_criu(tmp_path / "bin" / "criu", check=1, version="3.17.1")
    repo = fake_criu(tmp_path / "repo" / "criu", dirty=1)
    monkeypatch.setattr(capabilities, "REPO_CRIU", repo)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    caps = Capabilities(**probe_criu(include_repo=True))
    assert (caps.criu, caps.criu_version, caps.criu_ok) == (str(repo), "4.1.1", True)
    # A worker looks only where its setting says (else every `auto` worker of a checkout would use criu).
    worker = probe(podman=False)
    assert (worker.criu_version, worker.criu_ok) == ("3.17.1", False)
    # Named explicitly, the setting is the only candidate.
    named = Capabilities(**probe_criu(str(tmp_path / "bin" / "criu")))
    assert named.criu_version == "3.17.1" and not named.criu_ok


def test_podman_probes_say_why_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capabilities, "podman_status", lambda: (False, "podman is not installed"))
    monkeypatch.setattr(capabilities, "container_checkpoint_status", lambda criu: (True, ""))
    caps = probe(podman=True)
    assert caps.engines()["podman"] == "podman is not installed"

    def broken(criu: str) -> tuple[bool, str]:
        raise RuntimeError("boom")

    monkeypatch.setattr(capabilities, "podman_status", lambda: (True, ""))
    monkeypatch.setattr(capabilities, "container_checkpoint_status", broken)
    caps = probe(podman=True)
    assert caps.podman_problem == "" and caps.engines()["podman"] == "container checkpoint probe failed: boom"
    assert caps.facts()["checkpointEngines"]["workdir"] == {"available": True}
