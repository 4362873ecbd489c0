"""report.html: self-contained, rendered by a real headless Chromium with every image and no
network request; plus the PNG quicklooks, chips and chart on disk.

The browser is driven over the Chrome DevTools Protocol on a pipe (--remote-debugging-pipe, fds 3
and 4), which records every request the page makes (Network.requestWillBeSent, data: URLs
included), intercepts and fails any request that is not the report itself (Fetch), and collects
Content-Security-Policy violations. Negative controls prove each detector fires.
"""

from __future__ import annotations

import base64
import json
import os
import re
import select
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from changedet.config import OutputConfig
from changedet.core.evidence import stack_dates, structure_evidence
from changedet.models import FALSE_POSITIVE, RunResult, SkippedScene
from changedet.outputs.chips import SCALE_BAR_M, chip_image, evidence_of
from changedet.outputs.headline import km2
from changedet.outputs.imagery import display_stretch
from changedet.outputs.legend import shown_structures
from changedet.outputs.report import REPORT_CSP
from changedet.outputs.write import write_run_outputs

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
VIEWPORT = (1366, 800)  # a laptop screen


@pytest.fixture(scope="module")
def run_result(make_run_result: Any) -> RunResult:
    """The factory's run with dated evidence from its acquisitions (`make_run_result.dated`)."""
    result = make_run_result()
    stack, months = make_run_result.dated(result)
    evidence = structure_evidence(
        stack_dates(stack),
        result.structures,
        composites=months,
        baseline=result.before,
        latest=result.after,
    )
    return RunResult(**{**result.__dict__, "evidence": evidence})


@pytest.fixture(scope="module")
def out_dir(run_result: RunResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "khojir-test"
    write_run_outputs(run_result, out, config=OutputConfig())
    return out


# ---------------------------------------------------------------------------------------------
# Static checks of the HTML


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _tags(html: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Collector()
    parser.feed(html)
    return parser.tags


def test_report_is_self_contained_and_links_every_file(
    out_dir: Path, run_result: RunResult
) -> None:
    html = (out_dir / "report.html").read_text(encoding="utf-8")
    tags = _tags(html)
    imgs = [a for t, a in tags if t == "img"]
    # counts, coverage inset, overlay, before, after + chips
    assert len(imgs) == 5 + len(run_result.structures)
    assert all((a["src"] or "").startswith("data:image/png;base64,") for a in imgs)
    assert not [t for t, _ in tags if t in ("script", "iframe", "object", "embed")]
    csp = [a for t, a in tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and csp[0]["content"] == REPORT_CSP
    for tag, attrs in tags:  # nothing but data: may be loaded
        for key in ("src", "srcset", "poster", "data"):
            if attrs.get(key):
                assert attrs[key].startswith("data:"), (tag, key)
        if tag == "link":
            assert (attrs.get("href") or "").startswith("data:")
    anchors = [a for t, a in tags if t == "a"]
    links = {a["href"] for a in anchors if not re.match(r"[a-z]+://", a["href"] or "")}
    on_disk = {p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_file()}
    assert on_disk <= links, on_disk - links
    assert all((out_dir / link).is_file() for link in links)
    # The only links out are the web-viewer links of each structure's position: plain links,
    # never loaded, opened without a referrer.
    viewers = [a for a in anchors if re.match(r"[a-z]+://", a["href"] or "")]
    assert len(viewers) == 3 * len(run_result.structures)
    assert all(a["href"].startswith("https://") and "noreferrer" in a["rel"] for a in viewers)


def test_report_states_limits_and_contents(out_dir: Path, run_result: RunResult) -> None:
    html = (out_dir / "report.html").read_text(encoding="utf-8")
    text = unescape(re.sub(r"<[^>]+>", " ", html))
    assert "SYNTHETIC INPUT DATA" in text  # provenance["synthetic"] is True
    assert "400 m² (≈ 4 pixels)" in text  # minimum mapping unit
    assert "20 × 40 m hall is about 8 pixels" in text
    assert "sub-pixel" in text and "estimates" in text
    for s in run_result.structures:
        assert s.id in text
        assert f"{s.area_m2:,.0f} m²" in text
    assert "2023-08-01 – 2023-11-01" in " ".join(text.split())  # first seen, s-0001
    for sk in run_result.scenes_skipped:
        assert sk.scene_id in text and sk.reason in text
    assert "not assessed" in text  # bermed None is not reported as "no"
    assert "range 1–3" in text
    # The headline first: new buildings and all structures with ranges, when, bermed, candidates.
    headline = text[text.index("2 new buildings") :][:400]
    assert text.index("2 new buildings") < text.index("Coverage") < text.index("Count over time")
    assert "2 new buildings (range 1–3); 2 new structures in all (range 1–3)" in headline
    when = "First in Sep 2023, peak Sep 2023 (1 new); 1 of the new buildings bermed; 0 vanished"
    assert when in headline
    assert "1 unconfirmed candidate, not counted (1 too recent to confirm)" in headline
    # Coverage stated: the AOI's area against what was analysed.
    cov = run_result.coverage
    assert cov is not None
    flat = " ".join(text.split())
    assert f"AOI {km2(cov.aoi_km2)} ; analysed {km2(cov.analysed_km2)}" in flat
    assert "coverage-warning" not in html  # all of this AOI was seen
    # Each structure: its kind, coordinates and dated evidence.
    for e in run_result.evidence:
        assert f"before {e.before.label} · after {e.after.label}" in text
    assert "before 2023-09-20 · after 2023-10-18" in text  # the hall


def test_report_says_nothing_synthetic_for_real_data(
    tmp_path: Path, make_run_result: Callable[..., RunResult]
) -> None:
    out = tmp_path / "real"
    write_run_outputs(
        make_run_result(synthetic=False),
        out,
        config=OutputConfig(geopackage=False, cogs=False, chips=False),
    )
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "SYNTHETIC" not in html
    assert "no chip" in html


def test_report_states_the_threshold_structures_were_seeded_at(
    tmp_path: Path, make_run_result: Callable[..., RunResult]
) -> None:
    result = make_run_result()
    seeded = replace(result, change=replace(result.change, structure_threshold=8.0))
    for run, expected in ((result, False), (seeded, True)):
        out = tmp_path / str(expected)
        write_run_outputs(run, out, config=OutputConfig(geopackage=False, cogs=False, chips=False))
        text = " ".join((out / "report.html").read_text(encoding="utf-8").split())
        assert ("structures are seeded at ≥ 8.0" in text) is expected
        limits = json.loads((out / "run.json").read_text())["detection_limits"]
        assert limits["structure_threshold"] == (8.0 if expected else None)


def test_pngs_on_disk(out_dir: Path, run_result: RunResult, make_run_result: Any) -> None:
    from matplotlib.image import imread

    before = imread(out_dir / "before.png")
    after = imread(out_dir / "after.png")
    assert before.shape[:2] == after.shape[:2] == run_result.grid.shape
    r0, c0, r1, c1 = make_run_result.HALL
    # Same stretch for both dates: the new roof is brighter after than before.
    assert after[r0:r1, c0:c1, :3].mean() > before[r0:r1, c0:c1, :3].mean() + 0.3
    # Ground far from any structure looks the same on both dates.
    assert abs(after[80:95, 5:20, :3].mean() - before[80:95, 5:20, :3].mean()) < 0.05
    for name in ("overlay.png", "counts.png"):
        img = imread(out_dir / name)
        assert img.shape[0] > 200 and img.shape[1] > 400
    for s in run_result.structures:
        chip = imread(out_dir / "chips" / f"{s.id}.png")
        assert chip.shape[1] > chip.shape[0] > 100  # two panels side by side


def _panels(chip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gap = np.all(chip == 255, axis=(0, 2))  # the white gap between the panels
    cols = np.flatnonzero(gap)
    return chip[:, : cols.min()], chip[:, cols.max() + 1 :]


def test_chip_outline_sits_on_the_structure(run_result: RunResult) -> None:
    lo, hi = display_stretch(run_result.before, run_result.after)
    hall = run_result.structures[0]
    chip = chip_image(evidence_of(run_result, hall), hall, lo, hi)
    before, after = _panels(chip)
    yellow = np.all(after == (255, 230, 0), axis=-1)
    rows, cols = np.nonzero(yellow)
    box_h, box_w = rows.max() - rows.min(), cols.max() - cols.min()
    assert box_w == pytest.approx(2 * box_h, rel=0.15)  # 40 m x 20 m hall
    inside = after[rows.min() + 2 : rows.max() - 1, cols.min() + 2 : cols.max() - 1]
    assert inside.mean() > 200  # the bright roof is inside the outline (after)...
    b_inside = before[rows.min() + 2 : rows.max() - 1, cols.min() + 2 : cols.max() - 1]
    assert b_inside.mean() < inside.mean() - 60  # ...and not yet before


def test_chip_carries_a_100_m_scale_bar_and_a_caption(run_result: RunResult) -> None:
    lo, hi = display_stretch(run_result.before, run_result.after)
    depot = run_result.structures[1]
    evidence = evidence_of(run_result, depot)
    chip = chip_image(evidence, depot, lo, hi)
    for panel in _panels(chip):
        # The scale bar: the longest run of pure white in the bottom rows, 100 m long.
        bottom = np.all(panel[-14:] == 255, axis=-1)
        longest = max(_longest_run(row) for row in bottom)
        scale = panel.shape[1] / evidence.window.width
        assert longest == pytest.approx(SCALE_BAR_M / evidence.window.res * scale, abs=2)
        # The caption band at the top is dark with white text in it.
        band = panel[:18]
        assert band.mean() < 110 and np.all(band == 255, axis=-1).sum() > 20


def _longest_run(values: np.ndarray) -> int:
    best = run = 0
    for v in values:
        run = run + 1 if v else 0
        best = max(best, run)
    return best


# ---------------------------------------------------------------------------------------------
# Headless Chromium over the DevTools protocol


class Browser:
    """Minimal CDP client over --remote-debugging-pipe (messages are NUL-terminated JSON)."""

    def __init__(self, profile: Path, log: Path) -> None:
        assert CHROMIUM
        flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--mute-audio",
            f"--user-data-dir={profile}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        # Chromium reads commands on fd 3 and writes replies on fd 4: the shell wires our pipes.
        wire = 'exec 3<&0 4>&1 0</dev/null 1>/dev/null; exec "$0" "$@"'
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            ["sh", "-c", wire, CHROMIUM, *flags],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        self._buf = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        self.session = ""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Page", "Network", "Runtime", "Log"):
            self.call(f"{domain}.enable")
        self.call("Fetch.enable", {"patterns": [{"urlPattern": "*"}]})
        self.call(
            "Page.addScriptToEvaluateOnNewDocument",
            {
                "source": "window.__csp = []; document.addEventListener("
                "'securitypolicyviolation', e => window.__csp.push("
                "e.violatedDirective + ' ' + e.blockedURI));"
            },
        )
        self.viewport(*VIEWPORT)
        self.page_url = ""

    def _read_message(self, deadline: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("chromium did not answer in time")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed the DevTools pipe")
                self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        message: dict[str, Any] = json.loads(raw)
        if message.get("method") == "Fetch.requestPaused":
            self._on_paused(message["params"])
        return message

    def _on_paused(self, params: dict[str, Any]) -> None:
        # Let the report itself load; fail everything else at once (and it stays in the log).
        url = params["request"]["url"]
        if url == self.page_url:
            self.send("Fetch.continueRequest", {"requestId": params["requestId"]})
        else:
            self.send(
                "Fetch.failRequest",
                {"requestId": params["requestId"], "errorReason": "BlockedByClient"},
            )

    def send(self, method: str, params: dict[str, Any] | None = None) -> int:
        assert self.proc.stdin is not None
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if self.session and not method.startswith(("Target.", "Browser.")):
            msg["sessionId"] = self.session
        self.proc.stdin.write(json.dumps(msg).encode() + b"\0")
        self.proc.stdin.flush()
        return self._next_id

    def call(
        self, method: str, params: dict[str, Any] | None = None, timeout: float = 30.0
    ) -> dict[str, Any]:
        wanted = self.send(method, params)
        deadline = time.monotonic() + timeout
        while True:
            message = self._read_message(deadline)
            if message.get("id") == wanted:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            if "method" in message:
                self.events.append(message)

    def wait_event(self, method: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            message = self._read_message(deadline)
            if "method" in message:
                self.events.append(message)
                if message["method"] == method:
                    return message

    def load(self, path: Path) -> dict[str, Any]:
        """Open a local file and report what the page requested, showed and complained about."""
        self.events = []
        self.page_url = path.resolve().as_uri()
        self.call("Page.navigate", {"url": self.page_url})
        self.wait_event("Page.loadEventFired")
        probe = """JSON.stringify({
            images: [...document.images].map(i => ({id: i.id, complete: i.complete,
                      width: i.naturalWidth, height: i.naturalHeight})),
            csp: window.__csp || [],
            title: document.title,
            headline: (document.querySelector("#headline .lead") || {}).textContent || "",
            height: document.documentElement.scrollHeight,
            overflow_px: document.documentElement.scrollWidth
                - document.documentElement.clientWidth,
            table_overflow_px: (document.querySelector("#structures") || {scrollWidth: 0})
                .scrollWidth - (document.querySelector(".wide") || {clientWidth: 0}).clientWidth})"""
        value = self.call("Runtime.evaluate", {"expression": probe, "returnByValue": True})
        page = json.loads(value["result"]["value"])
        requests = [
            e["params"]["request"]["url"]
            for e in self.events
            if e["method"] == "Network.requestWillBeSent"
        ]
        page["requests"] = requests
        page["blocked"] = [
            e["params"]["request"]["url"]
            for e in self.events
            if e["method"] == "Fetch.requestPaused"
            and e["params"]["request"]["url"] != self.page_url
        ]
        page["errors"] = [
            e["params"]["entry"]["text"]
            for e in self.events
            if e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] == "error"
        ]
        page["exceptions"] = [e for e in self.events if e["method"] == "Runtime.exceptionThrown"]
        return page

    def viewport(self, width: int, height: int) -> None:
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )

    def screenshot(self, path: Path, *, full_page: bool) -> None:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.call("Page.getLayoutMetrics")["cssContentSize"]
            params.update(
                captureBeyondViewport=True,
                clip={
                    "x": 0,
                    "y": 0,
                    "width": size["width"],
                    "height": min(size["height"], 16000),
                    "scale": 1,
                },
            )
        data = self.call("Page.captureScreenshot", params)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.send("Browser.close")
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired, ValueError):
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    if CHROMIUM is None:
        pytest.skip("chromium not installed (apt-get install -y chromium); .ci/run installs it")
    tmp = tmp_path_factory.mktemp("chromium")
    b = Browser(tmp / "profile", tmp / "chromium.log")
    try:
        yield b
    finally:
        b.close()


def _isolated_copy(html: str, tmp: Path, name: str = "report.html") -> Path:
    """The report alone in an empty folder: anything it would fetch from beside it is missing."""
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / name
    path.write_text(html, encoding="utf-8")
    return path


def _external(page: dict[str, Any]) -> list[str]:
    """Requests other than the page itself and inline data: URIs."""
    return [u for u in page["requests"] if not u.startswith("data:") and u != page["url"]]


def test_chromium_renders_report_without_network(
    browser: Browser, out_dir: Path, run_result: RunResult, tmp_path: Path
) -> None:
    path = _isolated_copy((out_dir / "report.html").read_text(encoding="utf-8"), tmp_path)
    page = browser.load(path)
    page["url"] = path.resolve().as_uri()
    browser.screenshot(ARTIFACTS / "report.png", full_page=True)
    browser.screenshot(ARTIFACTS / "report_viewport.png", full_page=False)
    assert page["title"].startswith("changedet report: Khojir test AOI")
    assert _external(page) == [] and page["blocked"] == []
    assert page["csp"] == [] and page["errors"] == [] and page["exceptions"] == []
    expected = 5 + len(run_result.structures)
    assert len(page["images"]) == expected
    ids = {img["id"] for img in page["images"]}
    assert {"coverage-inset", "counts", "overlay"} <= ids
    assert page["headline"].startswith("2 new buildings (range 1–3)")
    for img in page["images"]:
        assert img["complete"] and img["width"] > 0 and img["height"] > 0, img
    # The data: images did go through the browser's loader, which the log shows.
    assert sum(u.startswith("data:image/png") for u in page["requests"]) >= 1
    assert (ARTIFACTS / "report.png").stat().st_size > 50_000


def test_report_fits_half_a_screen_beside_qgis(
    browser: Browser, out_dir: Path, tmp_path: Path
) -> None:
    """An analyst reads the report beside QGIS: at half a 1920 px screen the page must not
    scroll sideways (a wide table scrolls in its own box); at a laptop's width nothing does,
    not even the structures table in its box (its last columns would be hidden)."""
    path = _isolated_copy((out_dir / "report.html").read_text(encoding="utf-8"), tmp_path)
    try:
        browser.viewport(960, 800)
        half = browser.load(path)
        browser.screenshot(ARTIFACTS / "report_960.png", full_page=False)
    finally:
        browser.viewport(*VIEWPORT)
    assert half["overflow_px"] == 0
    laptop = browser.load(path)
    assert laptop["overflow_px"] == 0 and laptop["table_overflow_px"] <= 0, laptop


def _load_variant(
    browser: Browser, out_dir: Path, tmp_path: Path, extra: str, *, keep_csp: bool
) -> dict[str, Any]:
    """Load an isolated copy of the report with `extra` HTML appended to <main> (and, unless
    `keep_csp`, its Content-Security-Policy removed): the negative controls' page."""
    html = (out_dir / "report.html").read_text(encoding="utf-8")
    if not keep_csp:
        html = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", html)
    path = _isolated_copy(html.replace("</main>", extra + "</main>"), tmp_path)
    page = browser.load(path)
    page["url"] = path.resolve().as_uri()
    return page


def test_network_detector_catches_a_request(
    browser: Browser, out_dir: Path, tmp_path: Path
) -> None:
    # Negative control 1: without the CSP, an external image is requested and must be seen.
    page = _load_variant(
        browser, out_dir, tmp_path, '<img src="http://198.51.100.7/leak.png">', keep_csp=False
    )
    assert "http://198.51.100.7/leak.png" in _external(page)
    assert "http://198.51.100.7/leak.png" in page["blocked"]


def test_csp_blocks_and_reports_external_content(
    browser: Browser, out_dir: Path, tmp_path: Path
) -> None:
    # Negative control 2: with the report's CSP, the request never leaves but is reported.
    page = _load_variant(
        browser, out_dir, tmp_path, '<img src="https://198.51.100.7/leak.png">', keep_csp=True
    )
    assert any("198.51.100.7" in v for v in page["csp"]), page["csp"]


def test_detector_catches_files_beside_the_report(
    browser: Browser, out_dir: Path, tmp_path: Path
) -> None:
    # Negative control 3: a relative image works only next to its file; the isolated copy shows it.
    page = _load_variant(
        browser, out_dir, tmp_path, '<img id="rel" src="chips/s-0001.png">', keep_csp=False
    )
    assert any(u.endswith("/chips/s-0001.png") for u in _external(page))
    rel = [i for i in page["images"] if i["id"] == "rel"]
    assert rel and rel[0]["width"] == 0


def test_an_aoi_half_outside_the_data_is_warned_about(tmp_path: Path, make_run_result: Any) -> None:
    """The AOI reaches twice as far east as the grid: about half of it was never seen, and the
    report says so above everything else, with the numbers."""
    result = make_run_result(aoi_scale=2.0)
    cov = result.coverage
    assert cov is not None and 0.4 < cov.share < 0.6
    out = tmp_path / "half"
    write_run_outputs(result, out, config=OutputConfig(chips=False))
    html = (out / "report.html").read_text(encoding="utf-8")
    text = unescape(re.sub(r"<[^>]+>", " ", html))
    warning = f"only {100 * cov.share:.1f} % of AOI 'khojir-test' could be analysed"
    assert "O" + warning[1:] in text
    assert 'id="coverage-warning"' in html
    assert html.index('id="coverage-warning"') < html.index('id="coverage"')
    assert f"Analysed {km2(cov.analysed_km2)} of the {km2(cov.aoi_km2)} AOI" in text
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["coverage"]["partial"] is True
    (said,) = manifest["headline"]["warnings"]
    assert said.startswith(warning)
    assert said.endswith("see coverage.png or the analysed_area layer")
    assert (out / "coverage.png").is_file()


def test_the_coverage_warning_points_only_to_files_the_run_wrote(make_run_result: Any) -> None:
    from dataclasses import replace

    from changedet.outputs.headline import headline

    result = make_run_result(aoi_scale=2.0)
    no_gpkg = replace(result, config={**result.config, "output": {"geopackage": False}})
    (said,) = headline(no_gpkg).warnings
    assert said.endswith("the rest; see coverage.png")
    from changedet.outputs.manifest import run_manifest
    from changedet.outputs.report import render_report_html

    for shown, gpkg in ((result, True), (no_gpkg, False)):
        images = dict.fromkeys(("before", "after", "overlay", "counts"), b"")
        html = render_report_html(shown, run_manifest(shown), images=images, chips={}, files=[])
        assert ("<code>analysed_area</code> layer of changedet.gpkg" in html) is gpkg
        # Without the GeoPackage the analysed area is a GeoJSON file of its own.
        assert ("it is <code>analysed_area.geojson</code>" in html) is not gpkg


def test_the_headline_and_the_warning_say_one_share(make_run_result: Any) -> None:
    """0.2549 % is "0.3 %" in both (rounding the share to 4 places first said 0.2 % in one)."""
    from changedet.outputs.headline import headline

    result = make_run_result(aoi_scale=2.0)
    cov = replace(result.coverage, aoi_km2=1000.0, analysed_km2=2.549)
    said = headline(replace(result, coverage=cov))
    assert "(0.3 %)" in said.coverage()
    (warning,) = said.warnings
    assert warning.startswith("only 0.3 % of AOI")


def test_a_scene_left_out_unread_is_warned_about_beside_the_coverage(
    tmp_path: Path, make_run_result: Any
) -> None:
    result = make_run_result(aoi_scale=2.0)
    cut = SkippedScene("S2A_CUT", "unreadable asset: nir: corrupt or truncated asset", True)
    result = replace(result, scenes_skipped=(*result.scenes_skipped, cut))
    out = tmp_path / "cut"
    write_run_outputs(result, out, config=OutputConfig(chips=False))
    html = (out / "report.html").read_text(encoding="utf-8")
    text = unescape(re.sub(r"<[^>]+>", " ", html))
    assert "1 scene of AOI 'khojir-test' could not be read and was left out (S2A_CUT: " in text
    assert html.index('id="unreadable-scenes-warning"') < html.index('id="coverage-warning"')
    manifest = json.loads((out / "run.json").read_text())
    unread, coverage = manifest["headline"]["warnings"]
    assert unread.startswith("1 scene of AOI") and coverage.startswith("only ")


def test_a_reviewed_false_positive_is_in_no_count_of_the_report_or_the_map(
    run_result: RunResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The summary said "3 structures (2 confirmed …)" with one of them reviewed a false
    positive, and the map's legend counted it in its first-seen class."""
    from matplotlib.axes import Axes

    s1, s2, s3 = run_result.structures
    result = replace(run_result, structures=(replace(s1, review=FALSE_POSITIVE), s2, s3))
    labels: list[str] = []
    legend = Axes.legend

    def spy(self: Axes, *args: Any, **kwargs: Any) -> Any:
        labels.extend(h.get_label() for h in kwargs.get("handles", ()))
        return legend(self, *args, **kwargs)

    monkeypatch.setattr(Axes, "legend", spy)
    out = tmp_path / "reviewed"
    write_run_outputs(result, out, config=OutputConfig(chips=False, imagery=False))
    html = unescape((out / "report.html").read_text())
    assert "2 structures (1 confirmed, 1 unconfirmed)" in html
    assert "1 more reviewed as false positive (not counted)" in html
    assert "reviewed false positive (1), not counted" in labels
    # The first-seen classes count s2 and s3 only.
    counted = [
        int(label.rsplit("(", 1)[1].rstrip(")")) for label in labels if "first seen" in label
    ]
    assert sum(counted) == 2, labels
    assert (legend_of_shown := shown_structures(result.structures)) == [s2, s3], legend_of_shown
    # A dropped candidate reviewed as a false positive is one too, on the map as in run.json
    # (the legend said 1 where run.json and the report said 2).
    labels.clear()
    dropped = replace(s3, status="dropped", review=FALSE_POSITIVE)
    result = replace(result, structures=(*result.structures[:2], dropped))
    write_run_outputs(result, tmp_path / "dropped", config=OutputConfig(chips=False, imagery=False))
    manifest = json.loads((tmp_path / "dropped" / "run.json").read_text())
    assert manifest["results"]["n_false_positive"] == 2
    assert "reviewed false positive (2), not counted" in labels
