"""The stateful incremental job: a watch-list of AOIs, an SQLite ledger, an outbox of alerts and
the analyst's review verdicts (`changedet monitor run|status`, `changedet review`). Its modules
are imported by name: `monitor status` and `review` load the state and the watch-list, not the
pipeline `monitor run` computes with."""
