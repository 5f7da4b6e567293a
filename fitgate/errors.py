"""The one error hierarchy of fitgate.

Every error a user can cause carries the HTTP status it maps to and a message that says
what was expected, what was found and what to do. Third-party failures (torch, tokenizers,
file I/O) are wrapped at the boundary with ``raise ... from exc``.

    FitgateError (500)
    ├── DataError (422)            the uploaded data cannot be trained on
    │   └── DataFormatError (422)  the file cannot be read as a table at all
    ├── ArgumentsError (422)       a training argument is out of bounds
    ├── ModelLoadError (422)       the base model cannot be loaded
    ├── TrainingCancelled (409)    the run was cancelled between two steps
    ├── InvalidModelName (422)     a model name is not team/name in the allowed alphabet
    ├── ModelNotFound (404)        no such model or version in the registry
    ├── RegistryConflict (409)     the registry cannot do that now (e.g. nothing to roll back to)
    ├── GateBlocked (422)          diagnosis refused the run: nothing is exported
    └── ExportError (500)          export or its parity check failed: nothing is registered
        └── BundleCorrupt (500)    a bundle's files do not match its manifest
"""

from __future__ import annotations


class FitgateError(Exception):
    """Base class: anything fitgate raises on purpose."""

    status_code: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class DataError(FitgateError):
    """The data was read but cannot be trained on (columns, classes, sizes)."""

    status_code = 422


class DataFormatError(DataError):
    """The file is not a readable CSV, TSV or JSONL table."""


class ArgumentsError(FitgateError):
    """A training argument is invalid."""

    status_code = 422


class ModelLoadError(FitgateError):
    """The base model or its tokenizer could not be loaded."""

    status_code = 422


class TrainingCancelled(FitgateError):
    """Raised at a step boundary after a cancel request; nothing is exported."""

    status_code = 409


class InvalidModelName(FitgateError):
    """A model name is not ``team/name`` with lowercase letters, digits, '-' and '_'."""

    status_code = 422


class ModelNotFound(FitgateError):
    status_code = 404


class RegistryConflict(FitgateError):
    status_code = 409


class GateBlocked(FitgateError):
    """Diagnosis found the run overfit, underfit, without skill or degenerate."""

    status_code = 422


class ExportError(FitgateError):
    """ONNX export, its parity check or the bundle write failed."""

    status_code = 500


class BundleCorrupt(ExportError):
    """A bundle on disk does not match its checksum manifest: refuse to serve it."""
