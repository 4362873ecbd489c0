"""The stateful incremental job: a watch-list of AOIs, an SQLite ledger, an outbox of alerts and
the analyst's review verdicts (`changedet monitor run|status`, `changedet review`)."""

from changedet.monitor.run import AOICheck, MonitorReport, run_watchlist
from changedet.monitor.state import State
from changedet.monitor.watchlist import WatchList, load_watchlist

__all__ = ["AOICheck", "MonitorReport", "State", "WatchList", "load_watchlist", "run_watchlist"]
