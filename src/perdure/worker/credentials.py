"""Where a worker's clientgroup token comes from, and keeping it out of sight (issue 17).

The token is read from a file of mode 0600 (``--token-file``, ``token_file`` in the TOML file or
``PERDURE_WORKER_TOKEN_FILE``) or from the environment (``PERDURE_WORKER_TOKEN``, or the older
``PERDURE_TOKEN``), never from the command line, where ``ps`` and ``/proc/<pid>/cmdline`` show it to
every local user. Once read, the variables are removed from the worker's environment (so no program
the worker starts inherits them), and on Linux the worker marks itself non-dumpable so processes of the
same user cannot read its ``/proc/<pid>/environ`` or attach to it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import stat
import sys
from pathlib import Path

log = logging.getLogger("perdure.worker")

#: Environment variables that may carry the worker's token; all are removed once it is read.
TOKEN_VARIABLES = ("PERDURE_WORKER_TOKEN", "PERDURE_TOKEN")
#: The message for ``--token``: the token must not be on a command line.
ARGV_REFUSED = (
    "--token puts the clientgroup token on the command line, where ps and /proc/<pid>/cmdline show it "
    "to every user of this machine; write it to a file of mode 0600 and pass --token-file FILE, or set "
    "PERDURE_WORKER_TOKEN"
)
_PR_SET_DUMPABLE = 4


class TokenFileError(ValueError):
    """The token file is missing, unreadable, empty or readable by others."""


def read_token_file(path: Path) -> str:
    """The token in ``path``: its first line. The file must be a regular file no one but its owner
    can read or write (mode 0600 or 0400)."""
    try:
        info = path.stat()
    except OSError as exc:
        raise TokenFileError(f"cannot read token file {path}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise TokenFileError(f"token file {path} is not a regular file")
    if info.st_mode & 0o077:
        raise TokenFileError(
            f"token file {path} has mode {stat.S_IMODE(info.st_mode):04o}: others may read it; "
            f"chmod 600 {path}"
        )
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenFileError(f"cannot read token file {path}: {exc}") from None
    token = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not token:
        raise TokenFileError(f"token file {path} is empty")
    return token


def resolve_token(configured: str, token_file: str) -> str:
    """The worker's token: from ``token_file`` when given (it must not be combined with a token from
    elsewhere), else ``configured`` (from ``PERDURE_WORKER_TOKEN`` or the TOML file), else
    ``PERDURE_TOKEN``. The token variables are then scrubbed from the environment."""
    try:
        if token_file:
            if configured:
                raise TokenFileError(
                    "give the token either in a file (--token-file) or in the environment, not both"
                )
            return read_token_file(Path(token_file))
        return configured or os.environ.get("PERDURE_TOKEN", "")
    finally:
        scrub_environment()


def scrub_environment() -> None:
    """Remove the token variables from this process's environment (and so from every child's), and
    blank their values in the environment block the process started with, which is what
    ``/proc/<pid>/environ`` shows for as long as the process lives."""
    _blank_initial_environment(TOKEN_VARIABLES)
    for name in TOKEN_VARIABLES:
        os.environ.pop(name, None)


def _blank_initial_environment(names: tuple[str, ...]) -> None:
    """Overwrite, in place, the values of ``names`` in the C library's ``environ`` strings (as
    setproctitle does with argv). Must run before ``os.environ.pop`` unsets them."""
    if not sys.platform.startswith("linux"):
        return
    prefixes = tuple(f"{name}=".encode() for name in names)
    try:
        libc = ctypes.CDLL(None)
        environ = ctypes.POINTER(ctypes.c_void_p).in_dll(libc, "environ")
    except (OSError, ValueError):  # pragma: no cover - no C library environ to reach
        return
    index = 0
    while environ[index]:
        address = environ[index]
        entry = ctypes.string_at(address)
        prefix = next((p for p in prefixes if entry.startswith(p)), None)
        if prefix is not None and address is not None:
            ctypes.memset(address + len(prefix), 0, len(entry) - len(prefix))
        index += 1


def make_undumpable() -> bool:
    """Linux: forbid other processes of this user to read ``/proc/<pid>/environ`` or ``mem`` of the
    worker, or to ptrace it (``PR_SET_DUMPABLE`` 0). Returns whether it took effect."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return bool(libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) == 0)
    except (OSError, AttributeError):  # pragma: no cover - no libc to call
        log.warning("could not mark the worker non-dumpable; its environment stays readable to its user")
        return False
