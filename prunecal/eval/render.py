"""The report's document model rendered to markdown and to one self-contained HTML file.

Blocks: ``str`` (a paragraph), ``(level, text)`` (a heading), :class:`Note` (a highlighted
paragraph), :class:`Bullets`, :class:`prunecal.eval.tables.Table`, :class:`Figure` (a PNG,
linked from markdown, embedded as base64 in HTML). Every text is escaped for its target: stored
strings (method names, recipe keys, paths) can never inject HTML into either file. Text between
backticks becomes code in HTML.
"""
from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .tables import Table


@dataclass
class Figure:
    path: Path
    caption: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Note:
    text: str


MD_MARK = {"better": "🟢", "within": "⚪", "worse": "🔴"}


def md_text(s: str) -> str:
    """Escape for markdown: ``<`` / ``>`` and an ``&`` that starts an entity become entities (no raw
    HTML survives; a plain ``&`` stays readable), newlines folded."""
    s = re.sub(r"&(?=#?[0-9A-Za-z]+;)", "&amp;", str(s))
    return s.replace("<", "&lt;").replace(">", "&gt;").replace("\r", " ").replace("\n", " ")


def md_cell(s: str) -> str:
    return md_text(s).replace("|", "\\|")


def render_md(title: str, blocks: list[Any], out: Path) -> str:
    lines = [f"# {md_text(title)}", ""]
    for b in blocks:
        if isinstance(b, str):
            lines += [md_text(b), ""]
        elif isinstance(b, Note):
            lines += [f"> **{md_text(b.text)}**", ""]
        elif isinstance(b, tuple):  # heading
            lines += [f"{'#' * b[0]} {md_text(b[1])}", ""]
        elif isinstance(b, Bullets):
            lines += [f"- {md_text(i)}" for i in b.items] + [""]
        elif isinstance(b, Table):
            if not b.rows:
                lines += ["_(no data)_", ""]
                continue
            lines.append("| " + " | ".join(md_cell(h) for h in b.header) + " |")
            lines.append("|" + "|".join("---" for _ in b.header) + "|")
            for i, r in enumerate(b.rows):
                cls = b.classes[i] if b.classes else [""] * len(r)
                cells = [md_cell(c) + (f" {MD_MARK[k]}" if k in MD_MARK else "") for c, k in zip(r, cls)]
                if b.row_classes and b.row_classes[i] == "ref":
                    cells[0] = f"**{cells[0]}**"
                lines.append("| " + " | ".join(cells) + " |")
            lines += [""]
            if b.classes and any(k in MD_MARK for r in b.classes for k in r):
                lines += ["_" + " · ".join(f"{m} {k}" for k, m in MD_MARK.items()).replace(
                    "within", "within the interval") + "_", ""]
            lines += [f"_{md_text(b.caption)}_", ""]
        elif isinstance(b, Figure):
            lines += [f"![{md_cell(b.caption)}]({b.path.relative_to(out).as_posix()})", "",
                      f"_{md_text(b.caption)}_", ""]
    return "\n".join(lines)


CSS = """body{font-family:system-ui,sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:12px;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;
text-align:right;white-space:nowrap}th{background:#f3f3f3;white-space:normal;vertical-align:bottom}
.scroll{overflow-x:auto;max-width:100%}table.wrap td{white-space:normal}td:nth-child(1),th:nth-child(1),td:nth-child(3),th:nth-child(3){text-align:left}table.verdict td:last-child{text-align:left}
tr.ref td{background:#eef3fb;font-weight:600}td.better{background:#c8ecc8}td.within{background:#ececec}
td.worse{background:#f6c6c6}td.safe{background:#6cc46c;color:#fff;font-weight:700}
.note{background:#fff6d6;border-left:4px solid #e0b000;padding:.5em 1em}
.cap{font-size:12px;color:#555;margin-bottom:1.5em;max-width:1200px}img{max-width:100%}
code{background:#f3f3f3;padding:0 2px;white-space:nowrap}li{margin:.2em 0}"""


def html_text(s: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(str(s)))


def render_html(title: str, blocks: list[Any]) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{e(title)}</h1>"]
    for b in blocks:
        if isinstance(b, str):
            parts.append(f"<p>{html_text(b)}</p>")
        elif isinstance(b, Note):
            parts.append(f"<p class='note'>{html_text(b.text)}</p>")
        elif isinstance(b, tuple):
            parts.append(f"<h{b[0]}>{e(b[1])}</h{b[0]}>")
        elif isinstance(b, Bullets):
            parts.append("<ul>" + "".join(f"<li>{html_text(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            if not b.rows:
                parts.append("<p><em>(no data)</em></p>")
                continue
            parts.append(f"<div class='scroll'><table class='{e(b.name)}'><tr>" + "".join(f"<th>{e(h)}</th>" for h in b.header)
                         + "</tr>")
            for i, r in enumerate(b.rows):
                cls = b.classes[i] if b.classes else [""] * len(r)
                rc = b.row_classes[i] if b.row_classes else ""
                parts.append((f"<tr class='{e(rc)}'>" if rc else "<tr>") + "".join(
                    (f"<td class='{e(k)}'>" if k else "<td>") + f"{e(c)}</td>" for c, k in zip(r, cls))
                    + "</tr>")
            parts.append(f"</table></div><div class='cap'>{html_text(b.caption)}</div>")
        elif isinstance(b, Figure):
            data = base64.b64encode(b.path.read_bytes()).decode()
            parts.append(f"<figure><img alt='{e(b.caption)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption class='cap'>{html_text(b.caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


__all__ = ["Figure", "Bullets", "Note", "render_md", "render_html", "md_text", "html_text"]
