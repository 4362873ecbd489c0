"""The pipeline glue: injected I/O, safe output folders, stable ids on rerun and extension."""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from changedet.aoi import aoi_mask, grid_for, load_aois
from changedet.config import load_config
from changedet.core.periods import make_periods
from changedet.core.timeseries import analyse_stack
from changedet.errors import OutputError
from changedet.models import Stack
from changedet.pipeline import PipelineIO, run_aoi, safe_out_dir

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("bad", ["..", ".", "../x", "a/../../b", "/etc"])
def test_output_folder_never_escapes_out(tmp_path: Path, bad: str) -> None:
    with pytest.raises(OutputError):
        safe_out_dir(tmp_path / "out", bad)
    assert safe_out_dir(tmp_path / "out", "khojir") == (tmp_path / "out" / "khojir").resolve()


@pytest.fixture(scope="module")
def khojir_stack() -> tuple[Stack, np.ndarray]:
    """The Khojir sample read through the real catalog and reader, once."""
    config = load_config(REPO / "configs" / "demo-khojir.toml")
    (aoi,) = load_aois(REPO / "aoi" / "khojir.geojson")
    io = PipelineIO.default()
    found = io.search(
        aoi, config.catalog, start=config.time.start, end=config.time.end, bands=config.read.bands
    )
    from changedet.aoi import crop_to_footprints

    grid = crop_to_footprints(grid_for(aoi), aoi, found.scenes)
    inside = aoi_mask(aoi, grid)
    read = io.read(
        found.scenes,
        grid,
        bands=config.read.bands,
        aoi_mask=inside,
        read_config=config.read,
        mask_config=config.mask,
    )
    return read.stack, inside


def _until(stack: Stack, end: date) -> Stack:
    keep = [i for i, t in enumerate(stack.times) if t.date() < end]
    return replace(
        stack,
        times=tuple(stack.times[i] for i in keep),
        scene_ids=tuple(stack.scene_ids[i] for i in keep),
        reflectance=stack.reflectance[keep],
        clear=stack.clear[keep],
        scl=None if stack.scl is None else stack.scl[keep],
    )


def test_ids_stable_on_rerun_and_when_extended_by_one_period(
    khojir_stack: tuple[Stack, np.ndarray],
) -> None:
    stack, inside = khojir_stack
    config = load_config(REPO / "configs" / "demo-khojir.toml")
    periods = make_periods(config.time.start, config.time.end, "month")
    run = {"inside": inside, "config": config, "id_prefix": "khojir"}
    full = analyse_stack(stack, periods=periods, **run)
    again = analyse_stack(stack, periods=periods, **run)
    assert [s.id for s in again.structures] == [s.id for s in full.structures]
    assert len(full.ledger.confirmed) >= 30

    shorter = analyse_stack(_until(stack, periods[-1].start), periods=periods[:-1], **run)
    by_id = {s.id: s for s in full.structures}
    confirmed_before = [s for s in shorter.structures if s.confirmed]
    assert len(confirmed_before) >= 30
    for s in confirmed_before:
        assert s.id in by_id, s.id
        assert (s.first_seen_start, s.first_seen_end) == (
            by_id[s.id].first_seen_start,
            by_id[s.id].first_seen_end,
        )


def test_run_uses_injected_io_and_writes_only_through_it(tmp_path: Path) -> None:
    config = load_config(REPO / "configs" / "demo-khojir.toml")
    (aoi,) = load_aois(REPO / "aoi" / "khojir.geojson")
    real = PipelineIO.default()
    written: list[tuple[object, Path]] = []

    def write(result: object, out_dir: Path, **_: object) -> list[Path]:
        written.append((result, out_dir))
        return []

    summary = run_aoi(aoi, config, out_root=tmp_path, io=replace(real, write=write))
    assert len(written) == 1
    result, out_dir = written[0]
    assert out_dir == (tmp_path / "khojir").resolve() and not out_dir.exists()
    assert summary.synthetic and summary.n_confirmed >= 30
    assert result.min_mapping_unit_m2 == config.change.min_area_m2  # type: ignore[attr-defined]
    assert set(result.timings) >= {"search", "read", "composite", "change", "track"}  # type: ignore[attr-defined]


def test_per_date_shifts_match_the_planted_misregistration(
    khojir_stack: tuple[Stack, np.ndarray],
) -> None:
    import json

    from changedet.core.coreg import coregister_dates

    stack, _ = khojir_stack
    _, shifts = coregister_dates(stack, band="red", threshold_px=0.25)
    scenario = json.loads((REPO / "sample_tiles" / "khojir" / "scenario.json").read_text())
    planted = {d["datetime"][:10]: d["shift_px"] for d in scenario["dates"]}
    pairs = [
        (planted[t.date().isoformat()], s)
        for t, s in zip(stack.times, shifts, strict=True)
        if s is not None
    ]
    assert len(pairs) >= 10
    mean = np.mean([p for p, _ in pairs], axis=0)
    for p, s in pairs:  # measured against the median of all dates: relative to the mean shift
        assert s == pytest.approx((-(p[0] - mean[0]), -(p[1] - mean[1])), abs=0.15)
