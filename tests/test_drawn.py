"""A rerun into the same folder takes the previous run's unchanged drawings (chips, the before
quicklook, the true-colour COGs) and draws again whatever changed, is damaged or missing."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import replace
from datetime import date
from pathlib import Path

import numpy as np
from affine import Affine
from PIL import Image

from changedet.config import OutputConfig
from changedet.models import Composite, Period, RunResult
from changedet.outputs.drawn import Drawings, drawing_key
from changedet.outputs.write import write_run_outputs


def _drawn(out: Path) -> dict[str, dict[str, str]]:
    return json.loads((out / "run.json").read_text())["drawn"]


def _bytes(out: Path, names: list[str]) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in names}


def _marker_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (7, 5), (255, 0, 255)).save(buf, format="png")
    return buf.getvalue()


def test_a_rerun_takes_what_it_would_draw_the_same_and_draws_the_rest(
    tmp_path: Path, make_run_result: Callable[..., RunResult]
) -> None:
    result = make_run_result()
    out = tmp_path / "aoi"
    write_run_outputs(result, out, config=OutputConfig())
    first = _drawn(out)
    chips = sorted(name for name in first if name.startswith("chips/"))
    cogs = ["imagery/baseline.tif", "imagery/latest.tif"]
    assert len(chips) >= 3 and {"before.png", *cogs} <= set(first)
    original = _bytes(out, list(first))
    for name, entry in first.items():  # run.json holds each file's SHA-256
        assert entry["sha256"] == hashlib.sha256(original[name]).hexdigest()

    # Between the runs: one chip is replaced by another picture that run.json vouches for (so a
    # taken file is told from a drawn one), one is damaged, and the latest COG is gone.
    planted, damaged, gone = chips[0], chips[1], cogs[1]
    marker = _marker_png()
    (out / planted).write_bytes(marker)
    manifest = json.loads((out / "run.json").read_text())
    manifest["drawn"][planted]["sha256"] = hashlib.sha256(marker).hexdigest()
    (out / "run.json").write_text(json.dumps(manifest))
    flipped = bytearray(original[damaged])
    flipped[len(flipped) // 2] ^= 0xFF
    (out / damaged).write_bytes(bytes(flipped))
    (out / gone).unlink()

    write_run_outputs(result, out, config=OutputConfig())
    second = _drawn(out)
    assert (out / planted).read_bytes() == marker  # taken: its inputs and its hash agree
    assert (out / damaged).read_bytes() == original[damaged]  # the hash disagrees: drawn again
    assert (out / gone).read_bytes() == original[gone]  # missing: drawn again
    assert second.keys() == first.keys()
    assert {k: v["from"] for k, v in second.items()} == {k: v["from"] for k, v in first.items()}
    others = [name for name in first if name != planted]
    assert _bytes(out, others) == {name: original[name] for name in others}
    assert (out / "previous" / "run.json").is_file()  # the previous run is kept as ever

    # Another baseline changes the stretch and every picture drawn from it: nothing is taken.
    before = result.before
    brighter = replace(result, before=replace(before, reflectance=before.reflectance * 1.05))
    write_run_outputs(brighter, out, config=OutputConfig())
    third = _drawn(out)
    assert (out / planted).read_bytes() != marker
    for name in [*chips, "before.png", *cogs]:
        assert third[name]["from"] != second[name]["from"], name


def test_nothing_is_taken_from_a_folder_without_a_readable_record(tmp_path: Path) -> None:
    folder = tmp_path / "aoi"
    folder.mkdir()
    (folder / "chips").mkdir()
    (folder / "chips" / "a.png").write_bytes(b"png")
    key = drawing_key("chip", np.ones(3))
    assert Drawings(folder).take("chips/a.png", key) is None  # no run.json
    (folder / "run.json").write_text("{not json")
    assert Drawings(folder).take("chips/a.png", key) is None
    record = {"chips/a.png": {"from": key, "sha256": hashlib.sha256(b"png").hexdigest()}}
    (folder / "run.json").write_text(json.dumps({"drawn": record}))
    drawings = Drawings(folder)
    assert drawings.take("chips/a.png", key) == b"png"
    assert drawings.take("chips/a.png", drawing_key("chip", np.ones(3) * 2)) is None
    assert drawings.take("chips/b.png", key) is None
    assert Drawings(None).take("chips/a.png", key) is None


def test_drawing_keys_tell_apart_what_draws_differently() -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert drawing_key(a) == drawing_key(a.copy()) == drawing_key(np.asfortranarray(a))
    assert drawing_key(a) != drawing_key(a.reshape(4, 3))  # same bytes, another shape
    assert drawing_key(a) != drawing_key(a.astype(np.float64))
    assert drawing_key("x", 1) != drawing_key("x", 1.0) != drawing_key("x", "1")
    assert drawing_key(("a", "b")) != drawing_key(("ab",))


def test_a_composite_digest_stands_for_its_pixels_on_its_grid(
    tmp_path: Path, make_run_result: Callable[..., RunResult]
) -> None:
    """A composite the monitor's cache names (`Composite.made_from`) is keyed by that name and
    its grid, not by hashing its pixels again: same name and grid, taken; another name or
    another grid (a crop), drawn."""
    result = make_run_result()
    month = replace(result.before, period=Period(date(2024, 3, 1), date(2024, 4, 1), "2024-03"))
    rel = "imagery/periods/2024-03.tif"
    out = tmp_path / "aoi"

    def run(comp: Composite) -> tuple[str, bytes]:
        write_run_outputs(replace(result, composites=(comp,)), out, config=OutputConfig())
        return _drawn(out)[rel]["from"], (out / rel).read_bytes()

    named = replace(month, made_from=b"digest-1")
    key, first = run(named)
    # Pixels the digest does not name would never come with it; here they show what is taken.
    darker = replace(named, reflectance=named.reflectance * 0.5)
    assert run(darker) == (key, first)
    renamed_key, redrawn = run(replace(darker, made_from=b"digest-2"))
    assert renamed_key != key and redrawn != first
    grid = month.grid
    shifted = replace(grid, transform=grid.transform @ Affine.translation(1, 0))
    assert run(replace(darker, made_from=b"digest-2", grid=shifted))[0] != renamed_key
    assert run(replace(month, made_from=None))[0] != key  # no digest: the pixels are hashed
