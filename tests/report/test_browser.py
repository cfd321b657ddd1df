"""leaderboard.html in a real browser (headless Chromium): tables and images render, no markup leaks as text."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from report_fixture import TASK_XSS, make_sweep
from report_sweeps import enrich, log_sweep, values_for

from orchestrator.report.build import build_report

CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser")
# isolated, offline, no background traffic: the page must render from its own bytes alone
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1280,2000")
# appended to a copy of the page only: reports what the browser rendered into a <pre>
PROBE = """<pre id="probe"></pre><script>
window.addEventListener("load", () => {
  const text = document.body.innerText;
  document.getElementById("probe").textContent = JSON.stringify({
    tables: document.querySelectorAll("table").length,
    images: Array.from(document.images).map(i => [i.src.startsWith("data:image/png;base64,"), i.naturalWidth,
                                                   i.getBoundingClientRect().width, i.getBoundingClientRect().height]),
    combined: Array.from(document.querySelectorAll("table.board")).filter(
      t => t.querySelector("th.group") && t.querySelector("tr.summary") && t.offsetHeight > 0).length,
    raw_markup: ["<td", "<table", "|---|", "&lt;"].filter(s => text.includes(s)).length,
    xss_as_text: text.includes("SCRIPT_TASK"),
    page_width: [document.documentElement.scrollWidth, window.innerWidth],
    overflowing_boxes: Array.from(document.querySelectorAll("div.scroll, table")).filter(
      d => d.offsetHeight > 0 && (d.scrollWidth > d.clientWidth || d.getBoundingClientRect().right > window.innerWidth)).length,
  });
});
</script>"""


def _chromium() -> str | None:
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


CHROMIUM = _chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)")


def _browser(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp / 'profile'}", *args],
                          capture_output=True, text=True, timeout=120, check=True)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    sweep = make_sweep(tmp_path_factory.mktemp("mlflow"))
    enrich(sweep.tracking_uri, sweep.experiment, np.random.default_rng(0))  # candidate tables and costs: every figure
    return build_report(sweep.experiment, tmp_path_factory.mktemp("report"), tracking_uri=sweep.tracking_uri)


@pytest.fixture(scope="module")
def page(report) -> Path:
    return report.leaderboard_html


def _probe(page: Path, tmp_path: Path) -> dict:
    probed = tmp_path / "probed.html"
    marker = json.dumps(TASK_XSS)[1:-1]
    probe = PROBE.replace("SCRIPT_TASK", marker.replace("/", "\\/"))
    probed.write_text(page.read_text().replace("</body>", probe + "</body>"))
    dom = _browser(tmp_path, "--virtual-time-budget=5000", "--dump-dom", probed.as_uri()).stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found and found.group(1), "the probe script did not run"
    return json.loads(found.group(1).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"))


def test_tables_and_embedded_images_render_without_visible_markup(report, page, tmp_path):
    result = _probe(page, tmp_path)
    assert result["tables"] >= 5
    # every figure of the report folder is on the page, decoded and laid out (none hidden in collapsed details)
    kinds = {p.name.split("_")[0] for p in report.plots}
    assert kinds == {"sea", "bars", "sensitivity", "cost"} and len(result["images"]) == len(report.plots)
    assert all(is_data and natural > 0 and width > 50 and height > 50 for is_data, natural, width, height in result["images"])
    assert result["combined"] == 2  # the leaderboard per metric convention, shown
    assert result["raw_markup"] == 0
    assert result["xss_as_text"] is True  # shown as its literal name, not executed
    width, window = result["page_width"]
    assert width <= window and result["overflowing_boxes"] == 0


def test_the_demos_three_backbones_by_seven_columns_fit_a_1280_pixel_window(tmp_path):
    """The demo's shape (issue #19): 3 backbones, an ensemble among them, × 6 methods and SeA − linear."""
    backbones = ("efficientnet-lite0", "efficientnet-lite1", "ensemble:efficientnet-lite0+efficientnet-lite1")
    cells = [(b, "digits", m, s) for b in backbones for m in ("linear", "sea", "fgsm", "noise", "mixup", "logreg")
             for s in (0, 1, 2)]
    sweep = log_sweep(tmp_path, "wide", values_for(np.random.default_rng(1), cells), {"digits": "top1"})
    paths = build_report(sweep.experiment, tmp_path / "out", tracking_uri=sweep.tracking_uri)
    result = _probe(paths.leaderboard_html, tmp_path)
    width, window = result["page_width"]
    assert width <= window, f"the page is {width} px wide in a {window} px window"
    assert result["overflowing_boxes"] == 0  # every table shown whole: none clipped or needing its scroll bar


def test_dumped_dom_has_no_escaped_markup_or_injected_script(page, tmp_path):
    dom = _browser(tmp_path, "--dump-dom", page.as_uri()).stdout
    assert "<table" in dom and '<img src="data:image/png;base64,' in dom
    for leaked in ("&lt;td", "&lt;table", "|---|", "&lt;img"):
        assert leaked not in dom
    assert "<script" not in dom.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom


def test_screenshot_is_not_blank(page, tmp_path):
    shot = tmp_path / "shot.png"
    _browser(tmp_path, f"--screenshot={shot}", page.as_uri())
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[:2] == (2000, 1280)
    not_white = (pixels.min(axis=2) < 200).mean()
    blue = ((pixels[..., 2] - pixels[..., 0]) > 60).sum()  # the heat-map's blue (SeA better) cells
    green = ((pixels[..., 1] - pixels[..., 0]) > 20).sum()  # the highlighted best cells
    assert not_white > 0.01 and blue > 1000 and green > 500
