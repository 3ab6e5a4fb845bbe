"""PNG charts of runs. Figures are built without pyplot: no global state, no GUI backend, nothing shown.

Above TOP_N classes a chart shows TOP_N of them, and says so in its title: a heatmap the classes involved in the
most flips, a noise chart the most predicted classes, a trend the classes with the largest catch-all shares."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..analysis.flip_matrix import matrix_from_json
from ..analysis.structure import TOP_N
from ..errors import ConfigError
from ..storage.cache_dir import keep_matplotlib_in_cache
from .fmt import norm_label
from .group import epsilon_label, is_minimal, subject

keep_matplotlib_in_cache()
from matplotlib.colors import PowerNorm  # noqa: E402, I001  (after the font cache's folder is set)
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

DPI = 110
TOP_CLASSES = 3
FONT = {"fontsize": 9}


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    # No version stamp in the file: the same figure gives the same bytes, so reports can be diffed.
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _scores_line(result: dict[str, Any]) -> str:
    sym = (result.get("analysis") or {}).get("symmetry")
    if not sym:
        return "symmetry: not analysed"
    scores = [f"{n} {'—' if sym[n]['score'] is None else format(sym[n]['score'], '.2f')}"
              for n in ("entrywise", "induced")]
    return "symmetry: " + ", ".join(scores)


def _heatmap_classes(counts: np.ndarray) -> np.ndarray:
    """Every class up to TOP_N; above, the TOP_N classes in the most flips, out of them or into them (ties: the
    lower index), in class order."""
    if len(counts) <= TOP_N:
        return np.arange(len(counts))
    flips = counts - np.diag(np.diag(counts))
    return np.sort(np.argsort(-(flips.sum(0) + flips.sum(1)), kind="stable")[:TOP_N])


def heatmap_png(result: dict[str, Any]) -> bytes:
    """Row-normalised flip matrix: colour = fraction of the true class, counts written in each cell."""
    counts = matrix_from_json(result["flip_matrix"]).astype(float)
    totals = counts.sum(1, keepdims=True)
    frac = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    n = int(counts.sum())
    shown = _heatmap_classes(counts)
    names = [result["class_names"][i] for i in shown]
    counts, frac = counts[np.ix_(shown, shown)], frac[np.ix_(shown, shown)]
    k = len(names)
    fig = Figure(figsize=(7, 6), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    # Square-root colour scale: the few-percent off-diagonal cells stay visible next to a full diagonal.
    image = ax.imshow(frac, cmap="Blues", norm=PowerNorm(0.5, vmin=0, vmax=1))
    size = max(5.0, min(9.0, 90 / k))
    for i in range(k):
        for j in range(k):
            r, g, b, _ = image.cmap(image.norm(frac[i, j]))
            dark = 0.2126 * r + 0.7152 * g + 0.0722 * b < 0.5
            ax.text(j, i, f"{counts[i, j]:.0f}", ha="center", va="center", fontsize=size,
                    color="white" if dark else "black" if counts[i, j] else "0.6", zorder=3)
        ax.add_patch(Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, hatch="//", edgecolor="0.5", lw=1.2))
    ax.set_xticks(range(k), names, rotation=40, ha="right", rotation_mode="anchor", **FONT)
    ax.set_yticks(range(k), names, **FONT)
    ax.set_xlabel("class the adversarial example lands in\n(hatched diagonal: kept its true class)", **FONT)
    ax.set_ylabel("true class", **FONT)
    eps = "minimal" if is_minimal(result) else f"ε = {epsilon_label(result)}"
    top = "" if k == len(totals) else f"\n{k} of {len(totals)} classes: those in the most flips (in + out)"
    ax.set_title(f"{subject(result)} · {result['attack']['name']} · {eps} · n = {n}\n"
                 f"{_scores_line(result)}{top}", fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.85, ticks=[0, 0.05, 0.1, 0.25, 0.5, 0.75, 1]).set_label(
        "fraction of the true class's images (row)", **FONT)
    return _png(fig)


def _check_trend(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    keys = {(subject(r), r["attack"]["name"]) for r in results}
    if len(keys) != 1:
        raise ConfigError(f"a trend needs runs of one dataset and attack, got {sorted(keys)}")
    if any(is_minimal(r) for r in results):
        raise ConfigError("a trend over ε needs fixed-ε attacks, not minimal ones")
    runs = sorted(results, key=lambda r: r["attack"]["epsilon"])
    if len({r["attack"]["epsilon"] for r in runs}) < 2:
        raise ConfigError("a trend over ε needs runs at two or more epsilons")
    return runs


def _symmetry_panel(ax: Any, runs: list[dict[str, Any]]) -> None:
    analysed = [(r["attack"]["epsilon"], r["analysis"]["symmetry"]) for r in runs
                if (r.get("analysis") or {}).get("symmetry")]
    plotted = False
    for norm, marker, offset in (("entrywise", "o", 0.97), ("induced", "s", 1.03)):
        points = [(e, s[norm]["score"], s[norm]["ci"]) for e, s in analysed if s[norm]["score"] is not None]
        if not points:
            continue
        eps, score, ci = zip(*points)
        x = np.array(eps) * offset  # nudge the two series apart on the log axis so their bars do not overlap
        line = ax.plot(x, score, marker=marker, label=norm)[0]
        # Drawn as segments, not error bars: a bias-corrected interval need not contain the estimate.
        with_ci = [(xi, c) for xi, c in zip(x, ci) if c]
        if with_ci:
            ax.vlines([xi for xi, _ in with_ci], [c[0] for _, c in with_ci], [c[1] for _, c in with_ci],
                      color=line.get_color(), linewidth=1.5)
        plotted = True
    ax.set_ylim(-0.05, 1.05)  # non-negative counts keep both scores in [0, 1]
    ax.set_ylabel("symmetry score", **FONT)
    if plotted:
        level = analysed[0][1]["confidence"]
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), title=f"norm ({level:.0%} CI)",
                  title_fontsize=8)
    else:
        ax.text(0.5, 0.5, "no symmetry scores in these runs", ha="center", transform=ax.transAxes)


def _catch_all_panel(ax: Any, runs: list[dict[str, Any]]) -> None:
    analysed = [r for r in runs if (r.get("analysis") or {}).get("catch_all")]
    if not analysed:
        ax.text(0.5, 0.5, "no catch-all analysis in these runs", ha="center", transform=ax.transAxes)
        return
    eps = [r["attack"]["epsilon"] for r in analysed]
    shares = {c: [r["analysis"]["catch_all"]["shares"][c]["share"] for r in analysed]
              for c in runs[0]["class_names"]}
    peak = {c: max((s for s in v if s is not None), default=0.0) for c, v in shares.items()}
    ranked = sorted(peak, key=lambda c: -peak[c])
    top = ranked[:TOP_CLASSES]
    others = [c for c in shares if c in ranked[:TOP_N] and c not in top]  # every other class up to TOP_N
    other_label = "other classes" if len(shares) <= TOP_N else f"next {len(others)} classes by peak share"
    for c in others + top:
        y = [np.nan if s is None else s for s in shares[c]]
        if c in top:
            line, = ax.plot(eps, y, marker="o", lw=2, label=c, zorder=3)
            ci = [r["analysis"]["catch_all"]["shares"][c]["ci"] or [np.nan, np.nan] for r in analysed]
            ax.fill_between(eps, *np.array(ci, dtype=float).T, color=line.get_color(), alpha=0.15, lw=0)
        else:
            ax.plot(eps, y, color="0.75", lw=1, label=other_label if c == others[0] else None)
    threshold = analysed[0]["analysis"]["catch_all"]["threshold"]
    # Two decimals read well down to 1%, that is up to 200 classes; above, significant digits.
    shown = f"{threshold:.2f}" if threshold >= 0.01 else f"{threshold:.2g}"
    ax.axhline(threshold, color="black", ls="--", lw=1, label=f"catch-all threshold ({shown})")
    upper = [r["analysis"]["catch_all"]["shares"][c]["ci"] for r in analysed for c in top]
    ax.set_ylim(0, 1.05 * max([peak[top[0]], 1.2 * threshold] + [ci[1] for ci in upper if ci]))
    ax.set_ylabel("share of all flips landing in class", **FONT)
    # Outside the axes: inside, it would hide whichever line runs through its corner.
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), title="class (band: CI)", title_fontsize=8)


def trend_png(results: Sequence[dict[str, Any]]) -> bytes:
    """Symmetry scores and catch-all shares over ε for one dataset and one fixed-ε attack."""
    runs = _check_trend(results)
    fig = Figure(figsize=(8, 7), dpi=DPI, layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    _symmetry_panel(top, runs)
    _catch_all_panel(bottom, runs)
    bottom.set_xscale("log")
    eps = [r["attack"]["epsilon"] for r in runs]
    bottom.set_xticks(eps, [f"{e:g}" for e in eps])
    bottom.minorticks_off()
    bottom.set_xlabel(f"ε ({norm_label(runs[0]['attack'].get('norm')) or 'perturbation'} bound)", **FONT)
    top.set_title(f"{subject(runs[0])} · {runs[0]['attack']['name']}: flip structure over ε", fontsize=10)
    return _png(fig)


def noise_png(noise: dict[str, Any]) -> bytes:
    """Which class the model calls uniform noise: shares with their confidence intervals (above TOP_N classes,
    the TOP_N most predicted, most first)."""
    k = len(noise["class_names"])
    names = noise["class_names"] if k <= TOP_N else noise["histogram"]["top"][:TOP_N]
    hist = noise["histogram"]["histogram"]
    share = np.array([hist[c]["share"] for c in names])
    ci = np.array([hist[c]["ci"] for c in names])
    fig = Figure(figsize=(7, 4), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(names))
    ax.bar(x, share, yerr=[share - ci[:, 0], ci[:, 1] - share], capsize=3, color="tab:blue")
    for i, c in enumerate(names):  # above the error bar, where the cap cannot cover it
        ax.text(i, ci[i, 1] + 0.01, str(hist[c]["count"]), ha="center", va="bottom", fontsize=8,
                bbox={"fc": "white", "ec": "none", "pad": 0.5})
    ax.axhline(1 / k, color="black", ls="--", lw=1, label=f"uniform (1/{k})", zorder=0)
    ax.set_xticks(x, names, rotation=40, ha="right", rotation_mode="anchor", **FONT)
    ax.set_ylim(0, min(1.0, ci[:, 1].max()) * 1.12 + 0.02)
    ax.set_ylabel("share of noise images", **FONT)
    ax.legend(fontsize=8)
    lo, hi = noise.get("bounds", [0, 1])
    shown = "" if len(names) == k else f"; the {len(names)} of {k} classes predicted most"
    ax.set_title(f"{subject(noise)}: predictions on {noise['n']} uniform-noise images in "
                 f"[{lo:g}, {hi:g}]\n(error bars: confidence intervals; counts above{shown})", fontsize=10)
    return _png(fig)
