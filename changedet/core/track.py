"""Change objects of each period matched over time into tracks: the tracker behind the ledger.

Input is one `PeriodObservation` per period, in date order: the change objects of that period's
composite against the fixed baseline, and which pixels were observed (clear in both). The baseline
periods themselves come first, with no objects: they are the "absent" evidence that opens the
first-seen interval of structures that appear right after them.

Per period:
- each object is matched to open tracks by pixel overlap (IoU >= `match_iou`, or the overlap
  covers >= `match_overlap` of the smaller of the two);
- tracks born in the same period that one object now covers were pieces of one structure seen
  apart: they are merged;
- tracks born in this period that do not look like roofs and lie within `site_gap_px` of each
  other are one site seen in pieces (a compound graded at once): they are merged; roof-like
  tracks stay apart (neighbouring halls are counted one by one); so are tracks born in the same
  or consecutive periods that do not look like roofs and come to touch as they grow;
- an object overlapping several older tracks marks all of them present; a track overlapping
  several objects (a split) is present once and remembers the number of pieces;
- object pixels outside every track either grow the matched track or — when the place was seen
  clear and unchanged since that track appeared, and they form a part of at least the minimum
  mapping unit (not counting a `growth_rim_px` rim) and `new_part_fraction` of the object — start
  a new track (a new building beside an old one; beside ground, "since" means after the period
  that track appeared in, which a composite shows in part when it appeared within it; beside a
  roof it includes that period, so a hall's apron and berms stay structures of their own);
  unmatched objects start new tracks;
- a track not present but observed (>= `min_observed_fraction` of its pixels clear) is absent.
  An unconfirmed candidate absent `drop_after_absent` times in a row is dropped (closed); a
  confirmed structure absent `vanish_after_absent` times in a row is marked vanished (closed).
  Closed tracks free their pixels, so a later structure there gets a new track.

A track is confirmed once present in >= `min_persistence` periods with a presence share of at
least `min_presence_fraction` of the periods it was observed in since it first appeared. Every
decision uses only past periods, so appending one more period never changes earlier ones.
`core.ledger` turns the tracks into structures.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import shapely
from rasterio.features import rasterize, shapes
from scipy import ndimage

from changedet.config import TrackConfig
from changedet.core.bits import PackedMask
from changedet.core.change import BAND_CHANGE_STEP, BAND_CHANGE_UNOBSERVED
from changedet.errors import DataError
from changedet.models import ChangeObject, Grid, Period, Structure

__all__ = [
    "TRACK_VERSION",
    "ObservationStream",
    "PeriodHead",
    "PeriodObservation",
    "StateMemo",
    "Tracks",
    "footprint_geometry",
    "pixels_geometry",
    "rasterize_geometries",
    "rasterize_objects",
    "track_periods",
]

_EIGHT = np.ones((3, 3), dtype=bool)

# Part of the key of a kept tracker state: bump it when the tracker decides differently.
TRACK_VERSION = "track-9"


def holds_change(changed: np.ndarray | PackedMask, pixels: np.ndarray) -> bool:
    """Whether a place still holds change in a period: most of its `pixels` are in an object or
    score at least `absent_below_z` (`changed`: that period's flat `had_change`). Such a period
    is no evidence that nothing stands there."""
    return bool(changed[pixels].mean() >= 0.5)


@dataclass(frozen=True)
class PeriodObservation:
    """One period's evidence for the ledger.

    objects: change objects of this period's composite against the baseline (grid CRS geometry);
    observed: (H, W) bool, pixels where this period's change was observable (both composites clear);
    labels: optional (H, W) int label image whose value `obj.label` marks each object's pixels
        (saves rasterising the polygons; objects whose label is absent are rasterised);
    baseline: True for the baseline periods (no objects; their clear pixels count as "absent");
    score: optional (H, W) change score of the period (what structures are cut from): a known
        structure with no object this period is still present where its pixels keep a median
        score of `TrackConfig.continue_z` (temporal hysteresis: a small roof seen clearly once
        needs less evidence to be seen again). Not kept after tracking.
    band_change: optional (B, H, W) int8 per-band change codes of the period
        (`core.change.band_change_codes`; unobserved where they cannot tell a lasting change):
        a candidate with no object is also present where its pixels keep the change vector it was
        first seen with (`TrackConfig.same_change`). Not kept after tracking.
    made_from: when known, a digest of everything the observation was computed from (the
        monitor's period cache key): what the tracker's kept state is keyed by (`StateMemo`).
    """

    period: Period
    objects: tuple[ChangeObject, ...]
    observed: np.ndarray
    scene_ids: tuple[str, ...] = ()
    labels: np.ndarray | None = None
    baseline: bool = False
    score: np.ndarray | None = None
    made_from: bytes | None = field(default=None, compare=False)
    band_change: np.ndarray | None = field(default=None, compare=False)


@dataclass
class _Track:
    index: int
    born: int  # period index of first presence
    pixels: np.ndarray  # sorted flat indices owned
    hits: np.ndarray  # presence count per owned pixel
    first_pixels: np.ndarray
    # per owned pixel, the periods it lay in a roof-like object: a hall's footprint on its site
    roof_hits: np.ndarray
    present: dict[int, int] = field(default_factory=dict)  # period -> pieces
    absent: list[int] = field(default_factory=list)
    confidences: list[float] = field(default_factory=list)
    # (period, evidence) of every object matched to it: what its kind and dates are read from
    evidence: list[tuple[int, Mapping[str, float]]] = field(default_factory=list)
    shared: dict[int, set[int]] = field(default_factory=dict)  # period -> other tracks merged with
    consecutive_absent: int = 0
    last_faint: int | None = None  # the last period it was faint in (neither present nor absent)
    confirmed_at: int | None = None
    closed_at: int | None = None
    status: str = "active"
    # (B,) median per-band change (noise units) of its pixels in the period it was born in
    signature: np.ndarray | None = None

    def add_pixels(self, new: np.ndarray) -> None:
        if new.size == 0:
            return
        self.pixels = np.concatenate([self.pixels, new])
        zeros = np.zeros(new.size, dtype=np.int32)
        self.hits = np.concatenate([self.hits, zeros])
        self.roof_hits = np.concatenate([self.roof_hits, zeros])
        order = np.argsort(self.pixels, kind="stable")
        self.pixels, self.hits = self.pixels[order], self.hits[order]
        self.roof_hits = self.roof_hits[order]

    def hit(self, pix: np.ndarray, roof: bool = False) -> None:
        inside = np.isin(self.pixels, pix, assume_unique=True)
        self.hits[inside] += 1
        if roof:
            self.roof_hits[inside] += 1


def rasterize_objects(objects: Sequence[ChangeObject | Structure], grid: Grid) -> np.ndarray:
    """(H, W) int32 label image: objects[i] → i + 1 (pixel centres inside the polygon)."""
    return rasterize_geometries([obj.geometry for obj in objects], grid)


def rasterize_geometries(geometries: Sequence[Any], grid: Grid) -> np.ndarray:
    """(H, W) int32 label image: geometries[i] → i + 1 (pixel centres inside the polygon; None
    and empty geometries mark nothing)."""
    out = np.zeros(grid.shape, dtype=np.int32)
    burned = [
        (geometry, i + 1)
        for i, geometry in enumerate(geometries)
        if geometry is not None and not geometry.is_empty
    ]
    if burned:
        rasterize(burned, out=out, transform=grid.transform, dtype="int32")
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


def pixels_geometry(pixels: np.ndarray, grid: Grid) -> Any:
    """`footprint_geometry` of flat pixel indices, without a full-grid mask."""
    if pixels.size == 0:
        return shapely.Polygon()
    rows, cols = np.divmod(pixels, grid.width)
    r0, c0 = int(rows.min()), int(cols.min())
    crop = np.zeros((int(rows.max()) - r0 + 1, int(cols.max()) - c0 + 1), dtype=bool)
    crop[rows - r0, cols - c0] = True
    return footprint_geometry(crop, grid.window(r0, c0, crop.shape[0], crop.shape[1]))


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


def _neighbours(
    pix: np.ndarray, width: int, height: int, rim: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """For flat pixel indices, per offset within `rim` pixels (chessboard, not the pixel
    itself): whether the neighbour is inside the grid, and its flat index (0 where not)."""
    rows, cols = np.divmod(pix, width)
    steps = range(-rim, rim + 1)
    for dr in steps:
        for dc in steps:
            if dr == 0 and dc == 0:
                continue
            r, c = rows + dr, cols + dc
            inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
            yield inside, np.where(inside, r * width + c, 0)


def _near(
    pix: np.ndarray, owner: np.ndarray, tracks: np.ndarray, width: int, height: int, rim: int
) -> np.ndarray:
    """For flat pixel indices: is a pixel of one of `tracks` within `rim` pixels (chessboard)?"""
    out = np.zeros(pix.size, dtype=bool)
    for inside, neighbour in _neighbours(pix, width, height, rim):
        out |= inside & np.isin(owner[neighbour], tracks)
    return out


def _touching_owners(
    pix: np.ndarray, owner: np.ndarray, width: int, height: int
) -> set[tuple[int, int]]:
    """(a, b), a < b: the track owning one of `pix` and another owning an 8-neighbour of it."""
    out: set[tuple[int, int]] = set()
    mine = owner[pix]
    pix, mine = pix[mine >= 0], mine[mine >= 0]
    for inside, neighbour in _neighbours(pix, width, height, 1):
        theirs = owner[neighbour]
        touch = inside & (theirs >= 0) & (theirs != mine)
        lo, hi = np.minimum(mine[touch], theirs[touch]), np.maximum(mine[touch], theirs[touch])
        out.update(zip(lo.tolist(), hi.tolist(), strict=True))
    return out


# What a tracker holds (`_Tracker.__setstate__` takes no other state).
_TRACKER_FIELDS = frozenset(
    {"grid", "config", "min_area_m2", "roof_flattening", "min_pixels", "owner", "tracks", "open"}
    | {"last_object", "had_change", "last_clear"}
)


class _Tracker:
    """The matching state over periods: tracks, which track owns each pixel, which are open."""

    def __init__(
        self, grid: Grid, config: TrackConfig, min_area_m2: float, roof_flattening: float
    ) -> None:
        self.grid = grid
        self.config = config
        self.min_area_m2 = min_area_m2
        self.roof_flattening = roof_flattening
        self.min_pixels = max(1, math.ceil(min_area_m2 / grid.pixel_area_m2 - 1e-9))
        self.owner = np.full(grid.width * grid.height, -1, dtype=np.int64)
        self.tracks: list[_Track] = []
        self.open: list[int] = []
        # the latest period's, flat bool: pixel inside some object
        self.last_object = np.zeros(grid.width * grid.height, dtype=bool)
        # per period, flat: inside some object, or scoring at least absent_below_z (change too
        # weak to cut an object is not evidence that nothing was there); packed, as it grows
        self.had_change: list[PackedMask] = []
        # Last period each pixel was seen clear and unchanged (-1: never): tells the part of a
        # structure first hidden by cloud from a new neighbour built beside it.
        self.last_clear = np.full(grid.width * grid.height, -1, dtype=np.int32)

    def __getstate__(self) -> dict[str, Any]:
        """Kept between runs (`StateMemo`): the masks as bits and the owners as int32."""
        state = dict(self.__dict__)
        state["last_object"] = PackedMask.of(self.last_object)
        state["owner"] = self.owner.astype(np.int32)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        packed = isinstance(state.get("last_object"), PackedMask)
        if set(state) != _TRACKER_FIELDS or not packed:  # kept by code with other state
            raise ValueError(f"not a tracker state of this version: {sorted(state)}")
        state["last_object"] = state["last_object"].unpacked()
        state["owner"] = state["owner"].astype(np.int64)
        self.__dict__.update(state)

    def observe(self, k: int, o: PeriodObservation) -> None:
        """One period: match its objects to tracks, then mark open tracks present or absent."""
        labels = _object_labels(o, self.grid) if o.objects else np.zeros(self.grid.shape, np.int32)
        self.last_object = labels.ravel() > 0
        groups = _groups(labels, len(o.objects)) if o.objects else []
        present_now: dict[int, int] = {}
        for i, pix in enumerate(groups):
            if pix.size:
                self._take_object(k, pix, o.objects[i], present_now)
        self._merge_site_pieces(k)
        codes = None if o.band_change is None else o.band_change.reshape(len(o.band_change), -1)
        if codes is not None:
            for t in self.open:
                if self.tracks[t].born == k:
                    self.tracks[t].signature = _signature(codes, self.tracks[t].pixels)
        observed = o.observed.ravel()
        self.last_clear[observed & ~self.last_object] = k
        changed = self.last_object
        if o.score is not None:
            with np.errstate(invalid="ignore"):
                changed = changed | (o.score.ravel() >= self.config.absent_below_z)
            self._continue(o.score.ravel(), codes, present_now)
        self._merge_grown_together(present_now)
        self.had_change.append(PackedMask.of(changed))
        self._update_open(k, observed, changed, present_now)

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
        if len(matched) > 1 and self._merge_pieces(matched):
            owners = self.owner[pix]
            matched = self._matches(pix, owners)
        free = pix[owners < 0]
        if not matched:
            if free.size >= self.min_pixels:
                self._new_track(free, k, obj)
            return
        for _c, t in matched:
            tr = self.tracks[t]
            tr.hit(pix[owners == t], roof=self._roof_object(obj))
            present_now[t] = present_now.get(t, 0) + 1
            tr.confidences.append(float(obj.confidence))
            tr.evidence.append((k, obj.evidence))
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
            # A new neighbour only where the place was seen clear and unchanged since the known
            # structure appeared; pixels hidden since (cloud) are the rest of it. Beside ground,
            # its first period does not count: ground works that appear within a period show in
            # that period's median composite only in part (the rest reads as unchanged there).
            # Beside a roof it does: ground works seen a period after a hall (its apron, the
            # berms around it) are structures of their own.
            host = self.tracks[matched[0][1]]
            after = host.born if self._roof_like(host) else host.born + 1
            seen_since = (self.last_clear[comp] >= after).mean() >= 0.5
            big = comp.size >= config.new_part_fraction * pix.size
            if seen_since and big and core.size >= self.min_pixels:
                self._new_track(comp, k, obj)
            else:
                growth.append(comp)
        if growth:
            main = matched[0][1]
            grown = np.concatenate(growth)
            self.owner[grown] = main
            self.tracks[main].add_pixels(grown)
            self.tracks[main].hit(grown)

    def _merge_pieces(self, matched: list[tuple[int, int]]) -> bool:
        """Tracks born in the same period that one object now covers were pieces of one
        structure seen apart (part of it below threshold, or cut by cloud): merge them into the
        main one — unless one looked like a roof and the other did not (a hall and the ground
        works around it). True when anything merged."""
        main = self.tracks[matched[0][1]]
        roof = self._roof_like(main)
        pieces = [
            t
            for _c, t in matched[1:]
            if self.tracks[t].born == main.born and self._roof_like(self.tracks[t]) == roof
        ]
        for t in pieces:
            _merge_into(main, self.tracks[t], self.owner)
        self.open = [t for t in self.open if t not in pieces]
        return bool(pieces)

    def _merge_site_pieces(self, k: int) -> None:
        """Merge the non-roof tracks born in period `k` that lie within `site_gap_px` of each
        other (8-connected after growing them by that many pixels) into the largest of each group.
        Only this period's new tracks take part, so later periods never change the decision."""
        gap = self.config.site_gap_px
        born = [
            t for t in self.open if self.tracks[t].born == k and not self._roof_like(self.tracks[t])
        ]
        if gap <= 0 or len(born) < 2:
            return
        pieces = np.zeros(self.grid.width * self.grid.height, dtype=bool)
        for t in born:
            pieces[self.tracks[t].pixels] = True
        grown = ndimage.binary_dilation(
            pieces.reshape(self.grid.shape), structure=_EIGHT, iterations=gap
        )
        site = ndimage.label(grown, structure=_EIGHT)[0].ravel()
        by_site: dict[int, list[_Track]] = {}
        for t in born:
            tr = self.tracks[t]
            by_site.setdefault(int(site[tr.pixels[0]]), []).append(tr)
        merged: set[int] = set()
        for group in by_site.values():
            group.sort(key=lambda tr: (-tr.pixels.size, tr.index))
            for other in group[1:]:
                _merge_into(group[0], other, self.owner)
                merged.add(other.index)
        self.open = [t for t in self.open if t not in merged]

    def _merge_grown_together(self, present_now: dict[int, int]) -> None:
        """Ground (not roof-like) tracks born in the same or consecutive periods that touch are
        one site seen in pieces: the rest of a structure that one period's composite showed in
        part, or a compound whose pieces grew together. Each is merged into the older (then
        larger) one. Roof-like tracks stay apart, as neighbouring halls do at birth."""
        ground = [t for t in self.open if not self._roof_like(self.tracks[t])]
        born = np.array([self.tracks[t].born for t in ground], dtype=np.int64)
        # only tracks with another born within a period can merge: look at their pixels alone
        close = [t for t, b in zip(ground, born, strict=True) if np.sum(np.abs(born - b) <= 1) > 1]
        if not close:
            return
        pix = np.concatenate([self.tracks[t].pixels for t in close])
        pairs = sorted(_touching_owners(pix, self.owner, self.grid.width, self.grid.height))
        into: dict[int, int] = {}
        for a, b in pairs:
            while a in into:
                a = into[a]
            while b in into:
                b = into[b]
            ta, tb = self.tracks[a], self.tracks[b]
            if a == b or ta.status != "active" or tb.status != "active":
                continue
            if abs(ta.born - tb.born) > 1 or self._roof_like(ta) or self._roof_like(tb):
                continue
            main, other = sorted((ta, tb), key=lambda tr: (tr.born, -tr.pixels.size, tr.index))
            _merge_into(main, other, self.owner)
            into[other.index] = main.index
            if other.index in present_now:
                pieces = present_now.pop(other.index)
                present_now[main.index] = max(present_now.get(main.index, 0), pieces)
        self.open = [t for t in self.open if t not in into]

    def _roof_object(self, obj: ChangeObject) -> bool:
        return obj.evidence.get("spectral_flattening", -np.inf) >= self.roof_flattening

    def _roof_like(self, tr: _Track) -> bool:
        flattening = [
            e["spectral_flattening"] for _, e in tr.evidence if "spectral_flattening" in e
        ]
        return bool(flattening) and float(np.median(flattening)) >= self.roof_flattening

    def _new_track(self, pix: np.ndarray, k: int, obj: ChangeObject) -> None:
        pix = np.sort(pix)
        t = len(self.tracks)
        ones = np.ones(pix.size, np.int32)
        roof = ones if self._roof_object(obj) else np.zeros(pix.size, np.int32)
        tr = _Track(index=t, born=k, pixels=pix, hits=ones, first_pixels=pix, roof_hits=roof)
        tr.confidences.append(float(obj.confidence))
        tr.evidence.append((k, obj.evidence))
        self.tracks.append(tr)
        self.open.append(t)
        self.owner[pix] = t

    def _continue(
        self, score: np.ndarray, codes: np.ndarray | None, present_now: dict[int, int]
    ) -> None:
        """Open tracks without an object this period that still stand out (median score of their
        observed pixels >= `continue_z`) are present; so are candidates whose pixels keep the
        change they were first seen with (`_keeps_its_change`)."""
        config = self.config
        for t in self.open:
            if t in present_now:
                continue
            tr = self.tracks[t]
            values = score[tr.pixels]
            seen = values[np.isfinite(values)]
            if not seen.size or seen.size < config.min_observed_fraction * values.size:
                continue
            if float(np.median(seen)) >= config.continue_z or (
                codes is not None
                and tr.confirmed_at is None
                and _keeps_its_change(tr, codes, config.same_change, self.min_pixels)
            ):
                present_now[t] = 1

    def _update_open(
        self, k: int, observed: np.ndarray, changed: np.ndarray, present_now: dict[int, int]
    ) -> None:
        """Present tracks stay open (and may be confirmed); observed absent ones count towards
        being dropped (candidates) or vanished (confirmed), which closes them. A confirmed
        structure whose place still holds change (most pixels scoring >= `absent_below_z`: a
        wet winter or a low sun can fade a structure below `continue_z`) is faint, not absent:
        like a cloudy period, that neither counts towards vanishing nor resets the count."""
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
            faint = tr.confirmed_at is not None and holds_change(changed, tr.pixels)
            if faint:
                tr.last_faint = k
            elif observed[tr.pixels].mean() >= config.min_observed_fraction:
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


# A lasting change's median projection must reach this many of its own noise units (the per-band
# codes are in noise units, so one pixel's projection on a unit vector has noise about 1).
SAME_CHANGE_Z = 3.0


def _observed_codes(codes: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """(B, n) the change codes of those of `pixels` observed in every band."""
    values = codes[:, pixels]
    observed: np.ndarray = values[:, (values != BAND_CHANGE_UNOBSERVED).all(axis=0)]
    return observed


def _signature(codes: np.ndarray, pixels: np.ndarray) -> np.ndarray | None:
    """(B,) median per-band change, in noise units, of the observed `pixels`; None when none."""
    values = _observed_codes(codes, pixels)
    if not values.shape[1]:
        return None
    signature: np.ndarray = np.median(values, axis=1).astype(np.float32) / BAND_CHANGE_STEP
    return signature


def _keeps_its_change(tr: _Track, codes: np.ndarray, share: float, min_pixels: int) -> bool:
    """Whether a track's pixels still hold the change it was born with: the median over its
    observed pixels of their change projected on that vector reaches `share` of its length and
    SAME_CHANGE_Z noise units of such a median (1.2533 / sqrt(n) for n independent pixels). A
    faint structure's change stays when a noisy month lowers its score; noise does not repeat."""
    signature = tr.signature
    if share <= 0 or signature is None:
        return False
    length = float(np.sqrt(np.square(signature).sum()))
    values = _observed_codes(codes, tr.pixels)
    n = values.shape[1]
    if length <= 0 or n < min_pixels:
        return False
    along = (signature / length) @ (values.astype(np.float32) / BAND_CHANGE_STEP)
    held = float(np.median(along))
    return held >= share * length and held >= SAME_CHANGE_Z * 1.2533 / math.sqrt(n)


def _merge_into(main: _Track, other: _Track, owner: np.ndarray) -> None:
    """`other` was a piece of `main` all along: its pixels and history become main's."""
    owner[other.pixels] = main.index
    keep = ~np.isin(other.pixels, main.pixels)
    main.pixels = np.concatenate([main.pixels, other.pixels[keep]])
    main.hits = np.concatenate([main.hits, other.hits[keep]])
    main.roof_hits = np.concatenate([main.roof_hits, other.roof_hits[keep]])
    order = np.argsort(main.pixels, kind="stable")
    main.pixels, main.hits = main.pixels[order], main.hits[order]
    main.roof_hits = main.roof_hits[order]
    main.first_pixels = np.union1d(main.first_pixels, other.first_pixels)
    for k, n in other.present.items():
        main.present[k] = max(main.present.get(k, 0), n)
    main.confidences.extend(other.confidences)
    main.evidence.extend(other.evidence)
    other.status = "merged"
    other.closed_at = other.born


def _is_confirmed(tr: _Track, config: TrackConfig) -> bool:
    n_present = len(tr.present)
    observed = n_present + len(tr.absent)
    return n_present >= config.min_persistence and (
        n_present / max(observed, 1) >= config.min_presence_fraction
    )


@dataclass
class Tracks:
    """What the tracker made of the periods, for `core.ledger`."""

    heads: tuple[PeriodHead, ...]  # in date order
    observed: tuple[PackedMask, ...]  # per period, flat: its change was observable there
    tracks: list[_Track]
    had_change: list[PackedMask]  # per period, flat: in some object or scoring >= absent_below_z
    grid: Grid
    config: TrackConfig
    min_area_m2: float

    @property
    def periods(self) -> tuple[Period, ...]:
        return tuple(h.period for h in self.heads)


@runtime_checkable
class StateMemo(Protocol):
    """Where the tracker's state can be kept between runs (the monitor's period cache): every
    decision uses only past periods, so the state after the first periods is the same in a later
    run whose first periods are the same, and the run goes on from it."""

    def get_state(self, key: str) -> object | None: ...

    def put_state(self, key: str, state: object) -> None:
        """Keep a copy of `state` (the tracker goes on changing it)."""

    def has_state(self, key: str) -> bool:
        """Whether a state is kept under `key` (and so still wanted: not pruned)."""


@dataclass(frozen=True)
class PeriodHead:
    """What is known of a period's observation before it is computed."""

    period: Period
    scene_ids: tuple[str, ...] = ()
    baseline: bool = False
    made_from: bytes | None = None

    @classmethod
    def of(cls, o: PeriodObservation) -> PeriodHead:
        return cls(o.period, o.scene_ids, o.baseline, o.made_from)


@runtime_checkable
class ObservationStream(Protocol):
    """Periods' observations computed as the tracker asks for them: each one's score and change
    codes are let go once it is tracked, so they never are all in memory at once."""

    @property
    def heads(self) -> Sequence[PeriodHead]: ...

    def take(self, k: int) -> PeriodObservation:
        """The observation of `heads[k]`; each is asked for once."""
        ...


@dataclass(frozen=True)
class _Listed:
    """Observations already computed, as an `ObservationStream`."""

    observations: Sequence[PeriodObservation]

    @property
    def heads(self) -> Sequence[PeriodHead]:
        return [PeriodHead.of(o) for o in self.observations]

    def take(self, k: int) -> PeriodObservation:
        return self.observations[k]


def _prefix_keys(obs: Sequence[PeriodHead], settings: tuple[Any, ...]) -> list[str] | None:
    """keys[m - 1]: a digest of the tracker's state after the first m periods (their digests,
    in order, and the settings); None when some observation has no digest."""
    if any(o.made_from is None for o in obs):
        return None
    digest = hashlib.blake2b(repr((TRACK_VERSION, *settings)).encode(), digest_size=20)
    keys = []
    for o in obs:
        assert o.made_from is not None
        digest.update(o.made_from)
        digest.update(repr((o.period, o.baseline)).encode())
        keys.append("tracker-" + digest.copy().hexdigest())
    return keys


# States are kept before each of the newest periods with scenes: a new scene lands in the newest
# or a later one, and the temporal screen may revise the dates of the periods just before it
# (where a period holds one date, a new one changes the last few periods' change).
_STATES_KEPT = 3


def _kept_before(obs: Sequence[PeriodHead]) -> set[int]:
    """The periods before which the tracker's state is kept."""
    with_scenes = [k for k, o in enumerate(obs) if o.scene_ids] or [len(obs) - 1]
    return set(with_scenes[-_STATES_KEPT:])


def _resumed(memo: StateMemo, keys: Sequence[str]) -> tuple[_Tracker | None, int]:
    """The longest kept state of the first periods (never all of them: states are kept before
    a period), and how many periods it has seen."""
    for seen in range(len(keys) - 1, 0, -1):
        state = memo.get_state(keys[seen - 1])
        if isinstance(state, _Tracker):
            return state, seen
    return None, 0


def track_periods(
    observations: Sequence[PeriodObservation] | ObservationStream,
    *,
    grid: Grid,
    config: TrackConfig,
    min_area_m2: float = 0.0,
    roof_flattening: float = float("inf"),
    memo: StateMemo | None = None,
) -> Tracks:
    """Match the objects of every period into tracks (see the module docstring).

    observations: every period's, or a stream of them, taken in date order one at a time.
    roof_flattening: objects whose spectral flattening reaches this look like roofs (`core.kinds`);
    roof-like and other pieces are never merged.
    min_area_m2: minimum mapping unit; new parts smaller than this are growth, not structures.
    memo: the states before the newest periods with scenes are kept there, and a run whose first
    periods are those of a kept state goes on from it (without `made_from`, all are tracked).
    """
    stream = observations if isinstance(observations, ObservationStream) else _Listed(observations)
    given = stream.heads
    order = sorted(range(len(given)), key=lambda i: (given[i].period.start, given[i].period.end))
    heads = [given[i] for i in order]
    settings = (grid, config, min_area_m2, roof_flattening)
    keys = None if memo is None else _prefix_keys(heads, settings)
    tracker, start = (None, 0) if memo is None or keys is None else _resumed(memo, keys)
    tracker = tracker or _Tracker(*settings)
    before = set() if memo is None or keys is None else {k for k in _kept_before(heads) if k > 0}
    kept: list[PeriodHead] = []
    observed: list[PackedMask] = []
    for k, i in enumerate(order):
        o = stream.take(i)
        if o.observed.shape != grid.shape:
            raise DataError(f"period {o.period.label}: observed shape {o.observed.shape} != grid")
        if k >= start:
            if k in before and k > start:
                assert memo is not None and keys is not None
                memo.put_state(keys[k - 1], tracker)
            tracker.observe(k, o)
        kept.append(PeriodHead.of(o))  # its score, change codes and objects let go
        observed.append(PackedMask.of(o.observed))
    if memo is not None and keys is not None:
        for k in before:
            if k <= start:
                memo.has_state(keys[k - 1])
    return Tracks(
        tuple(kept),
        tuple(observed),
        tracker.tracks,
        tracker.had_change,
        grid,
        config,
        min_area_m2,
    )
