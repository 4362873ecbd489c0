"""The pipeline glue, through its seams: in-memory I/O (`changedet.lab.fakes`) for its behaviour,
and one run with the real catalog, prober and reader on the bundled sample tiles."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from changedet.aoi import grid_for, load_aois
from changedet.config import Config, load_config
from changedet.core.clip import window_of
from changedet.errors import OutputError, ReadError
from changedet.lab.fakes import MemoryWriter, scenes_for_stack
from changedet.models import AOI, Grid, RunResult, SkippedScene, Stack
from changedet.pipeline import PipelineIO, run_aoi, safe_out_dir, search_aoi

REPO = Path(__file__).resolve().parents[1]
# Roofs built on the AOI grid: (date built, (row, col, height, width)).
APRIL_ROOF = (date(2023, 4, 1), (20, 20, 6, 6))  # 36 px = 3600 m²
JUNE_ROOF = (date(2023, 6, 1), (50, 40, 5, 8))  # 40 px = 4000 m²
AUGUST_ROOF = (
    date(2023, 8, 1),
    (62, 10, 6, 6),
)  # seen in one period only when the run ends in August


@dataclass(frozen=True)
class Scenario:
    aoi: AOI
    stack: Stack  # on the AOI's grid: Jan..Aug 2023, twice a month, all clear
    config: Config  # Jan..Jul 2023


@pytest.fixture(scope="module")
def scenario(make_aoi: Callable[..., AOI], make_stack: Callable[..., Stack]) -> Scenario:
    aoi = make_aoi()
    dates = [date(2023, m, d) for m in range(1, 9) for d in (3, 18)]
    stack = make_stack(grid_for(aoi), dates=dates, squares=[APRIL_ROOF, JUNE_ROOF, AUGUST_ROOF])
    base = load_config(None)
    config = replace(
        base,
        time=replace(base.time, start=date(2023, 1, 1), end=date(2023, 7, 31)),
        # Co-registration is not under test here (see test_coreg and the sample-tile run below);
        # with it off, the known answers are exact.
        change=replace(base.change, coregister=False),
    )
    return Scenario(aoi, stack, config)


def _until(config: Config, end: date) -> Config:
    return replace(config, time=replace(config.time, end=end))


def _pixels(grid: Grid, square: tuple[int, int, int, int]) -> Any:
    from shapely.geometry import box

    r, c, h, w = square
    x0, y0 = grid.transform @ (c, r + h)
    x1, y1 = grid.transform @ (c + w, r)
    return box(x0, y0, x1, y1)


@pytest.mark.parametrize("bad", ["..", ".", "../x", "a/../../b", "/etc"])
def test_output_folder_never_escapes_out(tmp_path: Path, bad: str) -> None:
    with pytest.raises(OutputError):
        safe_out_dir(tmp_path / "out", bad)
    assert safe_out_dir(tmp_path / "out", "khojir") == (tmp_path / "out" / "khojir").resolve()


def test_planted_roofs_are_found_where_and_when_they_were_built(
    scenario: Scenario, fake_io: Callable[..., PipelineIO], tmp_path: Path
) -> None:
    io = fake_io(scenario.stack)
    summary = run_aoi(scenario.aoi, scenario.config, out_root=tmp_path, io=io)
    (result,) = io.write.results  # type: ignore[attr-defined]
    assert (summary.n_confirmed, summary.n_candidates, summary.n_scenes) == (2, 0, 14)
    assert summary.synthetic
    april, june = sorted(result.structures, key=lambda s: s.first_seen_end)
    for found, (_, square), area in ((april, APRIL_ROOF, 3600.0), (june, JUNE_ROOF, 4000.0)):
        assert found.confirmed and found.area_m2 == area
        assert found.geometry.symmetric_difference(_pixels(result.grid, square)).area == 0.0
    # Absent in the last clear period before it was built, present from the period it was.
    assert (april.first_seen_start, april.first_seen_end) == (date(2023, 3, 1), date(2023, 5, 1))
    assert (june.first_seen_start, june.first_seen_end) == (date(2023, 5, 1), date(2023, 7, 1))


def test_a_roof_built_during_a_long_baseline_is_not_dated_after_it(
    scenario: Scenario, fake_io: Callable[..., PipelineIO], tmp_path: Path
) -> None:
    """January to May as the baseline: the April roof stands on 4 of its 10 dates, so its median
    is bare ground and the roof is new in June. It was there in April and May, whose composites
    already differ from the baseline there: it was last seen absent in March, not May."""
    config = replace(scenario.config, time=replace(scenario.config.time, baseline_periods=5))
    io = fake_io(scenario.stack)
    run_aoi(scenario.aoi, config, out_root=tmp_path, io=io)
    (result,) = io.write.results  # type: ignore[attr-defined]
    roof = _pixels(result.grid, APRIL_ROOF[1])
    (april,) = [s for s in result.structures if s.geometry.symmetric_difference(roof).area == 0]
    assert april.first_seen_end == date(2023, 7, 1)  # new in June
    assert april.first_seen_start == date(2023, 3, 1)  # the built date, April 1, in between


def test_a_one_period_baseline_is_evidence_of_absence(
    scenario: Scenario, fake_io: Callable[..., PipelineIO], tmp_path: Path
) -> None:
    """January alone as the baseline: its composite is the baseline, so its change score is 0
    everywhere. Taken as "still changed" it left the first-seen start of everything unknown;
    it is the clear period before the roofs stood."""
    config = replace(scenario.config, time=replace(scenario.config.time, baseline_periods=1))
    io = fake_io(scenario.stack)
    run_aoi(scenario.aoi, config, out_root=tmp_path, io=io)
    (result,) = io.write.results  # type: ignore[attr-defined]
    april, june = sorted(
        (s for s in result.structures if s.confirmed), key=lambda s: s.first_seen_end
    )
    assert (april.first_seen_start, april.first_seen_end) == (date(2023, 3, 1), date(2023, 5, 1))
    assert (june.first_seen_start, june.first_seen_end) == (date(2023, 5, 1), date(2023, 7, 1))
    # and a roof in the first compared month is dated from the baseline month
    config = replace(config, time=replace(config.time, start=date(2023, 3, 1)))
    io = fake_io(scenario.stack)
    run_aoi(scenario.aoi, config, out_root=tmp_path / "march", io=io)
    (result,) = io.write.results  # type: ignore[attr-defined]
    roof = _pixels(result.grid, APRIL_ROOF[1])
    (april,) = [s for s in result.structures if s.geometry.symmetric_difference(roof).area == 0]
    assert (april.first_seen_start, april.first_seen_end) == (date(2023, 3, 1), date(2023, 5, 1))


def test_writer_receives_one_consistent_run_result(
    scenario: Scenario, fake_io: Callable[..., PipelineIO], tmp_path: Path
) -> None:
    stack, config = scenario.stack, scenario.config
    scenes = scenes_for_stack(stack)
    hazy = replace(scenes[3], id="S2B_HAZY_20230218_0_L2A")  # read, found too cloudy
    overcast = replace(scenes[4], id="S2B_OVERCAST_20230303_0_L2A", cloud_cover=97.0)
    reader_skip = SkippedScene(
        hazy.id, "cloudy around the AOI: 3% of the window read clear < 20% required"
    )
    io = fake_io(
        stack,
        scenes=[*scenes, hazy, overcast],
        catalog_dropped=[SkippedScene("S2A_OLD_20230118_0_L2A", "duplicate of a newer one")],
        read_skipped=[reader_skip],
    )
    run_aoi(scenario.aoi, config, out_root=tmp_path, io=io)

    (result,) = io.write.results  # type: ignore[attr-defined]
    (out_dir,) = io.write.out_dirs  # type: ignore[attr-defined]
    assert out_dir == safe_out_dir(tmp_path, scenario.aoi.id) and not out_dir.exists()
    # The reader was asked for the scenes of the time range only (not August), on a context
    # window holding the AOI's grid, which is what the result shows.
    ((asked, grid),) = io.read.requests  # type: ignore[attr-defined]
    in_range = [s for s in scenes if s.date <= config.time.end]
    assert set(asked) == {s.id for s in in_range} | {hazy.id}
    assert result.grid == window_of(grid_for(scenario.aoi), grid)[0]
    assert grid.width > result.grid.width and grid.height > result.grid.height
    for layer in (result.before, result.after, *result.composites):
        assert layer.grid == result.grid and layer.reflectance.shape[1:] == result.grid.shape
    assert result.change.grid == result.grid
    assert [s.id for s in result.scenes_used] == [s.id for s in in_range]
    assert {s.scene_id for s in result.scenes_skipped} == {
        "S2A_OLD_20230118_0_L2A",
        overcast.id,
        hazy.id,
    }
    assert [c.period.label for c in result.counts] == [f"2023-{m:02d}" for m in range(1, 8)]
    assert result.provenance["dates"] == [s.datetime.isoformat() for s in in_range]
    assert result.config_fingerprint == config.fingerprint()
    (manifest,) = io.write.manifests  # type: ignore[attr-defined]
    assert [s["id"] for s in manifest["scenes"]["used"]] == [s.id for s in in_range]


def test_a_false_positive_verdict_leaves_the_summary_and_counts(
    scenario: Scenario, fake_io: Callable[..., PipelineIO], tmp_path: Path
) -> None:
    io = fake_io(scenario.stack)
    run_aoi(scenario.aoi, scenario.config, out_root=tmp_path, io=io)
    (first,) = io.write.results[:1]  # type: ignore[attr-defined]
    april = min(first.structures, key=lambda s: s.first_seen_end)
    io = fake_io(scenario.stack)
    verdicts = {april.id: ("false-positive", "a greenhouse")}
    summary = run_aoi(scenario.aoi, scenario.config, out_root=tmp_path, io=io, review=verdicts)
    (result,) = io.write.results  # type: ignore[attr-defined]
    assert summary.n_confirmed == 1  # two found, one of them a false positive
    assert result.counts[-1].cumulative == first.counts[-1].cumulative - 1
    shown = {s.id: s for s in result.structures}
    assert shown[april.id].review == "false-positive"  # still shown, with the verdict


def test_ids_stable_on_rerun_and_when_extended_by_one_period(
    scenario: Scenario, fake_io: Callable[..., PipelineIO], tmp_path: Path
) -> None:
    def structures(end: date) -> dict[str, Any]:
        io = fake_io(scenario.stack)
        run_aoi(scenario.aoi, _until(scenario.config, end), out_root=tmp_path, io=io)
        (result,) = io.write.results  # type: ignore[attr-defined]
        return {s.id: s for s in result.structures}

    july, again = structures(date(2023, 7, 31)), structures(date(2023, 7, 31))
    august = structures(date(2023, 8, 31))
    assert list(july) == list(again) and len(july) == 2
    for sid, s in july.items():
        assert (s.first_seen_start, s.first_seen_end) == (
            august[sid].first_seen_start,
            august[sid].first_seen_end,
        )
    (new,) = set(august) - set(july)  # the August roof: seen once, a candidate
    assert not august[new].confirmed


def test_the_after_composite_ends_with_the_data_not_with_the_run(
    scenario: Scenario, fake_io: Callable[..., PipelineIO], tmp_path: Path
) -> None:
    """A run past the last scene labelled its "after" imagery, change raster and map over
    months the data never reached ('2023-07..2023-10' of acquisitions ending in August)."""

    def after(end: date) -> RunResult:
        io = fake_io(scenario.stack)
        run_aoi(scenario.aoi, _until(scenario.config, end), out_root=tmp_path, io=io)
        (result,) = io.write.results  # type: ignore[attr-defined]
        return result

    august, october = after(date(2023, 8, 31)), after(date(2023, 10, 31))
    assert [c.period.label for c in october.composites][-1] == "2023-10"
    assert october.after.period == august.after.period
    assert october.after.period.end == date(2023, 9, 1)
    assert np.array_equal(october.after.reflectance, august.after.reflectance, equal_nan=True)


def test_a_search_cut_short_is_a_warning_of_the_run(
    scenario: Scenario, fake_io: Callable[..., PipelineIO], tmp_path: Path
) -> None:
    """Scenes a search never paged to are missing from the series, the counts and the dates:
    the run says so in its warnings (CLI, report, run.json), not only in the search notes."""
    io = fake_io(scenario.stack)
    note = "search stopped at catalog.max_items=5; raise it or narrow the dates or AOI"

    def cut_short(*args: Any, **kwargs: Any) -> Any:
        return replace(io.search(*args, **kwargs), complete=False, stopped=note)

    summary = run_aoi(scenario.aoi, scenario.config, out_root=tmp_path, io=io)
    assert not any("cut short" in w for w in summary.warnings)
    summary = run_aoi(
        scenario.aoi, scenario.config, out_root=tmp_path, io=replace(io, search=cut_short)
    )
    assert f"AOI '{scenario.aoi.id}': the catalog search was cut short ({note})" in "".join(
        summary.warnings
    )
    result = io.write.results[-1]  # type: ignore[attr-defined]
    assert result.provenance["search_stopped"] == note


def test_a_failing_reader_fails_the_aoi_and_writes_nothing(
    scenario: Scenario, fake_io: Callable[..., PipelineIO], tmp_path: Path
) -> None:
    def unreachable(*args: object, **kwargs: object) -> Any:
        raise ReadError("read: every scene failed on network errors (timeout)")

    io = fake_io(scenario.stack)
    with pytest.raises(ReadError, match="network"):
        run_aoi(scenario.aoi, scenario.config, out_root=tmp_path, io=replace(io, read=unreachable))
    assert io.write.results == [] and list(tmp_path.iterdir()) == []  # type: ignore[attr-defined]


def test_search_with_probe_reports_clear_sky_and_why_scenes_drop(
    scenario: Scenario, fake_io: Callable[..., PipelineIO]
) -> None:
    stack = scenario.stack
    ids = [i for (i,) in stack.scene_ids]
    clear = dict.fromkeys(ids, 0.9) | {ids[2]: 0.05}
    io = fake_io(stack, clear_fractions=clear)
    report = search_aoi(scenario.aoi, scenario.config, probe=True, io=io)
    assert [s.id for s in report.used] == ids[:14]  # the catalog keeps the time range
    assert report.clear == {i: clear[i] for i in ids[:14]}
    (dropped,) = report.dropped
    assert dropped.scene_id == ids[2] and dropped.reason.startswith(
        "cloudy around the AOI: 5% of the window read clear"
    )
    assert report.to_json()["scenes"][2]["used"] is False


def test_run_on_the_sample_tiles_with_the_real_catalog_and_reader(tmp_path: Path) -> None:
    """End to end through the real defaults (only the writer kept in memory): the Khojir
    sample's structures are found and its planted per-date misregistration is measured."""
    config = load_config(REPO / "configs" / "demo-khojir.toml")
    (aoi,) = load_aois(REPO / "aoi" / "khojir.geojson")
    writer = MemoryWriter()
    summary = run_aoi(
        aoi, config, out_root=tmp_path, io=replace(PipelineIO.default(), write=writer)
    )
    (result,) = writer.results
    assert isinstance(result, RunResult) and summary.synthetic and summary.n_confirmed >= 30
    assert result.min_mapping_unit_m2 == config.change.min_area_m2
    assert set(result.timings) >= {"search", "read", "composite", "change", "track"}

    scenario = json.loads((REPO / "sample_tiles" / "khojir" / "scenario.json").read_text())
    planted = {d["datetime"][:10]: d["shift_px"] for d in scenario["dates"]}
    measured = {d: s for d, s in result.provenance["date_shifts_px"].items() if s is not None}
    assert len(measured) >= 10
    p = np.array([planted[d] for d in measured])
    m = np.array(list(measured.values()))
    # Shifts are measured against the baseline's median: compare both about their means.
    # Within 0.2 px: the measurement uses the clear pixels left after the spike screen.
    np.testing.assert_allclose(m - m.mean(axis=0), -(p - p.mean(axis=0)), atol=0.2)


@pytest.mark.parametrize("filling", ["dates", "composites"])
def test_a_full_disk_while_reading_is_one_line_saying_what_to_do(
    scenario: Scenario,
    fake_io: Callable[..., PipelineIO],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    filling: str,
) -> None:
    """The dates and the period composites are kept in the temporary folder while a run works:
    a full disk there is the machine's trouble, not a bug to report."""
    import errno
    import tempfile

    from changedet.compute import run_aois
    from changedet.read.store import SpilledRows

    def full(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    io = fake_io(scenario.stack)
    if filling == "dates":
        io = replace(io, read=full)
    else:
        monkeypatch.setattr(SpilledRows, "write_rows", full)
    (outcome,) = run_aois([scenario.aoi], scenario.config, out_root=tmp_path / "out", io=io)
    assert outcome.summary is None and outcome.exit_code == 1
    assert outcome.error == (
        "a disk is full (No space left on device): changedet keeps each date's pixels and each "
        f"period's composite in the temporary folder {tempfile.gettempdir()} while it runs, "
        "besides its cache and outputs; free space, or set TMPDIR to a folder on a larger disk, "
        "then rerun"
    )
    assert not (tmp_path / "out").exists()


def test_the_summary_line_says_how_much_persistence_was_checked() -> None:
    """A pair's structures were 'confirmed' on one later period; a short series' on fewer than
    asked, which the line did not say either."""
    from changedet.pipeline import RunSummary

    summary = RunSummary("a", Path("o"), n_scenes=5, n_confirmed=3, n_candidates=1, synthetic=False)
    assert "a: 3 confirmed new structure(s), 1 unconfirmed" in summary.describe()
    pair = replace(summary, persistence=(1, 2)).describe()
    assert "a: 3 new structure(s) (persistence not checked), 1 unconfirmed" in pair
    short = replace(summary, persistence=(2, 3)).describe()
    assert "3 confirmed new structure(s) (over 2 clear periods, not the 3 asked)" in short
