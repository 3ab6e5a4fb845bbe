"""One self-contained HTML page: inline CSS, images as data URIs, no scripts, nothing fetched from elsewhere."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from .group import DatasetRuns, group_runs
from .names import heatmap_name, noise_name, trend_name
from .tables import Table, dataset_intro, dataset_tables, evaluation_table, provenance_line, verdict_head

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
h3 { font-size: 1.05em; margin: 1.4em 0 .4em; }
table { border-collapse: collapse; margin: .3em 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: left; white-space: nowrap; }
th { background: #f3f3f3; } tr:nth-child(even) td { background: #fafafa; }
.note, .prov { color: #666; font-size: .85em; margin: .2em 0 1em; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; flex: 1 1 480px; max-width: 590px; } figure img { width: 100%; border: 1px solid #eee; }
figcaption { color: #666; font-size: .85em; }
.passed, .failed { padding: .5em .8em; border-radius: 4px; } .passed { background: #e6f4ea; }
.failed { background: #fce8e6; }
"""


def _table(table: Table) -> str:
    parts = [f"<h3>{escape(table.title)}</h3>"]
    if table.rows:
        head = "".join(f"<th>{escape(h)}</th>" for h in table.header)
        body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in table.rows)
        parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    if table.note:
        parts.append(f'<p class="note">{escape(table.note)}</p>')
    return "\n".join(parts)


def _figure(name: str, data: bytes) -> str:
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return f'<figure><img src="{uri}" alt="{escape(name)}"><figcaption>{escape(name)}</figcaption></figure>'


def _figure_names(ds: DatasetRuns) -> list[str]:
    names = [trend_name(ds.name, attack) for attack in ds.fixed]
    names += [heatmap_name(r) for r in ds.runs]
    return names + ([noise_name(ds.name)] if ds.noise is not None else [])


def _verdict(verdict: dict[str, Any]) -> list[str]:
    failed, drift = verdict["failed"], verdict["drift"]
    head = verdict_head(verdict)
    title, rest = head.split(":", 1)
    body = ["<h2>Verdict</h2>", f'<p class="{"failed" if failed else "passed"}"><strong>{escape(title)}</strong>:'
            f"{escape(rest)}</p>"]
    for title, items in (("Failed", failed), ("Drift (where flips and noise land; not a loss of robustness)", drift)):
        if items:
            body += [f"<h3>{title}</h3>", "<ul>", *(f"<li><code>{escape(i['test'])}</code>: {escape(i['message'])}"
                                                  "</li>" for i in items), "</ul>"]
    table = evaluation_table(verdict)
    return body + ([_table(table)] if table is not None else [])


def report_html(results: Sequence[dict[str, Any]], noise: Sequence[dict[str, Any]],
                images: Mapping[str, bytes], strength: Sequence[dict[str, Any]] = (),
                verdict: dict[str, Any] | None = None) -> str:
    """The Markdown summary's tables plus every image in `images` (keyed by their report file names)."""
    body, placed = ["<h1>labelflip: where adversarial examples land</h1>"], set()
    if verdict is not None:
        body += _verdict(verdict)
    for ds in group_runs(results, noise):
        body += [f"<h2>{escape(ds.name)}</h2>", f"<p>{escape(dataset_intro(ds))}</p>"]
        body += [_table(t) for t in dataset_tables(ds, strength)]
        figures = [n for n in _figure_names(ds) if n in images]
        placed.update(figures)
        if figures:
            body += ["<h3>Figures</h3>", '<div class="figures">', *(_figure(n, images[n]) for n in figures), "</div>"]
        body.append(f'<p class="prov">{escape(provenance_line(ds.all_runs))}</p>')
    others = sorted(set(images) - placed)
    if others:
        body += ["<h2>Other figures</h2>", '<div class="figures">', *(_figure(n, images[n]) for n in others), "</div>"]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>labelflip report</title>"
            f"<style>{CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")
