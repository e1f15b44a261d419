"""The one exception family users see: each carries a single-line, actionable message."""

from __future__ import annotations

import sys
from collections.abc import Callable


class QuantmatrixError(Exception):
    """Base class: the message names the file, key or artefact at fault."""


class SpecError(QuantmatrixError):
    """matrix.toml is malformed or inconsistent."""


class DataError(QuantmatrixError):
    """A dataset file or source cannot be loaded as labelled text."""


class RecordError(QuantmatrixError):
    """A manifest or result JSON is invalid, of an unknown schema version, or corrupt."""


class ArtifactError(QuantmatrixError):
    """An artefact is missing, partial, or its files do not match the manifest."""


def run_command(body: Callable[[], int]) -> int:
    """A command line's exit status: `body()`'s own, or 2 after printing its QuantmatrixError as `error: ...`."""
    try:
        return body()
    except QuantmatrixError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
