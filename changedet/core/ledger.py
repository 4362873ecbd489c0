"""The structure ledger: tracks (`core.track`) turned into structures, events and counts.

Each track becomes a `Structure`:
- its footprint is the track's core: pixels present in at least half of its present periods, or
  in `min_persistence` of them when that is fewer;
- its first-seen interval runs from the last clear period the place showed no change (no object,
  and a score below `track.absent_below_z`) to the first period it was present;
- its kind (`core.kinds`) comes from the median of its objects' spectral evidence and the shape
  of its footprint;
- its **id names its place**: the zone and the UTM coordinates (metres) of the centre of a
  150 m cell of the zone's fixed lattice that the structure stands in, e.g. `39N-539325-3944475`.
  Of the cells its footprint lies in, one drawn with odds proportional to the pixels it holds, by
  a draw fixed by the cell's indices: a choice that depends only on where the structure stands,
  not on the run. A rerun with another start, end, period length or AOI outline, and any AOI that
  contains the structure, name it the same unless its footprint moved across a cell border, and
  then mostly still the same. Structures sharing a cell get
  `-2`, `-3`: confirmed ones before unconfirmed candidates, larger before smaller, then by the
  smallest hash of their own pixels, so a passing candidate never takes a building's plain id.

`Ledger.within` keeps the structures of an AOI (their centre lies in its polygon, or without the
polygon their pixel nearest their centroid in its mask; or they stand where the AOI's known
structures stand) and counts only those: statistics come from a context window around the AOI,
results from the AOI itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from typing import Any

import numpy as np

from changedet.config import KindConfig, TrackConfig
from changedet.core.bits import PackedMask
from changedet.core.clip import centre_point
from changedet.core.counts import CountEntry, period_counts
from changedet.core.kinds import (
    BUILDING,
    classify,
    evidence_summary,
    line_shape,
    roof_periods,
    roof_stood,
)
from changedet.core.track import (
    ObservationStream,
    PeriodObservation,
    StateMemo,
    Tracks,
    _Track,
    holds_change,
    pixels_geometry,
    track_periods,
)
from changedet.models import Grid, Period, PeriodCount, Structure

__all__ = ["Ledger", "build_ledger", "place_id"]


@dataclass(frozen=True)
class Ledger:
    """The result of `build_ledger`.

    structures: confirmed and unconfirmed structures (see `Structure.confirmed`, `.status`:
        "active" | "vanished" | "dropped"), ordered by first-present period then id;
    counts: one PeriodCount per observation period, in date order;
    events: dicts {"period", "date", "event": "new" | "confirmed" | "vanished" | "dropped",
        "structure_id", "confirmed"} in date order;
    footprints: (H, W) int32, 0 = none, i + 1 = structures[i] (each pixel belongs to one);
    first_period: per structure, index into `periods` of its first present period;
    anchors: per structure, the flat grid index of its pixel nearest its centroid (which AOI it
        belongs to: `within`);
    halls: per structure, the flat grid indices of the hall a building on a site graded earlier
        is (what berms ring), else None;
    periods: the observation periods in date order.
    """

    structures: tuple[Structure, ...]
    counts: tuple[PeriodCount, ...]
    events: tuple[dict[str, Any], ...]
    footprints: np.ndarray
    first_period: tuple[int, ...]
    periods: tuple[Period, ...]
    min_area_m2: float = 0.0
    anchors: tuple[int, ...] = ()
    entries: tuple[CountEntry, ...] = ()
    clear_fractions: tuple[float, ...] = ()
    halls: tuple[np.ndarray | None, ...] = ()

    @property
    def confirmed(self) -> tuple[Structure, ...]:
        return tuple(s for s in self.structures if s.confirmed)

    @property
    def candidates(self) -> tuple[Structure, ...]:
        """Unconfirmed structures: reported separately, never counted."""
        return tuple(s for s in self.structures if not s.confirmed)

    def within(
        self,
        inside: np.ndarray,
        known_pixels: np.ndarray | None = None,
        *,
        polygon: Any | None = None,
    ) -> Ledger:
        """The ledger of the structures anchored inside the AOI, or that stand on a pixel of
        `known_pixels` ((H, W) bool: where structures already reported for this AOI stand inside
        it, so one whose outline grew and moved its anchor out stays): footprints, events and
        counts of those only. With the AOI `polygon` (shapely, in the grid's CRS) a structure is
        inside when its centre is (`centre_point`, the point its lat/lon publish: a polygon
        cutting a structure near its middle decides by metres, not by pixel centres); without
        it, when its anchor pixel lies in `inside` ((H, W) bool)."""
        on_known = np.zeros(len(self.structures) + 1, dtype=bool)
        if known_pixels is not None:
            on_known[np.unique(self.footprints[known_pixels])] = True
        if polygon is not None:
            anchored = self._centres_in(polygon)
        else:
            anchored = inside.ravel()[np.asarray(self.anchors, dtype=np.intp)]
        keep = [i for i in range(len(self.structures)) if anchored[i] or on_known[i + 1]]
        if len(keep) == len(self.structures):
            return self
        lut = np.zeros(len(self.structures) + 1, dtype=np.int32)
        lut[[i + 1 for i in keep]] = np.arange(1, len(keep) + 1, dtype=np.int32)
        ids = {self.structures[i].id for i in keep}
        entries = tuple(self.entries[i] for i in keep)
        return replace(
            self,
            structures=tuple(self.structures[i] for i in keep),
            counts=period_counts(entries, self.periods, self.clear_fractions),
            events=tuple(e for e in self.events if e["structure_id"] in ids),
            footprints=lut[self.footprints],
            first_period=tuple(self.first_period[i] for i in keep),
            anchors=tuple(self.anchors[i] for i in keep),
            entries=entries,
            halls=tuple(self.halls[i] for i in keep) if self.halls else (),
        )

    def _centres_in(self, polygon: Any) -> np.ndarray:
        """Per structure, whether its centre (`centre_point`: what lat/lon publish) lies in
        `polygon`."""
        import shapely

        points = np.array([centre_point(s.geometry) for s in self.structures], dtype=object)
        return np.asarray(shapely.contains(polygon, points), dtype=bool)  # None: False


def _zone(grid: Grid) -> str:
    """'39N' for EPSG:32639, '39S' for EPSG:32739, else the CRS itself."""
    code = grid.epsg
    if code is not None and 32601 <= code <= 32660:
        return f"{code - 32600}N"
    if code is not None and 32701 <= code <= 32760:
        return f"{code - 32700}S"
    return grid.crs.replace(":", "")


def _centres(pixels: np.ndarray, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Integer metre coordinates of the centres of flat pixel indices."""
    rows, cols = np.divmod(pixels, grid.width)
    t = grid.transform
    x = t.c + (cols + 0.5) * t.a + (rows + 0.5) * t.b
    y = t.f + (cols + 0.5) * t.d + (rows + 0.5) * t.e
    return np.rint(x).astype(np.int64), np.rint(y).astype(np.int64)


def _mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A well-mixed 64-bit hash of integer coordinate pairs (splitmix64 finaliser)."""
    z = (x.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ y.astype(np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    out: np.ndarray = z ^ (z >> np.uint64(31))
    return out


# Ids name a cell of this size (m) of the UTM zone's lattice, one the structure stands in: large
# enough that most footprints lie in one or two cells, small enough that few structures share one.
# 150 m kept as many ids over reruns as 100 m on average and more at the worst of six seeds of the
# nine OSCD cities' semi-real series (quarterly periods 91-94 % against 89-95 %; README: ids).
ID_CELL_M = 150


def _cell_counts(core: np.ndarray, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """The ID_CELL_M cells (absolute lattice indices, (n, 2)) a footprint lies in, and how many
    of its pixels each holds."""
    x, y = _centres(core, grid)
    cells, counts = np.unique(
        np.stack([np.floor_divide(x, ID_CELL_M), np.floor_divide(y, ID_CELL_M)], axis=1),
        axis=0,
        return_counts=True,
    )
    return cells, counts


def anchor_cell(core: np.ndarray, grid: Grid) -> tuple[int, int]:
    """The lattice cell a footprint's id is named after: a draw among the cells it lies in, each
    with odds proportional to the pixels it holds, made by a fixed uniform number per cell (from
    the hash of its indices) — an exponential race, the smallest -ln(u) / pixels wins. The
    same cells holding the same pixels always give the same cell, and a few pixels crossing a
    cell border shift the odds by a few pixels' worth: no share threshold for an edge to cross."""
    cells, counts = _cell_counts(core, grid)
    u = ((_mix(cells[:, 0], cells[:, 1]) >> np.uint64(11)) + np.uint64(1)) * 2.0**-53  # (0, 1]
    best = int(np.argmin(-np.log(u) / counts))
    return int(cells[best, 0]), int(cells[best, 1])


def _anchor(core: np.ndarray, grid: Grid) -> int:
    """The pixel that decides which AOI a structure belongs to: of its own pixels, the one
    nearest its centroid (the first in row order on a tie). A polygon holding a structure's
    centre holds the structure, as the published lat/lon says, whichever way it is drawn."""
    rows, cols = np.divmod(core, grid.width)
    d2 = (rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2
    return int(core[int(np.argmin(d2))])


def _tiebreak(core: np.ndarray, grid: Grid) -> int:
    """The last key of the order of structures sharing an anchor cell (`_named`), independent of
    the run: the smallest hash of their own pixels' centres."""
    x, y = _centres(core, grid)
    return int(_mix(x, y).min())


def place_id(cell: tuple[int, int], grid: Grid) -> str:
    """'39N-539325-3944475': zone, easting and northing (m) of the centre of an id cell."""
    half = ID_CELL_M // 2  # 75 m: the centre of a cell is a pixel centre of the 10 m lattice
    return f"{_zone(grid)}-{cell[0] * ID_CELL_M + half:06d}-{cell[1] * ID_CELL_M + half:07d}"


def _observed_fraction(observed: PackedMask, pixels: np.ndarray) -> float:
    return float(observed[pixels].mean()) if pixels.size else 0.0


def _hits_needed(n_periods: int, min_persistence: int) -> int:
    """Periods a pixel must be hit in, of `n_periods`, to be part of a footprint: half of them,
    or `min_persistence` when that is fewer. A pixel is part of a structure on the evidence that
    confirms a structure: a faint edge seen changed in two of ten months still belongs to it,
    where half would shrink a long-lived structure to the pixels that cross every time."""
    return max(1, min(min_persistence, math.ceil(0.5 * n_periods)))


def _core(tr: _Track, min_persistence: int) -> np.ndarray:
    """A track's footprint: pixels hit in `_hits_needed` of its present periods."""
    core = tr.pixels[tr.hits >= _hits_needed(len(tr.present), min_persistence)]
    return core if core.size else tr.pixels


def _interval(
    tracks: Tracks, tr: _Track, core: np.ndarray, kind: str, roofs: Mapping[int, float]
) -> tuple[int, int | None]:
    """(first present, last absent) period indices of a structure: its first period — for a
    building the first in which it looked like a roof, so ground cleared before the hall was
    built does not date the hall — and the last clear period before it in which the place held
    no change (no object, not even the ground works before a building, and no score reaching
    `absent_below_z`). roofs: `kinds.roof_periods` of the track."""
    first = min(roofs) if kind == BUILDING and roofs else tr.born
    need = tracks.config.min_observed_fraction
    for j in range(first - 1, -1, -1):
        seen_clear = _observed_fraction(tracks.observed[j], core) >= need
        if seen_clear and not holds_change(tracks.had_change[j], core):
            return first, j
    return first, None


def _confidence(tr: _Track, config: TrackConfig) -> float:
    """Mean object confidence, scaled by presence share and by persistence up to the minimum."""
    n_present = len(tr.present)
    presence = n_present / max(n_present + len(tr.absent), 1)
    mean_conf = float(np.mean(tr.confidences)) if tr.confidences else 0.0
    scale = presence * min(1.0, n_present / max(config.min_persistence, 1))
    return round(float(np.clip(mean_conf * scale, 0, 1)), 4)


def _held(tr: _Track, config: TrackConfig) -> bool:
    """Confirmed, and its confidence over its whole life reaches `min_confidence`: a change
    confirmed in two periods and then seen gone, or faint most of the time since, is a transient
    (a season's shadow, a stockpile, the levels of a few odd dates), not a structure."""
    return tr.confirmed_at is not None and _confidence(tr, config) >= config.min_confidence


def _n_clear(tracks: Tracks, tr: _Track, core: np.ndarray, first: int) -> int:
    """Periods from its first presence to close (or the end) in which the structure was present
    or seen clear."""
    end_k = tr.closed_at if tr.closed_at is not None else len(tracks.heads) - 1
    need = tracks.config.min_observed_fraction
    return sum(
        1
        for j in range(first, end_k + 1)
        if j in tr.present or _observed_fraction(tracks.observed[j], core) >= need
    )


def _hall(tr: _Track, n_roofs: int, min_persistence: int) -> np.ndarray:
    """The pixels of a site that lay in its roof-like objects in `_hits_needed` of its roof
    periods: the hall standing on it."""
    return tr.pixels[tr.roof_hits >= _hits_needed(n_roofs, min_persistence)]


def _kind(
    tr: _Track,
    core: np.ndarray,
    grid: Grid,
    kinds: KindConfig,
    roofs: Mapping[int, float],
    min_persistence: int,
) -> tuple[str, dict[str, float], np.ndarray | None]:
    """The structure's kind, the evidence it was decided on and, for a hall put up on a site
    graded earlier (the site's median is the ground's, but a roof stood), the hall's pixels
    (`_hall`; else None). Such a site is a building with the hall's flattening; its outline
    stays the site's, which is what changed. roofs: `kinds.roof_periods` of the track."""
    evidence = evidence_summary([e for _, e in tr.evidence])
    roof = roof_stood(roofs, [k for k, _ in tr.evidence], min_persistence)
    hall = None
    if roof and evidence.get("spectral_flattening", np.inf) < kinds.roof_flattening:
        hall = _hall(tr, len(roofs), min_persistence)
        evidence["spectral_flattening"] = float(np.median(list(roofs.values())))
    rows, cols = np.divmod(core, grid.width)
    crop = np.zeros((int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1), bool)
    crop[rows - rows.min(), cols - cols.min()] = True
    shape = line_shape(crop)
    kind = classify(evidence, shape, kinds, roof=roof)
    evidence = {**evidence, "width_px": round(shape[0], 2), "length_px": float(shape[1])}
    return kind, evidence, hall if hall is not None and hall.size else None


@dataclass
class _Built:
    """One track on its way to the ledger."""

    track: _Track
    core: np.ndarray
    anchor: int  # flat grid index of its pixel nearest its centroid (what `Ledger.within` tests)
    cell: tuple[int, int]  # the id cell
    tiebreak: int
    kind: str
    evidence: dict[str, float]
    first: int  # period index of its first presence
    last_absent: int | None
    confirmed: bool  # `_held`
    hall: np.ndarray | None  # `_kind`
    structure: Structure = field(init=False)

    @property
    def status(self) -> str:
        """The track's status; a change seen gone again that never held is a dropped candidate."""
        vanished = self.track.status == "vanished"
        return "dropped" if vanished and not self.confirmed else self.track.status


def _structure(tracks: Tracks, b: _Built, structure_id: str) -> Structure:
    """The ledger's view of one track."""
    tr, grid, periods = b.track, tracks.grid, tracks.periods
    scenes: list[str] = []
    for src in (b.last_absent, b.first, tr.confirmed_at if b.confirmed else None):
        if src is not None:
            scenes.extend(s for s in tracks.heads[src].scene_ids if s not in scenes)
    return Structure(
        id=structure_id,
        geometry=pixels_geometry(b.core, grid),
        area_m2=float(b.core.size * grid.pixel_area_m2),
        confidence=_confidence(tr, tracks.config),
        first_seen_start=periods[b.last_absent].start if b.last_absent is not None else None,
        first_seen_end=periods[b.first].end,
        confirmed=b.confirmed,
        n_clear_obs=_n_clear(tracks, tr, b.core, b.first),
        source_scenes=tuple(scenes),
        status=b.status,
        vanished_after=periods[max(tr.present)].end if b.status == "vanished" else None,
        kind=b.kind,
        evidence={k: round(v, 4) for k, v in b.evidence.items()},
        absent_since=_absent_since(b, periods, tracks.config),
    )


def _absent_since(b: _Built, periods: Sequence[Period], config: TrackConfig) -> date | None:
    """A razed building stays active until absent `vanish_after_absent` clear periods in a row;
    one short of that, the start of the first of them. One absence alone is too often noise (a
    standing demo building had one), and a period it was faint in since (its place still holds
    change) says it stands."""
    tr = b.track
    needed = max(config.vanish_after_absent - 1, 1)
    if b.status != "active" or not b.confirmed or tr.consecutive_absent < needed:
        return None
    if tr.last_faint is not None and tr.last_faint > tr.absent[-1]:
        return None
    return periods[tr.absent[-tr.consecutive_absent]].start


def _event(period: Period, kind: str, s: Structure) -> dict[str, Any]:
    return {
        "period": period.label,
        "date": period.start.isoformat(),
        "event": kind,
        "structure_id": s.id,
        "confirmed": s.confirmed,
    }


_Ev = tuple[int, int, dict[str, Any]]


def _track_events(b: _Built, s: Structure, periods: Sequence[Period]) -> list[_Ev]:
    """(period index, order, event) of a structure: new, confirmed, closed (vanished/dropped)."""
    tr = b.track
    out = [(b.first, 0, _event(periods[b.first], "new", s))]
    if tr.confirmed_at is not None and b.confirmed:
        out.append((tr.confirmed_at, 1, _event(periods[tr.confirmed_at], "confirmed", s)))
    if tr.closed_at is not None:
        out.append((tr.closed_at, 2, _event(periods[tr.closed_at], b.status, s)))
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


def _entry(b: _Built, tracks: Tracks, asked_persistence: int) -> CountEntry:
    tr, config = b.track, tracks.config
    confirmed = b.confirmed
    return CountEntry(
        born=b.first,
        last_absent=b.last_absent,
        confirmed=confirmed,
        kind=b.structure.kind,
        split_extra=_split_extra(tr, config) if confirmed else 0,
        merged_only=confirmed and _merged_only(tr, tracks.tracks),
        pending=not confirmed and _pending(tr, config),
        thin=confirmed and len(tr.present) < asked_persistence,
    )


def _named(built: list[_Built], grid: Grid) -> list[str]:
    """Place ids; structures sharing a cell get '-2', '-3': confirmed before unconfirmed, larger
    before smaller, then in their tie-break order."""

    def rank(b: _Built) -> tuple[tuple[int, int], bool, int, int]:
        return b.cell, not b.confirmed, -b.core.size, b.tiebreak

    order = sorted(range(len(built)), key=lambda i: rank(built[i]))
    out = [""] * len(built)
    seen: dict[tuple[int, int], int] = {}
    for i in order:
        b = built[i]
        seen[b.cell] = seen.get(b.cell, 0) + 1
        base = place_id(b.cell, grid)
        out[i] = base if seen[b.cell] == 1 else f"{base}-{seen[b.cell]}"
    return out


def _clear_fractions(tracks: Tracks, aoi_mask: np.ndarray | None) -> list[float]:
    if aoi_mask is None:
        return [observed.mean() for observed in tracks.observed]
    inside = np.flatnonzero(aoi_mask)
    return [float(observed[inside].mean()) if inside.size else 0.0 for observed in tracks.observed]


def build_ledger(
    observations: Sequence[PeriodObservation] | ObservationStream,
    *,
    grid: Grid,
    config: TrackConfig,
    kinds: KindConfig | None = None,
    min_area_m2: float = 0.0,
    aoi_mask: np.ndarray | None = None,
    memo: StateMemo | None = None,
    asked_persistence: int | None = None,
) -> Ledger:
    """Match objects over periods into structures; ids, kinds, first-seen intervals, counts.

    min_area_m2: minimum mapping unit; new parts smaller than this are growth, not structures.
    aoi_mask: (H, W) bool, pixels inside the AOI, for `PeriodCount.clear_fraction` (all if None).
    memo: where the tracker's state is kept between runs (`track_periods`).
    asked_persistence: the configured `min_persistence` when too few clear periods made
    `config` ask less; structures confirmed on fewer periods are left out of the counts' low end.
    """
    kinds = kinds or KindConfig()
    tracks = track_periods(
        observations,
        grid=grid,
        config=config,
        min_area_m2=min_area_m2,
        roof_flattening=kinds.roof_flattening,
        memo=memo,
    )
    built = []
    for tr in tracks.tracks:
        if tr.status == "merged":
            continue
        core = _core(tr, config.min_persistence)
        roofs = roof_periods(tr.evidence, kinds.roof_flattening)
        kind, evidence, hall = _kind(tr, core, grid, kinds, roofs, config.min_persistence)
        first, last_absent = _interval(tracks, tr, core, kind, roofs)
        built.append(
            _Built(
                tr,
                core,
                anchor=_anchor(core, grid),
                cell=anchor_cell(core, grid),
                tiebreak=_tiebreak(core, grid),
                kind=kind,
                evidence=evidence,
                first=first,
                last_absent=last_absent,
                confirmed=_held(tr, config),
                hall=hall,
            )
        )
    for b, structure_id in zip(built, _named(built, grid), strict=True):
        b.structure = _structure(tracks, b, structure_id)
    built.sort(key=lambda b: (b.first, b.structure.id))
    footprint = np.zeros(grid.width * grid.height, dtype=np.int32)
    for pos, b in enumerate(built):
        free = footprint[b.core] == 0
        footprint[b.core[free]] = pos + 1
    events = [e for b in built for e in _track_events(b, b.structure, tracks.periods)]
    events.sort(key=lambda e: (e[0], e[1], e[2]["structure_id"]))
    asked = max(config.min_persistence, asked_persistence or 0)
    entries = tuple(_entry(b, tracks, asked) for b in built)
    clear = tuple(_clear_fractions(tracks, aoi_mask))
    return Ledger(
        structures=tuple(b.structure for b in built),
        counts=period_counts(entries, tracks.periods, clear),
        events=tuple(e[2] for e in events),
        footprints=footprint.reshape(grid.shape),
        halls=tuple(b.hall for b in built),
        first_period=tuple(b.first for b in built),
        periods=tracks.periods,
        min_area_m2=min_area_m2,
        anchors=tuple(b.anchor for b in built),
        entries=entries,
        clear_fractions=clear,
    )
