"""The report's content as plain-text tables, so that the Markdown and the HTML page say the same thing.

Per-class tables list every class up to TOP_N classes; above, TOP_N of them, chosen as each title says (the most
flipped, the least robust, the easiest to move), and the most frequent flips are listed instead of class pairs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..analysis.flip_matrix import matrix_from_json
from ..analysis.structure import TOP_N
from .fmt import DASH, norm_label, num, pct, pvalue, rate, short_sha, with_ci
from .group import DatasetRuns, epsilon_label

MAX_PAIRS = 15
MAX_NOISE_CLASSES = 5


@dataclass(frozen=True)
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""


def _analysis(run: dict[str, Any], key: str) -> Any:
    return (run.get("analysis") or {}).get(key)


def _n(run: dict[str, Any]) -> int:
    return run["dataset"].get("n") or int(matrix_from_json(run["flip_matrix"]).sum())


def _of(run: dict[str, Any]) -> str:
    return f"{run['attack']['name']}, ε = {epsilon_label(run)}"


def _listed(run: dict[str, Any], key: Callable[[str], Any], what: str) -> tuple[list[str], str]:
    """The classes a per-class table lists: all of them up to TOP_N, else the TOP_N first by `key` (ties in
    class order), with the words for the title."""
    names = run["class_names"]
    if len(names) <= TOP_N:
        return names, ""
    return sorted(names, key=key)[:TOP_N], f" ({TOP_N} of {len(names)} classes: {what})"


def dataset_intro(ds: DatasetRuns) -> str:
    first = (ds.runs or [ds.noise])[0]
    parts = [f"model {short_sha(ds.model_sha)}"]
    if ds.runs:
        info = first["dataset"]
        parts.append(f"{_n(first)} test images" + (f" ({info['selection']})" if info.get("selection") else ""))
        if info.get("note"):
            parts.append(str(info["note"]))
    return " · ".join(parts)


def runs_table(ds: DatasetRuns) -> Table:
    rows = []
    for run in ds.runs:
        sym = _analysis(run, "symmetry") or {}
        catch = _analysis(run, "catch_all")
        cells = [run["attack"]["name"], epsilon_label(run), str(_n(run)),
                 rate(run.get("clean_accuracy")), rate(run.get("flip_fraction")), rate(run.get("survives_8bit"))]
        for norm in ("entrywise", "induced"):
            s = sym.get(norm) or {}
            cells += [with_ci(s.get("score"), s.get("ci")), pvalue(s.get("p_value"))]
        cells.append(DASH if catch is None else ", ".join(catch["classes"]) or "none")
        rows.append(cells)
    level = next((_analysis(r, "symmetry")["confidence"] for r in ds.runs if _analysis(r, "symmetry")), 0.95)
    return Table("Runs", ["attack", "ε", "n", "clean acc", "flipped", "still flipped at 8 bits",
                          "symmetry entrywise [CI]", "p",
                          "symmetry induced [CI]", "p", "catch-all classes"], rows,
                 "Still flipped at 8 bits: of the flipped images, those whose adversarial still flips once "
                 "rounded to 8-bit pixels (saved as an image). "
                 "Symmetry: 1 = every flip is matched by one the other way, 0 = all flips one-way; "
                 f"{level:.0%} bootstrap CIs; "
                 "p: permutation test against each class's flips shuffled over the other classes. "
                 "Catch-all: a class whose share of all flips is significantly above the threshold.")


def robust_table(ds: DatasetRuns) -> Table | None:
    # Robustness within a budget: a minimal attack moves every image it can, so its "robust accuracy" is ~0.
    runs = [r for r in ds.runs if r.get("robust_accuracy") and r["attack"].get("epsilon") is not None]
    if not runs:
        return None
    rows = []
    for run in runs:
        acc = run["robust_accuracy"]
        worst, spread = acc["worst"] or {}, acc["spread"] or {}
        rows.append([run["attack"]["name"], epsilon_label(run),
                     with_ci(acc["overall"]["rate"], acc["overall"]["ci"], percent=True), worst.get("class", DASH),
                     with_ci(worst.get("rate"), worst.get("ci"), percent=True),
                     pct(spread.get("max_minus_min")), pct(spread.get("std"))])
    return Table("Robust accuracy", ["attack", "ε", "robust acc [CI]", "worst class", "its robust acc [CI]",
                                     "spread max − min", "spread std"], rows,
                 "Robust accuracy: images still in their true class after a fixed-ε attack (a clean "
                 "misclassification counts as not robust). Spread: over the classes' robust accuracies (std over "
                 "classes).")


def autoattack_table(ds: DatasetRuns) -> Table | None:
    """Per AutoAttack-family run, how many images each component broke first (result.json's "autoattack")."""
    runs = [r for r in ds.runs if r.get("autoattack")]
    if not runs:
        return None
    # The ensemble's components come in its official order; a single component's run adds its own column.
    components = list(dict.fromkeys(c for r in sorted(runs, key=lambda r: -len(r["autoattack"]["components"]))
                                    for c in r["autoattack"]["components"]))
    rows = [[r["attack"]["name"], epsilon_label(r), *(str(r["autoattack"]["broken_by"].get(c, DASH))
                                                     for c in components)] for r in runs]
    return Table("AutoAttack: images broken first by each component", ["attack", "ε", *components], rows,
                 "Components run in the official order, each on the images still robust; an image counts once, for "
                 "the first component that flipped it. Images the model misclassified before the attack are not "
                 "counted; those no component broke are the robust accuracy above.")


def robust_classes_table(run: dict[str, Any]) -> Table | None:
    acc = run.get("robust_accuracy")
    if not acc:
        return None
    per_class = acc["per_class"]
    names, listed = _listed(run, lambda c: (per_class[c]["rate"] is None, per_class[c]["rate"]), "the least robust")
    rows = [[c, str(per_class[c]["n"]), str(per_class[c]["count"]),
             with_ci(per_class[c]["rate"], per_class[c]["ci"], percent=True)] for c in names]
    return Table(f"Robust accuracy per class{listed} — {_of(run)}",
                 ["true class", "images", "still correct", "robust acc [CI]"], rows)


def targets_table(run: dict[str, Any]) -> Table | None:
    targets = _analysis(run, "dominant_targets")
    if not targets:
        return None
    rows = []
    names, listed = _listed(run, lambda c: -targets[c]["flips"], "the most flipped")
    for name in names:
        t = targets[name]
        runner = f"{t['runner_up']} ({t['runner_up_count']})" if t["runner_up"] else DASH
        rows.append([name, str(t["flips"]), t["target"] or DASH, with_ci(t["share"], t["ci"], percent=True),
                     runner, pvalue(t["p_value"]), "✓" if t["strong"] else ""])
    return Table(f"Dominant flip target per class{listed} — {_of(run)}",
                 ["true class", "flips", "target", "share of flips [CI]", "runner-up (flips)", "p", "strong"],
                 rows, "strong (✓): a one-sided binomial test says the target beats the runner-up (p shown).")


def top_pairs_table(run: dict[str, Any]) -> Table | None:
    pairs = _analysis(run, "top_pairs")
    if pairs is None:
        return None
    rows = [[f"{p['true']} → {p['landed']}", str(p["count"]), with_ci(p["rate"], p["ci"], percent=True)]
            for p in pairs]
    return Table(f"Most frequent flips — {_of(run)}", ["true → landed", "flips", "share of the true class [CI]"],
                 rows, "Share of the true class: of its images, those whose adversarial lands in that class.")


def pairs_table(run: dict[str, Any]) -> Table | None:
    pairs = _analysis(run, "pairs")
    if pairs is None:
        return None
    rows = [[f"{p['a']} ↔ {p['b']}" if p["kind"] == "symmetric" else f"{p['a']} → {p['b']}", p["kind"],
             str(p["a_to_b"]), str(p["b_to_a"]),
             with_ci(p["share_a_to_b"]["share"], p["share_a_to_b"]["ci"], percent=True),
             with_ci(p["share_b_to_a"]["share"], p["share_b_to_a"]["ci"], percent=True)]
            for p in pairs[:MAX_PAIRS]]
    more = f" {len(pairs) - MAX_PAIRS} more pairs in result.json." if len(pairs) > MAX_PAIRS else ""
    return Table(f"Significant class pairs — {_of(run)}",
                 ["pair (a, b)", "kind", "flips a→b", "flips b→a", "share of a's flips [CI]",
                  "share of b's flips [CI]"], rows,
                 ("No pair is flipped to more often than chance." if not pairs else
                  "symmetric: both directions above chance; one-way: a→b above, b→a below chance." + more))


def _norm_cell(x: float | None, n: int) -> str:
    return DASH if n == 0 else "∞" if x is None else num(x, 3)  # None with images attacked: failures dominate


def norms_table(run: dict[str, Any]) -> Table | None:
    summary = run.get("minimal_norms")
    if not summary:
        return None
    per_class = summary["per_class"]
    # Easiest to move first: the smallest median; an infinite one (None) after all finite ones, no images last.
    names, listed = _listed(run, lambda c: (per_class[c]["n"] == 0, per_class[c]["median"] is None,
                                            per_class[c]["median"]), "the smallest medians")
    rows = []
    for name in names:
        c = per_class[name]
        median = _norm_cell(c["median"], c["n"])
        if c["ci"] is not None:
            median += f" [{_norm_cell(c['ci'][0], c['n'])}, {_norm_cell(c['ci'][1], c['n'])}]"
        rows.append([name, str(c["n"]), str(c["failed"]), median,
                     f"{_norm_cell(c['q25'], c['n'])} – {_norm_cell(c['q75'], c['n'])}"])
    norm = norm_label(run["attack"].get("norm"))
    return Table(f"Minimal {norm + ' ' if norm else ''}perturbation per class{listed} — {run['attack']['name']}",
                 ["true class", "attacked", "failed", "median norm [CI]", "quartiles"], rows,
                 "Failed attacks count as infinite norms (∞).")


def noise_table(noise: dict[str, Any]) -> Table:
    hist = noise["histogram"]
    top = [c for c in hist["top"] if hist["histogram"][c]["count"] > 0][:MAX_NOISE_CLASSES]
    rows = [[c, str(hist["histogram"][c]["count"]),
             with_ci(hist["histogram"][c]["share"], hist["histogram"][c]["ci"], percent=True)] for c in top]
    lo, hi = noise.get("bounds", [0, 1])
    k = len(noise["class_names"])
    return Table(f"White noise: {noise['n']} uniform images in [{lo:g}, {hi:g}] (seed {noise.get('seed', DASH)})",
                 ["predicted class", "count", "share [CI]"], rows,
                 f"Top classes only; a model without a noise preference would give each class {pct(1 / k)}.")


def strength_table(records: Sequence[dict[str, Any]]) -> Table | None:
    """Each fixed-ε case's attack against AutoAttack at its ε (gate/strength.py), on the images both attacked."""
    if not records:
        return None
    rows, skipped = [], []
    for r in sorted(records, key=lambda r: (r["attack"], r.get("epsilon") or 0)):
        if not r.get("compared"):
            eps = r.get("epsilon")
            at = f" at ε = {eps:g}" if isinstance(eps, (int, float)) else ""
            skipped.append(f"{r['attack']}{at}: {r.get('reason') or 'no reason given'}")
            continue
        n = r["n"]
        rows.append([r["attack"], f"{r['epsilon']:g}", str(n), pct(r["case_flips"] / n if n else None),
                     pct(r["autoattack_flips"] / n if n else None), str(r["missed"]), str(r["only_case"]),
                     pvalue(r["p_value"]), _strength_verdict(r)])
    alpha = next((r["alpha"] for r in records if r.get("compared")), None)
    margin = next((r["margin"] for r in records if r.get("compared") and "margin" in r), None)
    note = ("On the images both runs attacked that the model classifies correctly (n). missed: flips AutoAttack "
            "finds and the attack does not; only by attack: the reverse. p: exact one-sided McNemar test of the "
            "attack flipping as many images as AutoAttack"
            + (f"; weaker when p < {alpha:g} (a warning, not a failure)" if alpha is not None else "")
            + (f"; as strong when the images show AutoAttack flips at most {margin:g} of them more (paired score "
               f"test, p < {alpha:g}); not shown when n is too small for either." if margin is not None else "."))
    if skipped:
        note += " Not compared: " + "; ".join(skipped) + "."
    return Table("Attack strength vs AutoAttack", ["attack", "ε", "n", "flipped", "AutoAttack flipped", "missed",
                                                   "only by attack", "p", "verdict"], rows, note)


def _strength_verdict(record: dict[str, Any]) -> str:
    """"weaker", "as strong" or "not shown (n = …, p = …)"; records written before the three-way verdict say only
    whether the attack was weaker."""
    verdict = record.get("verdict")
    if verdict is None:
        return "weaker" if record["weak"] else f"not weaker (p = {pvalue(record['p_value'])})"
    if verdict == "not shown":
        return f"not shown (n = {record['n']}, p = {pvalue(record['p_value'])})"
    return verdict


# Each kind of failed test (gate/failures.failure_kind), as the verdict's first sentence counts it.
FAILURE_KINDS = {
    "less robust": "{n} test(s) found the model less robust than its baselines",
    "evaluation": "{n} evaluation check(s) failed: the figures may not mean what they say",
    "drift": "{n} drift test(s) failed under --labelflip-fail-on-drift",
    "not decided": "{n} test(s) decided nothing (an error, a missing or refused baseline: see their messages)",
}


def verdict_head(verdict: dict[str, Any]) -> str:
    """The verdict in one sentence: a loss of robustness, an evaluation that cannot be trusted, or a pass."""
    # A kind this version does not know counts as deciding nothing: it is still a failure.
    kinds = Counter(i.get("kind") if i.get("kind") in FAILURE_KINDS else "not decided" for i in verdict["failed"])
    parts = [FAILURE_KINDS[kind].format(n=kinds[kind]) for kind in FAILURE_KINDS if kinds[kind]]
    head = "Gate failed: " + "; ".join(parts) if parts else "Gate passed: no loss of robustness beyond the margins"
    drift = verdict["drift"]
    return head + (f"; {len(drift)} drift item(s), reported, not failed" if drift else "") + "."


def evaluation_table(verdict: dict[str, Any]) -> Table | None:
    """Whether the session's evaluation can be trusted: each evaluation test (model checks, the large-ε probe,
    monotone in ε, iterative covers single-step, attack strength), failed ones first."""
    items = sorted(verdict.get("evaluation", ()), key=lambda i: (i["passed"], i["test"]))
    if not items:
        return None
    rows = [[i["test"].rpartition("::")[2], "passed" if i["passed"] else "FAILED", i["message"]] for i in items]
    return Table("Evaluation checks", ["test", "result", "what it found"], rows,
                 "Whether the attacks could evaluate this model at all (docs/methods.md): a failure means the flip "
                 "rates may understate what an adversary does, whatever the baselines say.")


def dataset_tables(ds: DatasetRuns, strength: Sequence[dict[str, Any]] = ()) -> list[Table]:
    """The tables of one subject's section; `strength`: attack-strength records (load_strength), of any subject."""
    tables = [runs_table(ds)] if ds.runs else []
    tables += [t for t in (robust_table(ds), autoattack_table(ds)) if t is not None]
    strongest = ds.strongest()
    if strongest is not None:
        # Above TOP_N classes significance against chance 1/(K-1) says little; the largest flips say more.
        pairs = pairs_table if len(strongest["class_names"]) <= TOP_N else top_pairs_table
        tables += [t for t in (robust_classes_table(strongest), targets_table(strongest), pairs(strongest))
                   if t is not None]
    tables += [t for t in map(norms_table, ds.minimal) if t is not None]
    if ds.noise is not None:
        tables.append(noise_table(ds.noise))
    tables += [t for t in (strength_table([r for r in strength if r["subject"] == ds.name]),) if t is not None]
    return tables


def _distinct(values: list[str]) -> str:
    return "/".join(dict.fromkeys(v for v in values if v)) or "unknown"


def _machine(m: dict[str, Any], device: str) -> str:
    if not m:
        return ""
    cores = f"{m.get('cores', '?')} cores"
    # A CPU device already names the CPU model; say it once.
    return cores if not m.get("cpu") or m["cpu"] in device else f"{m['cpu']}, {cores}"


def provenance_line(runs: list[dict[str, Any]]) -> str:
    """Where and with what the numbers were made; values that differ between runs are all listed."""
    prov = [r.get("provenance") or {} for r in runs]
    device = _distinct([str(p.get("device", "")) for p in prov])
    machines = [p.get("machine") or {} for p in prov]
    packages = dict.fromkeys(k for p in prov for k in (p.get("versions") or {}))
    versions = ", ".join(f"{k} {_distinct([(p.get('versions') or {}).get(k, '') for p in prov])}"
                         for k in packages) or "versions unknown"
    dates = sorted(str(p["timestamp"])[:10] for p in prov if p.get("timestamp"))
    when = DASH if not dates else dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"
    return " · ".join(["Provenance: " + device, _distinct([_machine(m, device) for m in machines]),
                       _distinct([str(m.get("platform", "")) for m in machines]), versions, when])
