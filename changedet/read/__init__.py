"""read: scenes + grid → stack. The only rasterio reader.

Contract: `read_stack(scenes, grid, bands=, aoi_mask=, read_config=, mask_config=)` returns a
`ReadResult`: a `Stack` on `grid` with one time step per acquisition date (reflectance
(T, B, H, W) float32, NaN where not clear; the clear mask; SCL), the scenes skipped and why,
bytes fetched and cache hits. Only the window covering the grid is read, concurrently, through
the pixel cache. `probe_details` is the SCL-only probe behind `changedet search --probe`;
`reproject_array` is the one array reprojection. GDAL options live in `cog.gdal_options`.

Modules: `cog` (one asset onto the grid, GDAL options, the read pool), `cache` (pixel cache),
`probe` (SCL → which scenes to read), `stack` (mask, harmonise, mosaic per date).
"""
