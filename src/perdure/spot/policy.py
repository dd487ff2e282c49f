"""The checkpoint policy of one workunit: the system's ``ckpt.*`` settings, overridden per job.

A job overrides them in ``info.userattr`` (keys named like the settings) or, closer to the task, with
``PERDURE_CHECKPOINT_*`` variables in ``cmd.environ`` (MMAB's ``MMC_CHECKPOINT_*``): the environment
wins over userattr, userattr over the system. Overrides are checked when the job is submitted, so a
typo is a 400 then, not a silent default hours later on a worker.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from perdure.config.model import CkptConfig
from perdure.config.values import bounds, coerce_bool
from perdure.duration import to_seconds

#: userattr key -> environment variable, for every setting a job may override.
OVERRIDES = {
    "ckptMode": "PERDURE_CHECKPOINT_MODE",
    "ckptInterval": "PERDURE_CHECKPOINT_INTERVAL",
    "diagnosisMode": "PERDURE_CHECKPOINT_DIAGNOSIS",
    "ckptFiles": "PERDURE_CHECKPOINT_FILES",
    "ckptSignal": "PERDURE_CHECKPOINT_SIGNAL",
    "ckptGrace": "PERDURE_CHECKPOINT_GRACE",
}
MODES = ("iterative", "none")
#: Below this an interval would checkpoint more than it computes (the model's bound on ckptInterval).
MIN_INTERVAL_S = bounds(CkptConfig.model_fields["ckptInterval"])[0] or 1.0
#: The system defaults: the configuration model's ``ckpt`` section.
_SYSTEM = CkptConfig()
#: The interruption window is two minutes: a program may not ask for more time than that to save.
MAX_GRACE_S = 110.0


@dataclass(frozen=True)
class CheckpointPolicy:
    mode: str = _SYSTEM.ckptMode
    interval_s: float = _SYSTEM.ckptInterval
    #: A directory every node mounts (EFS, NFS, Lustre); empty: the server's data store over HTTP.
    image_path: str = ""
    #: Only these paths (relative to the work directory, globs allowed); None: the whole directory.
    files: tuple[str, ...] | None = None
    irmap_scan_paths: tuple[str, ...] = ()
    rootfs_diff: bool = _SYSTEM.rootFSDiff
    tcp_close: bool = _SYSTEM.tcpClose
    #: Keep checkpoints after the work completes, for inspection.
    diagnosis: bool = _SYSTEM.diagnosisMode
    #: Sent to a program that saves its own state when the notice comes; it then has ``grace_s``.
    signal: int = int(signal.SIGTERM)
    grace_s: float = 30.0

    @property
    def enabled(self) -> bool:
        return self.mode != "none"


def from_system(document: Mapping[str, Any]) -> CheckpointPolicy:
    """The system-wide policy from the ``ckpt`` section (as the server's config document shows it)."""
    base = CheckpointPolicy()
    try:
        return replace(
            base,
            mode=_mode(document.get("ckptMode", base.mode)),
            interval_s=_interval(document.get("ckptInterval", base.interval_s)),
            image_path=str(document.get("ckptImagePath") or ""),
            files=_files(document.get("ckptFiles")),
            irmap_scan_paths=tuple(str(p) for p in document.get("IRMapScanPaths") or ()),
            rootfs_diff=_bool(document.get("rootFSDiff", base.rootfs_diff)),
            tcp_close=_bool(document.get("tcpClose", base.tcp_close)),
            diagnosis=_bool(document.get("diagnosisMode", base.diagnosis)),
        )
    except ValueError:
        return base  # the server validated its configuration; an old server may send odd values


def resolve(
    system: Mapping[str, Any], userattr: Mapping[str, Any] | None, environ: Mapping[str, Any] | None
) -> CheckpointPolicy:
    """The policy for one workunit. Raises ValueError naming the bad override."""
    policy = from_system(system)
    for layer in (_from_userattr(userattr or {}), _from_environ(environ or {})):
        for key, raw in layer.items():
            policy = _apply(policy, key, raw)
    return policy


def check_overrides(userattr: Mapping[str, Any] | None, environ: Mapping[str, Any] | None) -> None:
    """Raise ValueError for an override no worker could honour (called at submit, once per task)."""
    if _from_userattr(userattr or {}) or _from_environ(environ or {}):
        resolve({}, userattr, environ)  # without an override there is nothing to check


def _from_userattr(userattr: Mapping[str, Any]) -> dict[str, Any]:
    return {key: userattr[key] for key in OVERRIDES if key in userattr}


def _from_environ(environ: Mapping[str, Any]) -> dict[str, Any]:
    return {key: environ[var] for key, var in OVERRIDES.items() if var in environ}


def _apply(policy: CheckpointPolicy, key: str, raw: Any) -> CheckpointPolicy:
    try:
        if key == "ckptMode":
            return replace(policy, mode=_mode(raw))
        if key == "ckptInterval":
            return replace(policy, interval_s=_interval(raw))
        if key == "diagnosisMode":
            return replace(policy, diagnosis=_bool(raw))
        if key == "ckptFiles":
            return replace(policy, files=_files(raw))
        if key == "ckptSignal":
            return replace(policy, signal=_signal(raw))
        return replace(policy, grace_s=_grace(raw))
    except ValueError as exc:
        raise ValueError(f"checkpoint setting {key} ({OVERRIDES[key]}): {exc}") from None


def _mode(raw: Any) -> str:
    value = str(raw).strip().lower()
    if value not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {raw!r}")
    return value


def _seconds(raw: Any) -> float:
    return to_seconds(raw)


def _interval(raw: Any) -> float:
    seconds = _seconds(raw)
    if not seconds >= MIN_INTERVAL_S:
        raise ValueError(f"interval must be at least {MIN_INTERVAL_S:g}s, not {raw!r}")
    return seconds


def _grace(raw: Any) -> float:
    seconds = _seconds(raw)
    if not 0 <= seconds <= MAX_GRACE_S:
        raise ValueError(f"grace must be between 0 and {MAX_GRACE_S:g}s, not {raw!r}")
    return seconds


def _bool(raw: Any) -> bool:
    return False if isinstance(raw, str) and not raw.strip() else coerce_bool(raw)


def _files(raw: Any) -> tuple[str, ...] | None:
    if raw is None:
        return None
    items = [p.strip() for p in raw.split(",")] if isinstance(raw, str) else list(raw)
    files = tuple(str(p) for p in items if str(p).strip())
    for path in files:
        if path.startswith("/") or ".." in path.split("/") or "\x00" in path:
            raise ValueError(f"checkpoint files are paths inside the work directory, not {path!r}")
    return files or None


def _signal(raw: Any) -> int:
    text = str(raw).strip().upper()
    if text.isdigit():
        number = int(text)
        valid = {int(s) for s in signal.Signals}
        if number not in valid:
            raise ValueError(f"{raw!r} is not a signal number")
        return number
    name = text if text.startswith("SIG") else f"SIG{text}"
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise ValueError(f"{raw!r} is not a signal name like TERM or USR1") from None
