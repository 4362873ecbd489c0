"""Dates read with a wrong harmonisation offset (`core.offsets`): known answers on made-up band
medians, and the reader's correction on the sample tiles with two items' flags turned wrong."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from changedet.core.offsets import OFFSET, OffsetCheck, offset_errors

REPO = Path(__file__).resolve().parents[1]

# Band medians of an arid site over a year (blue..swir22): the season moves NIR and SWIR by a
# few hundredths, a hazy date brightens blue, a wet one darkens SWIR most.
SERIES = np.array(
    [
        [0.12, 0.15, 0.19, 0.26, 0.34, 0.29],
        [0.12, 0.15, 0.19, 0.27, 0.35, 0.30],
        [0.13, 0.16, 0.20, 0.27, 0.35, 0.30],
        [0.21, 0.21, 0.23, 0.29, 0.35, 0.30],  # haze: blue +0.09, SWIR unmoved
        [0.08, 0.10, 0.13, 0.19, 0.22, 0.17],  # rain: SWIR -0.12, blue -0.04
        [0.12, 0.15, 0.19, 0.25, 0.33, 0.28],
        [0.12, 0.15, 0.19, 0.26, 0.34, 0.29],
        [0.13, 0.15, 0.20, 0.26, 0.34, 0.29],
    ]
)


DARKS = np.full(len(SERIES), 0.03)  # each date's darkest band's 1st percentile: shadows


def _off(dates: list[int], by: float) -> tuple[np.ndarray, np.ndarray]:
    medians, darks = SERIES.copy(), DARKS.copy()
    medians[dates] += by
    darks[dates] += by
    return medians, darks


def test_a_date_off_by_the_offset_in_every_band_is_found_and_nature_is_not() -> None:
    assert offset_errors(SERIES, DARKS) == OffsetCheck({})  # haze and rain are no offset error
    medians, darks = _off([1], -OFFSET)  # the -0.1 taken off DNs that no longer carried it
    medians[6] += OFFSET  # not taken off DNs that did
    darks[6] += OFFSET
    check = offset_errors(medians, darks)
    assert check.corrections == {1: pytest.approx(OFFSET), 6: pytest.approx(-OFFSET)}
    assert check.doubtful == ()


def test_a_majority_of_wrong_dates_does_not_make_the_right_ones_wrong() -> None:
    """Mis-flagged items come in runs. Against a median of wrong dates the right ones look off;
    their darks (shadows at 0.03, not below zero) say they are not: none is corrected, and the
    right ones are named for their flags to be checked."""
    check = offset_errors(*_off([0, 1, 2, 3, 4, 5], OFFSET))
    assert check.corrections == {} and check.doubtful == (6, 7)


def test_a_run_of_wrong_dates_longer_than_the_right_ones_is_corrected_when_its_darks_say_so() -> (
    None
):
    calm = [0, 1, 2, 5, 6, 7, 0]  # no haze nor rain among them: every wrong date 0.1 off alike
    medians, darks = SERIES[calm].copy(), DARKS[calm].copy()
    medians[:4] += OFFSET
    darks[:4] += OFFSET  # left on: nothing in them darker than the offset
    check = offset_errors(medians, darks)
    assert check.corrections == dict.fromkeys(range(4), pytest.approx(-OFFSET))
    # Two right dates are too few to go by: said, not corrected.
    check = offset_errors(medians[:6], darks[:6])
    assert check.corrections == {} and check.doubtful == (4, 5)


def test_one_date_of_three_off_is_said_not_corrected() -> None:
    """Two dates are too few to be the series (a test of the reader met it: three made-up
    dates, one of them 0.1 brighter with no dark pixel)."""
    medians, darks = _off([1], OFFSET)
    check = offset_errors(medians[:3], darks[:3] + 0.07)
    assert check.corrections == {} and check.doubtful == (1,)


def test_two_groups_of_one_size_are_said() -> None:
    check = offset_errors(*_off([0, 1, 2, 5], OFFSET))  # no median to trust: pairs tell
    assert check.corrections == {} and set(check.doubtful) >= {0, 1, 2, 5}


def test_dates_without_enough_clear_pixels_are_not_judged() -> None:
    medians, darks = _off([1], -OFFSET)
    medians[5:] = np.nan
    assert offset_errors(medians, darks).corrections == {1: pytest.approx(OFFSET)}
    assert offset_errors(SERIES[:2], DARKS[:2]) == OffsetCheck({})  # fewer than three


def _flag(folder: Path, item: str, applied: bool) -> None:
    path = folder / "sentinel-2-l2a" / item / f"{item}.json"
    doc = json.loads(path.read_text())
    doc["properties"]["earthsearch:boa_offset_applied"] = applied
    path.write_text(json.dumps(doc))


def test_the_reader_corrects_two_dates_whose_flags_are_wrong(cli: object, tmp_path: Path) -> None:
    """Earth Search's sentinel-2-l2a says the offset flag wrongly for some items (earth-search
    #66, #71): one date read 0.1 too dark and one 0.1 too bright. Both are told from their
    pixels and corrected: the same structures as with the right flags, and a warning."""
    from click.testing import CliRunner

    from changedet.cli import main

    tiles = tmp_path / "tiles"
    shutil.copytree(REPO / "sample_tiles" / "khojir", tiles)
    _flag(tiles, "S2A_39SWV_20240227_0_L2A", False)  # DNs harmonised; said not to be
    _flag(tiles, "S2A_39SWV_20240308_0_L2A", True)  # DNs carry the offset; said not to
    config = tmp_path / "wrong.toml"
    config.write_text(
        f'extends = "{REPO / "configs" / "demo-khojir.toml"}"\n'
        f'[catalog]\nurl = "{tiles / "catalog.json"}"\n[output]\nreport = false\nchips = false\n'
    )
    right = tmp_path / "right.toml"
    right.write_text(config.read_text().replace(str(tiles), str(REPO / "sample_tiles" / "khojir")))
    aoi = str(REPO / "aoi" / "khojir.geojson")
    runner = CliRunner()
    for name, cfg in (("right", right), ("wrong", config)):
        done = runner.invoke(
            main, ["run", aoi, "--config", str(cfg), "--out", str(tmp_path / name)]
        )
        assert done.exit_code == 0, done.output
    told = json.loads((tmp_path / "wrong" / "khojir" / "run.json").read_text())
    corrected = told["offsets_corrected"]
    assert len(corrected) == 2
    assert corrected[0].startswith(
        "2024-02-27 (S2A_39SWV_20240227_0_L2A) read 0.1 darker than other dates"
    )
    assert corrected[1].startswith(
        "2024-03-08 (S2A_39SWV_20240308_0_L2A) read 0.1 brighter than other dates"
    )
    assert all(c.endswith("looks wrong; corrected") for c in corrected)
    # the offset may come from the baseline or raster:bands as well as from the flag
    assert all("the processing baseline or the raster:bands offset" in c for c in corrected)
    assert any("looks wrong; corrected (and 1 more" in w for w in told["headline"]["warnings"])
    clean = json.loads((tmp_path / "right" / "khojir" / "run.json").read_text())
    assert clean["offsets_corrected"] == []
    structures = "structures.geojson"
    assert (tmp_path / "wrong" / "khojir" / structures).read_bytes() == (
        tmp_path / "right" / "khojir" / structures
    ).read_bytes()
