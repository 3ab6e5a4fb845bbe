"""Reader for the IDX format of MNIST and Fashion-MNIST (plain or gzip-compressed)."""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError

# IDX type codes (third magic byte) and the numpy dtypes they denote; all big-endian.
_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
           0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip data ({exc})") from None


def read_idx(path: Path, expected_ndim: int) -> np.ndarray:
    """Return the array stored in an IDX file, checking magic number, rank and payload size."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path}: file too short to be IDX ({len(data)} bytes)")
    zero, type_code, ndim = data[:2], data[2], data[3]
    if zero != b"\x00\x00" or type_code not in _DTYPES:
        raise DataError(f"{path}: not an IDX file (magic number {data[:4].hex()})")
    if ndim != expected_ndim:
        raise DataError(f"{path}: expected an IDX file with {expected_ndim} dimensions, found {ndim}")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataError(f"{path}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _DTYPES[type_code]
    expected = math.prod(dims) * dtype.itemsize  # Python ints: a corrupt header cannot overflow
    payload = len(data) - header_len
    if payload != expected:
        kind = "truncated" if payload < expected else "has trailing bytes"
        raise DataError(f"{path}: IDX payload {kind}: header {dims} needs {expected} bytes, found {payload}")
    return np.frombuffer(data, dtype=dtype, offset=header_len).reshape(dims).astype(dtype.newbyteorder("="))
