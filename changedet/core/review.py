"""The analyst's verdicts applied to an analysis (pure): each structure carries its verdict, and
false positives leave every count while staying in the outputs for the analyst to see."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from changedet.core.counts import period_counts
from changedet.core.timeseries import Analysis
from changedet.models import FALSE_POSITIVE

__all__ = ["Verdict", "apply_review"]

Verdict = tuple[str, str | None]  # (verdict, note)


def apply_review(analysis: Analysis, verdicts: Mapping[str, Verdict]) -> Analysis:
    """`analysis` with `verdicts` (structure id → (verdict, note)) on its structures, and its
    ledger's counts made without the false positives."""
    if not verdicts:
        return analysis
    structures = tuple(
        replace(s, review=verdicts[s.id][0], review_note=verdicts[s.id][1])
        if s.id in verdicts
        else s
        for s in analysis.structures
    )
    ledger = analysis.ledger
    keep = [
        entry
        for s, entry in zip(ledger.structures, ledger.entries, strict=True)
        if verdicts.get(s.id, ("", None))[0] != FALSE_POSITIVE
    ]
    if ledger.entries and len(keep) != len(ledger.entries):
        counts = period_counts(keep, ledger.periods, ledger.clear_fractions)
        ledger = replace(ledger, counts=counts)
    return replace(analysis, structures=structures, ledger=ledger)
