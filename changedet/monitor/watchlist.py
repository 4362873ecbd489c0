"""The watch-list: a TOML file → typed, frozen config, validated at load.

    state = "state/monitor.sqlite"   # the one SQLite database (relative to this file)
    out = "out"                      # each AOI's outputs go to OUT/<aoi_id>/
    lookback_days = 45               # re-search this far behind the last acquisition seen
    keep_composites = true           # keep each period's composite in the period cache
    keep_dates = true                # keep each date's pixels in the period cache

    [webhook]                        # optional: POST each alert as JSON
    url = "https://example.org/hook"

    [smtp]                           # optional: e-mail each alert
    host = "localhost"
    from = "changedet@example.org"
    to = ["analyst@example.org"]

    [[watch]]                        # one per AOI file
    aoi = "../aoi/khojir.geojson"
    config = "demo-khojir.toml"      # a changedet config (default: built-in defaults)
    start = "2023-06-01"
    end = "2024-06-30"               # optional: stop watching after this date
    catalog = "..."                  # optional: overrides [catalog] url of the config
    [watch.overrides]                # optional: any config key, dotted
    "change.z_threshold" = 9.0

Unknown keys are refused with a "did you mean"; every AOI's config is loaded and checked here,
before anything is searched.
"""

from __future__ import annotations

import difflib
import math
import re
import tomllib
import urllib.parse
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime
from pathlib import Path
from typing import Any

from changedet.config import Config, load_config, parse_date, scheduler_address_problem
from changedet.errors import ChangedetError, ConfigError
from changedet.models import AOI

__all__ = [
    "DEFAULT_LOOKBACK_DAYS",
    "SmtpConfig",
    "WatchList",
    "WatchedAOI",
    "WebhookConfig",
    "load_watchlist",
]

# Catalogs index late (hours to days) and reprocess later still: how far behind the last
# acquisition already seen each run searches again.
DEFAULT_LOOKBACK_DAYS = 45


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    retries: int = 3  # attempts after the first, per alert and run
    backoff_s: float = 1.0  # first retry delay; doubles per retry
    timeout_s: float = 10.0


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    sender: str  # "from" in the file
    to: tuple[str, ...]
    port: int = 25
    starttls: bool = False
    username: str = ""
    password_env: str = ""  # name of the environment variable holding the password
    retries: int = 2
    backoff_s: float = 1.0
    timeout_s: float = 10.0


@dataclass(frozen=True)
class WatchedAOI:
    """One watched AOI with its effective config (time.start from the watch-list)."""

    aoi: AOI
    config: Config
    end: date | None  # None: watch until now


@dataclass(frozen=True)
class WatchList:
    path: Path
    state: Path
    out: Path
    lookback_days: int
    aois: tuple[WatchedAOI, ...]
    webhook: WebhookConfig | None = None
    smtp: SmtpConfig | None = None
    # The period cache keeps each period's composite (about 30 bytes per context-window pixel and
    # period) so that an incremental run composites only new periods; false keeps only the change
    # (about 11 bytes) and the shifts: a fraction of the disk, slower incremental runs, the same
    # results.
    keep_composites: bool = True
    # ... and each date's pixels as read (about 13 bytes per context-window pixel and date), so
    # that an incremental run reads only the SCL of the scenes it has seen; false reads them all.
    keep_dates: bool = True
    # "" computes every AOI here, one after another; a Dask scheduler address ("tcp://HOST:8786")
    # computes each AOI on a worker, this process planning, committing and alerting.
    cluster: str = ""

    def with_state(self, state: Path | None) -> WatchList:
        if state is None:
            return self
        path = Path(state).expanduser().resolve()  # "out/k/../s.sqlite", a symlinked folder
        _refuse_state_in_out(path, self.out, self.aois, name="--state")
        return replace(self, state=path)

    def with_cluster(self, cluster: str | None) -> WatchList:
        return self if cluster is None else replace(self, cluster=_cluster(cluster))


_FLAGS = ("keep_composites", "keep_dates")
_TOP = ("state", "out", "lookback_days", *_FLAGS, "cluster", "webhook", "smtp", "watch")
_WATCH = ("aoi", "config", "start", "end", "catalog", "collection", "ids", "overrides")
_WEBHOOK = ("url", "retries", "backoff_s", "timeout_s")
_SMTP = (
    "host",
    "port",
    "from",
    "to",
    "starttls",
    "username",
    "password_env",
    "retries",
    "backoff_s",
    "timeout_s",
)


def _cluster(address: str) -> str:
    """A Dask scheduler address, or "" for this machine."""
    problem = scheduler_address_problem(address)
    if problem:
        raise ConfigError(f"watch-list: cluster {problem}")
    return address


# Top-level keys of a run config (`changedet.config`): a file holding them is no watch-list.
_RUN_CONFIG_KEYS = ("extends", "catalog", "time", "read", "mask", "change", "track", "output")


def _check_keys(data: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f"; known: {', '.join(allowed)}"
            raise ConfigError(f"watch-list: unknown key '{key}' in {where}{hint}")


def _typed(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = data[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, bool) and kind in (int, float):
        raise ConfigError(f"watch-list: {where} {key} must be a number, not {value!r}")
    if not isinstance(value, kind):
        name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ConfigError(f"watch-list: {where} {key} must be {name}, not {value!r}")
    return value


def _section(
    data: Mapping[str, Any],
    allowed: tuple[str, ...],
    where: str,
    types: Mapping[str, type | tuple[type, ...]],
) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise ConfigError(f"watch-list: {where} must be a table")
    _check_keys(data, allowed, where)
    out = {key: _typed(data, key, types.get(key, str), where) for key in data}
    for key, (low, high, unit) in _LIMITS.items():
        if key in out and not low <= out[key] <= high:
            bound = f">= {low}" if high == math.inf else f"within {low}..{high}{unit}"
            raise ConfigError(f"watch-list: {where} {key} must be {bound}")
    if out.get("timeout_s", 1) <= 0:  # 0 failed every delivery as "cannot reach the server"
        raise ConfigError(f"watch-list: {where} timeout_s must be above 0 (up to 600 s)")
    return out


# The numbers a channel takes. A run waits at most retries x 60 s per channel (the backoff
# doubles up to a minute): a larger count holds the job for hours while the server is down, and
# the next run retries anyway.
_LIMITS: dict[str, tuple[float, float, str]] = {
    "port": (0, 65535, ""),
    "retries": (0, 10, ""),
    "backoff_s": (0, 60, " s"),
    "timeout_s": (0, 600, " s"),
}


def _webhook(data: Mapping[str, Any]) -> WebhookConfig:
    kw = _section(
        data, _WEBHOOK, "[webhook]", {"retries": int, "backoff_s": float, "timeout_s": float}
    )
    url = kw.get("url", "")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"watch-list: [webhook] url must be an http(s) URL, not {url!r}")
    if not url.isascii() or any(c.isspace() or not c.isprintable() for c in url):
        # HTTP carries ASCII only: every POST would fail (UnicodeEncodeError) run after run.
        fixed = _ascii_url(url.strip())
        raise ConfigError(
            f"watch-list: [webhook] url {url!r} has characters a URL cannot carry; "
            f"percent-encode them: url = {fixed!r}"
        )
    return WebhookConfig(**kw)


def _ascii_url(url: str) -> str:
    """The URL HTTP can carry: its host in IDNA (punycode: a percent-encoded host resolves
    nowhere), the rest percent-encoded."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        ascii_host = host
    safe = ":/?#[]@!$&'()*+,;=%~"
    # urlsplit lower-cases the host it gives: found again in the netloc whatever its case
    netloc = re.sub(re.escape(host), ascii_host, parts.netloc, count=1, flags=re.IGNORECASE)
    return urllib.parse.urlunsplit(
        (parts.scheme, *(urllib.parse.quote(p, safe=safe) for p in (netloc, *parts[2:])))
    )


def _smtp(data: Mapping[str, Any]) -> SmtpConfig:
    kw = _section(
        data,
        _SMTP,
        "[smtp]",
        {
            "port": int,
            "to": list,
            "starttls": bool,
            "retries": int,
            "backoff_s": float,
            "timeout_s": float,
        },
    )
    for key in ("host", "from", "to"):
        if not kw.get(key):
            raise ConfigError(f"watch-list: [smtp] needs '{key}'")
    if not all(isinstance(t, str) and "@" in t for t in kw["to"]):
        raise ConfigError("watch-list: [smtp] to must be a list of e-mail addresses")
    kw["sender"] = kw.pop("from")
    kw["to"] = tuple(kw["to"])
    return SmtpConfig(**kw)


def _path(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def _watched(entry: Mapping[str, Any], base: Path, n: int) -> list[WatchedAOI]:
    """The AOIs of one [[watch]] entry, each with its effective config."""
    from changedet.aoi import load_aois

    where = f"[[watch]] #{n}"
    types: dict[str, type | tuple[type, ...]] = {
        "ids": list,
        "overrides": dict,
        "start": (str, date),
        "end": (str, date),
    }
    kw = _section(entry, _WATCH, where, types)
    for key in ("aoi", "start"):
        if key not in kw:
            raise ConfigError(f"watch-list: {where} needs '{key}'")
    start = _watch_date(kw["start"], f"watch-list: {where} start")
    end = None if kw.get("end") is None else _watch_date(kw["end"], f"watch-list: {where} end")
    overrides = _dotted(kw.get("overrides", {}))
    computing = sorted(k for k in overrides if k.startswith("compute."))
    if computing:  # was ignored: the monitor computes every AOI where the watch-list says
        raise ConfigError(
            f"watch-list: {where} overrides '{computing[0]}'; where the monitor computes is the "
            'watch-list\'s own: cluster = "tcp://HOST:PORT" at its top (or --cluster)'
        )
    for key in ("time.start", "time.end"):
        if key in overrides:  # the watch's own start and end (and the run's clock) set them
            raise ConfigError(
                f"watch-list: {where} overrides '{key}'; give the watch's "
                f"{key.removeprefix('time.')} instead"
            )
    overrides["time.start"] = start
    if end is not None:
        if end < start:
            raise ConfigError(
                f"watch-list: {where} end {end} is before start {start}; set an end after the "
                "start (or none: the watch runs on)"
            )
        overrides["time.end"] = end
    if "catalog" in kw:
        url = kw["catalog"]
        overrides["catalog.url"] = url if "://" in url else str(_path(base, url))
    if "collection" in kw:
        overrides["catalog.collection"] = kw["collection"]
    config_path = _path(base, kw["config"]) if "config" in kw else None
    try:
        config = load_config(config_path, overrides)
    except ConfigError as exc:
        raise ConfigError(f"watch-list: {where}: {exc}") from None  # which entry said it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # renamed repeats: the ids are checked below
        aois = load_aois(_path(base, kw["aoi"]), config.aoi)
    wanted = kw.get("ids")
    if wanted is not None:
        known = {a.id for a in aois}
        missing = [i for i in wanted if i not in known]
        if missing:
            raise ConfigError(
                f"watch-list: {where} ids {missing} are not in {kw['aoi']} (it has: {sorted(known)})"
            )
        aois = [a for a in aois if a.id in wanted]
    return [WatchedAOI(aoi, config, end) for aoi in aois]


def load_watchlist(path: str | Path) -> WatchList:
    """Read and check a watch-list file (ConfigError, exit 2, on anything wrong)."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"watch-list '{file}' not found; pass an existing TOML file to --config")
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8-sig"))  # an editor's BOM too
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"watch-list '{file}' is not valid TOML ({exc})") from None
    if "watch" not in data and any(k in data for k in _RUN_CONFIG_KEYS):
        raise ConfigError(
            f"watch-list: '{file}' is a run config, not a watch-list (no [[watch]] table); run it "
            "with `changedet run AOI --config FILE`, or name it in a watch-list's [[watch]] "
            "config (configs/monitor.toml)"
        )
    if "compute" in data:  # "did you mean 'out'?" said nothing useful
        raise ConfigError(
            "watch-list: [compute] belongs to a run config; the monitor's cluster is the "
            'watch-list\'s top-level cluster = "tcp://HOST:PORT" (or --cluster)'
        )
    _check_keys(data, _TOP, "the top level")
    base = file.resolve().parent
    top = _section(
        {
            k: v
            for k, v in data.items()
            if k in ("state", "out", "lookback_days", "cluster", *_FLAGS)
        },
        _TOP,
        "the top level",
        {"lookback_days": int, **{flag: bool for flag in _FLAGS}},
    )
    lookback = top.get("lookback_days", DEFAULT_LOOKBACK_DAYS)
    if not 0 <= lookback <= 3650:
        raise ConfigError("watch-list: lookback_days must be within 0..3650")
    entries = data.get("watch")
    if not isinstance(entries, list) or not entries:
        raise ConfigError("watch-list: add at least one [[watch]] table (aoi, start, config)")
    aois: list[WatchedAOI] = []
    for n, entry in enumerate(entries, 1):
        try:
            aois.extend(_watched(entry, base, n))
        except ChangedetError as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"watch-list: [[watch]] #{n}: {exc}") from None
    seen: set[str] = set()
    for w in aois:
        if w.aoi.id.lower() in seen:
            raise ConfigError(
                f"watch-list: AOI id '{w.aoi.id}' is watched twice; each AOI needs its own id"
            )
        seen.add(w.aoi.id.lower())
    state, out = (
        _path(base, top.get("state", "monitor.sqlite")),
        _path(base, top.get("out", "monitor-out")),
    )
    _refuse_state_in_out(state, out, aois)
    return WatchList(
        path=file.resolve(),
        state=state,
        out=out,
        lookback_days=lookback,
        keep_composites=top.get("keep_composites", True),
        keep_dates=top.get("keep_dates", True),
        cluster=_cluster(top.get("cluster", "")),
        aois=tuple(aois),
        webhook=_webhook(data["webhook"]) if "webhook" in data else None,
        smtp=_smtp(data["smtp"]) if "smtp" in data else None,
    )


def _refuse_state_in_out(
    state: Path, out: Path, aois: Sequence[WatchedAOI], *, name: str = "watch-list: state"
) -> None:
    """The state database (resolved) must not be the outputs' folder nor lie in an AOI's output
    folder, which every run replaces as a whole (it failed after computing, exit 1)."""
    out = out.resolve()
    inside = next((w.aoi.id for w in aois if (out / w.aoi.id) in (state, *state.parents)), None)
    if state == out or inside is not None:
        where = "is the out folder" if state == out else f"lies in AOI '{inside}''s output folder"
        raise ConfigError(
            f"{name} '{state}' {where}, which runs replace; put the state file beside out, "
            "not in it"
        )


def _watch_date(value: Any, where: str) -> date:
    """A watch's start or end: a TOML date or a YYYY-MM-DD string, not a date-time."""
    if isinstance(value, datetime):
        raise ConfigError(f"{where}: {value!r} is a date-time; use a date YYYY-MM-DD")
    return value if isinstance(value, date) else parse_date(value, where)


def _dotted(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Overrides as dotted keys: a `[watch.overrides.change]` table holds `change.*` keys (it
    gave "unknown key ''")."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        pairs = (
            [(f"{key}.{inner}", v) for inner, v in value.items()]
            if "." not in key and isinstance(value, Mapping)
            else [(key, value)]
        )
        for dotted, v in pairs:
            if dotted in out:  # "change.z_threshold" and [watch.overrides.change] z_threshold
                raise ConfigError(f"watch-list: override '{dotted}' is given twice; give it once")
            out[dotted] = v
    return out
