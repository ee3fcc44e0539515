"""The error hierarchy shared by the worker, the batch driver and the Serve app.

Every error is built only from ``args`` so Ray can pickle it into a ``RayTaskError``
and re-raise the same type on the caller. Only the HTTP ingress maps these to status
codes (see ``HTTP_STATUS``); nothing else knows about HTTP.
"""

from __future__ import annotations


class RayDiffusionError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(RayDiffusionError, ValueError):
    """A configuration value is invalid (bad field, unknown scheduler, bad dtype...)."""


class InvalidRequestError(RayDiffusionError, ValueError):
    """A generation request is invalid; the message names the field."""


class InputFileError(InvalidRequestError):
    """A prompt file is malformed. ``args = (source, line, message)``; line 0 = whole file."""

    def __str__(self) -> str:
        source, line, message = self.args
        where = f"{source}:{line}" if line else str(source)
        return f"{where}: {message}"

    @property
    def source(self) -> str:
        return self.args[0]

    @property
    def line(self) -> int:
        return self.args[1]


class WorkerUnavailableError(RayDiffusionError):
    """No worker can take the request now (not loaded yet, broken, overloaded, gone)."""


class GenerationCancelledError(RayDiffusionError):
    """A generation was stopped at a denoising step because its deadline passed."""


class ModelLoadError(RayDiffusionError):
    """The pipeline could not be loaded (missing files, offline without a cache...)."""


# The one place where errors meet HTTP. Order matters: subclasses first.
HTTP_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (InvalidRequestError, 422),
    (ConfigError, 400),
    (GenerationCancelledError, 408),
    (WorkerUnavailableError, 503),
    (ModelLoadError, 503),
)


def http_status_for(exc: BaseException) -> int:
    """HTTP status for an exception: 4xx/503 for ours, 500 for anything unexpected."""
    for cls, status in HTTP_STATUS:
        if isinstance(exc, cls):
            return status
    return 500
