"""The structure ledger: change objects of each period matched over time into structures.

Input is one `PeriodObservation` per period, in any order (sorted here by date): the change
objects of that period's composite against the fixed baseline, and which pixels were observed
(clear in both). The baseline periods themselves are passed too, with no objects: they are the
"absent" evidence that opens the first-seen interval of structures that appear right after them.

Per period, in date order:
- each object is matched to open tracks by pixel overlap (IoU >= `match_iou`, or the overlap
  covers >= `match_overlap` of the smaller of the two);
- an object overlapping several tracks (a merge) marks all of them present; a track overlapping
  several objects (a split) is present once and remembers the number of pieces;
- object pixels outside every track either grow the matched track or, when they form a part of at
  least the minimum mapping unit (not counting a `growth_rim_px` rim along the track) and
  `new_part_fraction` of the object, start a new track (a new building beside an old one);
  unmatched objects start new tracks;
- a track not present but observed (>= `min_observed_fraction` of its pixels clear) is absent.
  An unconfirmed candidate absent `drop_after_absent` times in a row is dropped (closed); a
  confirmed structure absent `vanish_after_absent` times in a row is marked vanished (closed).
  Closed tracks free their pixels, so a later structure there gets a new track and a new id.

A track is confirmed once present in >= `min_persistence` periods with a presence share of at
least `min_presence_fraction` of the periods it was observed in since it first appeared.

Ids are derived from what is fixed the moment a track is born — its first period label and the
centroid of its first pixels, rounded to the grid — and every decision uses only past periods,
so re-running gives the same ids and appending one more period keeps every existing id.

Counts per period (`PeriodCount`): `new_confirmed` counts confirmed structures by their
first-present period; `cumulative` sums them. `cumulative_high` adds confirmed structures whose
first-seen interval has opened (they may already stand but were not yet seen: cloudy periods),
extra pieces of persistent splits, and candidates the data cannot decide yet (too few later
periods); `cumulative_low` removes confirmed structures that were only ever seen merged into one
object with an older one.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely
from scipy import ndimage

from changedet.config import TrackConfig
from changedet.errors import DataError
from changedet.models import ChangeObject, Grid, Period, PeriodCount, Structure

__all__ = [
    "Ledger",
    "PeriodObservation",
    "build_ledger",
    "footprint_geometry",
    "rasterize_objects",
]


@dataclass(frozen=True)
class PeriodObservation:
    """One period's evidence for the ledger.

    objects: change objects of this period's composite against the baseline (grid CRS geometry);
    observed: (H, W) bool, pixels where this period's change was observable (both composites clear);
    labels: optional (H, W) int label image whose value `obj.label` marks each object's pixels
        (saves rasterising the polygons; objects whose label is absent are rasterised);
    baseline: True for the baseline periods (no objects; their clear pixels count as "absent").
    """

    period: Period
    objects: tuple[ChangeObject, ...]
    observed: np.ndarray
    scene_ids: tuple[str, ...] = ()
    labels: np.ndarray | None = None
    baseline: bool = False


@dataclass(frozen=True)
class Ledger:
    """The result of `build_ledger`.

    structures: confirmed and unconfirmed tracks (see `Structure.confirmed`, `.status`:
        "active" | "vanished" | "dropped"), ordered by first-present period then id;
    counts: one PeriodCount per observation period, in date order;
    events: dicts {"period", "date", "event": "new" | "confirmed" | "vanished" | "dropped",
        "structure_id", "confirmed"} in date order;
    footprints: (H, W) int32, 0 = none, i + 1 = structures[i] (each pixel belongs to one track);
    first_period: per structure, index into `periods` of its first present period;
    periods: the observation periods in date order.
    """

    structures: tuple[Structure, ...]
    counts: tuple[PeriodCount, ...]
    events: tuple[dict[str, Any], ...]
    footprints: np.ndarray
    first_period: tuple[int, ...]
    periods: tuple[Period, ...]
    min_area_m2: float = 0.0

    @property
    def confirmed(self) -> tuple[Structure, ...]:
        return tuple(s for s in self.structures if s.confirmed)

    @property
    def candidates(self) -> tuple[Structure, ...]:
        """Unconfirmed tracks: reported separately, never counted."""
        return tuple(s for s in self.structures if not s.confirmed)


@dataclass
class _Track:
    index: int
    born: int  # period index of first presence
    pixels: np.ndarray  # sorted flat indices owned
    hits: np.ndarray  # presence count per owned pixel
    first_pixels: np.ndarray
    present: dict[int, int] = field(default_factory=dict)  # period -> pieces
    absent: list[int] = field(default_factory=list)
    confidences: list[float] = field(default_factory=list)
    shared: dict[int, set[int]] = field(default_factory=dict)  # period -> other tracks merged with
    consecutive_absent: int = 0
    confirmed_at: int | None = None
    closed_at: int | None = None
    status: str = "active"

    def add_pixels(self, new: np.ndarray) -> None:
        if new.size == 0:
            return
        self.pixels = np.concatenate([self.pixels, new])
        self.hits = np.concatenate([self.hits, np.zeros(new.size, dtype=np.int32)])
        order = np.argsort(self.pixels, kind="stable")
        self.pixels, self.hits = self.pixels[order], self.hits[order]

    def hit(self, pix: np.ndarray) -> None:
        self.hits[np.isin(self.pixels, pix, assume_unique=True)] += 1


def rasterize_objects(objects: Sequence[ChangeObject | Structure], grid: Grid) -> np.ndarray:
    """(H, W) int32 label image: objects[i] → i + 1 (pixel centres inside the polygon)."""
    from rasterio.features import rasterize

    out = np.zeros(grid.shape, dtype=np.int32)
    shapes = [
        (obj.geometry, i + 1)
        for i, obj in enumerate(objects)
        if obj.geometry is not None and not obj.geometry.is_empty
    ]
    if shapes:
        rasterize(shapes, out=out, transform=grid.transform, dtype="int32")
    return out


def _object_labels(obs: PeriodObservation, grid: Grid) -> np.ndarray:
    """Label image with objects[i] → i + 1, from obs.labels when given, else by rasterising."""
    if obs.labels is None:
        return rasterize_objects(obs.objects, grid)
    if obs.labels.shape != grid.shape:
        raise DataError(f"period {obs.period.label}: labels shape {obs.labels.shape} != grid")
    lut_size = int(obs.labels.max(initial=0)) + 1
    lut = np.zeros(lut_size, dtype=np.int32)
    for i, obj in enumerate(obs.objects):
        if 0 < obj.label < lut_size:
            lut[obj.label] = i + 1
    return lut[np.clip(obs.labels, 0, lut_size - 1).astype(np.intp)]


def footprint_geometry(mask: np.ndarray, grid: Grid) -> Any:
    """Polygon(s) in the grid CRS tracing the pixel edges of a (H, W) bool mask."""
    from rasterio.features import shapes

    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return shapely.Polygon()
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    crop = np.ascontiguousarray(mask[r0:r1, c0:c1]).astype(np.uint8)
    sub = grid.window(int(r0), int(c0), int(r1 - r0), int(c1 - c0))
    polys = [
        shapely.geometry.shape(g) for g, v in shapes(crop, mask=crop > 0, transform=sub.transform)
    ]
    return shapely.union_all(polys) if len(polys) > 1 else polys[0]


def _stable_id(prefix: str, period: Period, first_pixels: np.ndarray, grid: Grid) -> str:
    rows, cols = np.divmod(first_pixels, grid.width)
    x, y = grid.transform @ (float(cols.mean()) + 0.5, float(rows.mean()) + 0.5)
    res = grid.res or 1.0
    key = f"{grid.crs}:{round(x / res) * res:.0f},{round(y / res) * res:.0f}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:6]
    return f"{prefix}-{period.label}-{digest}" if prefix else f"{period.label}-{digest}"


def _groups(labels: np.ndarray, n: int) -> list[np.ndarray]:
    """Flat pixel indices per label 1..n."""
    flat = labels.ravel()
    nz = np.flatnonzero(flat)
    vals = flat[nz]
    order = np.argsort(vals, kind="stable")
    nz, vals = nz[order], vals[order]
    bounds = np.searchsorted(vals, np.arange(1, n + 2))
    return [nz[bounds[i] : bounds[i + 1]] for i in range(n)]


def _components(pix: np.ndarray, width: int) -> list[np.ndarray]:
    """8-connected components of a set of flat pixel indices."""
    if pix.size == 0:
        return []
    rows, cols = np.divmod(pix, width)
    r0, c0 = rows.min(), cols.min()
    crop = np.zeros((rows.max() - r0 + 1, cols.max() - c0 + 1), dtype=bool)
    crop[rows - r0, cols - c0] = True
    lab, n = ndimage.label(crop, structure=np.ones((3, 3), dtype=bool))
    comp = lab[rows - r0, cols - c0]
    return [pix[comp == k] for k in range(1, n + 1)]


def _near(
    pix: np.ndarray, owner: np.ndarray, tracks: np.ndarray, width: int, height: int, rim: int
) -> np.ndarray:
    """For flat pixel indices: is a pixel of one of `tracks` within `rim` pixels (chessboard)?"""
    rows, cols = np.divmod(pix, width)
    out = np.zeros(pix.size, dtype=bool)
    steps = range(-rim, rim + 1)
    for dr in steps:
        for dc in steps:
            if dr == 0 and dc == 0:
                continue
            r, c = rows + dr, cols + dc
            inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
            neighbour = np.where(inside, r * width + c, 0)
            out |= inside & np.isin(owner[neighbour], tracks)
    return out


def build_ledger(
    observations: Sequence[PeriodObservation],
    *,
    grid: Grid,
    config: TrackConfig,
    id_prefix: str = "",
    min_area_m2: float = 0.0,
    aoi_mask: np.ndarray | None = None,
) -> Ledger:
    """Match objects over periods into structures; first-seen intervals, persistence, counts.

    min_area_m2: minimum mapping unit; new parts smaller than this are growth, not structures.
    aoi_mask: (H, W) bool, pixels inside the AOI, for `PeriodCount.clear_fraction` (all if None).
    """
    obs = sorted(observations, key=lambda o: (o.period.start, o.period.end))
    for o in obs:
        if o.observed.shape != grid.shape:
            raise DataError(f"period {o.period.label}: observed shape {o.observed.shape} != grid")
    tracker = _Tracker(grid, config, min_area_m2)
    for k, o in enumerate(obs):
        tracker.observe(k, o)
    return _finish(obs, tracker, id_prefix, aoi_mask)


class _Tracker:
    """The matching state over periods: tracks, which track owns each pixel, which are open."""

    def __init__(self, grid: Grid, config: TrackConfig, min_area_m2: float) -> None:
        self.grid = grid
        self.config = config
        self.min_area_m2 = min_area_m2
        self.min_pixels = max(1, math.ceil(min_area_m2 / grid.pixel_area_m2 - 1e-9))
        self.owner = np.full(grid.width * grid.height, -1, dtype=np.int64)
        self.tracks: list[_Track] = []
        self.open: list[int] = []
        self.had_object: list[np.ndarray] = []  # per period, flat bool: pixel inside some object

    def observe(self, k: int, o: PeriodObservation) -> None:
        """One period: match its objects to tracks, then mark open tracks present or absent."""
        labels = _object_labels(o, self.grid) if o.objects else np.zeros(self.grid.shape, np.int32)
        self.had_object.append(labels.ravel() > 0)
        groups = _groups(labels, len(o.objects)) if o.objects else []
        present_now: dict[int, int] = {}
        for i, pix in enumerate(groups):
            if pix.size:
                self._take_object(k, pix, o.objects[i], present_now)
        self._update_open(k, o.observed.ravel(), present_now)

    def _matches(self, pix: np.ndarray, owners: np.ndarray) -> list[tuple[int, int]]:
        """(overlap, track) of the tracks an object's pixels match, largest overlap first."""
        owned = owners[owners >= 0]
        matched: list[tuple[int, int]] = []
        if owned.size:
            ids, counts = np.unique(owned, return_counts=True)
            for t, c in zip(ids.tolist(), counts.tolist(), strict=True):
                size_t = self.tracks[t].pixels.size
                iou = c / (pix.size + size_t - c)
                cover = c / min(pix.size, size_t)
                if iou >= self.config.match_iou or cover >= self.config.match_overlap:
                    matched.append((c, t))
        return sorted(matched, key=lambda ct: (-ct[0], ct[1]))

    def _take_object(
        self, k: int, pix: np.ndarray, obj: ChangeObject, present_now: dict[int, int]
    ) -> None:
        owners = self.owner[pix]
        matched = self._matches(pix, owners)
        free = pix[owners < 0]
        if not matched:
            if free.size >= self.min_pixels:
                self._new_track(free, k, obj)
            return
        for _c, t in matched:
            tr = self.tracks[t]
            tr.hit(pix[owners == t])
            present_now[t] = present_now.get(t, 0) + 1
            tr.confidences.append(float(obj.confidence))
            if len(matched) > 1:
                tr.shared.setdefault(k, set()).update(m for _, m in matched if m != t)
        self._grow_or_split(k, pix, free, obj, matched)

    def _grow_or_split(
        self,
        k: int,
        pix: np.ndarray,
        free: np.ndarray,
        obj: ChangeObject,
        matched: list[tuple[int, int]],
    ) -> None:
        """Unowned pixels of a matched object: growth of the main track, or a new neighbour."""
        grid, config = self.grid, self.config
        growth: list[np.ndarray] = []
        matched_ids = np.array([t for _c, t in matched])
        for comp in _components(free, grid.width):
            # A rim around a known structure is that structure seen more fully (mixed edge
            # pixels, a partial first sighting, construction growing), not a new neighbour.
            near = _near(
                comp, self.owner, matched_ids, grid.width, grid.height, config.growth_rim_px
            )
            core = comp[~near]
            if core.size >= self.min_pixels and comp.size >= config.new_part_fraction * pix.size:
                self._new_track(comp, k, obj)
            else:
                growth.append(comp)
        if growth:
            main = matched[0][1]
            grown = np.concatenate(growth)
            self.owner[grown] = main
            self.tracks[main].add_pixels(grown)
            self.tracks[main].hit(grown)

    def _new_track(self, pix: np.ndarray, k: int, obj: ChangeObject) -> None:
        pix = np.sort(pix)
        t = len(self.tracks)
        tr = _Track(index=t, born=k, pixels=pix, hits=np.ones(pix.size, np.int32), first_pixels=pix)
        tr.confidences.append(float(obj.confidence))
        self.tracks.append(tr)
        self.open.append(t)
        self.owner[pix] = t

    def _update_open(self, k: int, observed: np.ndarray, present_now: dict[int, int]) -> None:
        """Present tracks stay open (and may be confirmed); observed absent ones count towards
        being dropped (candidates) or vanished (confirmed), which closes them."""
        config = self.config
        still_open: list[int] = []
        for t in self.open:
            tr = self.tracks[t]
            if tr.born == k and t not in present_now:
                present_now[t] = 1  # born this period
            if t in present_now:
                tr.present[k] = present_now[t]
                tr.consecutive_absent = 0
                if tr.confirmed_at is None and _is_confirmed(tr, config):
                    tr.confirmed_at = k
                still_open.append(t)
                continue
            if observed[tr.pixels].mean() >= config.min_observed_fraction:
                tr.absent.append(k)
                tr.consecutive_absent += 1
                confirmed = tr.confirmed_at is not None
                limit = config.vanish_after_absent if confirmed else config.drop_after_absent
                if tr.consecutive_absent >= limit:
                    tr.closed_at = k
                    tr.status = "vanished" if confirmed else "dropped"
                    self.owner[tr.pixels[self.owner[tr.pixels] == t]] = -1
                    continue
            still_open.append(t)
        self.open = still_open


def _is_confirmed(tr: _Track, config: TrackConfig) -> bool:
    n_present = len(tr.present)
    observed = n_present + len(tr.absent)
    return n_present >= config.min_persistence and (
        n_present / max(observed, 1) >= config.min_presence_fraction
    )


def _observed_fraction(observed: np.ndarray, pixels: np.ndarray) -> float:
    return float(observed.ravel()[pixels].mean()) if pixels.size else 0.0


def _core(tr: _Track) -> np.ndarray:
    """A track's footprint: pixels hit in at least half of its present periods."""
    core_min = max(1, math.ceil(0.5 * len(tr.present)))
    core = tr.pixels[tr.hits >= core_min]
    return core if core.size else tr.pixels


def _last_absent(
    obs: Sequence[PeriodObservation],
    had_object: list[np.ndarray],
    tr: _Track,
    core: np.ndarray,
    config: TrackConfig,
) -> int | None:
    """Last clear period before birth where the place showed no change: the interval opens there."""
    for j in range(tr.born - 1, -1, -1):
        seen_clear = _observed_fraction(obs[j].observed, core) >= config.min_observed_fraction
        if seen_clear and had_object[j][core].mean() < 0.5:
            return j
    return None


def _confidence(tr: _Track, config: TrackConfig) -> float:
    """Mean object confidence, scaled by presence share and by persistence up to the minimum."""
    n_present = len(tr.present)
    presence = n_present / max(n_present + len(tr.absent), 1)
    mean_conf = float(np.mean(tr.confidences)) if tr.confidences else 0.0
    scale = presence * min(1.0, n_present / max(config.min_persistence, 1))
    return round(float(np.clip(mean_conf * scale, 0, 1)), 4)


def _structure(
    tr: _Track,
    structure_id: str,
    obs: Sequence[PeriodObservation],
    tracker: _Tracker,
) -> Structure:
    """The ledger's view of one track."""
    grid, config = tracker.grid, tracker.config
    periods = [o.period for o in obs]
    core = _core(tr)
    last_absent = _last_absent(obs, tracker.had_object, tr, core, config)
    end_k = tr.closed_at if tr.closed_at is not None else len(periods) - 1
    n_clear = sum(
        1
        for j in range(tr.born, end_k + 1)
        if j in tr.present
        or _observed_fraction(obs[j].observed, core) >= config.min_observed_fraction
    )
    scenes: list[str] = []
    for src in (last_absent, tr.born, tr.confirmed_at):
        if src is not None:
            scenes.extend(s for s in obs[src].scene_ids if s not in scenes)
    mask = np.zeros(grid.width * grid.height, dtype=bool)
    mask[core] = True
    return Structure(
        id=structure_id,
        geometry=footprint_geometry(mask.reshape(grid.shape), grid),
        area_m2=float(core.size * grid.pixel_area_m2),
        confidence=_confidence(tr, config),
        first_seen_start=periods[last_absent].start if last_absent is not None else None,
        first_seen_end=periods[tr.born].end,
        confirmed=tr.confirmed_at is not None,
        n_clear_obs=n_clear,
        source_scenes=tuple(scenes),
        status=tr.status,
        vanished_after=periods[max(tr.present)].end if tr.status == "vanished" else None,
    )


def _track_events(tr: _Track, s: Structure, periods: Sequence[Period]) -> list[_Ev]:
    """(period index, order, event) of a track: new, confirmed, closed (vanished/dropped)."""
    out = [(tr.born, 0, _event(periods[tr.born], "new", s))]
    if tr.confirmed_at is not None:
        out.append((tr.confirmed_at, 1, _event(periods[tr.confirmed_at], "confirmed", s)))
    if tr.closed_at is not None:
        out.append((tr.closed_at, 2, _event(periods[tr.closed_at], tr.status, s)))
    return out


def _split_extra(tr: _Track, config: TrackConfig) -> int:
    """Extra pieces of a confirmed track split into several objects in its persistent periods."""
    pieces = sorted(tr.present.values(), reverse=True)
    if len(pieces) < config.min_persistence:
        return 0
    return max(0, pieces[config.min_persistence - 1] - 1)


def _merged_only(tr: _Track, tracks: Sequence[_Track]) -> bool:
    """Seen only merged into one object with an older confirmed track: maybe the same building."""
    return bool(tr.present) and all(
        any(
            tracks[m].confirmed_at is not None and tracks[m].born <= tr.born and m < tr.index
            for m in tr.shared.get(j, ())
        )
        for j in tr.present
    )


def _pending(tr: _Track, config: TrackConfig) -> bool:
    """An unconfirmed candidate present every time it was seen, with too few periods to decide."""
    n_present = len(tr.present)
    observed_after = n_present + len(tr.absent)
    undecided = tr.closed_at is None and observed_after < config.min_persistence
    return undecided and n_present == observed_after


def _track_ids(
    tracks: Sequence[_Track], periods: Sequence[Period], grid: Grid, prefix: str
) -> list[str]:
    """Stable ids (born period + first pixels), de-duplicated in birth order."""
    ids: list[str] = []
    seen: dict[str, int] = {}
    for tr in tracks:
        base = _stable_id(prefix, periods[tr.born], tr.first_pixels, grid)
        seen[base] = seen.get(base, 0) + 1
        ids.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return ids


_Ev = tuple[int, int, dict[str, Any]]


def _finish(
    obs: Sequence[PeriodObservation],
    tracker: _Tracker,
    id_prefix: str,
    aoi_mask: np.ndarray | None,
) -> Ledger:
    grid, config, tracks = tracker.grid, tracker.config, tracker.tracks
    periods = tuple(o.period for o in obs)
    ids = _track_ids(tracks, periods, grid, id_prefix)
    built: list[tuple[int, str, Structure, int]] = []
    events: list[_Ev] = []
    flags = _CountFlags()
    for tr in tracks:
        structure = _structure(tr, ids[tr.index], obs, tracker)
        built.append((tr.born, ids[tr.index], structure, tr.index))
        events.extend(_track_events(tr, structure, periods))
        if structure.confirmed:
            flags.split_extra[tr.index] = _split_extra(tr, config)
            if _merged_only(tr, tracks):
                flags.merged_only.add(tr.index)
        elif _pending(tr, config):
            flags.pending.add(tr.index)
    built.sort(key=lambda b: (b[0], b[1]))
    footprint = np.zeros(grid.width * grid.height, dtype=np.int32)
    for pos, (_born, _id, _s, t) in enumerate(built):
        core = _core(tracks[t])
        free = footprint[core] == 0
        footprint[core[free]] = pos + 1
    events.sort(key=lambda e: (e[0], e[1], e[2]["structure_id"]))
    return Ledger(
        structures=tuple(b[2] for b in built),
        counts=_counts(obs, periods, built, flags, aoi_mask),
        events=tuple(e[2] for e in events),
        footprints=footprint.reshape(grid.shape),
        first_period=tuple(b[0] for b in built),
        periods=periods,
        min_area_m2=tracker.min_area_m2,
    )


@dataclass
class _CountFlags:
    """What the count range needs to know about tracks beyond their Structure."""

    split_extra: dict[int, int] = field(default_factory=dict)
    merged_only: set[int] = field(default_factory=set)
    pending: set[int] = field(default_factory=set)


def _event(period: Period, kind: str, s: Structure) -> dict[str, Any]:
    return {
        "period": period.label,
        "date": period.start.isoformat(),
        "event": kind,
        "structure_id": s.id,
        "confirmed": s.confirmed,
    }


def _counts(
    obs: Sequence[PeriodObservation],
    periods: tuple[Period, ...],
    built: list[tuple[int, str, Structure, int]],
    flags: _CountFlags,
    aoi_mask: np.ndarray | None,
) -> tuple[PeriodCount, ...]:
    # Best estimate: a structure first seen after unobserved (cloudy) periods may have appeared in
    # any of them, so its count is spread evenly over the periods its first-seen interval spans.
    starts = {p.start: k for k, p in enumerate(periods)}
    weight = np.zeros(len(periods))
    for born, _i, s, _t in built:
        if not s.confirmed:
            continue
        last_absent = starts.get(s.first_seen_start) if s.first_seen_start else None
        first = born if last_absent is None else min(last_absent + 1, born)
        weight[first : born + 1] += 1.0 / (born + 1 - first)
    expected = np.cumsum(weight)
    out: list[PeriodCount] = []
    seen = 0
    for k, p in enumerate(periods):
        new = sum(1 for born, _i, s, _t in built if s.confirmed and born == k)
        seen += new
        cumulative = int(np.floor(expected[k] + 0.5 + 1e-9))
        low = seen - sum(1 for born, _i, s, t in built if t in flags.merged_only and born <= k)
        low = min(low, cumulative)
        high = 0
        for born, _i, s, t in built:
            if s.confirmed:
                opened = s.first_seen_start is None or s.first_seen_start < p.end
                if born <= k or opened:
                    high += 1
                if born <= k:
                    high += flags.split_extra.get(t, 0)
            elif t in flags.pending and born <= k:
                high += 1
        observed = obs[k].observed
        if aoi_mask is not None:
            clear = float(observed[aoi_mask].mean()) if aoi_mask.any() else 0.0
        else:
            clear = float(observed.mean())
        out.append(
            PeriodCount(
                period=p,
                new_confirmed=new,
                cumulative=cumulative,
                cumulative_low=max(0, low),
                cumulative_high=max(high, cumulative),
                clear_fraction=round(clear, 4),
            )
        )
    return tuple(out)
