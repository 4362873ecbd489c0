"""STAC catalogs → a materialised, de-duplicated list of scenes. The only pystac-client user.

Sources:
- a STAC API (Earth Search v1 `sentinel-2-l2a` / `sentinel-2-c1-l2a`, Planetary Computer, any
  server conforming to item-search): every page is fetched, with retries and backoff, before any
  pixel is read;
- a static catalog: a local folder holding catalog.json / collection.json, or a catalog,
  collection, item collection (FeatureCollection) or item JSON, local or over http(s).

Safety: hrefs from a remote catalog may only be http(s) or s3 -- a remote catalog can never make
changedet read a local file. Signed URLs' tokens are stripped (`public_href`) from everything
recorded (skip reasons, notes, `SearchResult.source`).

Harmonisation: `Asset.offset` is the additive offset in reflectance units, decided per item by
`harmonising_offset` from `earthsearch:boa_offset_applied`, the processing baseline and the
`raster:bands` offset -- never from the acquisition date.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

import shapely
from shapely.geometry import mapping, shape

from changedet.config import CatalogConfig
from changedet.errors import CatalogError, ConfigError, NoScenesError, UnsafeHrefError
from changedet.models import AOI, Asset, Progress, Scene, SkippedScene, no_progress

__all__ = [
    "SearchResult",
    "check_href",
    "harmonising_offset",
    "install_log_redaction",
    "public_href",
    "redact",
    "scene_from_item",
    "search_scenes",
]

REMOTE_SCHEMES = frozenset({"http", "https", "s3"})
# HTTP statuses worth asking again; anything else (400, 401, 403, 404, ...) will not heal by itself.
TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
BOA_OFFSET_DN = -1000.0  # BOA_ADD_OFFSET of processing baseline >= 04.00, in digital numbers
MAX_STATIC_DOCS = 20_000  # bound on documents walked in one static catalog
MAX_STATIC_DEPTH = 12

T = TypeVar("T")


@dataclass(frozen=True)
class SearchResult:
    """What a catalog search found: usable scenes and everything left out, with why."""

    scenes: tuple[Scene, ...]  # de-duplicated, sorted by (datetime, id)
    dropped: tuple[SkippedScene, ...]  # duplicates, cloud filter, missing assets, unsafe hrefs...
    source: str  # catalog URL / path with any token stripped
    notes: tuple[str, ...] = ()  # e.g. "cloud filter applied client-side: ..."
    items_seen: int = 0  # items the catalog returned for the AOI and dates, before any filter


# --------------------------------------------------------------------------------------------
# hrefs: safety and redaction


def public_href(href: str) -> str:
    """`href` without query string, fragment or user info: what may be logged or recorded.

    Planetary Computer signs hrefs with a SAS token in the query string; some APIs take an
    API key the same way. None of that may reach logs or run.json.
    """
    try:
        parts = urlsplit(href)
    except ValueError:
        return "<unparseable href>"
    if not parts.scheme or len(parts.scheme) == 1:  # a plain path (or a Windows drive letter)
        return href.split("?", 1)[0]
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _scheme(href: str) -> str:
    scheme = urlsplit(href).scheme.lower()
    return "" if len(scheme) == 1 else scheme  # "C:\\x" is a Windows path, not a scheme


def _is_remote(location: str) -> bool:
    return _scheme(location) in ("http", "https")


def check_href(href: str, *, base: str, remote: bool) -> str:
    """Resolve `href` against `base` (the document it came from) and refuse unsafe targets.

    remote: the catalog itself was fetched over http(s). Then only http(s) and s3 hrefs are
    allowed -- never a local path, file://, /vsi... or any other scheme.
    Returns an absolute URL (remote) or an absolute local path / URL (local catalog).
    """
    if not isinstance(href, str) or not href.strip():
        raise UnsafeHrefError("catalog: an asset or link has an empty href; fix the catalog")
    href = href.strip()
    scheme = _scheme(href)
    if remote:
        if scheme == "":
            if href.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:[\\/]", href):
                raise UnsafeHrefError(
                    f"catalog: refused local path '{public_href(href)}' from a remote catalog; "
                    "remote catalogs may only point at http(s) or s3"
                )
            resolved = urljoin(base, href)  # relative href in a remote document
            scheme = _scheme(resolved)
            href = resolved
        if scheme not in REMOTE_SCHEMES:
            raise UnsafeHrefError(
                f"catalog: refused {scheme or 'local'} href '{public_href(href)}' from a remote "
                "catalog; remote catalogs may only point at http(s) or s3"
            )
        return href
    # Local catalog: the user's own files. Relative hrefs are relative to the JSON file.
    if scheme in REMOTE_SCHEMES:
        return href
    if scheme == "file":
        return unquote(urlsplit(href).path)
    if scheme:
        raise UnsafeHrefError(
            f"catalog: unsupported href scheme '{scheme}' in '{public_href(href)}'; "
            "use http(s), s3 or a file path"
        )
    if _is_remote(base):
        return urljoin(base, href)
    path = Path(href)
    if not path.is_absolute():
        path = Path(base).parent / path
    return os.path.normpath(path)


# --------------------------------------------------------------------------------------------
# item → Scene


_TILE_IN_ID = re.compile(r"_T?(\d{2}[C-X][A-Z]{2})_")
_BASELINE_IN_URI = re.compile(r"_N(\d{2})(\d{2})_")
_SEQUENCE_IN_ID = re.compile(r"_(\d+)_L[12][AC]$")


def _parse_datetime(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    text = value.strip().replace("z", "Z")
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    # Python 3.11 accepts at most 6 fractional digits; some catalogs send 9.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _tile(props: Mapping[str, Any], item_id: str) -> str | None:
    code = props.get("grid:code")
    if isinstance(code, str) and code.upper().startswith("MGRS-"):
        return code[5:].upper()
    for key in ("s2:mgrs_tile", "mgrs:tile"):
        if isinstance(props.get(key), str) and props[key]:
            return str(props[key]).upper().lstrip("T")
    for prefix in ("mgrs", "sentinel"):
        zone = props.get(f"{prefix}:utm_zone")
        band = props.get(f"{prefix}:latitude_band")
        square = props.get(f"{prefix}:grid_square")
        if zone is not None and band and square:
            return f"{int(zone):02d}{band}{square}".upper()
    match = _TILE_IN_ID.search(item_id)
    return match.group(1) if match else None


def _baseline(props: Mapping[str, Any]) -> str | None:
    for key in ("s2:processing_baseline", "sentinel:processing_baseline", "processing:version"):
        value = props.get(key)
        if isinstance(value, str | int | float) and str(value).strip():
            text = str(value).strip()
            if re.fullmatch(r"\d{1,2}\.\d{1,2}", text):
                major, minor = text.split(".")
                return f"{int(major):02d}.{int(minor):02d}"
    for key in ("s2:product_uri", "sentinel:product_id", "s2:granule_id"):
        value = props.get(key)
        if isinstance(value, str):
            match = _BASELINE_IN_URI.search(value)
            if match:
                return f"{match.group(1)}.{match.group(2)}"
    return None


def _baseline_tuple(baseline: str | None) -> tuple[int, int]:
    if not baseline:
        return (-1, -1)
    major, _, minor = baseline.partition(".")
    try:
        return (int(major), int(minor or 0))
    except ValueError:
        return (-1, -1)


def _epsg(props: Mapping[str, Any]) -> int | None:
    value = props.get("proj:epsg")
    if isinstance(value, int):
        return value
    code = props.get("proj:code")
    if isinstance(code, str) and code.upper().startswith("EPSG:"):
        try:
            return int(code.split(":", 1)[1])
        except ValueError:
            return None
    return None


def harmonising_offset(
    props: Mapping[str, Any], *, raster_offset: float | None, scale: float
) -> tuple[float, str]:
    """The additive reflectance offset of one band asset and the rule that decided it.

    Since processing baseline 04.00, L2A digital numbers carry BOA_ADD_OFFSET = -1000:
    reflectance = (DN - 1000) / 10000. The rule, in order:
    1. `earthsearch:boa_offset_applied` true: Element 84 already shifted the DNs back (its
       `raster:bands` offset of -0.1 is a template value; the flag is authoritative) → 0;
    2. a processing baseline below 04.00: those DNs never had the offset → 0 (Collection-1
       reprocessing carries a 05.xx baseline, so old dates of `sentinel-2-c1-l2a` get rule 3/4);
    3. a `raster:bands` offset: the provider's statement about its files → that value;
    4. a baseline of 04.00 or later without one (Planetary Computer) → -1000 DN x scale;
    5. nothing known → 0.
    Never keyed on the acquisition date.
    """
    if props.get("earthsearch:boa_offset_applied") is True:
        return 0.0, "boa_offset_applied"
    baseline = _baseline_tuple(_baseline(props))
    if baseline != (-1, -1) and baseline < (4, 0):
        return 0.0, "baseline<04.00"
    if raster_offset is not None:
        return float(raster_offset), "raster:bands"
    if baseline >= (4, 0):
        return BOA_OFFSET_DN * scale, "baseline>=04.00"
    return 0.0, "unknown"


def _raster_band(asset: Mapping[str, Any]) -> Mapping[str, Any]:
    bands = asset.get("raster:bands")
    if isinstance(bands, list) and bands and isinstance(bands[0], Mapping):
        return bands[0]
    return {}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(float(value)) else None


def scene_from_item(
    item: Mapping[str, Any],
    *,
    asset_keys: Mapping[str, str],
    collection: str | None = None,
    base_href: str | None = None,
    remote: bool = True,
) -> Scene:
    """Parse one STAC item (a dict) into a Scene with assets keyed by canonical band names.

    asset_keys: canonical band name → the provider's asset key (from config).
    base_href: where the item JSON came from, to resolve relative asset hrefs (defaults to
        the item's `self` link).
    remote: the item came from a remote catalog: only http(s)/s3 hrefs are accepted.
    Raises CatalogError for an item that cannot be used at all (no id or datetime) and
    UnsafeHrefError for a refused href.
    """
    item_id = item.get("id")
    if not isinstance(item_id, str) or not item_id:
        raise CatalogError("catalog: an item has no id; the catalog is malformed")
    props = item.get("properties")
    if not isinstance(props, Mapping):
        raise CatalogError(f"catalog: item '{item_id}' has no properties; the catalog is malformed")
    when = _parse_datetime(props.get("datetime")) or _parse_datetime(props.get("start_datetime"))
    if when is None:
        raise CatalogError(f"catalog: item '{item_id}' has no valid datetime")
    base = base_href or _self_href(item) or ""
    assets_json = item.get("assets") if isinstance(item.get("assets"), Mapping) else {}
    assert isinstance(assets_json, Mapping)
    assets: dict[str, Asset] = {}
    for band, key in asset_keys.items():
        raw = assets_json.get(key)
        if not isinstance(raw, Mapping) or not isinstance(raw.get("href"), str):
            continue
        href = check_href(raw["href"], base=base, remote=remote)
        info = _raster_band(raw)
        nodata = _number(info.get("nodata"))
        if band == "scl":
            assets[band] = Asset(
                href=href, scale=1.0, offset=0.0, nodata=0 if nodata is None else nodata
            )
            continue
        scale = _number(info.get("scale")) or 1e-4
        offset, _rule = harmonising_offset(
            props, raster_offset=_number(info.get("offset")), scale=scale
        )
        assets[band] = Asset(
            href=href, scale=scale, offset=offset, nodata=0 if nodata is None else nodata
        )
    footprint = None
    geometry = item.get("geometry")
    if isinstance(geometry, Mapping):
        try:
            footprint = shape(geometry)
            if not footprint.is_valid:
                footprint = shapely.make_valid(footprint)
        except (ValueError, TypeError, AttributeError, shapely.errors.ShapelyError):
            footprint = None
    cloud = _number(props.get("eo:cloud_cover"))
    platform = props.get("platform")
    updated = props.get("updated") or props.get("s2:generation_time") or props.get("created")
    return Scene(
        id=item_id,
        datetime=when,
        collection=str(item.get("collection") or collection or ""),
        tile=_tile(props, item_id),
        assets=assets,
        cloud_cover=cloud,
        platform=str(platform).lower() if isinstance(platform, str) else None,
        processing_baseline=_baseline(props),
        epsg=_epsg(props),
        footprint=footprint,
        updated=str(updated) if updated else None,
        synthetic=props.get("changedet:synthetic") is True,
    )


def _self_href(doc: Mapping[str, Any]) -> str | None:
    for link in doc.get("links") or ():
        if (
            isinstance(link, Mapping)
            and link.get("rel") == "self"
            and isinstance(link.get("href"), str)
        ):
            return str(link["href"])
    return None


# --------------------------------------------------------------------------------------------
# fetching JSON with retries


def _summarise(exc: BaseException) -> str:
    status = getattr(exc, "status_code", None)
    if status:
        return f"HTTP {status}"
    text = str(exc)
    lowered = text.lower()
    if "timed out" in lowered or "timeout" in lowered:
        return "timed out"
    if "refused" in lowered:
        return "connection refused"
    if "name or service not known" in lowered or "resolve" in lowered:
        return "host not found"
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return _redact_text(first)[:120]


_URL_IN_TEXT = re.compile(r"(/vsicurl/|/vsis3/)?(https?|s3)://[^\s'\"<>,]+")
_QUERY_AFTER_NAME = re.compile(r"(\.[A-Za-z0-9]{1,8})\?[^\s,:;'\"<>)]*")
_QUERY_AFTER_PATH = re.compile(r"(/[^\s?'\"<>]*)\?[^\s'\"<>]*")  # urllib3: "GET /x?key=.."


def redact(text: str) -> str:
    """`text` with the query string (signed-URL tokens, API keys) and user info of every URL,
    and any query after a file name (GDAL messages), removed."""
    text = _URL_IN_TEXT.sub(lambda m: public_href(m.group(0).split("/vsicurl/")[-1]), text)
    text = _QUERY_AFTER_PATH.sub(r"\1", text)
    return _QUERY_AFTER_NAME.sub(r"\1", text)


_redact_text = redact


class _RedactTokens(logging.Filter):
    """Rewrites log records of the HTTP layers so that no token reaches any log handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to fix
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


# Logger filters see only records logged on that very logger (not on its children), so every
# logger known to carry URLs is listed.
_REDACTED_LOGGERS = (
    "rasterio",
    "rasterio._env",
    "rasterio._err",
    "rasterio._base",
    "rasterio._io",
    "rasterio._filepath",
    "rasterio.env",
    "pystac",
    "pystac.stac_io",
    "pystac_client",
    "pystac_client.stac_api_io",
    "pystac_client.client",
    "urllib3",
    "urllib3.connectionpool",
)
_redaction = _RedactTokens()


def install_log_redaction() -> None:
    """Attach the token-redacting filter to the loggers of GDAL/rasterio, pystac-client and
    urllib3 (idempotent). Called by `search_scenes` and `read.read_stack`."""
    for name in _REDACTED_LOGGERS:
        logger = logging.getLogger(name)
        if _redaction not in logger.filters:
            logger.addFilter(_redaction)


def _with_retries(fn: Callable[[], T], *, what: str, config: CatalogConfig) -> T:
    """Call `fn` up to `config.retries` times with exponential backoff on transient failures."""
    from pystac_client.exceptions import APIError

    tries = max(int(config.retries), 1)
    last = "no answer"
    for attempt in range(tries):
        try:
            return fn()
        except APIError as exc:
            status = getattr(exc, "status_code", None)
            if status is not None and status not in TRANSIENT_STATUS:
                detail = _redact_text(str(exc).strip().splitlines()[0] if str(exc).strip() else "")
                raise CatalogError(
                    f"catalog: {what} answered HTTP {status}"
                    + (f" ({detail[:120]})" if detail else "")
                    + "; check the URL, collection and search parameters"
                ) from None
            last = _summarise(exc)
        except OSError as exc:  # local static files, requests' ConnectionError
            last = _summarise(exc)
        if attempt + 1 < tries:
            time.sleep(config.backoff_s * (2**attempt))
    raise CatalogError(
        f"catalog: {what} did not answer after {tries} tries ({last}); check the URL or try later"
    )


class _Fetcher:
    """JSON over http(s) (through pystac-client's StacApiIO) or from local files."""

    def __init__(self, config: CatalogConfig) -> None:
        from pystac_client.stac_api_io import StacApiIO

        self.config = config
        # Retries are ours (per page, with backoff and a clear final message), not urllib3's.
        self.io = StacApiIO(timeout=config.timeout_s, max_retries=0)

    def json(
        self, location: str, *, method: str = "GET", body: Mapping[str, Any] | None = None
    ) -> Any:
        what = public_href(location)
        if _is_remote(location):
            text = _with_retries(
                lambda: self.io.request(
                    location, method=method, parameters=dict(body) if body else None
                ),
                what=what,
                config=self.config,
            )
        else:
            path = Path(location)
            if not path.is_file():
                raise CatalogError(
                    f"catalog path '{location}' does not exist; "
                    "pass a STAC API URL or a catalog.json/item collection"
                )
            text = path.read_text(encoding="utf-8")
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            raise CatalogError(
                f"catalog: {what} did not return JSON; pass a STAC API URL or a catalog.json/item collection"
            ) from None


# --------------------------------------------------------------------------------------------
# raw items from an API or a static catalog


@dataclass
class _RawItem:
    item: dict[str, Any]
    base: str  # where its JSON came from (to resolve relative hrefs)


@dataclass
class _Found:
    items: list[_RawItem]
    remote: bool
    notes: list[str]
    cloud_filtered_by_server: bool = False


def _datetime_range(start: date, end: date) -> str:
    return f"{start.isoformat()}T00:00:00Z/{end.isoformat()}T23:59:59Z"


def _api_items(
    url: str,
    fetcher: _Fetcher,
    aoi: AOI,
    config: CatalogConfig,
    *,
    start: date,
    end: date,
    progress: Progress,
) -> _Found:
    from pystac_client import Client
    from pystac_client.conformance import ConformanceClasses

    notes: list[str] = []
    safe = public_href(url)
    client = _with_retries(
        lambda: Client.open(url, stac_io=fetcher.io, timeout=config.timeout_s),
        what=safe,
        config=config,
    )
    if not client.conforms_to(ConformanceClasses.ITEM_SEARCH):
        raise CatalogError(
            f"catalog: {safe} does not support STAC item search; pass a STAC API URL or a static catalog"
        )
    extra: dict[str, Any] = {}
    server_cloud = False
    if config.max_cloud_cover < 100.0:
        if client.conforms_to(ConformanceClasses.QUERY):
            extra["query"] = {"eo:cloud_cover": {"lte": config.max_cloud_cover}}
            server_cloud = True
            notes.append("cloud filter sent to the server (query extension)")
        elif client.conforms_to(ConformanceClasses.FILTER):
            extra["filter"] = {
                "op": "<=",
                "args": [{"property": "eo:cloud_cover"}, config.max_cloud_cover],
            }
            extra["filter_lang"] = "cql2-json"
            server_cloud = True
            notes.append("cloud filter sent to the server (filter extension, CQL2)")
        else:
            notes.append("cloud filter applied client-side: server lacks query/filter conformance")
    search = client.search(
        collections=[config.collection],
        intersects=mapping(aoi.geometry),
        datetime=_datetime_range(start, end),
        limit=config.page_size,
        method="POST",
        **extra,
    )
    params: dict[str, Any] = dict(search.get_parameters())
    href: str = search.url
    method = "POST"
    items: list[_RawItem] = []
    seen_pages: set[str] = set()
    max_pages = math.ceil(config.max_items / max(config.page_size, 1)) + 2
    for _page in range(max_pages):
        body = params if method == "POST" else None
        page = fetcher.json(href, method=method, body=body)
        features = page.get("features") if isinstance(page, Mapping) else None
        if not isinstance(features, list):
            raise CatalogError(
                f"catalog: {safe} returned a search page without 'features'; is it a STAC API?"
            )
        for feature in features:
            if isinstance(feature, dict):
                items.append(_RawItem(feature, _self_href(feature) or href))
        progress("search", len(items), len(items))
        if len(items) >= config.max_items:
            notes.append(
                f"search stopped at catalog.max_items={config.max_items}; narrow the dates or AOI"
            )
            items = items[: config.max_items]
            break
        nxt = next(
            (
                ln
                for ln in page.get("links") or ()
                if isinstance(ln, Mapping) and ln.get("rel") == "next"
            ),
            None,
        )
        if nxt is None or not features:
            break
        href = check_href(str(nxt.get("href", "")), base=href, remote=True)
        if _scheme(href) not in ("http", "https"):
            raise UnsafeHrefError(f"catalog: refused next-page link '{public_href(href)}'")
        method = str(nxt.get("method") or "GET").upper()
        if isinstance(nxt.get("body"), Mapping):
            params = {**params, **nxt["body"]} if nxt.get("merge") else dict(nxt["body"])
        key = json.dumps(
            [href, method, params if method == "POST" else None], sort_keys=True, default=str
        )
        if key in seen_pages:
            notes.append("catalog repeated a next-page link; stopped paging there")
            break
        seen_pages.add(key)
    else:
        notes.append(f"search stopped after {max_pages} pages; narrow the dates or AOI")
    return _Found(items, remote=True, notes=notes, cloud_filtered_by_server=server_cloud)


def _static_items(location: str, fetcher: _Fetcher) -> _Found:
    """Walk a static catalog / collection / item collection / item, bounded."""
    remote = _is_remote(location)
    if not remote:
        if location.lower().startswith("file://"):
            location = unquote(urlsplit(location).path)
        path = Path(location).expanduser()
        if path.is_dir():
            for name in ("catalog.json", "collection.json", "items.json"):
                if (path / name).is_file():
                    path = path / name
                    break
            else:
                raise CatalogError(
                    f"catalog path '{location}' has no catalog.json or collection.json; "
                    "pass a STAC API URL or a catalog.json/item collection"
                )
        if not path.exists():
            raise CatalogError(
                f"catalog path '{location}' does not exist; "
                "pass a STAC API URL or a catalog.json/item collection"
            )
        location = str(path.resolve())
    items: list[_RawItem] = []
    stack: list[tuple[str, int]] = [(location, 0)]
    visited: set[str] = set()
    while stack:
        if len(visited) >= MAX_STATIC_DOCS:
            raise CatalogError(
                f"catalog: {public_href(location)} has more than {MAX_STATIC_DOCS} documents; "
                "serve it through a STAC API instead"
            )
        doc_href, depth = stack.pop()
        if doc_href in visited:
            continue
        visited.add(doc_href)
        doc = fetcher.json(doc_href)
        if not isinstance(doc, Mapping):
            raise CatalogError(f"catalog: {public_href(doc_href)} is not a STAC JSON object")
        kind = doc.get("type")
        if kind == "Feature":
            items.append(_RawItem(dict(doc), doc_href))
            continue
        if kind == "FeatureCollection":
            for feature in doc.get("features") or ():
                if isinstance(feature, dict):
                    items.append(_RawItem(feature, doc_href))
            continue
        if kind not in ("Catalog", "Collection"):
            raise CatalogError(
                f"catalog: {public_href(doc_href)} is not a STAC catalog, collection, item or item "
                "collection; pass a STAC API URL or a catalog.json"
            )
        if depth >= MAX_STATIC_DEPTH:
            continue
        children: list[str] = []
        for link in doc.get("links") or ():
            if not isinstance(link, Mapping) or link.get("rel") not in ("child", "item"):
                continue
            target = check_href(str(link.get("href", "")), base=doc_href, remote=remote)
            if remote and _scheme(target) not in ("http", "https"):
                raise UnsafeHrefError(
                    f"catalog: refused link '{public_href(target)}' in a remote catalog; "
                    "links must be http(s)"
                )
            children.append(target)
        # Reverse so the pop order follows the catalog's own link order (deterministic).
        stack.extend((child, depth + 1) for child in reversed(children))
    return _Found(items, remote=remote, notes=[])


def _looks_static(url: str) -> bool:
    return urlsplit(url).path.lower().endswith(".json")


# --------------------------------------------------------------------------------------------
# filters, duplicates, the public search


def _dedupe_key(scene: Scene) -> tuple[str, str]:
    if scene.tile:
        return (scene.tile, scene.platform or "")
    stem = _SEQUENCE_IN_ID.sub("", scene.id)
    stem = re.sub(r"_\d{8}T\d{6}$", "", stem)  # Planetary Computer's trailing generation time
    return (f"id:{stem}", scene.platform or "")


def _preference(scene: Scene) -> tuple[Any, ...]:
    """Higher wins among duplicates: newer baseline, newer processing, higher sequence, id."""
    sequence = _SEQUENCE_IN_ID.search(scene.id)
    updated = _parse_datetime(scene.updated) if scene.updated else None
    return (
        _baseline_tuple(scene.processing_baseline),
        updated.timestamp() if updated else -1.0,
        int(sequence.group(1)) if sequence else -1,
        scene.id,
    )


def _dedupe(scenes: list[Scene]) -> tuple[list[Scene], list[SkippedScene]]:
    """One scene per acquisition: same tile, platform and sensing time (within 90 s)."""
    groups: dict[tuple[str, str], list[Scene]] = {}
    for scene in scenes:
        groups.setdefault(_dedupe_key(scene), []).append(scene)
    kept: list[Scene] = []
    dropped: list[SkippedScene] = []
    for members in groups.values():
        members.sort(key=lambda s: (s.datetime, s.id))
        clusters: list[list[Scene]] = []
        for scene in members:
            if clusters and (scene.datetime - clusters[-1][0].datetime).total_seconds() <= 90:
                clusters[-1].append(scene)
            else:
                clusters.append([scene])
        for cluster in clusters:
            winner = max(cluster, key=_preference)
            kept.append(winner)
            for loser in cluster:
                if loser is winner:
                    continue
                why = []
                if _baseline_tuple(winner.processing_baseline) != _baseline_tuple(
                    loser.processing_baseline
                ):
                    why.append(
                        f"baseline {winner.processing_baseline} over {loser.processing_baseline}"
                    )
                else:
                    why.append("newer processing")
                dropped.append(
                    SkippedScene(
                        loser.id, f"duplicate of {winner.id} (same acquisition; kept {why[0]})"
                    )
                )
    return kept, dropped


def _signer(config: CatalogConfig) -> Callable[[str], str] | None:
    """Planetary Computer href signing (lazy import), or None for every other provider."""
    if config.provider != "planetary-computer":
        return None
    try:
        import planetary_computer
    except ImportError:
        raise CatalogError(
            "catalog: provider 'planetary-computer' needs the planetary-computer package to sign "
            "hrefs; pip install 'changedet[pc]' (or planetary-computer)"
        ) from None

    def sign(href: str) -> str:
        try:
            return str(planetary_computer.sign(href))
        except Exception as exc:  # token service unreachable: one line, never the token
            raise CatalogError(
                f"catalog: could not sign Planetary Computer hrefs ({_summarise(exc)}); try later"
            ) from None

    return sign


def _signed(scene: Scene, sign: Callable[[str], str]) -> Scene:
    assets = {band: replace(asset, href=sign(asset.href)) for band, asset in scene.assets.items()}
    return replace(scene, assets=assets)


def _offset_rule(item: Mapping[str, Any], asset_keys: Mapping[str, str]) -> str:
    """Which harmonisation rule decided the offset of this item's reflectance bands."""
    props = item.get("properties") or {}
    assets = item.get("assets") or {}
    for band, key in asset_keys.items():
        raw = assets.get(key) if band != "scl" else None
        if isinstance(raw, Mapping):
            info = _raster_band(raw)
            scale = _number(info.get("scale")) or 1e-4
            return harmonising_offset(
                props, raster_offset=_number(info.get("offset")), scale=scale
            )[1]
    return "no reflectance asset"


def search_scenes(
    aoi: AOI,
    config: CatalogConfig,
    *,
    start: date,
    end: date,
    bands: Sequence[str],
    progress: Progress = no_progress,
    allow_empty: bool = False,
) -> SearchResult:
    """Find the scenes of `config.collection` over `aoi` between `start` and `end` (inclusive).

    `bands`: the bands to be read (canonical names); "scl" may be listed but is never required.
    Every page is materialised before returning. Items are filtered client-side too
    (collection, dates, footprint ∩ AOI, cloud cover when the server cannot), parsed into
    Scenes, checked for the assets of `bands` (SCL is optional: without it the reader falls back
    to "clear = valid data"), de-duplicated (a reprocessed datatake keeps the newest
    processing), and sorted by (datetime, id).
    Raises CatalogError (unreachable / malformed catalog), UnsafeHrefError (a remote catalog
    pointing at local files for every scene) and NoScenesError (nothing usable; with
    `allow_empty=True` an empty result is returned instead, e.g. for `changedet search`).
    """
    if end < start:
        raise ConfigError(f"search: end {end} is before start {start}; pass an end after the start")
    try:
        asset_keys = config.asset_keys[config.provider]
    except KeyError:
        known = ", ".join(sorted(config.asset_keys))
        raise ConfigError(
            f"catalog.provider '{config.provider}' has no [catalog.asset_keys] map; use one of: {known}"
        ) from None
    # SCL is never required (L1C has none: the reader falls back to "clear = valid data").
    bands = [b for b in bands if b != "scl"]
    unknown = [b for b in bands if b not in asset_keys]
    if unknown:
        raise ConfigError(
            f"bands {unknown} have no asset key for provider '{config.provider}'; "
            f"add them to [catalog.asset_keys.{config.provider}]"
        )
    install_log_redaction()
    url = config.url.strip()
    source = public_href(url)
    fetcher = _Fetcher(config)
    progress("search", 0, 0)
    if _is_remote(url) and not _looks_static(url):
        found = _api_items(url, fetcher, aoi, config, start=start, end=end, progress=progress)
    elif _is_remote(url) or not _scheme(url) or _scheme(url) == "file":
        found = _static_items(url, fetcher)
    else:
        raise CatalogError(
            f"catalog: cannot read '{source}'; pass an http(s) STAC API URL or a local catalog path"
        )
    notes = list(found.notes)
    sign = _signer(config)

    # Client-side filters: static catalogs need them; for APIs they guard against servers that
    # silently ignore a parameter.
    aoi_geom = aoi.geometry
    dropped: list[SkippedScene] = []
    scenes: list[Scene] = []
    seen_ids: set[str] = set()
    repeated = 0
    outside = 0
    other_collections: Counter[str] = Counter()
    no_cloud_value = 0
    refused = 0
    rules: dict[str, str] = {}
    for raw in found.items:
        item = raw.item
        item_id = str(item.get("id", ""))
        coll = item.get("collection")
        if isinstance(coll, str) and coll != config.collection:
            other_collections[coll] += 1
            continue
        if item_id in seen_ids:
            repeated += 1
            continue
        seen_ids.add(item_id)
        try:
            scene = scene_from_item(
                item,
                asset_keys=asset_keys,
                collection=config.collection,
                base_href=raw.base,
                remote=found.remote,
            )
        except UnsafeHrefError as exc:
            refused += 1
            dropped.append(SkippedScene(item_id or "?", str(exc)))
            continue
        except CatalogError as exc:
            dropped.append(SkippedScene(item_id or "?", str(exc)))
            continue
        if not start <= scene.date <= end:
            outside += 1
            continue
        if scene.footprint is not None and not scene.footprint.intersects(aoi_geom):
            outside += 1
            continue
        if scene.cloud_cover is None:
            no_cloud_value += 1
        elif scene.cloud_cover > config.max_cloud_cover:
            where = "server" if found.cloud_filtered_by_server else "client-side"
            dropped.append(
                SkippedScene(
                    scene.id,
                    f"scene cloud cover {scene.cloud_cover:.1f}% > {config.max_cloud_cover:g}% "
                    f"(catalog.max_cloud_cover, {where})",
                )
            )
            continue
        missing = [b for b in bands if b not in scene.assets]
        if missing:
            keys = ", ".join(f"'{asset_keys[b]}'" for b in missing)
            dropped.append(
                SkippedScene(
                    scene.id, f"missing asset(s) for band(s) {', '.join(missing)} (keys {keys})"
                )
            )
            continue
        scenes.append(scene)
        rules[scene.id] = _offset_rule(item, asset_keys)

    items_seen = len(found.items)
    if repeated:
        notes.append(f"catalog returned {repeated} item(s) twice (paging overlap); kept one copy")
    if outside and not found.remote:
        notes.append(f"{outside} item(s) outside the dates or AOI were not selected")
    elif outside:
        notes.append(
            f"server returned {outside} item(s) outside the dates or AOI; dropped client-side"
        )
    if no_cloud_value:
        notes.append(
            f"{no_cloud_value} scene(s) have no eo:cloud_cover; kept (the AOI SCL probe decides)"
        )
    without_scl = sum(1 for s in scenes if "scl" not in s.assets)
    if without_scl:
        notes.append(
            f"{without_scl} scene(s) have no SCL asset: their clear mask falls back to valid data"
        )

    scenes, duplicates = _dedupe(scenes)
    dropped.extend(duplicates)
    scenes.sort(key=lambda s: (s.datetime, s.id))
    dropped.sort(key=lambda d: d.scene_id)

    by_date: dict[date, list[Scene]] = {}
    for scene in scenes:
        by_date.setdefault(scene.date, []).append(scene)
    multi = {d: ss for d, ss in by_date.items() if len(ss) > 1}
    if multi:
        sample = ", ".join(
            f"{d.isoformat()} ({'/'.join(s.tile or s.id for s in ss)})"
            for d, ss in list(multi.items())[:3]
        )
        notes.append(
            f"{len(multi)} date(s) have several scenes (tiles or orbits), mosaicked per date: {sample}"
            + (" ..." if len(multi) > 3 else "")
        )
    if scenes:
        used = Counter(rules[s.id] for s in scenes)
        offsets = Counter(
            round(next((a.offset for b, a in s.assets.items() if b != "scl"), 0.0), 6)
            for s in scenes
        )
        notes.append(
            "harmonisation offsets (reflectance): "
            + ", ".join(f"{off:+g} x{n}" for off, n in sorted(offsets.items()))
            + " by rule "
            + ", ".join(f"{rule} x{n}" for rule, n in sorted(used.items()))
        )

    if not scenes:
        if refused and refused == len(seen_ids):
            raise UnsafeHrefError(
                f"catalog: {source} points every scene at non-http(s)/s3 locations; refused "
                "(a remote catalog may not make changedet read local files)"
            )
        if other_collections and not seen_ids:
            names = ", ".join(sorted(other_collections))
            raise NoScenesError(
                f"catalog {source} has no items of collection '{config.collection}' (found: {names}); "
                "set [catalog] collection"
            )
        reasons = Counter(d.reason.split(" (")[0].split(":")[0] for d in dropped)
        detail = "; ".join(f"{n} {r}" for r, n in reasons.most_common(3))
        if allow_empty:
            return SearchResult((), tuple(dropped), source, tuple(notes), items_seen)
        if not dropped:
            raise NoScenesError(
                f"no scene in {source} covers AOI '{aoi.id}' between {start} and {end}; "
                "check the AOI location, widen the dates or point --catalog elsewhere"
            )
        raise NoScenesError(
            f"no usable scene in {source} for AOI '{aoi.id}' between {start} and {end}"
            + f" ({len(dropped)} dropped: {detail})"
            + "; widen the dates, raise catalog.max_cloud_cover or check the collection"
        )
    if sign is not None:  # only the scenes that will be read, only their assets
        scenes = [_signed(scene, sign) for scene in scenes]
    return SearchResult(
        scenes=tuple(scenes),
        dropped=tuple(dropped),
        source=source,
        notes=tuple(notes),
        items_seen=items_seen,
    )
