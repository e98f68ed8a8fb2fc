"""Issue #16: every report file goes through the one atomic writer (unique temporary names), so
two processes building the report of one folder at once never collide."""
from __future__ import annotations

import subprocess
import sys
import tempfile

from prunecal.eval.report import build_report


def _study(out):
    from test_report_content import NETS, build_synthetic

    build_synthetic(out, nets=NETS[:2], seeds=(0,), corruptions=("fog",))
    return out


def _leftovers(out):
    return sorted(p.name for p in list(out.iterdir()) + list((out / "figures").iterdir())
                  if p.name.startswith(".") or p.name.endswith(".tmp"))


def test_every_file_through_atomic_write(tmp_path, monkeypatch):
    out = _study(tmp_path)
    made = []
    real = tempfile.mkstemp

    def spy(*a, **kw):
        made.append(kw.get("prefix", ""))
        return real(*a, **kw)

    monkeypatch.setattr(tempfile, "mkstemp", spy)
    paths = build_report(out)
    written = [paths["md"], paths["html"], paths["csv"], *paths["figures"]]
    assert len(paths["figures"]) >= 4
    for p in written:
        assert f".{p.name}." in made, p.name  # atomic_write's mkstemp prefix
    assert _leftovers(out) == []


def test_two_processes_one_folder(tmp_path):
    out = _study(tmp_path)
    code = ("import sys; from prunecal.eval.report import build_report\n"
            "for _ in range(2): build_report(sys.argv[1])\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(out)], stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    assert _leftovers(out) == []
    assert (out / "report.html").read_text(encoding="utf-8").rstrip().endswith("</html>")
    assert (out / "report.md").read_text(encoding="utf-8").startswith("# prunecal study")
