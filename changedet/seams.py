"""The typed seams between the pipeline and its I/O stages.

`pipeline` never calls a catalog, a COG reader or a file writer directly: it calls these four
Protocols, so a test (or a benchmark, or the coming Dask engine) can hand it in-memory fakes
(`changedet.lab.fakes`) and the real implementations stay swappable. Each Protocol is the exact
call signature of the real function named in its docstring.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from changedet.config import CatalogConfig, MaskConfig, OutputConfig, ReadConfig
from changedet.models import (
    AOI,
    Grid,
    Probe,
    Progress,
    ReadResult,
    RunResult,
    Scene,
    SearchResult,
)

if TYPE_CHECKING:
    from changedet.read.kept import DateKeep

__all__ = ["Prober", "Reader", "Searcher", "Writer"]


class Searcher(Protocol):
    """AOI + dates → the scenes worth reading (`catalog.search_scenes`)."""

    def __call__(
        self,
        aoi: AOI,
        config: CatalogConfig,
        *,
        start: date,
        end: date,
        bands: Sequence[str],
        progress: Progress = ...,
        allow_empty: bool = ...,
    ) -> SearchResult: ...


class Prober(Protocol):
    """Scenes + grid → each scene's clear fraction around the AOI from SCL alone (`read.probe_details`)."""

    def __call__(
        self,
        scenes: Sequence[Scene],
        grid: Grid,
        *,
        aoi_mask: np.ndarray,
        read_config: ReadConfig,
        mask_config: MaskConfig,
        progress: Progress = ...,
    ) -> Mapping[str, Probe]: ...


class Reader(Protocol):
    """Scenes + grid → one masked, harmonised stack (`read.read_series`; `keep`: dates an
    earlier run kept, `read.kept`)."""

    def __call__(
        self,
        scenes: Sequence[Scene],
        grid: Grid,
        *,
        bands: Sequence[str],
        aoi_mask: np.ndarray,
        read_config: ReadConfig,
        mask_config: MaskConfig,
        progress: Progress = ...,
        keep: DateKeep | None = ...,
    ) -> ReadResult: ...


class Writer(Protocol):
    """A run's result → its files in OUT/<aoi_id>/ (`outputs.write_run_outputs`); `companions`,
    files kept beside them by another part of changedet, for the report to list."""

    def __call__(
        self,
        result: RunResult,
        out_dir: Path,
        *,
        config: OutputConfig,
        progress: Progress = ...,
        companions: Sequence[str] = ...,
    ) -> list[Path]: ...
