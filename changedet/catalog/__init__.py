"""catalog: AOI + dates → scenes. The only pystac-client user.

Contract: `search_scenes(aoi, config, start=, end=, bands=)` returns a `SearchResult` whose
scenes are materialised before any pixel is read: every page of a STAC API search (or every
item of a static catalog, walked bounded), filtered client-side too, parsed into `Scene`s with
canonical band names and harmonising offsets, one per acquisition, sorted by (datetime, id),
with every item left out and why. Every href is checked (`changedet.hrefs`) before it is kept.

Modules: `fetch` (catalog JSON: API paging with retries, static walks, href signing), `items`
(what one item means; pure), `search` (which items are used).
"""

from changedet.catalog.fetch import fetch_items
from changedet.catalog.items import harmonising_offset, scene_from_item
from changedet.catalog.search import search_scenes

__all__ = ["fetch_items", "harmonising_offset", "scene_from_item", "search_scenes"]
