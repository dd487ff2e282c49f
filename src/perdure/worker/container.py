"""Task containers (``cmd.Dockerimage``, or ``cmd.dockerPull`` as some AWE scripts spell it): the
workunit runs in a podman container instead of on the host.

The work directory is bind-mounted at the same path and is the container's working directory, so
``@file`` arguments, inputs and outputs mean the same inside and out. The container gets only the
command's own environment (the job's variables and ``PERDURE_*``), never the worker's. Its standard
streams go to a podman log in the work directory (so a restored container keeps writing to the same
log), split into ``awe_stdout.txt`` and ``awe_stderr.txt`` when it ends; its CPU time and peak memory
are read from its cgroup while it runs. The container is removed afterwards, whatever happened.

Images are used as found on the node, pulled from a registry, or loaded (``podman load``) from an
image archive given by URL: a data-store path (``/node/<id>?download``) or ``http(s)://``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import re
import resource
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perdure.spot.podman import (
    LOG_NAME,
    RUNTIME,
    container_name,
    last_line,
    log_files,
    podman,
    podman_env,
)
from perdure.worker.environment import container_environment

log = logging.getLogger("perdure.worker")

PULL_TIMEOUT_S = 1800.0
#: ``podman run -d``: creating and starting a container.
START_TIMEOUT_S = 300.0
#: k8s-file log lines: ``<time> <stream> <F|P> <text>``; P is part of a longer line.
_LOG_LINE = re.compile(rb"^\S+ (stdout|stderr) ([FP])(?: (.*))?$", re.DOTALL)


#: The label of the node that started a container.
NODE_LABEL = "io.perdure.node"


def remove_leftovers(node_id: str, criu: str = "criu") -> int:
    """Remove the containers an earlier run of this node left (it crashed, or was killed): their work
    was handed back to the server, which gives it out again. How many there were."""
    try:
        found = podman(
            ["ps", "--all", "--quiet", "--filter", f"label={NODE_LABEL}={node_id}"], criu=criu, timeout=60
        )
        ids = found.stdout.split() if found.returncode == 0 else []
        if ids:
            podman(["rm", "--force", "--time", "0", *ids], criu=criu, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("could not remove containers left by an earlier run: %s", exc)
        return 0
    return len(ids)


class ImageError(Exception):
    """The task's image cannot be obtained on this node; the message names it."""


class ContainerError(Exception):
    """podman could not create or start the container."""


def container_image(wu: dict[str, Any]) -> str:
    """The image a workunit runs in; empty for a command run on the host."""
    cmd = wu.get("cmd") or {}
    return str(cmd.get("Dockerimage") or cmd.get("dockerPull") or "").strip()


@functools.cache
def _ulimits() -> list[str]:
    """podman's default limits cannot be set without CAP_SYS_RESOURCE: ask for the worker's own."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    nproc = 4096 if hard == resource.RLIM_INFINITY else min(4096, hard)

    def limit(value: int) -> str:
        return "-1" if value == resource.RLIM_INFINITY else str(value)

    return ["--ulimit", f"nofile={limit(soft)}:{limit(hard)}", "--ulimit", f"nproc={nproc}:{nproc}"]


class Images:
    """Obtains images on this node; archives given by URL are loaded once per node process."""

    def __init__(self, download: Any, scratch: Path, criu: str = "criu") -> None:
        #: ``download(url, dest)``: the worker's data-store/HTTP download.
        self._download = download
        self.scratch = scratch
        self.criu = criu
        self._lock = threading.Lock()
        self._loaded: dict[str, str] = {}

    def obtain(self, image: str) -> str:
        """The local name of ``image``; raises ImageError naming it when it cannot be had."""
        if image.startswith(("http://", "https://", "/")):
            return self._load(image)
        try:
            if podman(["image", "exists", image], criu=self.criu, timeout=60).returncode == 0:
                return image
            log.info("pulling image %s", image)
            result = podman(["pull", "--quiet", image], criu=self.criu, timeout=PULL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise ImageError(f"image {image!r} could not be pulled within {PULL_TIMEOUT_S:.0f}s") from None
        except OSError as exc:
            raise ImageError(f"image {image!r} could not be obtained: {exc}") from None
        if result.returncode != 0:
            raise ImageError(f"image {image!r} could not be pulled: {last_line(result)}")
        return image

    def _load(self, url: str) -> str:
        with self._lock:
            known = self._loaded.get(url)
        if known is not None:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                if podman(["image", "exists", known], criu=self.criu, timeout=60).returncode == 0:
                    return known
        self.scratch.mkdir(parents=True, exist_ok=True)
        archive = self.scratch / f"image-{hashlib.sha256(url.encode()).hexdigest()[:16]}-{os.getpid()}.tar"
        try:
            try:
                self._download(url, archive)
            except Exception as exc:
                raise ImageError(f"image archive {url!r} could not be downloaded: {exc}") from None
            try:
                result = podman(["load", "--input", str(archive)], criu=self.criu, timeout=PULL_TIMEOUT_S)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise ImageError(f"image archive {url!r} could not be loaded: {exc}") from None
            if result.returncode != 0:
                raise ImageError(f"image archive {url!r} could not be loaded: {last_line(result)}")
            names = re.findall(r"Loaded image(?:\(s\))?:\s*(\S+)", result.stdout)
            if not names:
                raise ImageError(f"image archive {url!r} holds no image podman could name")
            name = str(names[0]).split(",")[0]
        finally:
            archive.unlink(missing_ok=True)
        with self._lock:
            self._loaded[url] = name
        return name


@dataclass(frozen=True)
class ContainerSupport:
    """What a node that runs task containers needs to run one."""

    images: Images
    criu: str = "criu"
    #: ``podman run --network``; empty: podman's default.
    network: str = ""
    #: This node's id: its containers carry it as a label, so a restarted worker removes what a
    #: crashed one left running.
    node_id: str = ""


class Container:
    """One attempt at a workunit in a container."""

    def __init__(
        self,
        image: str,
        wu_id: str,
        attempt: int,
        *,
        criu: str = "criu",
        network: str = "",
        node_id: str = "",
    ) -> None:
        self.image = image
        self.node_id = node_id
        self.name = container_name(wu_id, attempt)
        self.criu = criu
        self.network = network
        self._cgroup: str | None = None

    def run_command(
        self, argv: list[str], workdir: Path, env_file: Path | None, mounts: tuple[Path, ...] = ()
    ) -> list[str]:
        args = [
            "run",
            "--detach",
            "--replace",
            "--name",
            self.name,
            *_ulimits(),
            "--log-driver",
            "k8s-file",
            "--log-opt",
            f"path={workdir / LOG_NAME}",
            "--volume",
            f"{workdir}:{workdir}",
            "--workdir",
            str(workdir),
            "--entrypoint",
            argv[0],
        ]
        for mount in mounts:  # predata: read-only, at the same path as the work directory's links say
            args += ["--volume", f"{mount}:{mount}:ro"]
        if self.network:
            args += ["--network", self.network]
        if self.node_id:
            args += ["--label", f"{NODE_LABEL}={self.node_id}"]
        if env_file is not None:
            args += ["--env-file", str(env_file)]
        return [*args, self.image, *argv[1:]]

    def start(
        self, argv: list[str], workdir: Path, env: dict[str, str], mounts: tuple[Path, ...] = ()
    ) -> None:
        """Create and start the container (detached); raises ContainerError with podman's reason."""
        (workdir / LOG_NAME).unlink(missing_ok=True)
        env = container_environment(env)
        fd, name = tempfile.mkstemp(prefix=".perdure-env-", dir=workdir.parent)
        env_file = Path(name)
        try:
            with os.fdopen(fd, "w") as handle:  # mode 0600: private variables stay private
                for key, value in env.items():
                    if "\n" not in value and "\0" not in value:
                        handle.write(f"{key}={value}\n")
            multiline = [f"{k}={v}" for k, v in env.items() if "\n" in v and "\0" not in v]
            command = self.run_command(argv, workdir, env_file, mounts)
            if multiline:
                at = command.index(self.image)
                command[at:at] = [part for item in multiline for part in ("--env", item)]
            try:
                result = podman(command, criu=self.criu, timeout=START_TIMEOUT_S)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise ContainerError(f"podman run could not run: {exc}") from None
        finally:
            env_file.unlink(missing_ok=True)
        if result.returncode != 0:
            raise ContainerError(f"the container could not start: {last_line(result)}")

    def wait_process(self) -> subprocess.Popen[bytes]:
        """``podman wait``: the process the runner waits on; it prints the container's exit code."""
        return subprocess.Popen(
            ["podman", "--runtime", RUNTIME, "wait", self.name],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            env=podman_env(self.criu),
            start_new_session=True,
        )

    def exit_code(self, printed: str) -> int:
        try:
            return int(printed.strip().splitlines()[-1])
        except (ValueError, IndexError):
            pass
        with contextlib.suppress(OSError, subprocess.TimeoutExpired, ValueError):
            result = podman(
                ["inspect", "--format", "{{.State.ExitCode}}", self.name], criu=self.criu, timeout=60
            )
            return int(result.stdout.strip())
        return 125

    def cgroup(self) -> str | None:
        if self._cgroup is None:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                result = podman(
                    ["inspect", "--format", "{{.State.CgroupPath}}", self.name], criu=self.criu, timeout=60
                )
                if result.returncode == 0 and result.stdout.strip().startswith("/"):
                    self._cgroup = result.stdout.strip()
        return self._cgroup

    def logs(self, workdir: Path) -> list[Path]:
        return log_files(self.name, workdir, self.criu)

    def kill(self) -> None:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            podman(["kill", self.name], criu=self.criu, timeout=60)

    def remove(self) -> None:
        """The container goes, running or not (its image stays for the next task)."""
        try:
            result = podman(
                ["rm", "--force", "--time", "0", "--volumes", self.name], criu=self.criu, timeout=120
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("container %s could not be removed: %s", self.name, exc)
            return
        if result.returncode != 0 and "no such container" not in (result.stderr + result.stdout).lower():
            log.warning("container %s could not be removed: %s", self.name, last_line(result))


def split_log(log_files: list[Path], stdout: Path, stderr: Path) -> None:
    """podman's k8s-file logs of the container (in order) into its two streams, byte for byte."""
    out, err = bytearray(), bytearray()
    for log_file in log_files:
        with contextlib.suppress(FileNotFoundError), log_file.open("rb") as handle:
            _split(handle, out, err)
    stdout.write_bytes(bytes(out))
    stderr.write_bytes(bytes(err))


def _split(handle: Any, out: bytearray, err: bytearray) -> None:
    for raw in handle:
        match = _LOG_LINE.match(raw.rstrip(b"\n"))
        if match is None:
            continue
        target = out if match.group(1) == b"stdout" else err
        target += match.group(3) or b""
        if match.group(2) == b"F":
            target += b"\n"


class Usage(threading.Thread):
    """CPU time and peak memory of the container, from its cgroup (v1 or v2), sampled while it runs:
    the cgroup goes with the container."""

    def __init__(self, container: Container) -> None:
        super().__init__(daemon=True, name=f"usage-{container.name}")
        self.container = container
        self.cpu_s = 0.0
        self.peak = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while True:
            path = self.container.cgroup()
            if path is not None:
                self._sample(path)
            if self._stop_event.wait(0.5):
                return

    def _sample(self, path: str) -> None:
        root = Path("/sys/fs/cgroup")
        rel = path.lstrip("/")
        cpu_ns = _read_int(root / "cpuacct" / rel / "cpuacct.usage")
        if cpu_ns is not None:
            self.cpu_s = max(self.cpu_s, cpu_ns / 1e9)
        else:
            stat = _read_text(root / rel / "cpu.stat")
            found = re.search(r"^usage_usec (\d+)", stat or "", re.MULTILINE)
            if found:
                self.cpu_s = max(self.cpu_s, int(found.group(1)) / 1e6)
        for candidate in (root / "memory" / rel / "memory.max_usage_in_bytes", root / rel / "memory.peak"):
            value = _read_int(candidate)
            if value is not None:
                self.peak = max(self.peak, value)
                break
        else:
            value = _read_int(root / rel / "memory.current")
            if value is not None:
                self.peak = max(self.peak, value)

    def stop(self) -> dict[str, Any]:
        path = self.container.cgroup()
        if path is not None:
            self._sample(path)  # the last figures, if the cgroup is still there
        self._stop_event.set()
        return {"cpu_time": round(self.cpu_s, 3), "max_memory_total_rss": self.peak}


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _read_int(path: Path) -> int | None:
    text = _read_text(path)
    try:
        return int(text.strip()) if text is not None else None
    except ValueError:
        return None
