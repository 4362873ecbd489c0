"""Catalog hrefs: which may be followed, and what of them may be recorded.

One responsibility: the safety and privacy policy for hrefs that come out of STAC catalogs.
`check_href` resolves an href against the document it came from and refuses unsafe targets (a
remote catalog may only point at http(s) or s3, never make changedet read a local file);
`public_href` and `redact` strip signed-URL tokens, API keys and user info from anything that is
logged or recorded, and `install_log_redaction` puts that filter on the loggers of the HTTP
layers (GDAL/rasterio, pystac-client, urllib3). Shared by `catalog/` (fetch, search, items)
and `read/`: the one policy both the catalog walk and the pixel reads follow.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

from changedet.errors import UnsafeHrefError

__all__ = [
    "check_href",
    "href_name",
    "href_scheme",
    "install_log_redaction",
    "is_remote",
    "public_href",
    "redact",
]

REMOTE_SCHEMES = frozenset({"http", "https", "s3"})


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


def href_name(href: str) -> str:
    """The last part of `href`'s path, tokens stripped: how a file is named to the analyst (the
    public href itself when its path ends in nothing)."""
    public = public_href(href)
    return public.rstrip("/").rsplit("/", 1)[-1] or public


def href_scheme(href: str) -> str:
    """The lower-case URL scheme of `href`, "" for a plain path (also a Windows drive path)."""
    scheme = urlsplit(href).scheme.lower()
    return "" if len(scheme) == 1 else scheme  # "C:\\x" is a Windows path, not a scheme


def is_remote(location: str) -> bool:
    """`location` is fetched over http(s)."""
    return href_scheme(location) in ("http", "https")


def check_href(
    href: str, *, base: str, remote: bool, local_roots: Sequence[str] | None = None
) -> str:
    """Resolve `href` against `base` (the document it came from) and refuse unsafe targets.

    remote: the catalog itself was fetched over http(s). Then only http(s) and s3 hrefs are
    allowed -- never a local path, file://, /vsi... or any other scheme.
    local_roots: for a local catalog, the folders its local hrefs must stay inside (its own
    folder and `catalog.allowed_folders`), symlinks resolved; None: not confined.
    Returns an absolute URL (remote) or an absolute local path / URL (local catalog).
    """
    if not isinstance(href, str) or not href.strip():
        raise UnsafeHrefError("catalog: an asset or link has an empty href; fix the catalog")
    href = href.strip()
    scheme = href_scheme(href)
    if remote:
        if scheme == "":
            if href.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:[\\/]", href):
                raise UnsafeHrefError(
                    f"catalog: refused local path '{public_href(href)}' from a remote catalog; "
                    "remote catalogs may only point at http(s) or s3"
                )
            resolved = urljoin(base, href)  # relative href in a remote document
            scheme = href_scheme(resolved)
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
        return _confined(unquote(urlsplit(href).path), local_roots)
    if scheme:
        raise UnsafeHrefError(
            f"catalog: unsupported href scheme '{scheme}' in '{public_href(href)}'; "
            "use http(s), s3 or a file path"
        )
    if is_remote(base):
        return urljoin(base, href)
    path = Path(href)
    if not path.is_absolute():
        path = Path(base).parent / path
    return _confined(os.path.normpath(path), local_roots)


def _confined(path: str, roots: Sequence[str] | None) -> str:
    """`path` if it lies inside one of `roots` once symlinks are resolved (None: anywhere).
    A local catalog is data, not a licence to read the machine: /etc/passwd, ~/.ssh or a
    /vsi... path are refused unless the config lists their folder."""
    if roots is None:
        return path
    real = Path(os.path.realpath(path))
    for root in roots:
        top = Path(os.path.realpath(root))
        if real == top or top in real.parents:
            return path
    linked = f" (a link to '{real}')" if str(real) != os.path.abspath(path) else ""
    raise UnsafeHrefError(
        f"catalog: refused '{public_href(path)}'{linked}: outside the local catalog's folder "
        f"'{roots[0] if roots else '?'}'; list its folder in [catalog] allowed_folders to allow it"
    )


# --------------------------------------------------------------------------------------------
# redaction of text and logs


_URL_IN_TEXT = re.compile(r"(/vsicurl/|/vsis3/)?(https?|s3)://[^\s'\"<>,]+")
_QUERY_AFTER_NAME = re.compile(r"(\.[A-Za-z0-9]{1,8})\?[^\s,:;'\"<>)]*")
_QUERY_AFTER_PATH = re.compile(r"(/[^\s?'\"<>]*)\?[^\s'\"<>]*")  # urllib3: "GET /x?key=.."


def redact(text: str) -> str:
    """`text` with the query string (signed-URL tokens, API keys) and user info of every URL,
    and any query after a file name (GDAL messages), removed."""
    text = _URL_IN_TEXT.sub(lambda m: public_href(m.group(0).split("/vsicurl/")[-1]), text)
    text = _QUERY_AFTER_PATH.sub(r"\1", text)
    return _QUERY_AFTER_NAME.sub(r"\1", text)


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
