"""The test bench: everything that makes or scores test data, kept apart from the product.

- `scene`: the seeded synthetic scene model (pure numpy, no I/O);
- `sample`: the synthetic sample generator (COGs + static STAC catalog + truth), `synth sample`;
- `oscd`: reading the OSCD dataset and the `eval oscd` driver;
- `series`: semi-real monthly series built from OSCD pairs (`synth oscd-series`), and a reference
  driver that runs them through the time-series core in memory;
- `score`: every score the bench reports (OSCD pixels, series objects, polygon truth);
- `yardstick`: `eval series`, the detector on semi-real series of every labelled OSCD city
  (object F1, count error, first-seen, false objects per km², the kinds found);
- `kindtruth`: how far `kind` agrees with the synthetic sample's kinded truth;
- `fakes`: in-memory implementations of the pipeline's seams (`changedet.seams`), for tests;
- `cli`: the `synth` and `eval` command groups.

The contract runs one way. The product (every other module under `changedet/`) never imports
the lab: `changedet.cli` loads `changedet.lab.cli` by name, only when `synth` or `eval` is invoked,
and `tests/test_layout.py` checks both. The lab may import the product: it writes with the
product's writers and runs the product's detector, so what it measures is the real code. Paths
and AOI names are always passed in; nothing here knows the repository layout.
"""

from changedet.lab.fakes import (
    FakeCatalog,
    FakeProber,
    MemoryWriter,
    StackReader,
    scenes_for_stack,
)
from changedet.lab.oscd import (
    EvalReport,
    OSCDCity,
    evaluate,
    labelled_cities,
    list_cities,
    load_city,
)
from changedet.lab.sample import SampleSummary, regenerate_all, sample_scene, write_sample
from changedet.lab.scene import AcquisitionPlan, SynthScene, build_scene, plan_acquisitions, render
from changedet.lab.score import (
    CityScore,
    MatchReport,
    SeriesScore,
    in_interval,
    load_features,
    match,
    score_prediction,
    score_structures,
)
from changedet.lab.series import (
    OSCDSeries,
    SeriesSummary,
    TruthRegion,
    detect_series,
    load_truth,
    make_oscd_series,
    series_stack,
    truth_labels,
    write_oscd_series,
)

__all__ = [
    "AcquisitionPlan",
    "CityScore",
    "EvalReport",
    "FakeCatalog",
    "FakeProber",
    "MatchReport",
    "MemoryWriter",
    "OSCDCity",
    "OSCDSeries",
    "SampleSummary",
    "SeriesScore",
    "SeriesSummary",
    "StackReader",
    "SynthScene",
    "TruthRegion",
    "build_scene",
    "detect_series",
    "evaluate",
    "in_interval",
    "labelled_cities",
    "list_cities",
    "load_city",
    "load_features",
    "load_truth",
    "make_oscd_series",
    "match",
    "plan_acquisitions",
    "regenerate_all",
    "render",
    "sample_scene",
    "scenes_for_stack",
    "score_prediction",
    "score_structures",
    "series_stack",
    "truth_labels",
    "write_oscd_series",
    "write_sample",
]
