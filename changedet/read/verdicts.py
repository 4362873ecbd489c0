"""What the SCL probe of the last run found, kept for the next: per scene its verdict and the
digest of its final clear mask, and the bright-roof rule's counts over every scene.

A monitoring run adds a scene or two to a series whose SCL it has looked at. Each scene's verdict
(AOI coverage, clear fraction, why it is skipped) and clear mask depend on its own SCL window and
on the bright-roof pixels, which the counts over every scene's SCL decide. The counts are sums
over scenes, so the next run adds the new scenes' counts to the kept ones; while the roof pixels
they give are the same as before, every known scene's clear mask and verdict are what the last
run found, and its SCL is not read again (only when its pixels are: a date not kept).

Kept under a digest of everything else a verdict depends on (the grid, the AOI mask, the mask
settings and the selection thresholds), one entry per AOI, replaced by every run; a scene is
known only with the same id, time, SCL asset and cloud cover. When a known scene is gone (a
reprocessed scene replaced it, the dates moved), or the entry cannot be read, the probe looks at
every scene again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from changedet.config import MaskConfig, ReadConfig
from changedet.core.reuse import ArrayMemo, arrays_of, json_array, json_of
from changedet.hrefs import public_href
from changedet.models import Grid, Scene
from changedet.read.kept import grid_facts

__all__ = [
    "VERDICTS_VERSION",
    "KeptVerdicts",
    "Verdict",
    "clear_digest",
    "keep_verdicts",
    "kept_verdicts",
    "verdicts_key",
]

# Part of the key: bump it when a verdict, a clear mask or the counts are made another way.
VERDICTS_VERSION = "verdicts-2"  # 2: clear fractions of the window, not the polygon


@dataclass(frozen=True)
class Verdict:
    """One scene's probe: AOI coverage and clear fraction, why it is skipped (None: used), and
    the digest of its final clear mask (`clear_digest`)."""

    coverage: float
    clear_fraction: float
    reason: str | None
    digest: bytes


@dataclass(frozen=True)
class KeptVerdicts:
    """The last run's verdicts by scene id (with the identity each was made for) and its
    bright-roof counts (dates observed, dates SCL calls cloud, per pixel)."""

    scenes: dict[str, tuple[str, Verdict]]
    n_obs: np.ndarray
    n_cloudy: np.ndarray

    def known(self, scenes: Sequence[Scene]) -> dict[str, Verdict] | None:
        """The verdicts of `scenes` this entry holds, or None when one of its scenes is not
        among them as it was (gone, or changed): its counts would count it."""
        given = {s.id: s for s in scenes if "scl" in s.assets}
        found: dict[str, Verdict] = {}
        for scene_id, (identity, verdict) in self.scenes.items():
            scene = given.get(scene_id)
            if scene is None or scene_identity(scene) != identity:
                return None
            found[scene_id] = verdict
        return found


def clear_digest(clear: np.ndarray) -> bytes:
    """The digest a scene's clear mask is known by (`read.kept.date_key` names dates by it)."""
    return hashlib.sha256(np.ascontiguousarray(clear, dtype=bool).data).digest()


def scene_identity(scene: Scene) -> str:
    """What a scene's SCL window and its skip reason are made from, besides the settings."""
    scl = scene.assets["scl"]
    return json.dumps(
        [
            scene.id,
            scene.collection,
            scene.datetime.isoformat(),
            scene.processing_baseline,  # reprocessed in place: same id and hrefs
            scene.updated,
            public_href(scl.href),
            scl.nodata,
            scene.cloud_cover,
        ]
    )


def verdicts_key(
    grid: Grid, aoi_mask: np.ndarray, read_config: ReadConfig, mask_config: MaskConfig
) -> str:
    facts = json.dumps(
        [
            VERDICTS_VERSION,
            *grid_facts(grid),
            read_config.min_aoi_coverage,
            read_config.min_aoi_clear_fraction,
            repr(mask_config),
        ]
    )
    digest = hashlib.sha256(facts.encode())
    digest.update(np.ascontiguousarray(aoi_mask, dtype=bool).data)
    return "verdicts-" + digest.hexdigest()


def kept_verdicts(keep: ArrayMemo, key: str, shape: tuple[int, int]) -> KeptVerdicts | None:
    """The entry under `key`, or None (absent, damaged, or not of this grid)."""
    arrays = arrays_of(keep, key, ("n_obs", "n_cloudy", "scenes"))
    if arrays is None:
        return None
    n_obs, n_cloudy, listed = arrays
    if any(a.shape != shape or a.dtype != np.int32 for a in (n_obs, n_cloudy)):
        return None
    try:
        scenes = {row[0]: (row[1], _verdict(row[2:])) for row in json_of(listed)}
    except (ValueError, TypeError, IndexError):
        return None
    return KeptVerdicts(scenes, np.array(n_obs), np.array(n_cloudy))


def _verdict(row: Sequence[Any]) -> Verdict:
    coverage, fraction, reason, digest = row
    if not (isinstance(reason, str) or reason is None):
        raise TypeError("reason")
    return Verdict(float(coverage), float(fraction), reason, bytes.fromhex(digest))


def keep_verdicts(
    keep: ArrayMemo,
    key: str,
    scenes: Sequence[Scene],
    verdicts: Mapping[str, Verdict],
    n_obs: np.ndarray,
    n_cloudy: np.ndarray,
) -> None:
    """Keep this run's verdicts (of the `scenes` that have one) and counts for the next run."""
    rows = [
        [
            s.id,
            scene_identity(s),
            verdicts[s.id].coverage,
            verdicts[s.id].clear_fraction,
            verdicts[s.id].reason,
            verdicts[s.id].digest.hex(),
        ]
        for s in scenes
        if s.id in verdicts
    ]
    listed = json_array(rows)
    keep.put_arrays(
        key,
        {
            "n_obs": n_obs.astype(np.int32, copy=False),
            "n_cloudy": n_cloudy.astype(np.int32, copy=False),
            "scenes": listed,
        },
    )
