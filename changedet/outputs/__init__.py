"""outputs: a run's result → files. The only writer.

Contract: `write_run_outputs(result, out_dir, config=)` writes every output of one AOI run into
`out_dir` in one atomic swap that keeps the previous run (previous/) and every file changedet
did not write: GeoJSON (RFC 7946, EPSG:4326) with QGIS `.qml` sidecars, structures.csv and
structures.kml, a GeoPackage in the grid CRS with the styles embedded, styled COGs of the change
evidence and true-colour imagery, the QGIS project changedet.qgz, counts.csv, PNG quicklooks and
dated chips, report.html, and last run.json (`run_manifest`, with `software_versions` and the
headline). Every file changedet writes goes through `fsio` (atomic writes; `write_cog` is the one
raster writer), the test bench's included.

Modules: `vectors` and `tables` (what the vector and table outputs hold; no files), `headline`
(the numbers an analyst quotes), `legend` (first-seen classes shared by every picture), `styles`
and `raster_styles` (QGIS), `imagery` (true colour and the COGs), `figures`, `chips` and `report`
(pictures and HTML), `project` (changedet.qgz), `manifest` (run.json), `fsio` (atomic writing,
COGs), `runfolder` (the run folder's life), `write` (all of it into one folder).
"""
