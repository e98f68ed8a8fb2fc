"""report.html in a real browser (issue #18): one self-contained file that headless Chromium
renders with every image decoded, every table present and the verdict colours applied.
Skipped where no Chromium is installed (Debian: ``apt-get install chromium``)."""
from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from prunecal.eval.report import build_report

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome"))
                 if p), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine")

# run after load: record what the browser made of the page in attributes --dump-dom prints
PROBE = """<script>window.addEventListener('load', () => {
  const b = document.body, imgs = [...document.images];
  b.setAttribute('data-img-widths', imgs.map(i => i.naturalWidth).join(','));
  b.setAttribute('data-tables', document.querySelectorAll('table').length);
  const bg = c => { const td = document.querySelector('table.verdict td.' + c);
                    return td ? getComputedStyle(td).backgroundColor : 'none'; };
  b.setAttribute('data-bg', ['better', 'within', 'worse', 'safe'].map(bg).join(';'));
  const v = document.querySelector('table.verdict');
  b.setAttribute('data-verdict-fits', v.getBoundingClientRect().right <= window.innerWidth ? 1 : 0);
});</script>"""


def _chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--no-first-run", "--virtual-time-budget=10000", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from test_report_content import NETS, build_synthetic

    out = tmp_path_factory.mktemp("html")
    build_synthetic(out, nets=NETS, seeds=(0, 1), corruptions=("fog", "snow", "contrast"))
    return out, build_report(out)


def test_self_contained(report):
    _, paths = report
    text = paths["html"].read_text(encoding="utf-8")
    srcs = re.findall(r"src='([^']*)'", text)
    assert len(srcs) == len(paths["figures"]) >= 5
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r"(href|src)=['\"]?(https?:|file:|/)", text)
    assert "<script" not in text  # no code in the report itself


def test_renders_in_chromium(report, tmp_path):
    _, paths = report
    probe = tmp_path / "probe.html"
    probe.write_text(paths["html"].read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"),
                     encoding="utf-8")
    r = _chromium("--window-size=1400,1000", "--dump-dom", probe.as_uri())
    assert r.returncode == 0, r.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", r.stdout).group(1)
    attr = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body))
    widths = [int(w) for w in attr["img-widths"].split(",")]
    assert len(widths) == len(paths["figures"]) and all(w > 300 for w in widths), widths  # decoded
    assert int(attr["tables"]) == 6  # verdict, clean, one-shot vs fine-tuned, recipes, corruption, speed
    bgs = attr["bg"].split(";")
    present = [b for b in bgs if b != "none"]
    assert present and all(b not in ("rgba(0, 0, 0, 0)", "transparent") for b in present), bgs
    assert len(set(present)) == len(present)  # better / within / worse / safe: distinct colours
    assert attr["verdict-fits"] == "1"  # the verdict table fits a 1400 px window: no scrolling
    assert "Verdict: safe and fast?" in r.stdout and "unpruned (reference)" in r.stdout


def test_screenshot_is_a_page(report, tmp_path):
    _, paths = report
    shot = tmp_path / "shot.png"
    r = _chromium("--window-size=1400,1800", f"--screenshot={shot}", paths["html"].as_uri())
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)
    assert img.shape[:2] == (1800, 1400)
    # text, tables and coloured verdict cells: far from a blank page
    assert float(np.std(img[..., :3])) > 0.05
    green = (img[..., 1] > img[..., 0] + 0.1) & (img[..., 1] > img[..., 2] + 0.1)
    assert green.sum() > 500  # the green 'better' / 'safe & faster' cells are on screen
