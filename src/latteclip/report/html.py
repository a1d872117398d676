"""The report page: panels of headings, figures (PNG embedded as base64) and tables, in one self-contained file."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
       background: #f3f5f8; color: #1d2733; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 20px 48px; }
header h1 { margin: 0 0 4px; font-size: 1.6rem; }
header p { margin: 0; color: #52606d; }
nav { margin: 14px 0 4px; font-size: 0.9rem; }
nav a { margin-right: 12px; color: #1f6fb4; text-decoration: none; }
section.panel { background: white; border-radius: 8px; box-shadow: 0 1px 3px rgba(0,0,0,.12);
                padding: 16px 20px; margin: 18px 0; }
section.panel h2 { margin: 0 0 10px; font-size: 1.15rem; }
section.skipped { background: #fafbfc; box-shadow: none; border: 1px dashed #c4cdd5; }
p.note { color: #52606d; margin: 6px 0; }
p.analysis { background: #fff4e5; border-left: 4px solid #e08e0b; padding: 6px 10px; margin: 6px 0 10px; }
span.badge { display: inline-block; border-radius: 4px; padding: 1px 6px; font-size: 0.8rem; font-weight: 600; }
span.badge.analysis { background: #e08e0b; color: white; }
span.badge.agree { background: #d8f3e3; color: #1e6b40; }
span.badge.disagree { background: #fde2e4; color: #9b1c2c; }
figure { margin: 8px 0; }
figure img { max-width: 100%; height: auto; display: block; }
figcaption { color: #52606d; font-size: 0.85rem; margin-top: 4px; }
table { border-collapse: collapse; font-size: 0.9rem; }
th, td { text-align: left; padding: 4px 10px; border-bottom: 1px solid #e4e7eb; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.subject td { font-weight: 600; }
.headline { display: flex; gap: 28px; flex-wrap: wrap; margin-bottom: 12px; }
.headline div { min-width: 150px; }
.headline .value { font-size: 2rem; font-weight: 700; }
.headline .label { color: #52606d; font-size: 0.85rem; }
.gain { color: #2a9d5c; } .drop { color: #d1495b; }
pre { background: #f7f9fb; border: 1px solid #e4e7eb; padding: 10px; overflow-x: auto; font-size: 0.8rem; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(480px, 1fr)); gap: 14px; }
.card { border: 1px solid #e4e7eb; border-radius: 6px; padding: 10px; }
.card .pictures { display: flex; gap: 10px; align-items: flex-start; }
.card .pictures figure { margin: 0; }
.card table { margin-top: 8px; width: 100%; }
.weight { white-space: nowrap; }
.weight span.bar { display: inline-block; height: 8px; background: #1f6fb4; border-radius: 2px; margin-right: 6px;
                   vertical-align: middle; }
"""


@dataclass
class Panel:
    """One section of the page: its body, or (when `skipped` is set) the reason it has nothing to show."""

    key: str
    title: str
    body: str = ""
    skipped: str | None = None

    def render(self) -> str:
        if self.skipped is not None:
            return (
                f'<section class="panel skipped" id="{escape(self.key)}"><h2>{escape(self.title)}</h2>'
                f'<p class="note">Not shown: {escape(self.skipped)}</p></section>'
            )
        return f'<section class="panel" id="{escape(self.key)}"><h2>{escape(self.title)}</h2>{self.body}</section>'


def png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def embed_png(path: Path, alt: str, caption: str = "") -> str:
    """A figure whose image lives inside the page (the PNG file beside the page holds the same picture)."""
    caption_html = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
    return (
        f'<figure><img src="{png_data_uri(path)}" alt="{escape(alt)}" '
        f'data-file="{escape(Path(path).name)}">{caption_html}</figure>'
    )


def table(
    header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[int] = (), row_classes: Sequence[str] = ()
) -> str:
    """An HTML table; cells are escaped text, `numeric` columns right-aligned."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = []
    for r, row in enumerate(rows):
        cls = f' class="{row_classes[r]}"' if r < len(row_classes) and row_classes[r] else ""
        cells = "".join(
            f'<td class="num">{escape(c)}</td>' if i in numeric else f"<td>{escape(c)}</td>" for i, c in enumerate(row)
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def page(title: str, subtitle: str, panels: Sequence[Panel]) -> str:
    links = "".join(f'<a href="#{escape(p.key)}">{escape(p.title)}</a>' for p in panels if p.skipped is None)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, '
        'initial-scale=1">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n"
        f"<body><main><header><h1>{escape(title)}</h1><p>{escape(subtitle)}</p><nav>{links}</nav></header>\n"
        + "\n".join(p.render() for p in panels)
        + "\n</main></body></html>\n"
    )
