"""One exception tree. Every message says what is wrong and how to fix it, on one line. Also the
one place that decides which library warnings are noise (`silence_library_noise`), and the words
for a failure that is the machine's, not a bug (`machine_trouble`)."""

from __future__ import annotations

import errno
import tempfile
import warnings

__all__ = [
    "CLUSTER_RUNNING",
    "AOIError",
    "BusyError",
    "CatalogError",
    "ChangedetError",
    "ClusterLost",
    "ConfigError",
    "DataError",
    "NoScenesError",
    "OutputError",
    "ReadError",
    "UnsafeHrefError",
    "UsageError",
    "interrupt_behind",
    "machine_trouble",
    "silence_library_noise",
]

# How an interrupt's note names the AOIs a Dask cluster goes on computing (`compute` adds it; the
# CLI words the rest of its line by it).
CLUSTER_RUNNING = (
    "AOI(s) already running on the Dask workers cannot be stopped there: they may still write "
    "their outputs"
)

# rasterio wraps an array in a MEM dataset before giving it our transform (`features.shapes`,
# `warp`) and hides the warning that raises with `warnings.catch_warnings`, which is not
# thread-safe: from the read pool's threads it escaped into the progress lines. Our arrays always
# travel with their grid, and an asset without a CRS is refused (`read.cog`): the message is noise.
_RASTERIO_ARRAY_WRAPPING = r"Dataset has no geotransform, gcps, or rpcs"


def silence_library_noise() -> None:
    """Ignore, process-wide, the libraries' warnings that say nothing about the analyst's data
    (called by the CLI and by `pipeline.run_aoi`, before any thread starts)."""
    warnings.filterwarnings("ignore", message=_RASTERIO_ARRAY_WRAPPING)


def machine_trouble(exc: BaseException) -> str | None:
    """One line for an error the machine caused and the analyst can fix (a full disk while the
    dates are kept in the temporary folder); None for anything else, which is a bug to report.
    Writes to --out say so themselves (`OutputError`)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" writing {exc.filename}" if exc.filename else ""
        return (
            f"a disk is full ({exc.strerror}{where}): changedet keeps each date's pixels and "
            f"each period's composite in the temporary folder {tempfile.gettempdir()} while it "
            "runs, besides its cache and "
            "outputs; free space, or set TMPDIR to a folder on a larger disk, then rerun"
        )
    if isinstance(exc, OSError) and exc.errno == errno.EFBIG:
        return (
            f"a file grew past the file-size limit ({exc.strerror}): changedet keeps each date's "
            f"pixels and each period's composite in the temporary folder "
            f"{tempfile.gettempdir()} while it runs; lift the "
            "limit (ulimit -f unlimited), then rerun"
        )
    # sqlite3's DatabaseError, named not imported: the state module alone talks to SQLite
    damaged = any(
        c.__module__ == "sqlite3" and c.__name__ == "DatabaseError" for c in type(exc).__mro__
    )
    if damaged and "malformed" in str(exc):
        return (  # a damaged page met after opening (status and review do not read them all)
            f"the monitor's state database is damaged ({exc}): restore it from a backup, or "
            "delete it to start a new ledger"
        )
    if type(exc).__name__ == "KilledWorker":  # dask: the workers running it died, each time
        return (
            "the Dask workers computing it died (killed, out of memory?) as often as the "
            "scheduler allows; give the workers more memory (--memory-limit) or fewer threads, "
            "then rerun"
        )
    return None


class ChangedetError(Exception):
    """Root of every error changedet raises on purpose; the CLI prints it as one line."""

    exit_code = 1


class UsageError(ChangedetError, ValueError):
    """Bad command-line usage or option values (exit code 2)."""

    exit_code = 2


class ConfigError(ChangedetError, ValueError):
    """A config file or value is invalid (exit code 2)."""

    exit_code = 2


class AOIError(ChangedetError, ValueError):
    """An AOI file or geometry cannot be used."""


class BusyError(ChangedetError):
    """Another process holds what this one needs (e.g. a monitor run holds the state)."""


class ClusterLost(ChangedetError):
    """An AOI the Dask cluster could not run to the end: its scheduler lost, no worker left."""


class CatalogError(ChangedetError, OSError):
    """A STAC catalog could not be searched or returned unusable items."""


class NoScenesError(ChangedetError):
    """No scene covers the AOI in the requested time range (or none was clear enough)."""


class ReadError(ChangedetError, OSError):
    """Pixels could not be read from an asset."""


class UnsafeHrefError(ChangedetError, ValueError):
    """A catalog pointed at a location changedet refuses to read (e.g. file:// from a remote catalog)."""


class OutputError(ChangedetError, OSError):
    """Outputs or state could not be written."""


class DataError(ChangedetError, ValueError):
    """Input rasters or labels are malformed (wrong shape, grid or values)."""


def interrupt_behind(exc: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM (a KeyboardInterrupt) an error was raised from or while handling,
    if any: a library that catches everything (the class-building machinery under matplotlib's
    import) can wrap one, and it must still end the run as an interrupt, not fail an AOI."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None
