"""The monitor's period cache: each period's change against the baseline, on disk between runs.

Keyed by a digest of everything the period's change is computed from (`core.timeseries`), so a
hit is exactly what computing again would give, and a period a new scene touched (its composite
changed) misses and is computed again. One pickle per period in `<state>.periods/<aoi_id>/`,
written atomically; a damaged or unreadable entry is a miss. `prune()` removes the entries the
last run did not use, so the folder holds one series per AOI. A cache, not state: deleting it
costs one slower run.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import tempfile
from pathlib import Path

from changedet.core.track import PeriodObservation

__all__ = ["DiskMemo", "memo_folder"]


def memo_folder(state: Path, aoi_id: str) -> Path:
    return state.with_name(state.name + ".periods") / aoi_id


class DiskMemo:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.used: set[str] = set()
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.pickle"

    def get(self, key: str) -> PeriodObservation | None:
        self.used.add(key)
        try:
            with self._path(key).open("rb") as f:
                found = pickle.load(f)  # our own files, in the state's folder
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ValueError):
            self.misses += 1
            return None
        if not isinstance(found, PeriodObservation):
            self.misses += 1
            return None
        self.hits += 1
        return found

    def put(self, key: str, observation: PeriodObservation) -> None:
        self.used.add(key)
        with contextlib.suppress(OSError):  # a cache that cannot be written is only slower
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as f:
                    pickle.dump(observation, f, protocol=pickle.HIGHEST_PROTOCOL)
                os.replace(tmp, self._path(key))
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise

    def prune(self) -> None:
        """Remove every entry this run did not use (and leftovers of killed writes)."""
        if not self.folder.is_dir():
            return
        for path in self.folder.iterdir():
            if path.suffix == ".part" or path.stem not in self.used:
                path.unlink(missing_ok=True)
