"""The pixel cache's entries: what goes in comes back, from many threads at once, and an entry
whose header does not hold its bytes is a miss (the HTTP paths are in test_fetch_loopback.py)."""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from changedet.read.cache import PixelCache


def _only_entry(cache: PixelCache) -> Path:
    (path,) = (p for p in Path(str(cache.root)).rglob("*.npyc") if p.is_file())
    return path


@pytest.mark.parametrize("dtype", [np.uint16, np.uint8, np.float32])
def test_an_entry_gives_back_the_array_it_was_given(tmp_path: Path, dtype: type) -> None:
    cache = PixelCache(str(tmp_path))
    array = (np.arange(12 * 7).reshape(12, 7) * 3).astype(dtype)
    cache.put("k", array)
    got = cache.get("k", (12, 7))
    assert got is not None and got.dtype == array.dtype
    np.testing.assert_array_equal(got, array)
    got[0, 0] = 1  # the reader writes into what it gets: a copy, not the file's buffer
    assert cache.discarded == []


def test_many_threads_read_entries_at_once(tmp_path: Path) -> None:
    # The reader's threads read entries concurrently; each must get its own array back.
    cache = PixelCache(str(tmp_path))
    arrays = {f"k{i}": np.full((50, 40), i, np.uint16) for i in range(16)}
    for key, array in arrays.items():
        cache.put(key, array)

    def read(key: str) -> bool:
        got = cache.get(key, (50, 40))
        return got is not None and bool((got == arrays[key]).all())

    keys = [k for _ in range(40) for k in arrays]
    with ThreadPoolExecutor(max_workers=8) as pool:
        assert all(pool.map(read, keys))
    assert cache.discarded == []


@pytest.mark.parametrize(
    "change, why",
    [
        ({"shape": [7, 12]}, "shape (7, 12) instead of (12, 7)"),
        ({"dtype": "<f8"}, "bytes do not hold"),
        ({"dtype": "|O"}, "bytes do not hold"),
        ({"dtype": "not a dtype"}, "header damaged"),
    ],
)
def test_an_entry_whose_header_does_not_hold_its_bytes_is_a_miss(
    tmp_path: Path, change: dict[str, object], why: str
) -> None:
    cache = PixelCache(str(tmp_path))
    cache.put("k", np.ones((12, 7), np.uint16))
    path = _only_entry(cache)
    magic, header, data = path.read_bytes().split(b"\n", 2)
    fields = {**json.loads(header), **change}
    assert fields["sha256"] == hashlib.sha256(data).hexdigest()  # the payload itself is sound
    path.write_bytes(magic + b"\n" + json.dumps(fields).encode() + b"\n" + data)
    assert cache.get("k", (12, 7)) is None
    assert not path.exists()
    (note,) = cache.discarded
    assert why in note
