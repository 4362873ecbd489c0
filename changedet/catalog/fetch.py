"""Talking to STAC catalogs: JSON fetched with retries, API search paged to the end, static
catalogs walked. The only pystac-client user.

One responsibility: turn a catalog location into the raw item JSON it holds for an AOI and
dates (`fetch_items`), before any pixel is read. A STAC API (Earth Search v1 `sentinel-2-l2a` /
`sentinel-2-c1-l2a`, Planetary Computer, any server conforming to item-search) is searched with
the cloud filter sent where its conformance allows, and every page is fetched, with retries and
backoff; a static catalog (a local folder holding catalog.json / collection.json, or a catalog,
collection, item collection or item JSON, local or over http(s)) is walked, bounded. Links are
followed only through `hrefs.check_href`. `href_signer` signs Planetary Computer hrefs. What the
items mean is `changedet.catalog.items`; which of them are used is `changedet.catalog.search`.
"""

from __future__ import annotations

import difflib
import email.utils
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlsplit

from shapely.geometry import mapping

from changedet.catalog.items import self_href
from changedet.config import CATALOG_DOCUMENTS, CatalogConfig, local_catalog_problem
from changedet.errors import CatalogError, ConfigError, UnsafeHrefError
from changedet.hrefs import check_href, href_name, href_scheme, is_remote, public_href, redact
from changedet.models import AOI, Progress, no_progress

__all__ = [
    "FoundItems",
    "HTTPStatusError",
    "RawItem",
    "fetch_items",
    "href_signer",
]

# HTTP statuses worth asking again; anything else (400, 401, 403, 404, ...) will not heal by itself.
TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
# The longest wait a server's Retry-After is followed for; a longer one ends the search now.
MAX_RETRY_AFTER_S = 60.0
MAX_STATIC_DOCS = 20_000  # bound on documents walked in one static catalog
MAX_STATIC_DEPTH = 12

T = TypeVar("T")


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
    return redact(first)[:120]


class HTTPStatusError(CatalogError):
    """A catalog request answered with an HTTP status that will not heal by asking again."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _retry_after_s(value: str | None) -> float | None:
    """The seconds a Retry-After header asks to wait (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    when = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


def _with_retries(
    fn: Callable[[], T],
    *,
    what: str,
    config: CatalogConfig,
    asked_wait: Callable[[], float | None] = lambda: None,
) -> T:
    """Call `fn`, and again up to `config.retries` times with exponential backoff on transient
    failures (as `[read] retries` counts them). A server that said how long to wait (429 or 503
    with Retry-After, `asked_wait`) is waited for that long, up to MAX_RETRY_AFTER_S."""
    from pystac_client.exceptions import APIError

    tries = max(int(config.retries), 0) + 1
    last = "no answer"
    for attempt in range(tries):
        try:
            return fn()
        except APIError as exc:
            status = getattr(exc, "status_code", None)
            if status is not None and status not in TRANSIENT_STATUS:
                detail = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else "")
                raise HTTPStatusError(
                    f"catalog: {what} answered HTTP {status}"
                    + (f" ({detail[:120]})" if detail else "")
                    + "; check the URL, collection and search parameters",
                    status,
                ) from None
            last = _summarise(exc)
        except OSError as exc:  # local static files, requests' ConnectionError
            last = _summarise(exc)
        asked = asked_wait()
        if asked is not None and asked > MAX_RETRY_AFTER_S:
            raise CatalogError(
                f"catalog: {what} asks to wait {asked:.0f} s before the next request ({last}, "
                f"Retry-After), longer than changedet waits ({MAX_RETRY_AFTER_S:.0f} s); try later"
            )
        if attempt + 1 < tries:
            time.sleep(max(config.backoff_s * (2**attempt), asked or 0.0))
    times = "1 try" if tries == 1 else f"{tries} tries"
    if last == "HTTP 429":
        raise CatalogError(
            f"catalog: {what} refused {times} as too many requests (HTTP 429); try later, or "
            "raise catalog.retries and catalog.backoff_s to wait longer"
        )
    raise CatalogError(
        f"catalog: {what} did not answer after {times} ({last}); check the URL or try later"
    )


class _Fetcher:
    """JSON over http(s) (through pystac-client's StacApiIO) or from local files."""

    def __init__(self, config: CatalogConfig, headers: Mapping[str, str] | None = None) -> None:
        from pystac_client.stac_api_io import StacApiIO

        self.config = config
        # Retries are ours (per page, with backoff and a clear final message), not urllib3's.
        self.io = StacApiIO(
            headers=dict(headers) if headers else None, timeout=config.timeout_s, max_retries=0
        )
        self._asked_wait: float | None = None  # the last answer's Retry-After, in seconds
        self.io.session.hooks["response"].append(self._note_retry_after)

    def _note_retry_after(self, response: Any, *args: Any, **kwargs: Any) -> None:
        asked = response.status_code in (429, 503)
        self._asked_wait = _retry_after_s(response.headers.get("Retry-After")) if asked else None

    def asked_wait(self) -> float | None:
        """The wait the last answer asked for (once: a later failure may not ask it)."""
        asked, self._asked_wait = self._asked_wait, None
        return asked

    def json(
        self, location: str, *, method: str = "GET", body: Mapping[str, Any] | None = None
    ) -> Any:
        what = public_href(location)
        if is_remote(location):
            text = _with_retries(
                lambda: self.io.request(
                    location, method=method, parameters=dict(body) if body else None
                ),
                what=what,
                config=self.config,
                asked_wait=self.asked_wait,
            )
        else:
            path = Path(location)
            if not path.is_file():
                raise CatalogError(f"catalog: document '{location}' does not exist")
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:  # a GeoTIFF, a zip, ... given as the catalog
                raise CatalogError(
                    f"catalog: {what} is not a STAC document (JSON): it holds binary data"
                ) from None
        if not text.strip():
            raise CatalogError(f"catalog: {what} is empty; expected a STAC JSON document")
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise CatalogError(
                f"catalog: {what} is not valid JSON ({exc.msg.removesuffix(' at')}, "
                f"line {exc.lineno} column {exc.colno})"
            ) from None


# --------------------------------------------------------------------------------------------
# raw items from an API or a static catalog


@dataclass
class RawItem:
    """One item's JSON as the catalog gave it."""

    item: dict[str, Any]
    base: str  # where its JSON came from (to resolve relative hrefs)
    where: str = ""  # its place among the features that held it, to name one without an id


_JSON_KINDS = {type(None): "null", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", list: "a list"}  # fmt: skip


def _entries(
    features: list[Any], href: str, *, label: str, unreadable: list[tuple[str, str]]
) -> list[RawItem]:
    """The item objects among `features`; every other entry (null, a string, ...) is left out
    with why in `unreadable`, so it is counted and said instead of vanishing."""
    items = []
    for i, feature in enumerate(features):
        where = f"{label} features[{i}]"
        if isinstance(feature, dict):
            items.append(RawItem(feature, self_href(feature) or href, where))
            continue
        kind = _JSON_KINDS.get(type(feature), "not a JSON object")
        unreadable.append((where, f"entry {i} of its features is {kind}, not a STAC item"))
    return items


@dataclass
class FoundItems:
    """Every item a catalog returned, before any filter, and what to note about the search."""

    items: list[RawItem]
    remote: bool
    notes: list[str]
    cloud_filtered_by_server: bool = False
    api: bool = False  # searched through a STAC API (else a static catalog, local or remote)
    # Items the server's cloud filter removed (id, datetime, cloud cover at least), so they are
    # reported among the dropped scenes like the client-side filter's.
    cloud_removed: list[RawItem] = field(default_factory=list)
    # Documents of a static catalog that could not be used, with why (the walk goes on).
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    # A local catalog: the folders its local hrefs must stay inside (None: not confined).
    local_roots: tuple[str, ...] | None = None
    # Paging stopped before the last page (max_items, a repeated link): where and why. Scenes
    # it never paged to are missing from the run, not only from the dropped list.
    stopped: str | None = None
    # `stopped`, or the scenes the server's cloud filter removed could not all be listed.
    truncated: bool = False


def _datetime_range(start: date, end: date) -> str:
    """The inclusive interval of whole days: through the last microsecond of `end` (an item
    sensed at 23:59:59.9 belongs to the end day)."""
    return f"{start.isoformat()}T00:00:00Z/{end.isoformat()}T23:59:59.999999Z"


def _api_items(
    url: str,
    fetcher: _Fetcher,
    aoi: AOI,
    config: CatalogConfig,
    *,
    start: date,
    end: date,
    progress: Progress,
) -> FoundItems:
    """Search a STAC API (cloud filter sent where its conformance allows) and page to the end.
    When the server filtered on cloud cover, the scenes it removed are listed too (a second,
    light search for the complement), so they count among the dropped ones."""
    safe = public_href(url)
    client = _open_api(url, fetcher, config)
    _check_collection(url, client, fetcher, config)
    cloud = _cloud_filter(client, config)
    base: dict[str, Any] = {
        "collections": [config.collection],
        "intersects": mapping(aoi.geometry),
        "datetime": _datetime_range(start, end),
        "limit": config.page_size,
        "method": "POST",
    }
    search = client.search(**base, **cloud.keep)
    malformed: list[tuple[str, str]] = []
    items, notes = _all_pages(
        fetcher, search.url, dict(search.get_parameters()), config, what=safe,
        progress=progress, unreadable=malformed,
    )  # fmt: skip
    removed: list[RawItem] = []
    stopped = notes[0] if notes else None  # every note of the paging says where it stopped early
    truncated = stopped is not None
    if cloud.removed:
        removed, more = _cloud_removed(client, fetcher, base, cloud.removed, config, what=safe)
        notes.extend(more)
        truncated = truncated or bool(more)
    notes = [cloud.note, *notes] if cloud.note else notes
    return FoundItems(
        items,
        remote=True,
        notes=notes,
        cloud_filtered_by_server=bool(cloud.keep),
        api=True,
        cloud_removed=removed,
        stopped=stopped,
        truncated=truncated,
        unreadable=malformed,
    )


def _open_api(url: str, fetcher: _Fetcher, config: CatalogConfig) -> Any:
    """A pystac-client Client on `url` (with retries), refused unless it conforms to item search."""
    from pystac_client import Client
    from pystac_client.conformance import ConformanceClasses

    safe = public_href(url)
    client = _with_retries(
        lambda: Client.open(url, stac_io=fetcher.io, timeout=config.timeout_s),
        what=safe,
        config=config,
        asked_wait=fetcher.asked_wait,
    )
    if not client.conforms_to(ConformanceClasses.ITEM_SEARCH):
        raise CatalogError(
            f"catalog: {safe} does not support STAC item search; pass a STAC API URL or a static catalog"
        )
    return client


def _check_collection(url: str, client: Any, fetcher: _Fetcher, config: CatalogConfig) -> None:
    """A collection the server does not have is named as such (a misspelt --collection would
    otherwise search nothing and look like an empty sky). Asked only of servers that declare the
    collections endpoints; any answer but 404 lets the search go on."""
    from pystac_client.conformance import ConformanceClasses

    if not (
        client.conforms_to(ConformanceClasses.COLLECTIONS)
        or client.conforms_to(ConformanceClasses.FEATURES)
    ):
        return
    root = url.split("?", 1)[0].rstrip("/")
    try:
        fetcher.json(f"{root}/collections/{quote(config.collection, safe='')}")
        return
    except HTTPStatusError as exc:
        if exc.status != 404:
            return
    except CatalogError:
        return
    raise ConfigError(
        f"catalog: collection '{config.collection}' not found at {public_href(url)} (HTTP 404); "
        f"check --collection or [catalog] collection{_collection_hint(root, fetcher, config)}"
    )


def _collection_hint(root: str, fetcher: _Fetcher, config: CatalogConfig) -> str:
    """' (did you mean ...?)' from the server's collection list, or '' when it has none."""
    try:
        listing = fetcher.json(f"{root}/collections")
    except CatalogError:
        return ""
    found = listing.get("collections") if isinstance(listing, Mapping) else None
    ids = [str(c.get("id")) for c in found or () if isinstance(c, Mapping) and c.get("id")]
    close = difflib.get_close_matches(config.collection, ids, n=1)
    if close:
        return f" (did you mean '{close[0]}'?)"
    return f" (the server has: {', '.join(sorted(ids)[:8])})" if ids else ""


@dataclass(frozen=True)
class _CloudFilter:
    """How the scene cloud limit reaches the server: the parameters that keep the scenes under
    it, those that select the scenes it removes (empty: applied client-side), and the note."""

    keep: dict[str, Any]
    removed: dict[str, Any]
    note: str | None


def _cloud_filter(client: Any, config: CatalogConfig) -> _CloudFilter:
    """CQL2 where the server declares the filter extension: scenes under the limit or without
    `eo:cloud_cover` (`isNull`), as the client-side rule keeps them. The query extension cannot
    say "or missing": its use is noted. Neither: applied client-side, noted."""
    from pystac_client.conformance import ConformanceClasses

    limit = config.max_cloud_cover
    if limit >= 100.0:
        return _CloudFilter({}, {}, None)
    cloud = {"property": "eo:cloud_cover"}
    if client.conforms_to(ConformanceClasses.FILTER):
        keep = {
            "op": "or",
            "args": [{"op": "<=", "args": [cloud, limit]}, {"op": "isNull", "args": [cloud]}],
        }
        over = {"op": ">", "args": [cloud, limit]}
        return _CloudFilter(
            {"filter": keep, "filter_lang": "cql2-json"},
            {"filter": over, "filter_lang": "cql2-json"},
            "cloud filter sent to the server (filter extension, CQL2; scenes without "
            "eo:cloud_cover kept)",
        )
    if client.conforms_to(ConformanceClasses.QUERY):
        return _CloudFilter(
            {"query": {"eo:cloud_cover": {"lte": limit}}},
            {"query": {"eo:cloud_cover": {"gt": limit}}},
            "cloud filter sent to the server (query extension): it also drops scenes without "
            "eo:cloud_cover, which the client-side rule would keep for the AOI probe to judge",
        )
    return _CloudFilter(
        {}, {}, "cloud filter applied client-side: server lacks query/filter conformance"
    )


def _cloud_removed(
    client: Any,
    fetcher: _Fetcher,
    base: Mapping[str, Any],
    removed: Mapping[str, Any],
    config: CatalogConfig,
    *,
    what: str,
) -> tuple[list[RawItem], list[str]]:
    """The items the server's cloud filter left out (only id, collection, datetime and cloud
    cover where the fields extension allows), and notes. Failing to list them is a note, never
    the end of the search: the scenes that will be used are already known."""
    from pystac_client.conformance import ConformanceClasses

    light: dict[str, Any] = {}
    if client.conforms_to(ConformanceClasses.FIELDS):
        light["fields"] = {
            "include": ["id", "collection", "properties.datetime", "properties.eo:cloud_cover"],
            "exclude": ["assets", "links", "geometry", "bbox"],
        }
    search = client.search(**base, **removed, **light)
    try:
        items, notes = _all_pages(
            fetcher, search.url, dict(search.get_parameters()), config, what=what,
            progress=no_progress,
        )  # fmt: skip
    except CatalogError as exc:
        return [], [f"could not list the scenes the server's cloud filter removed ({exc})"]
    return items, notes


def _all_pages(
    fetcher: _Fetcher,
    href: str,
    params: dict[str, Any],
    config: CatalogConfig,
    *,
    what: str,
    progress: Progress,
    unreadable: list[tuple[str, str]] | None = None,
) -> tuple[list[RawItem], list[str]]:
    """Every item of a search, following `next` links (bounded by catalog.max_items and a
    repeated link), and what to note about where paging stopped. A page the server makes smaller
    than `limit` asked is no reason to stop: every page followed adds an item, so max_items
    bounds the pages too. Entries that are no item object go to `unreadable`, with why."""
    unreadable = [] if unreadable is None else unreadable
    method = "POST"
    items: list[RawItem] = []
    seen_pages: set[str] = set()
    for _page in range(config.max_items + 1):
        page = fetcher.json(href, method=method, body=params if method == "POST" else None)
        features = page.get("features") if isinstance(page, Mapping) else None
        if not isinstance(features, list):
            raise CatalogError(
                f"catalog: {what} returned a search page without 'features'; is it a STAC API?"
            )
        label = f"search page {_page + 1}"
        items.extend(_entries(features, href, label=label, unreadable=unreadable))
        progress("search", len(items), len(items))
        nxt = _next_link(page) if features else None
        if len(items) > config.max_items:  # at max_items exactly, the next page tells
            note = (
                f"search stopped at catalog.max_items={config.max_items}; raise it or narrow "
                "the dates or AOI"
            )
            return items[: config.max_items], [note]
        if nxt is None:
            return items, []
        href, method, params = _follow(nxt, href, params)
        key = json.dumps(
            [href, method, params if method == "POST" else None], sort_keys=True, default=str
        )
        if key in seen_pages:
            return items, [
                "catalog repeated a next-page link; stopped paging there (a larger "
                "catalog.page_size or narrower dates need fewer pages)"
            ]
        seen_pages.add(key)
    raise AssertionError("unreachable: every page followed adds an item")


def _next_link(page: Mapping[str, Any]) -> Mapping[str, Any] | None:
    links = page.get("links") or ()
    return next((ln for ln in links if isinstance(ln, Mapping) and ln.get("rel") == "next"), None)


def _follow(
    link: Mapping[str, Any], href: str, params: dict[str, Any]
) -> tuple[str, str, dict[str, Any]]:
    """(href, method, body) of the page a `next` link points at; only http(s) is followed."""
    target = check_href(str(link.get("href", "")), base=href, remote=True)
    if href_scheme(target) not in ("http", "https"):
        raise UnsafeHrefError(f"catalog: refused next-page link '{public_href(target)}'")
    method = str(link.get("method") or "GET").upper()
    body = link.get("body")
    if isinstance(body, Mapping):
        params = {**params, **body} if link.get("merge") else dict(body)
    return target, method, params


def _static_items(location: str, fetcher: _Fetcher) -> FoundItems:
    """Walk a static catalog / collection / item collection / item, bounded. A local catalog's
    links and assets must stay inside its own folder (and `catalog.allowed_folders`). A document
    below the root that cannot be used (missing, not JSON, not STAC, outside the folder) is
    left out with its reason and the walk goes on; only an unusable root ends it."""
    remote = is_remote(location)
    roots: tuple[str, ...] | None = None
    if not remote:
        location = _local_root(location)
        roots = (str(Path(location).parent), *fetcher.config.allowed_folders)
    found = FoundItems([], remote=remote, notes=[], local_roots=roots)
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
        try:
            doc = fetcher.json(doc_href)
            items = _items_in(doc, doc_href, unreadable=found.unreadable)
            children = (
                _children(doc, doc_href, remote=remote, roots=roots, skipped=found.unreadable)
                if items is None and depth < MAX_STATIC_DEPTH
                else []
            )
        except UnsafeHrefError:
            raise
        except CatalogError as exc:
            if doc_href == location:
                raise CatalogError(
                    f"{exc}; pass a STAC API URL or a catalog.json / item collection"
                ) from None
            found.unreadable.append((doc_href, str(exc)))
            continue
        found.items.extend(items or ())
        # Reverse so the pop order follows the catalog's own link order (deterministic).
        stack.extend((child, depth + 1) for child in reversed(children))
    return found


def _local_root(location: str) -> str:
    """The resolved path of the JSON document a local catalog location names."""
    if location.lower().startswith("file://"):
        location = unquote(urlsplit(location).path)
    # Checked when the config loaded too; the folder may have changed since.
    problem = local_catalog_problem(location)
    if problem:
        raise CatalogError(
            f"catalog path '{location}' {problem}; "
            "pass a STAC API URL or a catalog.json/item collection"
        )
    path = Path(location).expanduser()
    if path.is_dir():
        path = next(path / name for name in CATALOG_DOCUMENTS if (path / name).is_file())
    return str(path.resolve())


def _items_in(
    doc: Any, doc_href: str, *, unreadable: list[tuple[str, str]]
) -> list[RawItem] | None:
    """The items a static document holds (an item or an item collection), or None for a catalog
    or collection, whose links lead further. Anything else is refused (the advice is the
    caller's: only an unusable root needs one); an item collection's entries that are no item
    object go to `unreadable`, with why."""
    if not isinstance(doc, Mapping):
        raise CatalogError(f"catalog: {public_href(doc_href)} is not a STAC JSON object")
    kind = doc.get("type")
    if kind == "Feature":
        return [RawItem(dict(doc), doc_href)]
    if kind == "FeatureCollection":
        features = doc.get("features")
        features = features if isinstance(features, list) else []
        return [  # an item collection's items resolve their hrefs against it
            replace(raw, base=doc_href)
            for raw in _entries(
                features, doc_href, label=href_name(doc_href), unreadable=unreadable
            )
        ]
    if kind not in ("Catalog", "Collection"):
        raise CatalogError(
            f"catalog: {public_href(doc_href)} is not a STAC catalog, collection, item or item "
            "collection"
        )
    return None


def _children(
    doc: Mapping[str, Any],
    doc_href: str,
    *,
    remote: bool,
    roots: tuple[str, ...] | None,
    skipped: list[tuple[str, str]],
) -> list[str]:
    """The child and item links of a catalog or collection, checked: http(s) only when remote;
    inside `roots` when local (a link leaving them is skipped with why, never opened)."""
    children: list[str] = []
    for link in doc.get("links") or ():
        if not isinstance(link, Mapping) or link.get("rel") not in ("child", "item"):
            continue
        href = str(link.get("href", ""))
        try:
            target = check_href(href, base=doc_href, remote=remote, local_roots=roots)
        except UnsafeHrefError as exc:
            if remote:
                raise
            skipped.append((href, str(exc)))
            continue
        if remote and href_scheme(target) not in ("http", "https"):
            raise UnsafeHrefError(
                f"catalog: refused link '{public_href(target)}' in a remote catalog; "
                "links must be http(s)"
            )
        children.append(target)
    return children


def _looks_static(url: str) -> bool:
    return urlsplit(url).path.lower().endswith(".json")


def fetch_items(
    url: str,
    config: CatalogConfig,
    aoi: AOI,
    *,
    start: date,
    end: date,
    progress: Progress,
) -> FoundItems:
    """Every item of the catalog at `url` for `aoi` and the dates: a STAC API search paged to
    the end, or the walk of a static catalog (which the caller filters client-side)."""
    fetcher = _Fetcher(config)
    if is_remote(url) and not _looks_static(url):
        return _api_items(url, fetcher, aoi, config, start=start, end=end, progress=progress)
    if is_remote(url) or not href_scheme(url) or href_scheme(url) == "file":
        return _static_items(url, fetcher)
    raise CatalogError(
        f"catalog: cannot read '{public_href(url)}'; pass an http(s) STAC API URL or a local catalog path"
    )


# --------------------------------------------------------------------------------------------
# signing


_BLOB_DOMAIN = ".blob.core.windows.net"
_PUBLIC_BLOBS = "ai4edatasetspublicassets.blob.core.windows.net"  # thumbnails: never signed
_TOKEN_MARGIN_S = 60.0  # a token this close to expiring is fetched again


def href_signer(config: CatalogConfig) -> Callable[[str], str] | None:
    """Planetary Computer href signing, or None for every other provider.

    A token per storage container from the Planetary Computer's SAS endpoint (the
    planetary-computer package's settings: `PC_SDK_SAS_URL`, `PC_SDK_SUBSCRIPTION_KEY`), asked
    as every catalog request is, within `[catalog] timeout_s` and `retries` (the package's own
    `sign` retries ten times with a growing backoff and no timeout: minutes of waiting when the
    service is down), and appended to the blob's URL as the package does."""
    if config.provider != "planetary-computer":
        return None
    try:
        from planetary_computer.settings import Settings
    except ImportError:
        raise CatalogError(
            "catalog: provider 'planetary-computer' needs the planetary-computer package to sign "
            "hrefs; pip install 'changedet[pc]' (or planetary-computer)"
        ) from None
    settings = Settings.get()
    key = settings.subscription_key
    fetcher = _Fetcher(config, headers={"Ocp-Apim-Subscription-Key": key} if key else None)
    endpoint = str(settings.sas_url).rstrip("/")
    tokens: dict[str, tuple[str, float]] = {}  # container URL -> (token, expiry as epoch s)

    def token(account: str, container: str) -> str:
        url = f"{endpoint}/{account}/{container}"
        held = tokens.get(url)
        if held is None or held[1] - time.time() < _TOKEN_MARGIN_S:
            try:
                doc = fetcher.json(url)
                held = (str(doc["token"]), _epoch(str(doc["msft:expiry"])))
            except CatalogError as exc:
                detail = str(exc).removeprefix("catalog: ")
                raise CatalogError(
                    f"catalog: could not sign Planetary Computer hrefs: {detail}"
                ) from None
            except (KeyError, TypeError, ValueError):
                raise CatalogError(
                    f"catalog: could not sign Planetary Computer hrefs: {public_href(url)} gave "
                    "no token and expiry; check PC_SDK_SAS_URL"
                ) from None
            if held[1] - time.time() < _TOKEN_MARGIN_S:  # every read would be refused (403)
                raise CatalogError(
                    f"catalog: could not sign Planetary Computer hrefs: {public_href(url)} gave a "
                    f"token that expires at {_iso(held[1])}, before the reads; check this "
                    "machine's clock (and PC_SDK_SAS_URL)"
                )
            tokens[url] = held
        return held[0]

    def sign(href: str) -> str:
        parts = urlsplit(href)
        host = parts.netloc
        signed = {"st", "se", "sp"} & {p.split("=", 1)[0] for p in parts.query.split("&")}
        if not host.endswith(_BLOB_DOMAIN) or host == _PUBLIC_BLOBS or signed:
            return href
        container = parts.path.lstrip("/").split("/", 1)[0]
        return f"{href}?{token(host.split('.', 1)[0], container)}"

    return sign


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")
