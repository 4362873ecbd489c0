"""The structures of an earlier run, read back from its `structures.geojson`.

One responsibility: what `changedet run --ids-from EARLIER_OUT` carries ids from. A rerun with
another start, end or period names most structures as before by place alone (`core.ledger`),
but a footprint that grew across an id cell border gets another id; given the earlier run's
structures, the same building keeps the id the analyst already knows (`core.carry`, as the
monitor does with its ledger). Footprints stay in EPSG:4326 here, as the file holds them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shapely.errors import ShapelyError

from changedet.core.carry import Known
from changedet.errors import UsageError

__all__ = ["STRUCTURES_FILE", "earlier_structures"]

STRUCTURES_FILE = "structures.geojson"


def earlier_structures(earlier_out: Path, aoi_id: str) -> dict[str, Known] | None:
    """id → `Known` of every structure in EARLIER_OUT/<aoi_id>/structures.geojson, or None when
    the earlier run has no such file (it did not run this AOI). UsageError when the file is not
    a changedet structures file."""
    path = Path(earlier_out) / aoi_id / STRUCTURES_FILE
    if not path.is_file():
        return None
    where = str(path)
    try:
        features = json.loads(path.read_text(encoding="utf-8"))["features"]
        found = {}
        for number, feature in enumerate(features, start=1):
            where = f"{path}, feature {number}{_named(feature)},"  # the one a failure is in
            structure_id, known = _known(feature)
            found[structure_id] = known
        return found
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ShapelyError) as exc:
        raise UsageError(
            f"--ids-from: {where} is not a changedet structures file ({_why(exc)}); pass the "
            "--out folder of an earlier changedet run"
        ) from None


def _named(feature: object) -> str:
    """' (id X)' for a feature with a text id, else ''."""
    props = feature.get("properties") if isinstance(feature, dict) else None
    structure_id = props.get("id") if isinstance(props, dict) else None
    if not isinstance(structure_id, str) or not structure_id:
        return ""
    # An id is text of the file's: shown escaped, so a newline in it cannot break the line.
    return f" (id {structure_id.encode('unicode_escape').decode('ascii')})"


def _known(feature: dict[str, Any]) -> tuple[str, Known]:
    props = feature["properties"]
    structure_id = props["id"]
    if not isinstance(structure_id, str) or not structure_id:
        raise ValueError(f"a structure without an id: {structure_id!r}")
    if not isinstance(feature.get("geometry"), dict):  # null: nothing to carry an id by
        raise ValueError(f"structure {structure_id} has no geometry")
    known = Known.from_geojson(feature["geometry"], props.get("vanished_after"))
    if known.footprint.is_empty or known.footprint.area <= 0:
        raise ValueError(f"structure {structure_id} has no area")
    return structure_id, known


def _why(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"no {exc} member"
    text = str(exc).encode("unicode_escape").decode("ascii")  # one line, whatever it quotes
    return text or type(exc).__name__
