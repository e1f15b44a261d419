"""Text -> the int64 arrays a model binds by input name: the one tokenisation every stage shares.

No torch here: any Hugging Face tokenizer (a callable returning numpy arrays) will do.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

Batch = dict[str, np.ndarray]


def int64_inputs(encoded: Mapping[str, Any], names: Sequence[str] | None = None) -> Batch:
    """Tokenizer output as C-contiguous int64 arrays, for `names` (every output when None)."""
    keys = list(encoded) if names is None else names
    return {n: np.ascontiguousarray(encoded[n], dtype=np.int64) for n in keys}


def encode(
    tokenizer: Any,
    texts: Sequence[str],
    names: Sequence[str] | None,
    max_length: int,
    *,
    padding: bool | str = True,
) -> Batch:
    """One batch: truncated to `max_length`; padded to the longest text (True) or to `max_length` ("max_length")."""
    enc = tokenizer(list(texts), padding=padding, truncation=True, max_length=max_length, return_tensors="np")
    return int64_inputs(enc, names)


def natural_batches(
    tokenizer: Any, texts: Sequence[str], names: Sequence[str] | None, max_length: int, batch_size: int = 32
) -> Iterator[Batch]:
    """`texts` in order, `batch_size` at a time, each batch padded to its longest text (the last may be short)."""
    for i in range(0, len(texts), batch_size):
        yield encode(tokenizer, texts[i : i + batch_size], names, max_length)
