"""Logging for a mount: to stderr in the foreground, to the log file in the daemon; secrets redacted."""

from __future__ import annotations

import logging
import sys

from ciartfs.config import Settings


class RedactingFormatter(logging.Formatter):
    """Replaces every secret in the finished line, tracebacks included."""

    def __init__(self, fmt: str, secrets: list[str]) -> None:
        super().__init__(fmt)
        self._secrets = [s for s in secrets if s]

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def setup_logging(settings: Settings, *, to_stderr: bool) -> None:
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.DEBUG if settings.verbose else logging.INFO)
    formatter = RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", settings.secrets())
    handlers: list[logging.Handler] = []
    if to_stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    if settings.log_file is not None:
        settings.log_file.parent.mkdir(parents=True, exist_ok=True)
        # names from JSON may hold lone surrogates
        handlers.append(logging.FileHandler(settings.log_file, errors="backslashreplace"))
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    # httpx logs every URL at INFO (presigned URLs carry signatures); pyfuse3 logs each worker.
    for noisy in ("httpx", "httpcore", "hpack", "pyfuse3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
