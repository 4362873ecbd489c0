"""The pixel cache: network reads of scene assets kept on disk as arrays on the grid.

One responsibility: make a rerun fetch nothing. One .npy per (item, collection, band, href
without its signing token, grid, resampling), written atomically; a damaged or mis-shaped entry
is a miss, and a full or read-only cache never fails a run. An empty `read.cache_dir` turns the
cache off. Used by `changedet.read.cog` for network reads only (a local COG window reads as fast
as the cache would).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from changedet.hrefs import public_href
from changedet.models import Asset, Grid, Scene

__all__ = ["CACHE_VERSION", "PixelCache"]

CACHE_VERSION = 1  # bump when the cached array's meaning changes


class PixelCache:
    """Arrays on the grid, one .npy per (item, asset, href, grid, resampling); atomic writes."""

    def __init__(self, root: str) -> None:
        self.root = Path(root).expanduser() if root else None

    def key(self, scene: Scene, band: str, asset: Asset, grid: Grid, resampling: str) -> str:
        blob = json.dumps(
            [
                CACHE_VERSION,
                scene.id,
                scene.collection,
                band,
                public_href(asset.href),  # signed URLs change, the asset does not
                grid.crs,
                list(grid.transform)[:6],
                grid.width,
                grid.height,
                resampling,
            ]
        )
        return hashlib.sha256(blob.encode()).hexdigest()

    def _path(self, key: str) -> Path | None:
        return None if self.root is None else self.root / key[:2] / f"{key}.npy"

    def get(self, key: str, shape: tuple[int, int]) -> np.ndarray | None:
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None  # a damaged entry is a miss; it is rewritten below
        return array if array.shape == shape else None

    def put(self, key: str, array: np.ndarray) -> None:
        path = self._path(key)
        if path is None:
            return
        tmp: str | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".", suffix=".npy.part", dir=path.parent)
            with os.fdopen(fd, "wb") as handle:
                np.save(handle, array, allow_pickle=False)
            os.replace(tmp, path)
        except OSError:
            if tmp is not None:  # a full or read-only cache never fails a run
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
