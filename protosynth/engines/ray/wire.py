"""Arrays and errors as bytes in Ray Data columns.

A planned batch's tensor has its own shape (image or token batch, the last one of a shard shorter),
and Ray Data would have to reconcile those shapes across blocks; one ``.npy`` blob per row has a
single column type and keeps dtype and shape exactly. Errors travel the same way, as data: the
driver raises the first one in plan order, so which bad image is reported does not depend on timing.
"""

from __future__ import annotations

import io
import pickle

import numpy as np

from ...errors import ProtosynthError


def to_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def from_bytes(blob: bytes) -> np.ndarray:
    return np.load(io.BytesIO(blob), allow_pickle=False)


def error_bytes(exc: ProtosynthError | None) -> bytes:
    return b"" if exc is None else pickle.dumps(exc)  # ProtosynthError pickles with its parameter references


def raise_error(blob: bytes) -> None:
    if blob:
        raise pickle.loads(blob)


def column(items: list) -> np.ndarray:
    """A Ray Data column of Python objects (bytes), one per row."""
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out
