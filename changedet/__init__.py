"""changedet: find new structures and earthworks in Sentinel-2 time series over an AOI."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("changedet")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
