"""The robustness gate, per (dataset, attack, ε) of the profile: adversarials respect their budget (or, for
minimal-perturbation attacks, are what the run says they are), and the model is not less robust than in its
baseline by more than the margins: no class's flip rate and not the overall flip rate rose beyond the rate margin,
no class's minimal norms shrank beyond the norm margin, and the attack did not get weaker. Decided image by image
where the run attacked the baseline's images (gate/pairing.py)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from labelflip_models.attacks import Bounds
from labelflip_models.gate.config import RUNS_DIR
from labelflip_models.gate.decisions import (
    Decision,
    check_attack_success,
    check_min_norms,
    check_overall_flip_rate,
)
from labelflip_models.gate.evaluation_checks import (
    check_converged,
    check_covers_single_step,
    check_monotone_in_epsilon,
    check_white_box_beats_black_box,
    large_epsilon_probe,
)
from labelflip_models.gate.failures import failing_the_test
from labelflip_models.gate.pairing import flip_rate_decisions, pair
from labelflip_models.gate.strength import (
    Comparison,
    compare_with_autoattack,
    comparison_case,
    write_strength,
)
from labelflip_models.gate.tests import gate_test
from labelflip_models.models.architectures import predict_with_ties
from labelflip_models.runs.model_checks import failed_summary, warning_summary

__all__ = ["test_attack_strength", "test_attack_success", "test_class_flip_rate", "test_class_min_norm",
           "test_converged", "test_covers_single_step", "test_epsilon_bound", "test_large_epsilon_breaks_everything",
           "test_minimal_adversarials", "test_model_checks", "test_monotone_in_epsilon", "test_robust_accuracy",
           "test_white_box_beats_black_box"]

ORDERS = {"linf": math.inf, "l2": 2, "l1": 1, "l0": 0}
# Float rounding in x + δ may overshoot ε by a few ulps; anything larger is a broken projection.
RELATIVE_TOLERANCE = 1e-5
# Regressed classes a many-class test names in its message.
MAX_LISTED = 20


def measured_norms(run) -> torch.Tensor:
    """The adversarials' norms measured here; a run too large to keep its adversarials measured them from its
    adversarials before dropping them (AttackResult.reduced), apart from the attack kernel."""
    if run.clipped is None:
        return run.norms
    return torch.linalg.vector_norm((run.clipped - run.images).flatten(1), ord=ORDERS[run.result["attack"]["norm"]],
                                    dim=1)


def bounds_problem(run) -> str | None:
    lower, upper = run.result["attack"]["bounds"]
    low, high = run.range.tolist()
    if low >= lower and high <= upper:
        return None
    return f"adversarials leave the input bounds [{lower}, {upper}]: range [{low}, {high}]"


@gate_test()
def test_model_checks(labelflip_checked_model, labelflip_model_checks, labelflip_record):
    """Whether attacks can evaluate the model at all (runs/model_checks.py): accuracy above chance under the given
    class order and preprocessing, a deterministic and batch-independent forward pass, logits, usable gradients."""
    checks = labelflip_model_checks(labelflip_checked_model)
    failed, warned = failed_summary(checks), warning_summary(checks)
    decision = Decision(not failed, failed or f"all {len(checks)} model checks passed"
                        + (f"; warning: {warned}" if warned else ""),
                        {c.name.replace(" ", "_"): "passed" if c.passed else "failed" for c in checks})
    labelflip_record("model_checks", decision, model=labelflip_checked_model.model_key)
    assert decision.passed, decision.message


@gate_test()
def test_large_epsilon_breaks_everything(labelflip_probed_model, labelflip_case_model, labelflip_dataset,
                                         labelflip_config, labelflip_record):
    """At ε = half the pixel range (where every image can become the same grey one) L∞ PGD must bring robust
    accuracy down to chance on a few images per class (gate/evaluation_checks.py): a model that keeps more hides its
    gradients, and every flip rate the gate compares understates what an adversary does."""
    case, cfg = labelflip_probed_model, labelflip_config
    with failing_the_test():
        decision = large_epsilon_probe(labelflip_case_model(case), labelflip_dataset(case.dataset),
                                       Bounds(*cfg.bounds), seed=cfg.seed, engine=cfg.engine)
    labelflip_record("large_epsilon", decision, model=case.model_key)
    assert decision.passed, decision.message


@gate_test()
def test_monotone_in_epsilon(labelflip_epsilon_series, labelflip_run, labelflip_config, labelflip_record):
    """No class's robust accuracy under an iterative attack rises significantly from one ε to the next larger, image
    by image (gate/evaluation_checks.py): otherwise the attack is masked or broken, and its flip rates understate
    what an adversary does."""
    series = labelflip_epsilon_series
    with failing_the_test():
        runs = [labelflip_run(case) for case in series]
    decision = check_monotone_in_epsilon(runs, list(labelflip_config.class_names_of(series[0].dataset)))
    labelflip_record("monotone_in_epsilon", decision, cases=",".join(c.id for c in series))
    assert decision.passed, decision.message


@gate_test()
def test_covers_single_step(labelflip_step_pair, labelflip_run, labelflip_record):
    """The images FGSM breaks, L∞ PGD at the same ε breaks too, all but a small measured share
    (gate/evaluation_checks.py): an iterative attack that misses them has too few steps or too small a step, or the
    model masks its gradients."""
    single, iterative = labelflip_step_pair
    with failing_the_test():
        runs = labelflip_run(single), labelflip_run(iterative)
    decision = check_covers_single_step(*runs)
    labelflip_record("covers_single_step", decision, case=iterative.id, single_step_case=single.id)
    assert decision.passed, decision.message


@gate_test()
def test_converged(labelflip_iterative_series, labelflip_run, labelflip_case_model, labelflip_dataset,
                   labelflip_config, labelflip_record):
    """L∞ PGD with twice the profile's steps, from another random start, breaks no significantly more of a few
    images per class at the ε where the run's robust accuracy is nearest one half (gate/evaluation_checks.py):
    otherwise the attack stops short, and its flip rates understate what it can do."""
    series, cfg = labelflip_iterative_series, labelflip_config
    with failing_the_test():
        runs = [labelflip_run(case) for case in series]
        decision = check_converged(runs, labelflip_case_model(series[0]), labelflip_dataset(series[0].dataset),
                                   Bounds(*cfg.bounds), seed=cfg.seed, engine=cfg.engine)
    labelflip_record("converged", decision, cases=",".join(c.id for c in series))
    assert decision.passed, decision.message


@gate_test()
def test_white_box_beats_black_box(labelflip_iterative_series, labelflip_run, labelflip_case_model,
                                   labelflip_dataset, labelflip_config, labelflip_record):
    """The gradient-free Square attack breaks no significantly more of a few images per class than L∞ PGD at the
    ε where the run's robust accuracy is nearest one half (gate/evaluation_checks.py): where it does, the model
    hides its gradients from the gradient attacks."""
    series, cfg = labelflip_iterative_series, labelflip_config
    with failing_the_test():
        runs = [labelflip_run(case) for case in series]
        decision = check_white_box_beats_black_box(runs, labelflip_case_model(series[0]),
                                                   labelflip_dataset(series[0].dataset), Bounds(*cfg.bounds),
                                                   seed=cfg.seed, engine=cfg.engine)
    labelflip_record("white_box_beats_black_box", decision, cases=",".join(c.id for c in series))
    assert decision.passed, decision.message


@gate_test("fixed")
def test_epsilon_bound(labelflip_case, labelflip_run, labelflip_record):
    run = labelflip_run(labelflip_case)
    epsilon, norm = run.result["attack"]["epsilon"], run.result["attack"]["norm"]
    norms = measured_norms(run)
    over = torch.nonzero(norms > epsilon * (1 + RELATIVE_TOLERANCE) + 1e-7).flatten()
    problems = [f"{len(over)} adversarials exceed {norm} ε={epsilon}: images {over[:10].tolist()} with norms "
                f"{norms[over[:10]].tolist()}"] if len(over) else []
    problems += [p for p in [bounds_problem(run)] if p]
    decision = Decision(not problems, "; ".join(problems) or f"all {len(norms)} adversarials within {norm} "
                                                             f"ε={epsilon} and the input bounds",
                        {"epsilon": epsilon, "max_norm": norms.max().item(), "over": len(over)})
    labelflip_record("epsilon_bound", decision, case=labelflip_case.id)
    assert decision.passed, decision.message


@gate_test("minimal")
def test_minimal_adversarials(labelflip_case, labelflip_run, labelflip_case_model, labelflip_record):
    """Minimal attacks have no ε: the norms the run reports must be the adversarials' norms, and every success
    must really change the class (checked with a fresh forward pass). A run too large to keep its adversarials
    (AttackResult.reduced) leaves only the bounds and the attacked set to check; the message says so."""
    run = labelflip_run(labelflip_case)
    problems = [p for p in [bounds_problem(run)] if p]
    succeeded = torch.nonzero(run.success).flatten()
    if not run.attacked[succeeded].all():
        problems.append("success reported for images the attack did not have to move")
    wrong = unchanged = torch.zeros(0, dtype=torch.long)
    ties = 0
    if run.clipped is not None:
        measured = measured_norms(run)
        wrong = torch.nonzero(~torch.isclose(run.norms, measured, rtol=RELATIVE_TOLERANCE, atol=1e-6)).flatten()
        if len(wrong):
            problems.append(f"reported norms differ from measured ones for images {wrong[:10].tolist()}: "
                            f"{run.norms[wrong[:10]].tolist()} vs {measured[wrong[:10]].tolist()}")
        # A fresh pass batches the images differently from the run's: an adversarial on the decision boundary
        # may round to another class on a GPU, so only a prediction the recorded class does not tie is a problem.
        recorded = run.adv_pred[succeeded]
        now, tied = predict_with_ties(labelflip_case_model(labelflip_case), run.clipped[succeeded], recorded)
        unchanged = succeeded[(now == run.labels[succeeded]) & ~tied]
        if len(unchanged):
            problems.append(f"successes that keep their true class: images {unchanged[:10].tolist()}")
        moved = now != recorded
        differ, ties = succeeded[moved & ~tied], int((moved & tied).sum())
        if len(differ):
            problems.append(f"recorded adversarial predictions differ from the model's: images "
                            f"{differ[:10].tolist()}")
    checked = (f"{len(succeeded)} successes checked" if run.clipped is not None else
               f"{len(succeeded)} successes; adversarials not kept (run too large), so norms and classes were not "
               "re-checked")
    decision = Decision(not problems, "; ".join(problems) or checked,
                        {"successes": len(succeeded), "wrong_norms": len(wrong), "unchanged": len(unchanged),
                         "boundary_ties": ties})
    labelflip_record("minimal_adversarials", decision, case=labelflip_case.id)
    assert decision.passed, decision.message


@gate_test("fixed")
def test_class_flip_rate(labelflip_case, labelflip_class, labelflip_run, labelflip_baseline, labelflip_config,
                         labelflip_record):
    """A class fails when its flip rate rose by more than the margin; Holm's procedure across the case's classes
    keeps the whole case's false-alarm rate at 1 − GATE_CONFIDENCE (docs/gate.md, "The gate's error rates");
    `labelflip_class` None checks every class in one test (many classes)."""
    run = labelflip_run(labelflip_case)
    result = run.result
    names = result["class_names"]
    paired, how = pair(run.outcomes(), result, labelflip_baseline)
    decisions = flip_rate_decisions(result, labelflip_baseline, labelflip_config.margins.rate, paired)
    if labelflip_class is not None:
        name = names[labelflip_class]
        decision = decisions[name]
        labelflip_record("flip_rate", decision, case=labelflip_case.id, **{"class": name}, pairing=how)
        assert decision.passed, f"{labelflip_case.id}: less robust: {decision.message}"
        return
    failed = sorted((n for n in names if not decisions[n].passed),
                    key=lambda n: decisions[n].figures["rise"] or 0.0, reverse=True)
    ungated = [n for n in names if not decisions[n].figures["gated"] == "yes"]
    shown = failed[0] if failed else min(names, key=lambda n: decisions[n].figures["p_value"])
    summary = (f"{len(failed)} of {len(names)} classes less robust" + (": " if failed else "")
               + "; ".join(decisions[n].message for n in failed[:MAX_LISTED])
               + (f"; and {len(failed) - MAX_LISTED} more" if len(failed) > MAX_LISTED else "")
               + (f" ({len(ungated)} not gated: n too small)" if ungated else "") + f"; {how}")
    labelflip_record("flip_rate", Decision(not failed, summary, decisions[shown].figures), case=labelflip_case.id,
                     **{"class": shown}, regressed=len(failed), not_gated=len(ungated), pairing=how)
    assert not failed, f"{labelflip_case.id}: less robust: {summary}"


@gate_test("fixed")
def test_robust_accuracy(labelflip_case, labelflip_run, labelflip_baseline, labelflip_config, labelflip_record):
    """The case's robust accuracy over all its images must not fall by more than the margin: a loss spread over
    many classes, too small in each for its own test, shows here. Also records the worst class and the spread
    across classes (each class's own fall is test_class_flip_rate's)."""
    run = labelflip_run(labelflip_case)
    result, base = run.result, labelflip_baseline["result"]
    paired, how = pair(run.outcomes(), result, labelflip_baseline)
    decision = check_overall_flip_rate(result["flip_fraction"]["count"], result["flip_fraction"]["n"],
                                       base["flip_fraction"]["count"], base["flip_fraction"]["n"],
                                       labelflip_config.margins.rate, pairs=paired and paired.overall)
    robust = result["robust_accuracy"]
    worst, spread = robust["worst"] or {}, robust["spread"] or {}
    labelflip_record("robust_accuracy", decision, case=labelflip_case.id, pairing=how,
                     robust_accuracy=robust["overall"]["rate"], worst_class=worst.get("class"),
                     worst_class_robust_accuracy=worst.get("rate"), robust_accuracy_spread=spread.get("max_minus_min"))
    assert decision.passed, f"{labelflip_case.id}: less robust: {decision.message}"


@gate_test("minimal")
def test_class_min_norm(labelflip_case, labelflip_class, labelflip_run, labelflip_baseline, labelflip_config,
                        labelflip_record):
    """A class fails when its minimal norms shrank by more than the norm margin (paired sign test where the run
    attacked the baseline's images, else against the baseline's floor); Bonferroni across the case's classes."""
    run = labelflip_run(labelflip_case)
    names = run.result["class_names"] if labelflip_class is None else [run.result["class_names"][labelflip_class]]
    paired, how = pair(run.outcomes(), run.result, labelflip_baseline)
    margin = labelflip_config.margins.norm
    if paired is not None:
        every = check_min_norms({n: now for n, (now, _) in paired.norms.items()}, {}, margin,
                                base_norms={n: base for n, (_, base) in paired.norms.items()})
    else:
        every = check_min_norms(run.class_norms(), labelflip_baseline["gate"]["min_norm_floor"], margin)
    checked = {n: every[n] for n in names if n in every}
    if not checked:
        pytest.skip(f"{labelflip_case.id}: too few baseline images of class(es) {', '.join(map(repr, names[:5]))} "
                    "for a bound on the median")
    failed = [n for n, d in checked.items() if not d.passed]
    if labelflip_class is None:
        decision = Decision(not failed, f"{len(failed)} of {len(checked)} classes got easier to flip"
                            + "".join(f"; {checked[n].message}" for n in failed[:MAX_LISTED]),
                            {"failed": len(failed), "checked": len(checked)})
    else:
        decision = checked[names[0]]
    labelflip_record("min_norm", decision, case=labelflip_case.id, **{"class": names[0] if len(names) == 1 else ""},
                     pairing=how)
    assert decision.passed, f"{labelflip_case.id}: class got easier to flip: {decision.message}"


@gate_test("all")
def test_attack_success(labelflip_case, labelflip_run, labelflip_baseline, labelflip_config, labelflip_record):
    result = labelflip_run(labelflip_case).result
    success = result["attack_success"]
    decision = check_attack_success(success["count"], success["n"], labelflip_baseline["min_success"],
                                    labelflip_config.margins.rate)
    labelflip_record("attack_success", decision, case=labelflip_case.id)
    assert decision.passed, (f"{labelflip_case.id}: the attack got weaker, which would hide regressions (or the "
                             f"model got more robust: regenerate its baselines to keep the gain): {decision.message}")


@gate_test("compared")
def test_attack_strength(labelflip_case, labelflip_config, labelflip_run, labelflip_record):
    """The case's attack against AutoAttack at the same ε, paired image by image (gate/strength.py). A weaker attack
    warns (WeakAttackWarning) and is recorded, in the report's table too; it does not fail: it is a property of
    the profile's attack, not a regression of the model (docs/gate.md, "Attack strength")."""
    cfg, case = labelflip_config, labelflip_case
    against, reason = comparison_case(case, cfg.profile_cases())
    report = cfg.report / RUNS_DIR / case.id if cfg.report is not None else None
    if against is None:
        if report is not None:  # the report's table says which cases were not compared, and why
            write_strength(report, Comparison(case, None, None, reason))
        pytest.skip(f"{case.id}: not compared with AutoAttack: {reason}")
    with failing_the_test():
        comparison = compare_with_autoattack(labelflip_run(case), cfg.profile_cases(), labelflip_run,
                                             cfg.margins.rate)
    labelflip_record("attack_strength", comparison.decision, case=case.id, autoattack_case=against.id)
    if report is not None:
        write_strength(report, comparison)
    if comparison.weak:
        warnings.warn(comparison.warning(), stacklevel=1)
