"""Error types with messages meant for users: each names the input at fault and, where it can, the fix.

The CLI turns any `FacenasError` into one clear line and a non-zero exit code, never a traceback.
"""

from __future__ import annotations


class FacenasError(Exception):
    """Base class of every error facenas raises on purpose."""


class ConfigError(FacenasError, ValueError):
    """A configuration file or value is invalid."""


class ArchError(FacenasError, ValueError):
    """An architecture description is invalid (bad kernel, depth 0, ops of the wrong length...)."""


class DataError(FacenasError):
    """A dataset is missing, corrupt or malformed."""


class TrainingError(FacenasError):
    """Training could not go on (for example the loss became NaN)."""


class NonFiniteLossError(TrainingError):
    """The training loss became NaN or infinite."""


class JournalError(FacenasError):
    """The search journal is unreadable or does not belong to this run."""


class ExportError(FacenasError):
    """An export failed or did not pass its verification."""


class SearchAborted(FacenasError):
    """The search stopped on purpose, e.g. after too many failed candidates in a row."""


class ReplayDivergence(FacenasError):
    """The strategy proposed a candidate other than the one a replayed log holds."""

    def __init__(self, index: int, proposed: str, logged: str) -> None:
        self.index = index
        self.proposed = proposed
        self.logged = logged
        super().__init__(f"candidate {index}: strategy proposed {proposed}, log has {logged}")

    def __reduce__(self) -> tuple:
        return (type(self), (self.index, self.proposed, self.logged))
