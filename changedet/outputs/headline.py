"""The headline of a run: what was found, when, and over how much of the AOI. No files here.

One responsibility: the few numbers an analyst quotes, computed once from a `RunResult` so the
CLI summary, the report and run.json say the same thing:

- new buildings (structures of kind "building") and all new structures, with ranges: confirmed
  structures that stand or vanished later; unconfirmed candidates are never counted;
- the first and the peak period of new structures, from the per-period best estimate whose
  increments add up to the cumulative count (`new_per_period`);
- how many of the new buildings are bermed, how many structures vanished, and the unconfirmed
  candidates with why;
- the analysed area against the AOI's, and a warning when it is under `[output]
  coverage_warning`;
- a warning naming the scenes whose files could not be read, which the run went on without;
- a warning when too few clear periods allowed less persistence than configured (a two-date
  pair, a short series), and one when cloudy months moved the baseline later or left the last
  months of the time range unseen.

Ranges: the ledger's counts give a low–high range for all structures and for new buildings at
the end of the run (`core.counts`: the buildings' high end also holds structures whose kind the
pixels could not tell).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from changedet.models import FALSE_POSITIVE, Period, PeriodCount, RunResult, Structure

__all__ = [
    "BUILDING",
    "Headline",
    "berms_assessed",
    "headline",
    "increments",
    "km2",
    "new_per_period",
    "period_name",
]

BUILDING = "building"  # Structure.kind of a new building
NOT_PERSISTED = "did not persist"
TOO_RECENT = "too recent to confirm"
TOO_FEW = "seen in too few clear periods"


def increments(cumulative: Sequence[int]) -> list[int]:
    """Per-period increments of a cumulative series (never negative): they add up to its end."""
    out, last = [], 0
    for value in cumulative:
        out.append(max(value - last, 0))
        last = max(last, value)
    return out


def new_per_period(counts: Sequence[PeriodCount]) -> list[int]:
    """New structures per period as the increments of the cumulative best estimate: they add up
    to the cumulative count (a structure first seen after cloudy periods is spread over the
    periods it may have appeared in, so these can differ from `new_confirmed`, which counts
    each structure in the period it was first seen)."""
    return increments([c.cumulative for c in counts])


def period_name(period: Period) -> str:
    """'Aug 2023' for a month, the period's label otherwise."""
    if (period.end - period.start).days <= 31 and period.start.day == 1:
        return period.start.strftime("%b %Y")
    return period.label


def _is_new(s: Structure) -> bool:
    return s.confirmed and s.status != "dropped" and s.review != FALSE_POSITIVE


def _why_unconfirmed(s: Structure, periods: Sequence[Period], min_persistence: int) -> str:
    if s.status == "dropped":
        return NOT_PERSISTED
    left = sum(1 for p in periods if s.first_seen_end is not None and p.end >= s.first_seen_end)
    return TOO_RECENT if periods and left < min_persistence else TOO_FEW


@dataclass(frozen=True)
class Headline:
    """The numbers of a run's headline; `lines()` words them, `as_dict()` is run.json's."""

    n_buildings: int
    buildings_range: tuple[int, int]
    n_structures: int
    structures_range: tuple[int, int]
    by_kind: dict[str, int]
    first_period: str | None
    peak_period: str | None
    peak_new: int
    n_bermed: int | None  # None: berms not assessed ([berms] enabled = false)
    n_vanished: int
    n_unconfirmed: int
    unconfirmed_why: dict[str, int]
    aoi_km2: float | None = None
    analysed_km2: float | None = None
    analysed_share: float | None = None
    # Active structures absent in the latest clear period(s), not yet long enough to vanish.
    n_absent: int = 0
    # (name, text): the report anchors each by its name ("unreadable-scenes", "comparison",
    # "coverage")
    named_warnings: tuple[tuple[str, str], ...] = field(default=())

    @property
    def warnings(self) -> tuple[str, ...]:
        return tuple(text for _, text in self.named_warnings)

    def found(self) -> str:
        lo, hi = self.buildings_range
        slo, shi = self.structures_range
        others = ", ".join(
            f"{n} {kind}" for kind, n in sorted(self.by_kind.items()) if kind != BUILDING and n
        )
        return (
            f"{self.n_buildings} new building{_s(self.n_buildings)} (range {lo}–{hi}); "
            f"{self.n_structures} new structure{_s(self.n_structures)} in all (range {slo}–{shi})"
            + (f", of which {others}" if others else "")
        )

    def when(self) -> str:
        if self.first_period is None:
            return f"no new structure; {self.n_vanished} vanished"
        peak = f"peak {self.peak_period} ({self.peak_new} new)" if self.peak_period else ""
        bermed = (
            "berms not assessed ([berms] enabled = false)"
            if self.n_bermed is None
            else f"{self.n_bermed} of the new buildings bermed"
        )
        absent = (
            f" ({self.n_absent} more absent lately, not yet long enough to call vanished)"
            if self.n_absent
            else ""
        )
        return f"first in {self.first_period}, {peak}; {bermed}; {self.n_vanished} vanished{absent}"

    def candidates(self) -> str:
        if not self.n_unconfirmed:
            return "no unconfirmed candidate"
        why = ", ".join(f"{n} {reason}" for reason, n in self.unconfirmed_why.items())
        return (
            f"{self.n_unconfirmed} unconfirmed candidate{_s(self.n_unconfirmed)}, not counted "
            f"({why})"
        )

    def coverage(self) -> str | None:
        if self.aoi_km2 is None or self.analysed_km2 is None or self.analysed_share is None:
            return None
        return (
            f"analysed {km2(self.analysed_km2)} of the {km2(self.aoi_km2)} AOI "
            f"({100 * self.analysed_share:.1f} %)"
        )

    def lines(self) -> tuple[str, ...]:
        texts = [self.found(), self.when(), self.candidates(), self.coverage()]
        return tuple(t[0].upper() + t[1:] for t in texts if t)

    def as_dict(self) -> dict[str, Any]:
        return {
            "new_buildings": self.n_buildings,
            "new_buildings_range": list(self.buildings_range),
            "new_structures": self.n_structures,
            "new_structures_range": list(self.structures_range),
            "new_by_kind": dict(self.by_kind),
            "first_period": self.first_period,
            "peak_period": self.peak_period,
            "peak_new": self.peak_new,
            "bermed": self.n_bermed,
            "vanished": self.n_vanished,
            "absent_lately": self.n_absent,
            "unconfirmed": self.n_unconfirmed,
            "unconfirmed_why": dict(self.unconfirmed_why),
            "text": list(self.lines()),
            "warnings": list(self.warnings),
        }


def km2(value: float) -> str:
    """An area with the decimals its size deserves: '261 km²', '6.5 km²', '0.81 km²', and in m²
    what two decimals would show as 0.00 km² ('120 m²': an AOI of a few pixels)."""
    if 0 < value < 0.005:
        return f"{value * 1e6:,.0f} m²"
    digits = 0 if value >= 100 else 1 if value >= 1 else 2
    return f"{value:,.{digits}f} km²"


def _s(n: int) -> str:
    return "" if n == 1 else "s"


def _ranges(
    counts: Sequence[PeriodCount], n_all: int, n_buildings: int
) -> tuple[tuple[int, int], tuple[int, int]]:
    """(all structures' range, new buildings' range) at the end of the run, from the ledger's
    counts (`core.counts`)."""
    if not counts:
        return (n_all, n_all), (n_buildings, n_buildings)
    last = counts[-1]
    all_range = (min(last.cumulative_low, n_all), max(last.cumulative_high, n_all))
    buildings = (min(last.buildings_low, n_buildings), max(last.buildings_high, n_buildings))
    return all_range, buildings


def _when(counts: Sequence[PeriodCount]) -> tuple[str | None, str | None, int]:
    new = new_per_period(counts)
    if not any(new):
        return None, None, 0
    first = next(i for i, n in enumerate(new) if n)
    peak = max(range(len(new)), key=lambda i: (new[i], -i))
    return period_name(counts[first].period), period_name(counts[peak].period), new[peak]


def _coverage_warning(result: RunResult) -> str | None:
    cov = result.coverage
    if cov is None or not cov.is_partial:
        return None
    # coverage.png is always drawn; the layer only with the GeoPackage
    layer = (
        " or the analysed_area layer"
        if result.config.get("output", {}).get("geopackage", True)
        else ""
    )
    return (
        f"only {100 * cov.share:.1f} % of AOI '{result.aoi.id}' could be analysed "
        f"({km2(cov.analysed_km2)} of {km2(cov.aoi_km2)}; no scene data or no clear "
        f"observation elsewhere): findings say nothing about the rest; see coverage.png{layer}"
    )


def _unreadable_warning(result: RunResult) -> str | None:
    """Scenes left out because their files could not be read: the run went on without them, and
    the analyst should know (a corrupt download, an expired link), not find it in run.json."""
    lost = [s for s in result.scenes_skipped if s.unreadable]
    if not lost:
        return None
    first = f"{lost[0].scene_id}: {lost[0].reason.split(' (', 1)[0]}"
    scenes = "1 scene" if len(lost) == 1 else f"{len(lost)} scenes"
    were = "was" if len(lost) == 1 else "were"
    example = first if len(lost) == 1 else f"first {first}"
    return (
        f"{scenes} of AOI '{result.aoi.id}' could not be read and {were} left out ({example}); "
        "fix or re-fetch and rerun; every skipped scene and why is in run.json"
    )


def _search_warning(result: RunResult) -> str | None:
    """The catalog search stopped paging before its last page: the scenes it never reached are
    missing from the series, and the counts and dates with them."""
    stopped = result.provenance.get("search_stopped")
    if not stopped:
        return None
    return (
        f"AOI '{result.aoi.id}': the catalog search was cut short ({stopped}), so scenes it did "
        "not page to are missing from this run"
    )


def _offsets_warning(result: RunResult) -> str | None:
    """Dates read 0.1 off in every band (a catalog's offset flag wrong), corrected from their
    pixels: a correction the run made on its own judgement, so said."""
    told = result.provenance.get("offsets_corrected") or []
    if not told:
        return None
    more = f" (and {len(told) - 1} more; all in run.json)" if len(told) > 1 else ""
    return f"AOI '{result.aoi.id}': {told[0]}{more}"


def _comparison_warning(result: RunResult) -> str | None:
    """A run with too few clear periods to ask the configured persistence (a two-date pair, or a
    short series that asked less): its "confirmed" structures rest on fewer observations."""
    comparison = result.provenance.get("comparison") or {}
    mode, used = comparison.get("mode"), comparison.get("min_persistence")
    configured = comparison.get("configured", {})
    asked = configured.get("min_persistence")
    fewer = mode == "short" and used is not None and asked is not None and used < asked
    if mode == "pair" or fewer:
        return (
            f"AOI '{result.aoi.id}': {comparison.get('note')}; widen the time range to confirm "
            "structures over more periods"
        )
    # A baseline shortened by cloudy months is run.json's and the report's to say; one asked
    # longer than the time range could ever give (48 months of a 13-month range) is a setting
    # to mend, said here too.
    asked_base = configured.get("baseline_periods")
    n_periods = len(result.composites) or len(result.counts)
    if mode != "short" or asked is None or asked_base is None or asked_base + asked <= n_periods:
        return None
    return (
        f"AOI '{result.aoi.id}': {comparison.get('note')}; time.baseline_periods "
        f"({asked_base}) and track.min_persistence ({asked}) ask more than the "
        f"{n_periods} periods of the time range: widen it, or lower baseline_periods"
    )


def _unmasked_warning(result: RunResult) -> str | None:
    """Scenes read without an SCL asset: no cloud or shadow was masked on them. Right for L1C
    data; for L2A a misnamed `scl` asset key, and the run found clouds (CLI audit)."""
    unmasked = result.provenance.get("scenes_without_scl") or []
    if not unmasked:
        return None
    count = len(unmasked)
    provider = result.config.get("catalog", {}).get("provider", "")
    return (
        f"AOI '{result.aoi.id}': {count} scene(s) had no SCL asset, so no cloud or shadow was "
        f"masked on them and clouds may count as change; for L2A items check the scl key of "
        f"[catalog.asset_keys.{provider}]"
    )


def _zone_edge_warning(result: RunResult) -> str | None:
    """An AOI across the edge of its UTM zone: its grid and every id follow its centroid."""
    from changedet.aoi import zone_edge_warning

    return zone_edge_warning(result.aoi)


def _mapping_unit_warning(result: RunResult) -> str | None:
    """A minimum mapping unit larger than the AOI: only a structure reaching past the polygon
    could be reported there (it was accepted without a word)."""
    cov = result.coverage
    if cov is None or result.min_mapping_unit_m2 <= cov.aoi_km2 * 1e6:
        return None
    return (
        f"AOI '{result.aoi.id}' ({cov.aoi_km2 * 1e6:,.0f} m²) is smaller than change.min_area_m2 "
        f"({result.min_mapping_unit_m2:,.0f} m²): only a structure reaching past its outline "
        "can be found; lower min_area_m2 or draw the site with its surroundings"
    )


def _unseen_warning(result: RunResult) -> str | None:
    """Months at either end of the time range the run could not look at: a baseline that moved
    later (what was built before it is part of it) and months after the last clear one (the
    counts there repeat it). Both silently shape the answer: a time range past the data, a
    cloudy early summer."""
    comparison = result.provenance.get("comparison") or {}
    clear, base = comparison.get("clear_periods") or [], comparison.get("baseline") or []
    labels = [c.period.label for c in result.counts]
    if not clear or not base or not labels:
        return None
    said = []
    skipped = labels.index(base[0]) if base[0] in labels else 0
    if skipped:
        said.append(
            f"its baseline starts in {base[0]}: the {_months(skipped)} before it "
            f"{'was' if skipped == 1 else 'were'} too cloudy or held no scene, "
            f"so what was built before {base[0]} counts as there already"
        )
    unseen = len(labels) - 1 - labels.index(clear[-1]) if clear[-1] in labels else 0
    if unseen == 1 and _under_way(result.counts):
        unseen = 0  # the month the run ends in, cut short by its end: its scene may yet come
    if unseen:
        span = labels[-1] if unseen == 1 else f"{labels[-unseen]}..{labels[-1]}"
        said.append(
            f"the {_months(unseen)} after {clear[-1]} ({span}) had too little clear view to "
            f"compare (cloud, or no scene): counts there repeat {clear[-1]}'s"
        )
    if not said:
        return None
    return f"AOI '{result.aoi.id}': " + "; ".join(said) + "; see the counts' clear_fraction"


# A last period this short is one the run ends a few days into (a monitoring run early in a
# month): two revisits of Sentinel-2 (5 days each), in which no scene is no news.
_UNDER_WAY_DAYS = 10


def _under_way(counts: Sequence[PeriodCount]) -> bool:
    """Whether the last period is cut short by the end of the time range within its first
    `_UNDER_WAY_DAYS` days (shorter than the one before it: not a series of short periods)."""
    if len(counts) < 2:
        return False
    last, before = counts[-1].period, counts[-2].period
    days = (last.end - last.start).days
    return days <= _UNDER_WAY_DAYS < (before.end - before.start).days


def _months(n: int) -> str:
    return "month" if n == 1 else f"{n} months"


def berms_assessed(result: RunResult) -> bool:
    """Whether the run looked for berms ([berms] enabled): else every `bermed` is None."""
    return bool(result.config.get("berms", {}).get("enabled", True))


def headline(result: RunResult) -> Headline:
    """The headline numbers of one run."""
    new = [s for s in result.structures if _is_new(s)]
    kinds = Counter(s.kind for s in new)
    n_buildings = kinds.get(BUILDING, 0)
    structures_range, buildings_range = _ranges(result.counts, len(new), n_buildings)
    first, peak, peak_new = _when(result.counts)
    # Periods no scene reached (a run past the catalog's last date) are not chances missed:
    # what was first seen before them is too recent to confirm.
    periods = [c.period for c in result.composites if c.scene_ids] or [
        c.period for c in result.counts
    ]
    min_persistence = int(result.config.get("track", {}).get("min_persistence", 2))
    why = Counter(
        _why_unconfirmed(s, periods, min_persistence)
        for s in result.structures
        if not s.confirmed and s.review != FALSE_POSITIVE  # the analyst has decided those
    )
    cov = result.coverage
    warnings = (
        ("search", _search_warning(result)),
        ("unreadable-scenes", _unreadable_warning(result)),
        ("unmasked", _unmasked_warning(result)),
        ("offsets", _offsets_warning(result)),
        ("comparison", _comparison_warning(result)),
        ("unseen", _unseen_warning(result)),
        ("coverage", _coverage_warning(result)),
        ("mapping-unit", _mapping_unit_warning(result)),
        ("zone-edge", _zone_edge_warning(result)),
    )
    return Headline(
        n_buildings=n_buildings,
        buildings_range=buildings_range,
        n_structures=len(new),
        structures_range=structures_range,
        by_kind=dict(kinds),
        first_period=first,
        peak_period=peak,
        peak_new=peak_new,
        n_bermed=(
            sum(1 for s in new if s.bermed and s.kind == BUILDING)
            if berms_assessed(result)
            else None
        ),
        n_vanished=sum(1 for s in new if s.status == "vanished"),
        n_absent=sum(1 for s in new if s.absent_since is not None),
        n_unconfirmed=sum(why.values()),
        unconfirmed_why=dict(why.most_common()),
        aoi_km2=None if cov is None else cov.aoi_km2,
        analysed_km2=None if cov is None else cov.analysed_km2,
        analysed_share=None if cov is None else cov.share,  # said as the warning says it
        named_warnings=tuple((name, text) for name, text in warnings if text),
    )
