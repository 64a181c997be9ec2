"""Steps packed compactly for the database: numbers as typed arrays, not JSON text.

A step holds its top-50 candidates: 50 ids and 3 x 50 floats. As JSON that is about 4 KB a
step; packed it is about 800 bytes. The packing is lossless: floats are stored as float32
only where every value of the array survives the round trip exactly (the model computes in
float32, so a trace it made always does); otherwise as float64 (an imported trace may hold
any float).

[Step, Step, ...] -> bytes -> [Step, Step, ...], equal field by field.
"""

from __future__ import annotations

import json
import struct
import zlib
from itertools import chain

import numpy as np

from core.trace import Step

FORMAT = 1
_FLOAT_FIELDS = ("prob", "sample_prob", "entropy")
_TOP_FLOATS = ("top_logits", "top_probs", "top_sample_probs")


class PackError(ValueError):
    """The bytes are not a packed list of steps."""


def _floats(values: list[float]) -> np.ndarray:
    wide = np.asarray(values, dtype=np.float64)
    narrow = wide.astype(np.float32)
    return narrow if np.array_equal(narrow.astype(np.float64), wide, equal_nan=True) else wide


def pack_steps(steps: list[Step]) -> bytes:
    """Steps -> zlib-compressed bytes: a JSON header (texts, array layout) and raw arrays."""
    arrays: dict[str, np.ndarray] = {
        "token_id": np.asarray([s.token_id for s in steps], dtype=np.int64),
        "rank": np.asarray([s.rank for s in steps], dtype=np.int64),
        "n_top": np.asarray([len(s.top_ids) for s in steps], dtype=np.int64),
        "top_ids": np.fromiter(chain.from_iterable(s.top_ids for s in steps), dtype=np.int64),
    }
    for name in _FLOAT_FIELDS:
        arrays[name] = _floats([getattr(s, name) for s in steps])
    for name in _TOP_FLOATS:
        arrays[name] = _floats(list(chain.from_iterable(getattr(s, name) for s in steps)))
    for name in ("token_id", "rank", "n_top", "top_ids"):  # ids fit in 32 bits for every real vocabulary
        if arrays[name].size == 0 or (arrays[name].min() >= -(2**31) and arrays[name].max() < 2**31):
            arrays[name] = arrays[name].astype(np.int32)
    header = {
        "format": FORMAT,
        "texts": [s.text for s in steps],
        "arrays": [[name, a.dtype.str, int(a.size)] for name, a in arrays.items()],
    }
    head = json.dumps(header, ensure_ascii=False).encode("utf-8")
    body = b"".join(a.tobytes() for a in arrays.values())
    return zlib.compress(struct.pack("<I", len(head)) + head + body, 6)


_DTYPES = {"<i4", "<i8", "<f4", "<f8"}


def unpack_steps(blob: bytes) -> list[Step]:
    """The inverse of pack_steps. Raises PackError on bytes it did not make."""
    try:
        raw = zlib.decompress(blob)
        (n_head,) = struct.unpack_from("<I", raw)
        header = json.loads(raw[4 : 4 + n_head].decode("utf-8"))
        if header.get("format") != FORMAT:
            raise PackError("unknown step format")
        arrays: dict[str, np.ndarray] = {}
        offset = 4 + n_head
        for name, dtype, size in header["arrays"]:
            if dtype not in _DTYPES:
                raise PackError(f"unexpected array type {dtype}")
            a = np.frombuffer(raw, dtype=np.dtype(dtype), count=size, offset=offset)
            arrays[name] = a
            offset += a.nbytes
        texts = header["texts"]
    except (zlib.error, struct.error, ValueError, KeyError, TypeError) as exc:
        raise PackError(f"the stored steps cannot be read ({exc})") from exc
    n = len(texts)
    bounds = np.concatenate([[0], np.cumsum(arrays["n_top"])]).tolist()
    top = {name: arrays[name].tolist() for name in ("top_ids", *_TOP_FLOATS)}
    scalars = {name: arrays[name].tolist() for name in ("token_id", "rank", *_FLOAT_FIELDS)}
    steps = []
    for i in range(n):
        lo, hi = bounds[i], bounds[i + 1]
        steps.append(
            Step(
                token_id=scalars["token_id"][i],
                text=texts[i],
                prob=scalars["prob"][i],
                sample_prob=scalars["sample_prob"][i],
                rank=scalars["rank"][i],
                entropy=scalars["entropy"][i],
                top_ids=top["top_ids"][lo:hi],
                top_logits=top["top_logits"][lo:hi],
                top_probs=top["top_probs"][lo:hi],
                top_sample_probs=top["top_sample_probs"][lo:hi],
            )
        )
    return steps


def pack_ids(ids: list[int]) -> bytes:
    """Token ids as little-endian int32 (4 bytes each)."""
    return np.asarray(ids, dtype=np.int32).tobytes()


def unpack_ids(blob: bytes) -> list[int]:
    return np.frombuffer(blob, dtype="<i4").tolist()
