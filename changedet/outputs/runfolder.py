"""The life of one run's folder, out/<aoi_id>/: built aside, swapped in whole, nothing of the
analyst's ever lost.

One responsibility: where a run's files go and what happens to what was there before.
`run_folder(out/<aoi_id>)` yields a fresh hidden folder beside it, `.<aoi_id>.XXXXXXXX.part`,
and, once the run has written everything there, swaps it in:

- the previous run's own files (those its `run.json` lists, and `run.json`) move to
  `previous/`, replacing the run before that, so the last result stays one folder away;
- a companion of the previous run (a file another part of changedet keeps beside it, listed
  in its run.json's `companions`: the monitor's `alerts.geojson`) stays where it is when the
  new run keeps it too (`run_folder(companions=...)`), else it goes to `previous/` with the
  run it belonged to, so a plain run into a monitored folder leaves no stale alerts beside it;
- every other file in the folder (the analyst's notes, a QGIS project saved beside ours, a
  `.qgz` of their own) stays where it was, even inside `previous/` or `chips/`; a foreign file
  whose name a new output takes moves to `previous/` instead;
- the swap is two renames: readers see the old folder or the new one, never a mix. Files are
  carried over as hard links before the swap (a copy where the file system has none), so a kill
  at any moment leaves every file in at least one place.

A live run holds an exclusive `flock` on its `.part` folder; the kernel drops it when the
process dies, however it dies. So a `.part` folder nobody holds is stale: the next run of the
same AOI removes it (only its own AOI's, matched by name; never a concurrent run's live one).
Creating a `.part` folder, sweeping stale ones and the swap itself happen under a short lock on
the output root, so a sweep never sees a `.part` folder between its creation and its lock, nor
a swap halfway. A swap interrupted between its two renames is finished backwards by the next
sweep: the old folder, kept as `.<aoi_id>.XXXXXXXX.old`, is put back.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path, PurePosixPath

from changedet.errors import OutputError

try:  # POSIX; elsewhere stale folders are told by age alone
    import fcntl
except ImportError:  # pragma: no cover - not on Linux or macOS
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "PREVIOUS",
    "RUN_FILES",
    "RUN_FOLDERS",
    "clash",
    "companion_files",
    "previous_files",
    "remove_stale",
    "run_folder",
]

PREVIOUS = "previous"  # the previous run's outputs, inside out/<aoi_id>/
MANIFEST = "run.json"  # its "files" list says which files a run wrote
COMPANIONS = "companions"  # its list of the files another part of changedet keeps beside it
# The companions of a run whose run.json predates that list: the monitor's alerts, the only one.
LEGACY_COMPANIONS = frozenset({"alerts.geojson"})
_INNER = "folder"  # inside a .old folder: the output folder moved aside during a swap
# Where locks cannot be taken (some network file systems), a .part folder this old is stale.
UNLOCKABLE_STALE_AFTER_S = 24 * 3600.0
# The files a run may write at the top of out/<aoi_id>/ and the folders it keeps there: an
# analyst's folder at one of these file names, or a file at a folder's, cannot be carried over
# (`clash` says so before a run; the swap failed after the whole analysis).
RUN_FILES = frozenset(
    {
        *(f"{stem}.{ext}" for stem in ("structures", "berms") for ext in ("geojson", "qml")),
        *(f"{stem}.{ext}" for stem in ("aoi", "analysed_area") for ext in ("geojson", "qml")),
        *(
            f"{stem}.{ext}"
            for stem in ("change", "change_mask", "clear_count")
            for ext in ("tif", "qml")
        ),
        *(f"{stem}.png" for stem in ("counts", "coverage", "before", "after", "overlay")),
        "structures.csv",
        "structures.kml",
        "counts.csv",
        "changedet.gpkg",
        "changedet.qgz",
        "report.html",
        MANIFEST,
        *LEGACY_COMPANIONS,
    }
)
RUN_FOLDERS = frozenset({PREVIOUS, "chips", "imagery", "imagery/periods"})


def _leftover(name: str) -> re.Pattern[str]:
    """`.<name>.<8 random chars>.part|.old`: what mkdtemp makes for exactly this AOI id."""
    return re.compile(rf"^\.{re.escape(name)}\.[a-z0-9_]{{8}}\.(part|old)$")


@contextlib.contextmanager
def _root_lock(root: Path) -> Iterator[None]:
    """A short exclusive lock on the output root: creating, sweeping and swapping take it."""
    fd = os.open(root, os.O_RDONLY)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:  # no locks on this file system: go on unlocked
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EBADF):
                    raise
        yield
    finally:
        os.close(fd)  # closing the only descriptor releases the lock


def _hold(folder: Path) -> int:
    """Open `folder` and take its exclusive lock for the life of the run; returns the fd."""
    fd = os.open(folder, os.O_RDONLY)
    if fcntl is not None:
        with contextlib.suppress(OSError):  # unlockable file system: age decides instead
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def _is_stale(folder: Path) -> bool:
    """True when no live process holds `folder`'s lock (or, without locks, it is a day old)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return False
    try:
        if fcntl is None:
            return time.time() - folder.stat().st_mtime > UNLOCKABLE_STALE_AFTER_S
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError:
            return time.time() - folder.stat().st_mtime > UNLOCKABLE_STALE_AFTER_S
        return True  # the lock goes with the fd, closed below
    finally:
        os.close(fd)


def remove_stale(root: Path, name: str) -> list[Path]:
    """Remove the leftovers of killed runs of AOI `name` in `root` and return what was removed.

    Only `.<name>.XXXXXXXX.part` folders no live run holds, and `.old` folders of finished
    swaps. When out/<name> is missing but a `.old` folder holds it (a swap killed between its
    two renames), that folder is put back first. Call it under the root lock.
    """
    pattern = _leftover(name)
    leftovers = sorted(
        (p for p in root.iterdir() if pattern.match(p.name) and p.is_dir()),
        key=lambda p: p.stat().st_mtime,
    )
    target = root / name
    removed: list[Path] = []
    for old in reversed([p for p in leftovers if p.name.endswith(".old")]):
        if not target.exists() and (old / _INNER).is_dir():
            os.rename(old / _INNER, target)
    for path in leftovers:
        if path.name.endswith(".old") or _is_stale(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _manifest(folder: Path) -> dict[str, object] | None:
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def previous_files(folder: Path) -> set[str]:
    """The files (relative paths) the run in `folder` wrote, from its run.json; empty when the
    folder holds no readable run.json (then nothing in it is taken for changedet's)."""
    files = (_manifest(folder) or {}).get("files")
    if not isinstance(files, list):
        return set()
    return {f for f in files if isinstance(f, str)} | {MANIFEST}


def companion_files(folder: Path) -> set[str]:
    """The files another part of changedet keeps beside the run in `folder` (its run.json's
    `companions`; `LEGACY_COMPANIONS` for a run.json written before that list); empty when the
    folder holds no readable run.json."""
    manifest = _manifest(folder)
    if manifest is None or not isinstance(manifest.get("files"), list):
        return set()
    if COMPANIONS not in manifest:  # an analyst's own file of that name is not the monitor's
        return {f for f in LEGACY_COMPANIONS if _monitor_alerts(folder / f)}
    listed = manifest[COMPANIONS]
    if not isinstance(listed, list):
        return set()
    return {f for f in listed if isinstance(f, str)}


def clash(target: Path) -> str | None:
    """What in `target` (out/<aoi_id>) stands where a run puts a file or keeps a folder, said
    for the analyst (None when nothing does): a file named `previous`, a folder named
    `run.json`, and so inside previous/ for the previous run's files."""
    if not target.is_dir():
        return None
    old = previous_files(target) | companion_files(target)
    kept = {d.as_posix() for f in old for d in PurePosixPath(f).parents} - {"."}
    folders = RUN_FOLDERS | {f"{PREVIOUS}/{d}" for d in RUN_FOLDERS | kept if d != PREVIOUS}
    for rel in sorted(folders):
        path = target / rel
        if os.path.lexists(path) and not path.is_dir():
            return f"'{path}' is a file where changedet keeps a folder of its outputs"
    for rel in sorted(RUN_FILES | {f"{PREVIOUS}/{f}" for f in old}):
        path = target / rel
        if path.is_dir() and not path.is_symlink():
            return f"'{path}' is a folder where changedet writes a file of its outputs"
    return None


def _monitor_alerts(path: Path) -> bool:
    """Whether `path` reads as the monitor's alerts.geojson: a FeatureCollection whose features
    all carry an alert key and a structure id (before the first alert: nothing but its
    type and empty features)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        features = data["features"]
        if not features:  # the monitor's before any alert is bare: a QGIS export has a name
            return set(data) == {"type", "features"} and data["type"] == "FeatureCollection"
        return data.get("type") == "FeatureCollection" and all(
            {"key", "structure_id"} <= set(f["properties"]) for f in features
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _link(src: Path, dst: Path) -> None:
    """`dst` becomes another name of `src` (a copy where hard links are not possible)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
        else:
            shutil.copy2(src, dst)


def _free(*candidates: Path) -> Path:
    """The first candidate path not taken; else the last with a numbered suffix."""
    for path in candidates:
        if not os.path.lexists(path):
            return path
    last = candidates[-1]
    n = 1
    while os.path.lexists(last.with_name(f"{last.name}.{n}")):
        n += 1
    return last.with_name(f"{last.name}.{n}")


def _entries(folder: Path) -> Iterator[tuple[str, Path]]:
    """(relative path, path) of every file, symlink and empty folder under `folder`."""
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        for name in filenames + [d for d in dirnames if (here / d).is_symlink()]:
            yield (here / name).relative_to(folder).as_posix(), here / name
        if not dirnames and not filenames and here != folder:
            yield here.relative_to(folder).as_posix() + "/", here


# What `fsio.atomic_path` names a file while it writes it: `.<name>.<mkstemp's 8 chars>.part`.
_WRITING = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.part")


def _left_by_a_kill(rel: str, names: Collection[str]) -> bool:
    """Whether `rel` is what an atomic write of one of our files (`names`) left when its process
    died (the monitor's alerts.geojson, written beside a run's outputs): never the analyst's."""
    path = PurePosixPath(rel)
    match = _WRITING.fullmatch(path.name)
    return match is not None and str(path.with_name(match["name"])) in names


def _carry_over(old: Path, new: Path, companions: Collection[str] = ()) -> None:
    """Give `new` the previous run's files (under previous/, with its companions that the new
    run does not keep) and every foreign file of `old`; not what a killed write of ours left."""
    ours = previous_files(old) | (companion_files(old) - set(companions))
    ours_before = previous_files(old / PREVIOUS) | companion_files(old / PREVIOUS)
    written_here = ours | companion_files(old) | set(companions)
    for rel, src in _entries(old):
        if _left_by_a_kill(rel, written_here):
            continue
        if rel.endswith("/"):  # an empty folder of the analyst's
            _free(new / rel.rstrip("/")).mkdir(parents=True, exist_ok=True)
            continue
        if rel in ours:
            _link(src, _free(new / PREVIOUS / rel))
        elif rel.startswith(PREVIOUS + "/"):
            if rel[len(PREVIOUS) + 1 :] not in ours_before:  # foreign, inside previous/
                _link(src, _free(new / rel))
        else:  # foreign: stays where it is unless a new output took its name
            _link(src, _free(new / rel, new / PREVIOUS / rel))


def _swap(target: Path, new: Path) -> None:
    """Put `new` in place of `target` with two renames; the old folder goes last."""
    if not target.exists():
        os.rename(new, target)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    try:
        os.rename(target, aside / _INNER)
    except OSError:  # nothing moved yet (a read-only folder, say): leave no empty .old behind
        aside.rmdir()
        raise
    os.rename(new, target)
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def run_folder(
    target: Path,
    *,
    superseded: Callable[[Path], str | None] = lambda target: None,
    companions: Collection[str] = (),
) -> Iterator[Path]:
    """Yield an empty hidden folder beside `target` (out/<aoi_id>); when the block ends without
    an error, the folder replaces `target`, carrying over the previous run (to previous/) and
    every file changedet did not write. `companions`: the previous run's companions this run
    keeps in place (the monitor's alerts.geojson, which it rewrites after the swap); the others
    go to previous/. On an error, `target` is left as it was, and so it is when
    `superseded(target)`, asked under the lock just before the swap, says why not (a later
    run's outputs are there)."""
    root = target.parent
    root.mkdir(parents=True, exist_ok=True)
    with _root_lock(root):
        remove_stale(root, target.name)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".part", dir=root))
        held = _hold(tmp)
    try:
        yield tmp
        with _root_lock(root):
            why = superseded(target)
            if why is not None:
                raise OutputError(why)
            if target.is_dir():
                if (what := clash(target)) is not None:  # put there during the run
                    raise OutputError(f"{what}; move it away, then rerun")
                _carry_over(target, tmp, companions)
            elif target.exists():
                raise FileExistsError(f"{target} exists and is not a folder; move it away")
            _swap(target, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        os.close(held)
