"""Pictures and imagery drawn by a run, with what each was drawn from, so a rerun takes again what
it would draw the same.

One responsibility: reusing the previous run's unchanged drawings. A chip, the before quicklook
or an imagery COG is a pure function of a few arrays (a structure's evidence windows, a
composite's bands or display values) and the stretch; its `key` is a digest of exactly those
inputs and `DRAWING_VERSION`. run.json records, for every such file, that key and the SHA-256
of the file's bytes (`drawn`). The next run
into the same folder — a monitoring run after one new scene, a rerun — looks a file up in the
previous run.json: same key and the file's bytes still hash to what was recorded → the bytes are
taken as they are; anything else (a changed input, another version, a damaged or missing file)
→ drawn again. Nothing is trusted that the hash does not confirm.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from changedet import __version__

__all__ = ["DRAWING_VERSION", "Drawings", "drawing_key", "take_or_draw"]

DRAWING_VERSION = 2  # bump when a picture or an imagery COG is drawn differently from its inputs


def drawing_key(*parts: Any) -> str:
    """Hex digest of a drawing's inputs: arrays (dtype, shape, bytes), strings, numbers, tuples."""
    h = hashlib.blake2b(digest_size=20)
    h.update(f"changedet {__version__} drawing {DRAWING_VERSION}".encode())
    for part in parts:
        _feed(h, part)
    return h.hexdigest()


def _feed(h: Any, part: Any) -> None:
    if isinstance(part, np.ndarray):
        arr = np.ascontiguousarray(part)
        h.update(f"|a{arr.dtype.str}{arr.shape}".encode())
        h.update(arr.reshape(-1).view(np.uint8))
    elif isinstance(part, bytes):
        h.update(b"|b%d|" % len(part))
        h.update(part)
    elif isinstance(part, tuple | list):
        h.update(b"|t%d" % len(part))
        for p in part:
            _feed(h, p)
    else:
        h.update(f"|{type(part).__name__}:{part!r}".encode())


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Drawings:
    """The drawings of one run (thread-safe: the imagery and the pictures are drawn on two
    threads), and those the previous run in `previous_dir` recorded."""

    def __init__(self, previous_dir: Path | None = None) -> None:
        self._previous_dir = previous_dir
        self._previous = _recorded(previous_dir)
        self._lock = threading.Lock()
        self._drawn: dict[str, dict[str, str]] = {}

    def take(self, rel: str, key: str) -> bytes | None:
        """The previous run's bytes of `rel` when drawn from the same inputs and intact (then
        recorded as this run's, with the hash just checked)."""
        if self._previous_dir is None or self._previous.get(rel, {}).get("from") != key:
            return None
        try:
            data = (self._previous_dir / rel).read_bytes()
        except OSError:
            return None
        sha256 = _sha256(data)
        if sha256 != self._previous[rel].get("sha256"):
            return None
        with self._lock:
            self._drawn[rel] = {"from": key, "sha256": sha256}
        return data

    def record(self, rel: str, key: str, data: bytes) -> None:
        with self._lock:
            self._drawn[rel] = {"from": key, "sha256": _sha256(data)}

    def manifest(self) -> dict[str, dict[str, str]]:
        """run.json's `drawn`: relative path → {"from": key, "sha256": of the file}."""
        with self._lock:
            return dict(sorted(self._drawn.items()))


def _recorded(previous_dir: Path | None) -> Mapping[str, Mapping[str, str]]:
    """The `drawn` map of the previous run.json, or nothing when it cannot be read."""
    if previous_dir is None:
        return {}
    try:
        drawn = json.loads((previous_dir / "run.json").read_text(encoding="utf-8")).get("drawn")
    except (OSError, ValueError, AttributeError):
        return {}
    if not isinstance(drawn, dict):
        return {}
    return {k: v for k, v in drawn.items() if isinstance(k, str) and isinstance(v, dict)}


def take_or_draw(
    drawings: Drawings | None, rel: str, inputs: tuple[Any, ...], draw: Callable[[], bytes]
) -> tuple[bytes, bool]:
    """`rel`'s bytes and whether they were taken from the previous run: taken when it drew them
    from the same `inputs`, else `draw()`n (always without `drawings`)."""
    if drawings is None:
        return draw(), False
    key = drawing_key(*inputs)
    taken = drawings.take(rel, key)
    if taken is not None:
        return taken, True
    data = draw()
    drawings.record(rel, key, data)
    return data, False
