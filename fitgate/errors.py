"""The one error hierarchy of fitgate: every error class the service can raise.

Every error a user can cause carries the HTTP status it maps to and a message that says
what was expected, what was found and what to do. Third-party failures (torch, ONNX Runtime,
tokenizers, file I/O) are wrapped at the boundary with ``raise ... from exc``. The service
turns them into JSON in one place (``service/http_errors.py``).

    FitgateError (500)
    ├── Unauthorized (401)         no or an unknown API token
    ├── Forbidden (403)            the token lacks the role, or its team does not own the model or job
    ├── PayloadTooLarge (413)      a request body over its configured limit
    ├── InvalidRequest (422)       a request field is invalid (the message names it)
    ├── DataError (422)            the uploaded data cannot be trained on
    │   ├── DataFormatError (422)  the file cannot be read as a table at all
    │   └── UnreadableText (422)   the base model cannot read the text (unknown pieces, letters, script)
    ├── ArgumentsError (422)       a training argument is out of bounds
    │   └── DeviceUnavailable (422) the requested training device is not on this server
    ├── ModelLoadError (422)       the base model cannot be loaded
    ├── RunDirectoryError (422)    a folder given as a run directory is not a complete run
    ├── InvalidModelName (422)     a model name is not team/name in the allowed alphabet
    ├── GateBlocked (422)          diagnosis refused the run: nothing is exported
    ├── ModelNotFound (404)        no such model or version in the registry
    ├── JobNotFound (404)          no such job, or one of another team's, or a job file not written yet
    ├── RegistryConflict (409)     the registry cannot do that now (e.g. nothing to roll back to)
    ├── JobConflict (409)          the job is in a state that does not allow this (e.g. cancel a finished one)
    ├── JobCancelled (409)    the run was cancelled between two steps
    ├── TooManyJobs (429)          the team has as many jobs queued or running as it may
    ├── NoModelDeployed (503)      nothing is promoted yet, so /predict has no model to answer with
    ├── ConfigurationError (500)   an operator setting is invalid (the message names it)
    ├── ExportError (500)          export or its parity check failed: nothing is registered
    │   └── BundleCorrupt (500)    a bundle's files do not match its manifest
    ├── InferenceError (500)       ONNX Runtime or the tokenizer failed on a loaded bundle
    └── OutOfResources (507)       the server ran out of memory or disk: the message says what to shrink or free
        ├── OutOfMemory (507)      the training process could not allocate memory
        └── DiskFull (507)         a write failed for lack of space: nothing half-written is kept

Messages of 500 errors stay in the server log: they name paths and library internals. Every other
message is shown to the user; ``OutOfResources`` messages (507) name no server path for that reason.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
from collections.abc import Iterator
from typing import Any, Protocol


class FitgateError(Exception):
    """Base class: anything fitgate raises on purpose."""

    status_code: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def user_facing(self) -> bool:
        """Whether the message may be shown to a client (server-side detail stays in the log)."""
        return self.status_code != 500  # 503 and 507 say what the user can do; a 500 names server internals


class Unauthorized(FitgateError):
    status_code = 401


class Forbidden(FitgateError):
    status_code = 403


class PayloadTooLarge(FitgateError):
    status_code = 413


class InvalidRequest(FitgateError):
    """A request field is invalid: the message names the field, the value and the fix."""

    status_code = 422


class DataError(FitgateError):
    """The data was read but cannot be trained on (columns, classes, sizes)."""

    status_code = 422


class DataFormatError(DataError):
    """The file is not a readable CSV, TSV or JSONL table."""


class UnreadableText(DataError):
    """The base model cannot read the upload's text (unknown pieces, letter-by-letter, an unfamiliar script)."""


class ArgumentsError(FitgateError):
    """A training argument is invalid."""

    status_code = 422


class DeviceUnavailable(ArgumentsError):
    """The ``device`` argument names a device this server does not have (``cuda`` on a CPU server)."""


class ModelLoadError(FitgateError):
    """The base model or its tokenizer could not be loaded."""

    status_code = 422


class RunDirectoryError(FitgateError):
    """A folder given as a run directory lacks files a finished run writes."""

    status_code = 422


class InvalidModelName(FitgateError):
    """A model name is not ``team/name`` with lowercase letters, digits, '-' and '_'."""

    status_code = 422


class Verdict(Protocol):
    """What the gate's refusal carries: ``training.diagnosis.Diagnosis`` has this shape."""

    @property
    def passed(self) -> bool: ...

    def summary(self) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...


class GateBlocked(FitgateError):
    """Diagnosis found the run overfit, underfit, without skill or degenerate; carries that diagnosis."""

    status_code = 422

    def __init__(self, diagnosis: Verdict) -> None:
        super().__init__(diagnosis.summary())
        self.diagnosis = diagnosis


class ModelNotFound(FitgateError):
    status_code = 404


class JobNotFound(FitgateError):
    status_code = 404


class RegistryConflict(FitgateError):
    status_code = 409


class JobConflict(FitgateError):
    status_code = 409


class JobCancelled(FitgateError):
    """Raised at a step boundary after a cancel request; nothing is exported."""

    status_code = 409


class TooManyJobs(FitgateError):
    """A team's queued and running jobs are at its limit: no team may hold every trainer."""

    status_code = 429


class LeaseLost(FitgateError):
    """A trainer's lease on a job was taken over by another: it must record nothing more for that job."""

    status_code = 409


class NoModelDeployed(FitgateError):
    status_code = 503


class ConfigurationError(FitgateError):
    """An operator setting (FITGATE_*) cannot be used as given."""

    status_code = 500


class ExportError(FitgateError):
    """ONNX export, its parity check or the bundle write failed."""

    status_code = 500


class BundleCorrupt(ExportError):
    """A bundle on disk does not match its checksum manifest: refuse to serve it."""


class InferenceError(FitgateError):
    """ONNX Runtime or the tokenizer failed on a bundle that loaded (a server-side fault)."""

    status_code = 500


class OutOfResources(FitgateError):
    """The server lacked memory or disk for the run; the message is safe to show the user."""

    status_code = 507


class OutOfMemory(OutOfResources):
    """The training process could not allocate memory (its limit, the machine's, or the GPU's)."""


class DiskFull(OutOfResources):
    """A write failed because the volume is full; whatever was half-written has been removed."""


_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_OUT_OF_MEMORY_MESSAGES = ("can't allocate memory", "cannot allocate memory", "out of memory")


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    """An error and every error it was raised from or while handling."""
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def _says_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, shutil.Error):  # copytree folds each file's OSError into a list of messages
        failures = exc.args[0] if exc.args and isinstance(exc.args[0], list) else []
        return any(os.strerror(code) in str(why) for *_, why in failures for code in _DISK_FULL_ERRNOS)
    if isinstance(exc, OSError):
        return exc.errno in _DISK_FULL_ERRNOS
    if getattr(exc, "sqlstate", None) == "53100":  # PostgreSQL's disk_full (psycopg's errors carry the code)
        return True
    return isinstance(exc, sqlite3.Error) and getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


def _says_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _OUT_OF_MEMORY_MESSAGES)


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc``, or an error it came from, means a volume had no space left.

    The errno alone misses three cases: ``shutil.copytree`` reports its files' failures as text
    in one ``shutil.Error``, SQLite reports SQLITE_FULL and PostgreSQL SQLSTATE 53100
    (SQLAlchemy raises its own error from the driver's, which the chain follows).
    """
    return any(_says_disk_full(e) for e in _chain(exc))


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc``, or an error it came from, is an allocation failure.

    Python and NumPy raise MemoryError; PyTorch raises RuntimeError ("DefaultCPUAllocator:
    can't allocate memory") on the CPU and torch.OutOfMemoryError, a RuntimeError, on a GPU.
    """
    return any(_says_out_of_memory(e) for e in _chain(exc))
