"""The summary as GitHub-flavoured Markdown, short enough for a CI job summary ($GITHUB_STEP_SUMMARY)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from .group import group_runs
from .tables import Table, dataset_intro, dataset_tables, evaluation_table, provenance_line, verdict_head

# What would break a table row or turn a name into markup: GitHub renders inline HTML tags, so '<' is
# escaped only where it could open one ('<0.001' stays readable in the raw file).
_SPECIAL = re.compile(r"([\\|*_`]|<(?=[A-Za-z/!?]))")


def md_escape(text: str) -> str:
    return _SPECIAL.sub(r"\\\1", text).replace("\n", " ")


def render_table(table: Table) -> str:
    lines = [f"#### {md_escape(table.title)}", ""]
    if table.rows:
        lines.append("| " + " | ".join(map(md_escape, table.header)) + " |")
        lines.append("|" + "|".join("---" for _ in table.header) + "|")
        lines += ["| " + " | ".join(map(md_escape, row)) + " |" for row in table.rows]
        lines.append("")
    if table.note:
        lines += [f"<sub>{md_escape(table.note)}</sub>", ""]
    return "\n".join(lines)


def verdict_markdown(verdict: dict[str, Any]) -> list[str]:
    """A gate session's verdict: what failed (a loss of robustness beyond the margins, or an evaluation check),
    what drifted, and the evaluation checks."""
    failed, drift = verdict["failed"], verdict["drift"]
    head = verdict_head(verdict)
    lines = ["### Verdict", "", f"**{head.split(':', 1)[0]}**:{head.split(':', 1)[1]}", ""]
    for title, items in (("Failed", failed), ("Drift (where flips and noise land; not a loss of robustness)", drift)):
        if items:
            # Not in backticks: a code span would show md_escape's backslashes.
            lines += [f"{title}:", "", *(f"- {md_escape(i['test'])}: {md_escape(i['message'])}" for i in items), ""]
    table = evaluation_table(verdict)
    return lines + ([render_table(table)] if table is not None else [])


def summary_markdown(results: Sequence[dict[str, Any]], noise: Sequence[dict[str, Any]],
                     strength: Sequence[dict[str, Any]] = (), verdict: dict[str, Any] | None = None) -> str:
    """`strength`: a gate session's attack-strength comparisons (reports.load.load_strength), if any; `verdict`: a
    gate session's failures and drift, first."""
    lines = ["## labelflip: where adversarial examples land", ""]
    if verdict is not None:
        lines += verdict_markdown(verdict)
    for ds in group_runs(results, noise):
        lines += [f"### {md_escape(ds.name)}", "", md_escape(dataset_intro(ds)), ""]
        lines += [render_table(t) for t in dataset_tables(ds, strength)]
        lines += [f"<sub>{md_escape(provenance_line(ds.all_runs))}</sub>", ""]
    return "\n".join(lines).rstrip() + "\n"
