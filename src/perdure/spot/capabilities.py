"""What this node can checkpoint, probed once at a worker's start and stated once.

The probes:

* CRIU: where it is (the ``criu_path`` setting: a path, or a name on ``PATH``; the tests and the bench
  also try the repository's ``.cache/criu/criu`` that ``scripts/install-criu.sh`` writes), its
  version, and ``criu check``;
* ``criu check --feature mem_dirty_track``: whether the kernel tracks dirty pages (soft-dirty), which
  the ``criu`` engine's pre-dump chain needs; without it every checkpoint is a full dump;
* podman and its runtime, able to run a container, and whether a container checkpoint works (the
  podman colleague's ``podman_status()`` and ``container_checkpoint_status()``).

From these, ``engines()`` says for each engine whether it can checkpoint here and, if not, why; the node
record carries that (``checkpointEngines``) and ``perdure nodes`` shows it. A worker set to ``auto``
picks only an engine whose probe passed.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perdure.spot.podman import container_checkpoint_status, podman_status

log = logging.getLogger("perdure.spot")

#: Where ``scripts/install-criu.sh`` puts its wrapper by default, relative to the repository.
REPO_CRIU = Path(__file__).resolve().parents[3] / ".cache" / "criu" / "criu"
PROBE_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Capabilities:
    #: The CRIU binary found (absolute path), or None.
    criu: str | None = None
    criu_version: str = ""
    #: Why CRIU cannot checkpoint bare processes here; empty when ``criu check`` passed.
    criu_problem: str = "criu was not probed"
    #: The kernel tracks dirty pages: pre-dump chains (incremental memory copies) work.
    mem_dirty_track: bool = False
    mem_dirty_track_problem: str = ""
    #: Why podman cannot run a container here; empty when it can.
    podman_problem: str = "podman was not probed"
    #: Why a container cannot be checkpointed here; empty when it can.
    container_checkpoint_problem: str = "container checkpoints were not probed"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def criu_ok(self) -> bool:
        return self.criu is not None and not self.criu_problem

    def engines(self) -> dict[str, str]:
        """Each engine, and why it cannot checkpoint here (empty: it can)."""
        podman = self.podman_problem or self.container_checkpoint_problem
        return {"criu": self.criu_problem, "podman": podman, "workdir": ""}

    def facts(self) -> dict[str, Any]:
        """For the node record."""
        return {
            "checkpointEngines": {
                name: {"available": not problem, **({"reason": problem} if problem else {})}
                for name, problem in self.engines().items()
            },
            "criuVersion": self.criu_version,
            "memDirtyTrack": self.mem_dirty_track,
        }

    def summary(self) -> str:
        """One line for the worker's log."""
        parts = []
        for name, problem in self.engines().items():
            parts.append(f"{name}: {'yes' if not problem else 'no (' + problem + ')'}")
        if self.criu_ok:
            how = "pre-dump chains" if self.mem_dirty_track else "full dumps"
            parts.append(f"criu {self.criu_version}, {how}")
        return "; ".join(parts)


def criu_candidates(setting: str = "criu", *, include_repo: bool = False) -> list[str]:
    """The CRIU binaries to try, in order: the setting as a path, or as a name on ``PATH``; with
    ``include_repo`` (the tests and the bench) and the default setting, also the repository's copy
    (Debian 12's own CRIU 3.17 fails ``criu check`` on recent kernels; ``scripts/install-criu.sh`` puts
    CRIU 4.1 there). A worker looks only where its setting says: finding CRIU by itself would switch
    every ``auto`` worker of a checkout to the criu engine."""
    if os.sep in setting:
        return [setting] if os.access(setting, os.X_OK) else []
    found = [p for p in (shutil.which(setting),) if p is not None]
    if include_repo and setting == "criu" and os.access(REPO_CRIU, os.X_OK) and str(REPO_CRIU) not in found:
        found.append(str(REPO_CRIU))
    return found


def _run(argv: list[str], timeout_s: float) -> tuple[int, str]:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {timeout_s:.0f}s"
    except OSError as exc:
        return -1, str(exc)
    return result.returncode, (result.stdout + "\n" + result.stderr).strip()


def _last_line(text: str, fallback: str) -> str:
    # CRIU always complains it cannot raise RLIMIT_NOFILE without CAP_SYS_RESOURCE: harmless, not the reason.
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "RLIMIT_NOFILE" not in ln]
    return lines[-1] if lines else fallback


def probe_criu(
    setting: str = "criu", timeout_s: float = PROBE_TIMEOUT_S, *, include_repo: bool = False
) -> dict[str, Any]:
    """The CRIU part of the capabilities, as keyword arguments of ``Capabilities``: the first candidate
    whose ``criu check`` passes, else the first one's problem."""
    candidates = criu_candidates(setting, include_repo=include_repo)
    if not candidates:
        where = (
            setting
            if os.sep in setting
            else f"{setting} on PATH" + (f" or {REPO_CRIU}" if include_repo else "")
        )
        return {"criu_problem": f"criu is not installed (looked for {where})"}
    first: dict[str, Any] | None = None
    for path in candidates:
        found = _probe_one(path, timeout_s)
        if not found["criu_problem"]:
            return found
        first = first or found
    assert first is not None
    return first


def _probe_one(path: str, timeout_s: float) -> dict[str, Any]:
    code, text = _run([path, "--version"], timeout_s)
    match = re.search(r"Version:\s*(\S+)", text)
    version = match.group(1) if match else ""
    code, text = _run([path, "check"], timeout_s)
    if code != 0:
        return {
            "criu": path,
            "criu_version": version,
            "criu_problem": f"`criu check` failed on this kernel: {_last_line(text, f'exit code {code}')}",
        }
    code, text = _run([path, "check", "--feature", "mem_dirty_track"], timeout_s)
    dirty = code == 0
    return {
        "criu": path,
        "criu_version": version,
        "criu_problem": "",
        "mem_dirty_track": dirty,
        "mem_dirty_track_problem": "" if dirty else _last_line(text, "no dirty-memory tracking (soft-dirty)"),
    }


def probe_podman(criu: str = "criu") -> dict[str, Any]:
    try:
        ok, why = podman_status()
    except Exception as exc:  # a probe must never stop a worker from starting
        ok, why = False, f"podman probe failed: {exc}"
    if not ok:
        why = why or "podman cannot run a container here"
        return {"podman_problem": why, "container_checkpoint_problem": ""}
    try:
        ok, why = container_checkpoint_status(criu)
    except Exception as exc:
        ok, why = False, f"container checkpoint probe failed: {exc}"
    return {"podman_problem": "", "container_checkpoint_problem": "" if ok else why or "checkpoint fails"}


def probe(criu_setting: str = "criu", *, podman: bool = True) -> Capabilities:
    """Every probe, once (a few seconds at most: run it at a worker's start)."""
    found: dict[str, Any] = probe_criu(criu_setting)
    if podman:
        found.update(probe_podman(found.get("criu") or criu_setting))
    return Capabilities(**found)


def not_probed(reason: str) -> Capabilities:
    return Capabilities(criu_problem=reason, podman_problem=reason, container_checkpoint_problem=reason)


def choose(wanted: str, caps: Capabilities) -> tuple[str, str]:
    """The engine a worker uses for bare processes, and why not the one wanted (empty when it is).
    ``auto`` never picks an engine whose probe showed it cannot checkpoint."""
    if wanted == "workdir":
        return "workdir", ""
    if wanted in ("auto", "criu"):
        if caps.criu_ok:
            return "criu", ""
        return "workdir", caps.criu_problem
    return wanted, caps.engines().get(wanted, "")
