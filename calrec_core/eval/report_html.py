"""Reports as self-contained HTML pages, rendered from their Markdown.

The HTML page is the Markdown report itself, rendered, so it cannot carry less than the
Markdown does (every table, count, warning and the plan), with the plots inlined as data: URIs
(artifact viewers show one file). Only the Markdown the reports write is understood: '#'
headings, '|' tables, '- ' lists, '![alt](file)' images, paragraphs, **bold** and `code`.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping

from calrec_core import storage

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
.wide { overflow-x: auto; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 0.3em 0.6em; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
th { background: #eee; }
tr:nth-child(even) td { background: #f7f7f7; }
img { max-width: 100%; }
code { background: #f2f2f2; padding: 0 0.2em; }
"""
_IMAGE = re.compile(r"^!\[(?P<alt>[^\]]*)\]\((?P<src>[^)]+)\)$")
_HEADING = re.compile(r"^(?P<level>#{1,6}) (?P<text>.*)$")


def inline_png(path) -> str:
    """A PNG file as a data: URI, for pages that must stand alone (artifact viewers)."""
    encoded = base64.b64encode(storage.path(path).read_bytes()).decode("ascii")
    return f"data:image/png;base64,{encoded}"


def _inline(text: str) -> str:
    """Escaped text with the reports' inline markup (**bold**, `code`) as tags."""
    text = html.escape(text, quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _is_separator(line: str) -> bool:
    return "-" in line and set(line.strip()) <= set("|-: ")


def _table(lines: list[str]) -> str:
    header, *rows = lines
    rows = [row for row in rows if not _is_separator(row)]
    head = "".join(f"<th>{_inline(cell)}</th>" for cell in _cells(header))
    parts = ["<div class='wide'><table>", f"<tr>{head}</tr>"]
    parts += ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in _cells(row)) + "</tr>"
              for row in rows]
    return "\n".join([*parts, "</table></div>"])


def markdown_to_html(markdown: str, images: Mapping[str, object] | None = None) -> str:
    """The HTML body of ``markdown``; an image whose file is a key of ``images`` (name ->
    PNG path) is inlined, any other keeps its link."""
    images = images or {}
    blocks: list[str] = []
    lines = markdown.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index].rstrip()
        if not line.strip():
            index += 1
        elif line.lstrip().startswith("|"):
            table = []
            while index < len(lines) and lines[index].lstrip().startswith("|"):
                table.append(lines[index])
                index += 1
            blocks.append(_table(table))
        elif heading := _HEADING.match(line):
            level = len(heading["level"])
            blocks.append(f"<h{level}>{_inline(heading['text'])}</h{level}>")
            index += 1
        elif image := _IMAGE.match(line.strip()):
            source = image["src"]
            uri = inline_png(images[source]) if source in images else source
            blocks.append(f'<p><img src="{html.escape(uri)}" alt="{html.escape(image["alt"])}">'
                          "</p>")
            index += 1
        elif line.startswith("- "):
            items = []
            while index < len(lines) and lines[index].startswith("- "):
                items.append(f"<li>{_inline(lines[index][2:])}</li>")
                index += 1
            blocks.append("<ul>\n" + "\n".join(items) + "\n</ul>")
        else:  # a paragraph: consecutive plain lines
            text = [line.strip()]
            index += 1
            while index < len(lines) and lines[index].strip() and not (
                    lines[index].lstrip().startswith(("|", "#", "- "))
                    or _IMAGE.match(lines[index].strip())):
                text.append(lines[index].strip())
                index += 1
            blocks.append(f"<p>{_inline(' '.join(text))}</p>")
    return "\n".join(blocks)


def markdown_page(markdown: str, title: str,
                  images: Mapping[str, object] | None = None) -> str:
    """A complete, self-contained HTML page of the Markdown report (images inlined)."""
    return ("<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n<body>\n"
            f"{markdown_to_html(markdown, images)}\n</body></html>\n")
