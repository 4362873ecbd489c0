"""The pixel cache's entries: what goes in comes back, from many threads at once, and an entry
whose header does not hold its bytes is a miss (the HTTP paths are in test_fetch_loopback.py)."""

from __future__ import annotations

import hashlib
import json
import os
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


def test_the_cache_stays_under_its_limit_by_removing_the_least_recently_used(
    tmp_path: Path,
) -> None:
    probe = PixelCache(str(tmp_path / "probe"))
    probe.put("kx", np.zeros((30, 20), np.uint16))
    size = _only_entry(probe).stat().st_size  # every entry below has this size (same key length)
    root = tmp_path / "cache"
    cache = PixelCache(str(root), max_bytes=int(size * 3.5))
    arrays = {f"k{i}": np.full((30, 20), i, np.uint16) for i in range(4)}
    for i in range(3):
        cache.put(f"k{i}", arrays[f"k{i}"])
    entries = {p.name: p for p in root.rglob("*.npyc")}
    assert len(entries) == 3 and cache.evicted == 0  # under the limit: nothing goes
    for age, path in enumerate(sorted(entries.values())):  # written long ago, one after another
        os.utime(path, (1_000_000 + age, 1_000_000 + age))
    times = {k: os.stat(_entry_path(cache, k)).st_mtime for k in ("k0", "k1", "k2")}
    first = min(times, key=times.__getitem__)
    assert cache.get(first, (30, 20)) is not None  # a hit: now the most recently used
    cache.put("k3", arrays["k3"])  # four entries > 3.5: down to 0.8 x 3.5 = 2.8, two go
    kept = {k for k in arrays if cache.get(k, (30, 20)) is not None}
    assert kept == {first, "k3"}
    assert cache.evicted == 2 and cache.evicted_bytes == 2 * size
    assert cache.discarded == []  # evicted is not damaged
    (note,) = cache.notes()
    assert "2 least recently used entries" in note and "read.cache_max_gb" in note

    # Another process's cache over the same folder counts what is there before it adds.
    other = PixelCache(str(root), max_bytes=int(size * 1.5))
    other.put("k4", np.full((30, 20), 4, np.uint16))
    assert [p.name for p in root.rglob("*.npyc")] == [_entry_path(other, "k4").name]
    np.testing.assert_array_equal(other.get("k4", (30, 20)), np.full((30, 20), 4, np.uint16))


def _entry_path(cache: PixelCache, key: str) -> Path:
    path = cache._path(key)  # the cache's own layout, not a copy of it
    assert path is not None
    return path
