"""The server's own logs: a server log and an access log, rotated by size, reconfigured live.

Secrets never reach a log line: query values whose names look secret are replaced before logging.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import threading
from pathlib import Path

from perdure.config.model import ServerLogConfig
from perdure.logescape import EscapingFormatter

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
_SECRET_PARAM = re.compile(r"(?i)((?:^|&)[^=&]*(?:token|secret|password|key)[^=&]*=)[^&]*")
ACCESS_LOGGER = "perdure.access"


def redact_query(query: str) -> str:
    return _SECRET_PARAM.sub(r"\1****", query)


class RotatingLog(logging.handlers.RotatingFileHandler):
    """A size-rotated log that formats each line once and knows its size from the file position.

    Python's ``RotatingFileHandler`` stats the path twice and formats the record twice for every line,
    which costs the access log (a line per request) more than the request's own logging needs (issue
    22). Rotation happens at the same line as there: before a line that would reach ``maxBytes``.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._write(self.format(record) + self.terminator)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def write_formatted(self, message: str) -> bool:
        """Write ``message``, already formatted as this handler's formatter would, as :meth:`emit`
        writes a record's: for the access log (a line per request, issue 22), which then makes no
        ``LogRecord``. False if the write failed (the caller logs the line the ordinary way, which
        reports the error)."""
        with self.lock:  # type: ignore[union-attr]  # made by Handler.__init__
            try:
                self._write(message + self.terminator)
            except Exception:
                return False
        return True

    def _write(self, line: str) -> None:
        if self.stream is None:
            self.stream = self._open()
        # Only a regular file rotates (a log configured as /dev/stdout, say, never does).
        if self.maxBytes > 0 and self._regular():
            self.stream.seek(0, 2)  # the end, wherever other server processes have written it to
            if self.stream.tell() + len(line) >= self.maxBytes:
                self.doRollover()
        self.stream.write(line)
        self.flush()

    def _regular(self) -> bool:
        known: bool | None = getattr(self, "_is_regular", None)
        if known is None:
            known = os.path.isfile(self.baseFilename)
            self._is_regular = known
        return known


class ServerLogs:
    """Owns the two file handlers; ``apply`` is called whenever the log configuration changes."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._lock = threading.Lock()
        self._server: logging.handlers.RotatingFileHandler | None = None
        self._access: logging.handlers.RotatingFileHandler | None = None
        self.server_path = data_dir / "logs" / "perdure.log"

    @property
    def access_path(self) -> Path:
        return self.server_path.with_name(self.server_path.stem + "-access.log")

    def paths(self) -> dict[str, Path]:
        """URL file name -> file, e.g. ``perdure.log`` and ``perdure-access.log``."""
        return {self.server_path.stem + ".log": self.server_path, self.access_path.name: self.access_path}

    def apply(self, config: ServerLogConfig) -> None:
        path = Path(config.file) if config.file else self.data_dir / "logs" / "perdure.log"
        if not path.is_absolute():
            path = self.data_dir / path
        max_bytes = config.maxSizeMB * 1024 * 1024
        with self._lock:
            if path != self.server_path or self._server is None:
                self.server_path = path
                path.parent.mkdir(parents=True, exist_ok=True)
                self._server = self._swap(
                    logging.getLogger(), self._server, path, max_bytes, config.maxBackups
                )
                access_logger = logging.getLogger(ACCESS_LOGGER)
                access_logger.propagate = False
                access_logger.setLevel(logging.INFO)
                self._access = self._swap(
                    access_logger, self._access, self.access_path, max_bytes, config.maxBackups
                )
                if self._access is not None:
                    self._access.setFormatter(EscapingFormatter("%(message)s"))
            for handler in (self._server, self._access):
                if handler is not None:
                    handler.maxBytes = max_bytes
                    handler.backupCount = config.maxBackups
            level = _LEVELS[config.level]
            logging.getLogger().setLevel(min(level, logging.getLogger().level or level))
            logging.getLogger("perdure").setLevel(level)
            if self._server is not None:
                self._server.setLevel(level)

    @staticmethod
    def _swap(
        logger: logging.Logger,
        old: logging.handlers.RotatingFileHandler | None,
        path: Path,
        max_bytes: int,
        backups: int,
    ) -> logging.handlers.RotatingFileHandler:
        handler = RotatingLog(path, maxBytes=max_bytes, backupCount=backups, delay=False)
        handler.setFormatter(EscapingFormatter(_FORMAT))
        logger.addHandler(handler)
        if old is not None:
            logger.removeHandler(old)
            old.close()
        return handler

    def close(self) -> None:
        with self._lock:
            if self._server is not None:
                logging.getLogger().removeHandler(self._server)
                self._server.close()
                self._server = None
            if self._access is not None:
                logging.getLogger(ACCESS_LOGGER).removeHandler(self._access)
                self._access.close()
                self._access = None

    @staticmethod
    def read(path: Path, limit: int = 64 * 1024 * 1024) -> str:
        if not path.exists():
            return ""
        with path.open("rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - limit))
            return handle.read().decode("utf-8", errors="replace")
