"""outputs: a run's result → files. The only writer.

Contract: `write_run_outputs(result, out_dir, config=)` writes every output of one AOI run into
`out_dir` in one atomic swap: GeoJSON (RFC 7946, EPSG:4326) with QGIS `.qml` sidecars, a
GeoPackage in the grid CRS with the styles embedded, COGs of the change evidence, counts.csv,
PNG quicklooks and chips, report.html, and last run.json (`run_manifest`, with
`software_versions`). Every file changedet writes goes through `fsio` (atomic writes;
`write_cog` is the one raster writer), the test bench's included.

Modules: `vectors` (what the vector outputs hold; no files), `styles` (QGIS), `report`
(pictures and HTML), `manifest` (run.json), `fsio` (atomic writing, COGs), `write` (all of it
into one folder).
"""

from changedet.outputs.fsio import atomic_dir, write_cog, write_json, write_text
from changedet.outputs.manifest import run_manifest, software_versions
from changedet.outputs.write import GPKG_LAYERS, write_run_outputs

__all__ = [
    "GPKG_LAYERS",
    "atomic_dir",
    "run_manifest",
    "software_versions",
    "write_cog",
    "write_json",
    "write_run_outputs",
    "write_text",
]
