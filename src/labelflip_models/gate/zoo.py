"""The whole gate's error rates on real model changes: a zoo built from a reference model (retrains with other seeds,
re-exports, weight noise, magnitude pruning, weight quantisation, a fine-tune on shifted data), each gated against
the original's smoke-profile runs as the gate decides (paired per image, default margins), and judged against the
truth: each class's flip rate on the test images the gate did not attack.

`python -m labelflip_models.gate.zoo --out docs/zoo/fashion-mnist.json` measures it (hours on a 2-core CPU: it
trains the retrains) and writes the records, keeping the models already measured there (`--fresh` measures all
again); `--table FILE` renders that file's Markdown table, which docs/gate.md holds ("The gate on real model
changes") and tests/test_gate_zoo.py keeps current.

The cases are the smoke profile's FGSM cases, whose ground truth (FGSM on every other test image) is cheap; every
decision of those cases that fails a model is one the gate would fail. Beside them, the smoke profile's L2 DeepFool
case's minimal-norm decisions, without a truth.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.memo import Memo
from ..data import Dataset, load_dataset
from ..models.cache import load_or_train
from ..models.io import load_model
from ..models.train import recipe_for, train
from ..provenance import machine, now_iso, versions
from ..runs.results import model_block
from ..storage.atomic import atomic_write_text
from .baselines import make_baseline
from .cases import compute_case
from .characteristics import ZOO_EXCESS
from .decisions import ALPHA, check_min_norms, check_overall_flip_rate
from .margins import NORM_MARGIN, RATE_MARGIN
from .pairing import decide_flip_rates, flip_rate_counts, pair
from .profiles import SMOKE_EPSILONS, Case, get_profile

SCHEMA = "labelflip.gate-zoo/2"
DATASET = "fashion-mnist"
RETRAIN_SEEDS = tuple(range(1, 9))
# The minimal attack whose norm decisions the zoo records (no truth: minimal attacks on every test image cost hours).
NORM_ATTACK = "l2-deepfool"
NOISE = (0.05, 0.1, 0.2)
PRUNE = (0.3, 0.5, 0.7)
QUANT_BITS = (8, 6, 4)
# The margins the records are decided at again, for choosing the default.
SWEEP = (0.03, 0.05, 0.10, 0.15, 0.20)


def _noisy(model: nn.Module, scale: float, seed: int = 0) -> nn.Module:
    out = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * scale * p.std())
    return out


def _weights(model: nn.Module) -> Iterator[torch.Tensor]:
    """The weight tensors of convolutions and linear layers (not biases, not normalisation)."""
    return (m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def _pruned(model: nn.Module, fraction: float) -> nn.Module:
    """Each layer's `fraction` of weights with the smallest magnitude set to zero."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for w in _weights(out):
            k = int(fraction * w.numel())
            if k:
                w[w.abs() <= w.abs().flatten().kthvalue(k).values] = 0
    return out


def _quantised(model: nn.Module, bits: int) -> nn.Module:
    """Each layer's weights rounded to 2^bits − 1 symmetric levels of its largest magnitude."""
    out = copy.deepcopy(model)
    levels = 2 ** (bits - 1) - 1
    with torch.no_grad():
        for w in _weights(out):
            step = w.abs().max() / levels
            w.copy_(torch.round(w / step) * step)
    return out


def _shifted(data: Dataset) -> Dataset:
    """The training images at lower contrast and higher brightness: a shift a deployment might fine-tune for."""
    shifted = np.clip(data.train_images.astype(np.float32) * 0.6 + 60, 0, 255).astype(np.uint8)
    return replace(data, name=f"{data.name}-shifted", train_images=shifted)


def _fine_tuned(model: nn.Module, data: Dataset) -> nn.Module:
    out = copy.deepcopy(model)
    recipe = replace(recipe_for(data.name), epochs=1, lr=3e-4)
    train(out.train(), _shifted(data), recipe, seed=0)
    return out.eval()


def _reexported(model: nn.Module, fmt: str, shape: tuple[int, ...], folder: Path) -> nn.Module:
    """The model written as a user would ship it, and loaded back as the gate loads a user's model."""
    path = folder / f"model.{fmt}"
    example = torch.zeros(2, *shape)
    if fmt == "pt2":
        program = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
        torch.export.save(program, str(path))
    elif fmt == "ts":
        torch.jit.save(torch.jit.trace(model.eval(), example), str(path))
    else:  # the weights alone, loaded into the architecture
        from safetensors.torch import load_file, save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        out = copy.deepcopy(model)
        out.load_state_dict(load_file(str(path)))
        return out.eval()
    return load_model(path)


def variants(original: nn.Module, data: Dataset, folder: Path, seeds: tuple[int, ...] = RETRAIN_SEEDS,
             ) -> Iterator[tuple[str, str, Callable[[], nn.Module]]]:
    """(kind, name, build) of every model of the zoo."""
    shape = tuple(data.test_images.shape[1:]) if data.test_images.ndim == 4 else (1, *data.test_images.shape[1:])
    for fmt in ("ts", "pt2", "safetensors"):
        yield "re-export", fmt, lambda f=fmt: _reexported(original, f, shape, folder)
    for scale in NOISE:
        yield "weight noise", f"{scale}σ", lambda s=scale: _noisy(original, s)
    for fraction in PRUNE:
        yield "pruning", f"{fraction:.0%}", lambda f=fraction: _pruned(original, f)
    for bits in QUANT_BITS:
        yield "quantisation", f"{bits}-bit", lambda b=bits: _quantised(original, b)
    yield "fine-tune", "1 epoch, shifted contrast", lambda: _fine_tuned(original, data)
    # Last: the retrains train (minutes each on a CPU) unless the model cache has them.
    for seed in seeds:
        yield "retrain", f"seed {seed}", lambda s=seed: load_or_train(data, seed=s, shipped=False).model


def _fgsm_flips(model: nn.Module, data: Dataset, epsilons: tuple[float, ...], batch_size: int = 500,
                ) -> tuple[np.ndarray, np.ndarray]:
    """On every test image: per ε (rows), whether FGSM at ε leaves it misclassified (or the model already got it
    wrong); and whether the model classifies it correctly. FGSM as Foolbox's: one step of ε·sign(∇ cross-entropy)
    from the clean image, clipped to [0, 1]. Its gradient is the same at every ε, so one backward pass serves all."""
    images, labels = data.tensors("test")
    flipped = np.zeros((len(epsilons), len(labels)), dtype=bool)
    correct = np.zeros(len(labels), dtype=bool)
    for i in range(0, len(labels), batch_size):
        x, y = images[i:i + batch_size].clone().requires_grad_(True), labels[i:i + batch_size]
        logits = model(x)
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), x)
        right = logits.argmax(1) == y
        correct[i:i + batch_size] = right.numpy()
        with torch.no_grad():
            for j, epsilon in enumerate(epsilons):
                adversarial = (x + epsilon * grad.sign()).clamp(0, 1)
                flipped[j, i:i + batch_size] = (~right | (model(adversarial).argmax(1) != y)).numpy()
    return flipped, correct


def failed_at(counts: dict[str, list[Any]], names: list[str], margin: float, paired: bool = True) -> list[str]:
    """The classes the flip-rate decision fails at `margin`, from a case's recorded counts: the records decide again
    at any margin."""
    decisions = decide_flip_rates(names, counts, margin, paired)
    return [n for n in names if not decisions[n].passed]


def measure(model: nn.Module, data: Dataset, baselines: dict[float | str, dict[str, Any]]) -> dict[str, Any]:
    """One model of the zoo: its clean accuracy, its true per-class flip rates (FGSM on the test images the gate did
    not attack), and the gate's decisions."""
    flipped, correct = _fgsm_flips(model, data, SMOKE_EPSILONS)
    info, memo = model_block(model), Memo()
    cases = {}
    for j, epsilon in enumerate(SMOKE_EPSILONS):
        case = Case("smoke", data.name, "fgsm", epsilon)
        run = compute_case(case, data, model, info, seed=0, memo=memo)
        result, baseline, outcomes = run.result, baselines[epsilon], run.outcomes()
        # The gate's own FGSM on its images must agree with the truth's, but for images on a decision boundary.
        disagree = int((flipped[j, outcomes.index] != outcomes.flipped).sum())
        if disagree > 0.01 * len(outcomes.index):
            raise RuntimeError(f"FGSM ε={epsilon:g}: the truth's FGSM disagrees with the gate's on {disagree} of "
                               f"{len(outcomes.index)} images")
        held_out = np.ones(len(correct), dtype=bool)
        held_out[outcomes.index] = False
        labels, k = data.test_labels[held_out], data.num_classes
        truth = np.bincount(labels, weights=flipped[j, held_out], minlength=k) / np.bincount(labels, minlength=k)
        names = result["class_names"]
        paired, how = pair(outcomes, result, baseline)
        if paired is None:
            raise RuntimeError(f"the zoo's FGSM ε={epsilon:g} run did not pair with the original's: {how}")
        counts = flip_rate_counts(result, baseline, paired)
        overall = check_overall_flip_rate(result["flip_fraction"]["count"], result["flip_fraction"]["n"],
                                          baseline["result"]["flip_fraction"]["count"],
                                          baseline["result"]["flip_fraction"]["n"], pairs=paired.overall)
        cases[f"{epsilon:g}"] = {"truth": truth.tolist(), "truth_images": int(held_out.sum()),
                                 "truth_disagreements": disagree, "pairing": how, "counts": counts,
                                 "failed": failed_at(counts, names, RATE_MARGIN),
                                 "failed_unpaired": failed_at(counts, names, RATE_MARGIN, paired=False),
                                 "overall_failed": not overall.passed, "overall": overall.message}
    return {"clean_accuracy": float(correct.mean()), "sha256": info["sha256"], "cases": cases,
            "norms": _norm_decisions(model, info, data, baselines[NORM_ATTACK])}


def _norm_decisions(model: nn.Module, info: dict[str, Any], data: Dataset, baseline: dict[str, Any]) -> dict[str, Any]:
    """The smoke profile's minimal-norm decisions (paired, default norm margin), and per class the median ratio of
    each image's minimal norm to the original's (inf where only one of the two attacks failed)."""
    run = compute_case(Case("smoke", data.name, NORM_ATTACK, None), data, model, info, seed=0)
    paired, how = pair(run.outcomes(), run.result, baseline)
    if paired is None or paired.norms is None:
        raise RuntimeError(f"the zoo's {NORM_ATTACK} run did not pair with the original's: {how}")
    decisions = check_min_norms({n: now for n, (now, _) in paired.norms.items()}, {}, NORM_MARGIN,
                                base_norms={n: base for n, (_, base) in paired.norms.items()})
    ratios = {}
    for name, (now, base) in paired.norms.items():
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(np.isinf(now) & np.isinf(base), 1.0, now / base)  # failed both times: unchanged
        ratios[name] = float(np.median(ratio)) if len(ratio) else None
    return {"attack": NORM_ATTACK, "margin": NORM_MARGIN, "failed": [n for n, d in decisions.items() if not d.passed],
            "median_ratio": ratios}


def _earlier(out: Path, original_sha256: str) -> dict[str, Any] | None:
    """The records at `out` if they were measured from the same original, margin and cases (else None)."""
    try:
        zoo = json.loads(out.read_text())
    except (OSError, ValueError):
        return None
    same = (zoo.get("schema") == SCHEMA and zoo.get("provenance", {}).get("original_sha256") == original_sha256
            and zoo.get("margin") == RATE_MARGIN and zoo.get("norm_margin") == NORM_MARGIN
            and zoo.get("epsilons") == list(SMOKE_EPSILONS)
            and zoo.get("images_per_class") == get_profile("smoke").images_per_class("fgsm"))
    return zoo if same else None


def build(out: Path, seeds: tuple[int, ...] = RETRAIN_SEEDS, fresh: bool = False) -> dict[str, Any]:
    """Measure the zoo into `out`; models already there, measured from the same original, are kept (unless
    `fresh`), so a longer list of seeds adds only its new retrains."""
    data = load_dataset(DATASET)
    original = load_or_train(data).model
    info = model_block(original)
    sha = info["sha256"]
    earlier = None if fresh else _earlier(out, sha)
    kept = {(r["kind"], r["name"]): r for r in earlier["models"]} if earlier else {}
    baselines: dict[float | str, dict[str, Any]] = {}
    memo = Memo()
    for epsilon in (*SMOKE_EPSILONS, None):
        case = Case("smoke", data.name, "fgsm" if epsilon else NORM_ATTACK, epsilon)
        run = compute_case(case, data, original, info, seed=0, memo=memo)
        outcomes = run.outcomes()
        baseline, _ = make_baseline(case, run.result, outcomes)
        baselines[epsilon or NORM_ATTACK] = {**baseline, "outcomes": outcomes,
                                             "thresholds": baseline["gate"]["max_flip_rate"]}
    t0 = time.time()
    first = kept.get(("original", "rerun")) or {"kind": "original", "name": "rerun",
                                                **measure(original, data, baselines),
                                                "seconds": round(time.time() - t0, 1)}
    zoo = {"schema": SCHEMA, "dataset": DATASET, "class_names": list(data.class_names), "margin": RATE_MARGIN,
           "norm_margin": NORM_MARGIN,
           "alpha": ALPHA, "epsilons": list(SMOKE_EPSILONS), "attack": "fgsm",
           "images_per_class": get_profile("smoke").images_per_class("fgsm"), "retrain_seeds": list(seeds),
           "provenance": {"date": earlier["provenance"]["date"] if earlier else now_iso(), "updated": now_iso(),
                          "machine": machine(), "versions": versions(), "original_sha256": sha},
           "complete": False, "models": [first]}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for kind, name, make in variants(original, data, Path(tmp), seeds):
            if (kind, name) in kept:
                zoo["models"].append(kept[kind, name])
                continue
            t0 = time.time()
            zoo["models"].append({"kind": kind, "name": name, **measure(make(), data, baselines),
                                  "seconds": round(time.time() - t0, 1)})
            # Written after every model: an interrupted measurement keeps what it measured ("complete": false).
            atomic_write_text(out, json.dumps(zoo, indent=1) + "\n")
            print(f"{kind} {name}: {zoo['models'][-1]['clean_accuracy']:.4f} ({zoo['models'][-1]['seconds']} s)",
                  flush=True)
    zoo["complete"] = True
    # Over every resume: each model's measurement (a retrain's includes its training where the cache lacked it).
    zoo["provenance"]["seconds"] = round(sum(r.get("seconds", 0) for r in zoo["models"]))
    atomic_write_text(out, json.dumps(zoo, indent=1) + "\n")
    return zoo


def rises(zoo: dict[str, Any], record: dict[str, Any]) -> dict[str, np.ndarray]:
    """Per case, each class's true rise of its flip rate over the original's."""
    original = next(r for r in zoo["models"] if r["kind"] == "original")
    return {e: np.array(c["truth"]) - np.array(original["cases"][e]["truth"]) for e, c in record["cases"].items()}


def _failed(zoo: dict[str, Any], record: dict[str, Any], margin: float) -> list[tuple[str, int]]:
    """(ε, class index) of every class the gate fails at `margin`: as measured at the zoo's own margin, else decided
    again from the recorded counts."""
    names = zoo["class_names"]
    return [(e, names.index(n)) for e, c in record["cases"].items()
            for n in (c["failed"] if margin == zoo["margin"] else failed_at(c["counts"], names, margin))]


def summary(zoo: dict[str, Any], margin: float | None = None) -> dict[str, Any]:
    """The whole gate's error rates on the zoo at `margin` (default: the zoo's; see render for their definitions)."""
    margin = zoo["margin"] if margin is None else margin
    false_alarm = retrain_fail = exported_fail = 0
    caught = big = 0
    for record in zoo["models"]:
        truth = rises(zoo, record)
        failed = _failed(zoo, record, margin)
        unjustified = any(truth[e][i] <= margin for e, i in failed)
        if record["kind"] == "retrain":
            false_alarm += unjustified
            retrain_fail += bool(failed)
        if record["kind"] == "re-export":
            exported_fail += (bool(failed) or any(c["overall_failed"] for c in record["cases"].values())
                              or bool(record["norms"]["failed"]))
        for e, rise in truth.items():
            for i in np.flatnonzero(rise > margin + ZOO_EXCESS):
                big += 1
                caught += (e, int(i)) in failed
    retrains = [r for r in zoo["models"] if r["kind"] == "retrain"]
    moved = np.concatenate([np.concatenate(list(rises(zoo, r).values())) for r in retrains]) if retrains else \
        np.zeros(0)
    exports = sum(r["kind"] == "re-export" for r in zoo["models"])
    ratios = np.array([v for r in retrains for v in r["norms"]["median_ratio"].values() if v is not None])
    return {"retrains": len(retrains), "false_alarms": false_alarm, "retrains_failing": retrain_fail,
            "re_exports": exports, "re_exports_failing": exported_fail, "regressions": big, "caught": caught,
            "retrain_rises": moved, "retrain_norm_ratios": ratios,
            "retrains_failing_norms": sum(bool(r["norms"]["failed"]) for r in retrains)}


def render(zoo: dict[str, Any]) -> str:
    """The Markdown tables of docs/gate.md: one row per model, the whole gate's rates, then those rates at other
    margins (SWEEP), decided again from the recorded counts."""
    margin = zoo["margin"]
    lines = ["| change | clean acc | largest true per-class rise | classes rising > margin | failing classes "
             "(paired) | of them with a true rise ≤ margin | failing classes (unpaired) | overall fails "
             "| classes failing the norm margin |",
             "|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for record in zoo["models"]:
        truth = rises(zoo, record)
        largest = max(float(r.max()) for r in truth.values())
        over = sum(int((r > margin).sum()) for r in truth.values())
        failed = _failed(zoo, record, margin)
        wrong = sum(truth[e][i] <= margin for e, i in failed)
        unpaired = sum(len(c["failed_unpaired"]) for c in record["cases"].values())
        overall = sum(c["overall_failed"] for c in record["cases"].values())
        lines.append(f"| {record['kind']}: {record['name']} | {record['clean_accuracy']:.4f} | {largest:+.3f} | "
                     f"{over} | {len(failed)} | {wrong} | {unpaired} | {overall} | {len(record['norms']['failed'])} |")
    s = summary(zoo)
    lines += ["", f"- False alarms: {s['false_alarms']} of {s['retrains']} retrains fail a class whose true rise is "
                  f"at most the margin {margin}; {s['retrains_failing']} of {s['retrains']} fail at all.",
              f"- Re-exports failing: {s['re_exports_failing']} of {s['re_exports']}.",
              f"- True per-class regressions above the margin + {ZOO_EXCESS} (case × class, all models): "
              f"{s['caught']} of {s['regressions']} caught."]
    moved = s["retrain_rises"]
    if len(moved):
        lines.append(f"- Retrains, all (ε, class) pairs ({len(moved)}): the true change of the flip rate has median "
                     f"|change| {np.median(np.abs(moved)):.3f}, 90th percentile {np.quantile(np.abs(moved), 0.9):.3f}; "
                     f"{int((moved > margin).sum())} ({(moved > margin).mean():.0%}) rose by more than the margin, "
                     f"{int((moved > margin + ZOO_EXCESS).sum())} by more than the margin + {ZOO_EXCESS}.")
    ratios = s["retrain_norm_ratios"]
    if len(ratios):
        lines.append(f"- Retrains, minimal {NORM_ATTACK} norms: {s['retrains_failing_norms']} of {s['retrains']} "
                     f"fail a class at the norm margin {zoo['norm_margin']:.0%}; a class's median ratio of new to "
                     f"original norm lies between {np.quantile(ratios, 0.1):.2f} and "
                     f"{np.quantile(ratios, 0.9):.2f} (10th–90th percentile of {len(ratios)} classes).")
    lines += ["", "| margin | retrains failing | of them for a class with a true rise ≤ margin | true regressions > "
                  f"margin + {ZOO_EXCESS} caught | re-exports failing |", "|--:|--:|--:|--:|--:|"]
    for other in SWEEP:
        t = summary(zoo, other)
        lines.append(f"| {other:.2f} | {t['retrains_failing']} of {t['retrains']} | {t['false_alarms']} | "
                     f"{t['caught']} of {t['regressions']} | {t['re_exports_failing']} of {t['re_exports']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labelflip_models.gate.zoo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="measure the zoo and write its records here (JSON)")
    parser.add_argument("--table", type=Path, help="print the Markdown table of this records file")
    parser.add_argument("--fresh", action="store_true", help="measure every model again, keeping none of --out's")
    parser.add_argument("--seeds", default=",".join(map(str, RETRAIN_SEEDS)),
                        help="training seeds of the retrains (default: %(default)s; the original is seed 0)")
    args = parser.parse_args(argv)
    try:
        seeds = tuple(int(s) for s in args.seeds.split(","))
    except ValueError:
        parser.error(f"--seeds takes comma-separated integers, got {args.seeds!r}")
    if 0 in seeds:
        parser.error("--seeds: seed 0 is the original model")
    if args.out is None and args.table is None:
        parser.error("give --out to measure, or --table to render")
    if args.out is not None:
        build(args.out, seeds, args.fresh)
    print(render(json.loads((args.table or args.out).read_text())), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
