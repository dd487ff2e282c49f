"""The wheels a worker node installs from its server: perdure itself and what ``perdure worker`` imports.

A fresh node may reach no package index (a private subnet, an air-gapped site), and the version it
must run is the server's, which no index need publish (a checkout, a patched build). So the server
serves the code it runs: ``perdure-<version>-py3-none-any.whl`` is zipped from the directory the
``perdure`` package is imported from, which is the source tree for an editable install or a checkout on
``PYTHONPATH`` and site-packages for a normal one (one way for both: no build backend, no ``pip wheel``,
no network). Its dependencies are the worker's only (``WORKER_REQUIREMENTS`` and what they require, as
installed here), each repacked from the server's own environment into a wheel with that
distribution's own tags (``WHEEL``): the binary ones (pydantic-core) fit nodes with the server's Python
version and platform, which the installer checks. ``pip`` is included so the node needs no ensurepip.

The installer installs every wheel with ``--no-index --no-deps``: perdure's metadata also names the
server's libraries (FastAPI, SQLAlchemy, ...), which a worker never imports and the node never gets.

A wheelhouse is built once per content (a key over the package's files and the versions of the
distributions) into ``<data dir>/wheelhouse/<key>/`` and reused by every later server start.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as metadata
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement

import perdure

#: What ``perdure worker`` (and the client commands) import on a node: HTTP, the command line, the
#: settings model, process control, the retry policy, and boto3 for ``s3://`` inputs and checkpoints
#: in a bucket.
WORKER_REQUIREMENTS = ("httpx", "psutil", "typer", "rich", "pydantic", "tenacity", "boto3", "pip")
#: Never in a worker's wheelhouse: the server's libraries (a test checks the worker runs without them).
SERVER_ONLY = frozenset({"fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "psycopg"})
MANIFEST = "manifest.json"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed: the same content gives the same wheel and checksum
_build_lock = threading.Lock()
#: The wheelhouse each root holds for this process: the code and the environment a process runs do not
#: change under it, so the key (hashing every file of the package) is computed once, not per download.
_known: dict[Path, Wheelhouse] = {}


class WheelhouseError(RuntimeError):
    """The wheelhouse cannot be built from this environment (a dependency installed without a wheel's
    metadata, or missing)."""


@dataclass(frozen=True)
class Wheel:
    filename: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Wheelhouse:
    directory: Path
    #: perdure's version: the server's own.
    version: str
    #: ``major.minor`` of the Python the binary wheels are for.
    python: str
    #: Every wheel the node installs, perdure's first.
    wheels: tuple[Wheel, ...]

    def path(self, filename: str) -> Path | None:
        """The file of one of this wheelhouse's wheels, or None for any other name."""
        if any(wheel.filename == filename for wheel in self.wheels):
            return self.directory / filename
        return None

    def to_json(self) -> dict[str, object]:
        return {
            "version": self.version,
            "python": self.python,
            "wheels": [{"filename": w.filename, "sha256": w.sha256, "size": w.size} for w in self.wheels],
        }


def python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def ensure(root: Path) -> Wheelhouse:
    """The wheelhouse of this server's code and environment under ``root``, built on first use."""
    with _build_lock:
        known = _known.get(root)
        if known is not None and (known.directory / MANIFEST).is_file():
            return known
        _known[root] = house = _ensure(root)
        return house


def _ensure(root: Path) -> Wheelhouse:
    """Load the wheelhouse of this content under ``root``, or build it (in a staging directory renamed
    into place, so a half-built one is never served)."""
    key = content_key()
    directory = root / key
    manifest = directory / MANIFEST
    if manifest.is_file():
        return _load(directory)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    try:
        _build(staging)
        try:
            staging.rename(directory)  # another server process may have won: use its copy
        except OSError:
            if not manifest.is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for stale in root.iterdir():  # wheelhouses of earlier versions and environments
        if stale.name != key and not stale.name.startswith("."):
            shutil.rmtree(stale, ignore_errors=True)
    return _load(directory)


def content_key() -> str:
    """Changes whenever a served byte would: perdure's files, the dependencies' versions, Python."""
    digest = hashlib.sha256(f"{perdure.__version__}\n{python_version()}\n".encode())
    for dist in worker_distributions():
        digest.update(f"{dist.metadata['Name']}=={dist.version}\n".encode())
    for relative, path in _package_files():
        digest.update(relative.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:24]


def worker_distributions() -> list[metadata.Distribution]:
    """The installed distributions ``WORKER_REQUIREMENTS`` need, with what they require in turn
    (markers evaluated for this Python), sorted by name."""
    found: dict[str, tuple[metadata.Distribution, set[str]]] = {}
    pending: list[tuple[str, frozenset[str]]] = [(name, frozenset()) for name in WORKER_REQUIREMENTS]
    while pending:
        name, extras = pending.pop()
        key = _normalise(name)
        known = found.get(key)
        if known is not None and extras <= known[1]:
            continue
        try:
            dist = known[0] if known is not None else metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise WheelhouseError(f"{name} is needed by a worker but not installed with the server") from None
        wanted = (known[1] if known is not None else set()) | extras
        found[key] = (dist, wanted)
        for text in dist.requires or []:
            requirement = Requirement(text)
            marker = requirement.marker
            if marker is None or any(marker.evaluate({"extra": e}) for e in ["", *sorted(wanted)]):
                pending.append((requirement.name, frozenset(requirement.extras)))
    return [found[key][0] for key in sorted(found)]


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _package_files() -> list[tuple[str, Path]]:
    """perdure's files as imported (``perdure/...`` names), without bytecode."""
    package = Path(perdure.__file__).resolve().parent
    files = []
    for path in sorted(package.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo"):
            files.append(("perdure/" + path.relative_to(package).as_posix(), path))
    return files


def _build(directory: Path) -> None:
    distributions = worker_distributions()
    server_only = {_normalise(d.metadata["Name"]) for d in distributions} & SERVER_ONLY
    if server_only:
        raise WheelhouseError(f"the worker's dependencies pull in server libraries: {sorted(server_only)}")
    wheels = [_perdure_wheel(directory)]
    wheels += [_repack(d, directory) for d in distributions if _normalise(d.metadata["Name"]) != "perdure"]
    house = Wheelhouse(directory, perdure.__version__, python_version(), tuple(wheels))
    (directory / MANIFEST).write_text(json.dumps(house.to_json(), indent=1) + "\n")


def _load(directory: Path) -> Wheelhouse:
    document = json.loads((directory / MANIFEST).read_text())
    wheels = tuple(Wheel(w["filename"], w["sha256"], w["size"]) for w in document["wheels"])
    return Wheelhouse(directory, document["version"], document["python"], wheels)


class _WheelWriter:
    """A wheel zip with a RECORD of what it holds, written in a fixed order with fixed times."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.zip = zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED)
        self.record: list[str] = []

    def add(self, name: str, data: bytes, executable: bool = False) -> None:
        info = zipfile.ZipInfo(name, _ZIP_TIME)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = (0o755 if executable else 0o644) << 16
        self.zip.writestr(info, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        self.record.append(f"{name},sha256={digest},{len(data)}")

    def close(self, dist_info: str) -> Wheel:
        record = "\n".join([*self.record, f"{dist_info}/RECORD,,"]) + "\n"
        info = zipfile.ZipInfo(f"{dist_info}/RECORD", _ZIP_TIME)
        info.external_attr = 0o644 << 16
        self.zip.writestr(info, record, compress_type=zipfile.ZIP_DEFLATED)
        self.zip.close()
        data = self.path.read_bytes()
        return Wheel(self.path.name, hashlib.sha256(data).hexdigest(), len(data))


def _perdure_wheel(directory: Path) -> Wheel:
    version = perdure.__version__
    dist_info = f"perdure-{version}.dist-info"
    writer = _WheelWriter(directory / f"perdure-{version}-py3-none-any.whl")
    for name, path in _package_files():
        writer.add(name, path.read_bytes())
    try:
        installed = metadata.distribution("perdure")
        text = installed.read_text("METADATA") if installed.version == version else None
        entry_points = installed.read_text("entry_points.txt")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        text, entry_points = None, None
    if not text:
        text = f"Metadata-Version: 2.1\nName: perdure\nVersion: {version}\nRequires-Python: >=3.11\n"
    writer.add(f"{dist_info}/METADATA", text.encode())
    writer.add(f"{dist_info}/entry_points.txt", (entry_points or _ENTRY_POINTS).encode())
    writer.add(f"{dist_info}/WHEEL", _wheel_file("true", ["py3-none-any"]).encode())
    return writer.close(dist_info)


_ENTRY_POINTS = "[console_scripts]\nperdure = perdure.cli:main\n"


def _wheel_file(purelib: str, tags: list[str]) -> str:
    lines = ["Wheel-Version: 1.0", "Generator: perdure-wheelhouse", f"Root-Is-Purelib: {purelib}"]
    return "\n".join([*lines, *(f"Tag: {tag}" for tag in tags)]) + "\n"


#: Files an installer adds to an installed distribution; a wheel carries none of them.
_INSTALLER_FILES = frozenset({"INSTALLER", "REQUESTED", "direct_url.json", "RECORD"})


def _repack(dist: metadata.Distribution, directory: Path) -> Wheel:
    """A wheel of an installed distribution, from the files its RECORD lists inside site-packages
    (console scripts outside it are made again by pip from ``entry_points.txt``)."""
    name = dist.metadata["Name"]
    wheel_text = dist.read_text("WHEEL")
    files = dist.files
    if not wheel_text or files is None:
        raise WheelhouseError(f"{name} {dist.version} was not installed from a wheel: cannot serve it")
    tags = [line.split(":", 1)[1].strip() for line in wheel_text.splitlines() if line.startswith("Tag:")]
    if not tags:
        raise WheelhouseError(f"{name} {dist.version}: its WHEEL file names no tag")
    parts = [sorted({tag.split("-")[i] for tag in tags}) for i in range(3)]
    dist_name = re.sub(r"[-_.]+", "_", name)
    filename = f"{dist_name}-{dist.version}-{'-'.join('.'.join(p) for p in parts)}.whl"
    writer = _WheelWriter(directory / filename)
    dist_info = ""
    for file in sorted(files, key=str):
        relative = file.as_posix()
        if relative.startswith("..") or "__pycache__" in file.parts or relative.endswith((".pyc", ".pyo")):
            continue
        if file.parts[0].endswith(".dist-info"):
            dist_info = file.parts[0]
            if len(file.parts) == 2 and file.parts[1] in _INSTALLER_FILES:
                continue
        path = Path(str(file.locate()))
        if not path.is_file():
            raise WheelhouseError(f"{name} {dist.version}: {relative} is listed but missing")
        writer.add(relative, path.read_bytes(), executable=os.access(path, os.X_OK))
    if not dist_info:
        raise WheelhouseError(f"{name} {dist.version}: no .dist-info directory in its RECORD")
    return writer.close(dist_info)
