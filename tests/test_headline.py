"""The headline (`outputs.headline`): counts that add up, buildings apart from all structures,
first and peak month, candidates with why, coverage; the same words in the CLI and the report."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import date

import pytest

from changedet.models import FALSE_POSITIVE, Period, PeriodCount, RunResult, SkippedScene
from changedet.outputs.headline import headline, km2, new_per_period


def _month(m: int, year: int = 2023) -> Period:
    end = date(year + (m == 12), m % 12 + 1, 1)
    return Period(date(year, m, 1), end, f"{year}-{m:02d}")


def test_new_per_period_adds_up_to_the_cumulative_count() -> None:
    # A structure first seen in October after a cloudy September is spread over both months:
    # the cumulative best estimate reads 1, 2, 3, while first sightings read 1, 0, 2.
    counts = [
        PeriodCount(_month(8), 1, 1, 1, 1, 0.9),
        PeriodCount(_month(9), 0, 2, 1, 3, 0.1),
        PeriodCount(_month(10), 2, 3, 3, 3, 0.8),
        PeriodCount(_month(11), 0, 3, 3, 3, 0.8),
    ]
    new = new_per_period(counts)
    assert new == [1, 1, 1, 0]
    assert [sum(new[: i + 1]) for i in range(4)] == [c.cumulative for c in counts]
    assert [c.new_confirmed for c in counts] != new  # first sightings do not add up here


@pytest.fixture(scope="module")
def result(make_run_result: Callable[..., RunResult]) -> RunResult:
    return make_run_result()


def test_buildings_are_told_apart_from_all_new_structures(result: RunResult) -> None:
    hall, depot, shed = result.structures
    works = replace(depot, kind="ground works")
    gone = replace(hall, status="vanished", vanished_after=date(2024, 3, 1))
    dropped = replace(shed, status="dropped")
    told = headline(replace(result, structures=(gone, works, dropped)))
    assert (told.n_buildings, told.n_structures) == (1, 2)  # the dropped candidate never counts
    assert told.by_kind == {"building": 1, "ground works": 1}
    # Each range comes from the ledger's counts at the run's end, and is never narrower than
    # the count the headline states.
    assert told.structures_range == (1, 3)
    assert told.buildings_range == (1, 3)
    assert (told.n_bermed, told.n_vanished) == (0, 1)  # the depot is bermed, but ground works
    assert told.unconfirmed_why == {"did not persist": 1}
    lines = told.lines()
    assert lines[0] == (
        "1 new building (range 1–3); 2 new structures in all (range 1–3), of which 1 ground works"
    )
    assert (
        lines[1]
        == "First in Sep 2023, peak Sep 2023 (1 new); 0 of the new buildings bermed; 1 vanished"
    )
    assert lines[2] == "1 unconfirmed candidate, not counted (1 did not persist)"


def test_structures_absent_lately_are_said_beside_the_vanished(result: RunResult) -> None:
    hall, depot, shed = result.structures
    razed = replace(hall, absent_since=date(2024, 4, 1))  # absent since, not yet vanished
    told = headline(replace(result, structures=(razed, depot, shed)))
    assert told.n_absent == 1 and told.as_dict()["absent_lately"] == 1
    assert told.lines()[1].endswith(
        "0 vanished (1 more absent lately, not yet long enough to call vanished)"
    )
    assert headline(result).n_absent == 0 and "absent" not in headline(result).lines()[1]


def test_why_a_candidate_is_unconfirmed(result: RunResult) -> None:
    hall, _, shed = result.structures
    periods = tuple(_month(m) for m in (8, 9, 10, 11))
    comps = tuple(replace(result.after, period=p) for p in periods)
    early = replace(shed, first_seen_end=date(2023, 10, 1))  # seen in Sep, two periods after
    late = replace(shed, id="late", first_seen_end=date(2023, 12, 1))  # seen in the last one
    told = headline(replace(result, structures=(hall, early, late), composites=comps))
    assert told.unconfirmed_why == {"seen in too few clear periods": 1, "too recent to confirm": 1}
    # a candidate the analyst called a false positive is decided: not among those waiting
    dismissed = replace(late, review=FALSE_POSITIVE)
    told = headline(replace(result, structures=(hall, early, dismissed), composites=comps))
    assert told.unconfirmed_why == {"seen in too few clear periods": 1}
    # Past the data's end: months no scene reached are no chances missed, but still to come.
    unseen = tuple(replace(c, scene_ids=()) if c.period.start.month > 9 else c for c in comps)
    told = headline(replace(result, structures=(hall, early), composites=unseen))
    assert told.unconfirmed_why == {"too recent to confirm": 1}


def test_no_structure_and_coverage_words(
    result: RunResult, make_run_result: Callable[..., RunResult]
) -> None:
    empty = headline(make_run_result(empty=True))
    assert empty.lines()[:3] == (
        "0 new buildings (range 0–0); 0 new structures in all (range 0–0)",
        "No new structure; 0 vanished",
        "No unconfirmed candidate",
    )
    cov = result.coverage
    assert cov is not None
    assert headline(result).lines()[-1] == (
        f"Analysed {km2(cov.analysed_km2)} of the {km2(cov.aoi_km2)} AOI ({100 * cov.share:.1f} %)"
    )
    assert headline(result).warnings == ()
    assert [km2(v) for v in (261.11, 6.54, 0.812)] == ["261 km²", "6.5 km²", "0.81 km²"]
    assert [km2(v) for v in (0.0051, 0.004949, 0.00012, 0.0)] == [
        "0.01 km²",
        "4,949 m²",
        "120 m²",
        "0.00 km²",
    ]


def test_scenes_that_could_not_be_read_are_a_warning(result: RunResult) -> None:
    cloudy = SkippedScene(
        "S2B_CLOUDY", "cloudy around the AOI: 3% of the window read clear < 20% required"
    )
    assert headline(replace(result, scenes_skipped=(cloudy,))).warnings == ()
    corrupt = SkippedScene(
        "S2A_CUT",
        "unreadable asset: swir16: corrupt or truncated asset (TIFFReadEncodedTile() failed)",
        unreadable=True,
    )
    told = headline(replace(result, scenes_skipped=(cloudy, corrupt)))
    assert told.warnings == (
        f"1 scene of AOI '{result.aoi.id}' could not be read and was left out (S2A_CUT: "
        "unreadable asset: swir16: corrupt or truncated asset); fix or re-fetch and rerun; every "
        "skipped scene and why is in run.json",
    )
    expired = SkippedScene("S2B_GONE", "SCL unreadable: HTTP 403 after 2 tries", unreadable=True)
    told = headline(replace(result, scenes_skipped=(corrupt, cloudy, expired)))
    assert told.warnings[0].startswith(f"2 scenes of AOI '{result.aoi.id}' could not be read and ")
    assert "were left out (first S2A_CUT: unreadable asset: swir16:" in told.warnings[0]


def test_a_comparison_that_asked_less_persistence_is_a_warning(result: RunResult) -> None:
    def told(mode: str, persistence: int, baseline: int = 2) -> tuple[str, ...]:
        comparison = {
            "mode": mode,
            "baseline": [f"2023-{m:02d}" for m in range(1, baseline + 1)],
            "min_persistence": persistence,
            "configured": {"baseline_periods": 2, "min_persistence": 2},
            "note": f"{mode} note",
        }
        provenance = {**result.provenance, "comparison": comparison}
        return headline(replace(result, provenance=provenance)).warnings

    assert told("series", 2) == ()
    assert told("short", 2) == ()  # a smaller baseline, the persistence asked: nothing to add
    (short,) = told("short", 1)
    assert short.startswith(f"AOI '{result.aoi.id}': short note; widen the time range")
    (pair,) = told("pair", 1)
    assert pair.startswith(f"AOI '{result.aoi.id}': pair note;")
    # A baseline shortened by cloudy months: run.json and the report say it; one asked longer
    # than the range could ever give is a setting to mend, said here too.
    assert told("short", 2, baseline=1) == ()
    n = len(result.composites) or len(result.counts)

    def asked_long(baseline_periods: int) -> tuple[str, ...]:
        comparison = {
            "mode": "short",
            "baseline": ["2023-01"],
            "min_persistence": 2,
            "configured": {"baseline_periods": baseline_periods, "min_persistence": 2},
            "note": "short note",
        }
        return headline(
            replace(result, provenance={**result.provenance, "comparison": comparison})
        ).warnings

    assert asked_long(n - 2) == ()
    (too_long,) = asked_long(n - 1)
    assert too_long == (
        f"AOI '{result.aoi.id}': short note; time.baseline_periods ({n - 1}) and "
        f"track.min_persistence (2) ask more than the {n} periods of the time range: widen it, "
        "or lower baseline_periods"
    )


def test_months_the_run_could_not_look_at_are_a_warning(result: RunResult) -> None:
    """A baseline moved later by cloud, and months past the last clear one, shape the counts
    silently: the run said nothing while counts ran flat over months nobody saw."""

    def told(baseline: list[str], clear: list[str]) -> tuple[str, ...]:
        comparison = {"mode": "series", "baseline": baseline, "clear_periods": clear}
        provenance = {**result.provenance, "comparison": comparison}
        return headline(replace(result, provenance=provenance)).warnings

    every = ["2023-08", "2023-09", "2023-10", "2023-11"]
    assert told(every[:2], every) == ()
    (late,) = told(every[:2], every[:2])
    assert late == (
        f"AOI '{result.aoi.id}': the 2 months after 2023-09 (2023-10..2023-11) had too little "
        "clear view to compare (cloud, or no scene): counts there repeat 2023-09's; see the "
        "counts' clear_fraction"
    )
    (moved,) = told(every[1:3], every[1:])
    assert moved == (
        f"AOI '{result.aoi.id}': its baseline starts in 2023-09: the month before it was too "
        "cloudy or held no scene, so what was built before 2023-09 counts as there already; "
        "see the counts' clear_fraction"
    )
    (both,) = told(every[1:3], every[1:3])
    assert "the month after 2023-10 (2023-11) had" in both
    # A monitoring run in the first days of November: its month under way, no scene yet.
    counts = list(result.counts)
    counts[-1] = replace(counts[-1], period=Period(date(2023, 11, 1), date(2023, 11, 6), "2023-11"))
    comparison = {"mode": "series", "baseline": every[:2], "clear_periods": every[:3]}
    early = replace(
        result, counts=tuple(counts), provenance={**result.provenance, "comparison": comparison}
    )
    assert headline(early).warnings == ()
    comparison["clear_periods"] = every[:2]  # October unseen too: said, November with it
    (said,) = headline(early).warnings
    assert "the 2 months after 2023-09 (2023-10..2023-11)" in said
    # 26 days of November without a scene are news (it kept quiet up to 27)
    comparison["clear_periods"] = every[:3]
    counts[-1] = replace(
        counts[-1], period=Period(date(2023, 11, 1), date(2023, 11, 27), "2023-11")
    )
    late = replace(early, counts=tuple(counts))
    (said,) = headline(late).warnings
    assert "the month after 2023-10 (2023-11) had too little clear view" in said


def test_scenes_read_without_an_scl_asset_are_a_warning(result: RunResult) -> None:
    """A misnamed scl asset key read every scene unmasked, said only in run.json."""
    unmasked = [f"S2A_{i}" for i in range(16)]
    provenance = {**result.provenance, "scenes_without_scl": unmasked}
    (said,) = headline(replace(result, provenance=provenance)).warnings
    assert said.startswith(f"AOI '{result.aoi.id}': 16 scene(s) had no SCL asset, so no cloud")
    assert "scl key of [catalog.asset_keys." in said
    assert headline(result).warnings == ()


def test_a_mapping_unit_larger_than_the_aoi_is_a_warning(result: RunResult) -> None:
    """change.min_area_m2 above the AOI's area was accepted without a word."""
    aoi_m2 = result.coverage.aoi_km2 * 1e6
    assert headline(replace(result, min_mapping_unit_m2=aoi_m2)).warnings == ()
    (said,) = headline(replace(result, min_mapping_unit_m2=aoi_m2 + 100)).warnings
    assert said.startswith(f"AOI '{result.aoi.id}' ({aoi_m2:,.0f} m²) is smaller than change.")


def test_an_aoi_across_its_zone_edge_is_a_warning(result: RunResult) -> None:
    """It was a Python warning at load: printed by run, never by the monitor, in no output."""
    from shapely.geometry import box

    across = replace(result.aoi, geometry=box(53.9, 35.6, 54.05, 35.7))
    (said,) = headline(replace(result, aoi=across)).warnings
    assert said.startswith(f"AOI '{result.aoi.id}' crosses the edge of UTM zone 39 at 54° E")


def test_berms_switched_off_are_not_assessed_rather_than_none(result: RunResult) -> None:
    """With [berms] enabled = false no structure was looked at for berms (bermed: null): the
    headline says so instead of '0 of the new buildings bermed'."""
    assert "of the new buildings bermed" in headline(result).when()
    config = {**result.config, "berms": {**result.config.get("berms", {}), "enabled": False}}
    told = headline(replace(result, config=config))
    assert "berms not assessed ([berms] enabled = false)" in told.when()
    assert "bermed" not in told.when().replace("berms not assessed", "")
    assert told.as_dict()["bermed"] is None
