"""The gate's xdist scheduler: which tests share a worker."""

from types import SimpleNamespace

from labelflip_models.gate.xdist_scheduling import CaseScheduling


def _scheduler(scopes):
    config = SimpleNamespace(getvalue=lambda name: {"tx": ["2*popen"]}[name])
    return CaseScheduling(config, None, scopes)


def test_tests_of_one_case_share_a_scope_and_compiled_attacks_share_one_across_datasets():
    fgsm = ("mnist-5k-fgsm-eps0.1", "mnist-5k-fgsm-eps0.15")
    sched = _scheduler({**{c: c for c in fgsm}, "fashion-mnist-l1-bb-min": "l1-bb", "mnist-5k-l1-bb-min": "l1-bb"})
    split = sched._split_scope
    assert split("t.py::test_epsilon_bound[mnist-5k-fgsm-eps0.1]") == "mnist-5k-fgsm-eps0.1"
    assert split("t.py::test_class_flip_rate[mnist-5k-fgsm-eps0.1-3]") == "mnist-5k-fgsm-eps0.1"
    assert split("t.py::test_class_flip_rate[mnist-5k-fgsm-eps0.15-3]") == "mnist-5k-fgsm-eps0.15"
    assert split("t.py::test_symmetry_score[fashion-mnist-l1-bb-min-entrywise]") == "l1-bb"
    assert split("t.py::test_attack_success[mnist-5k-l1-bb-min]") == "l1-bb"
    assert split("tests/test_x.py::test_other[mnist-5k]") == "tests/test_x.py::test_other[mnist-5k]"


def test_a_models_fgsm_cases_share_a_worker_and_its_gradient():
    from labelflip_models.gate.profiles import Case
    from labelflip_models.gate.xdist_scheduling import case_scope

    fgsm = [Case("smoke", d, "fgsm", e, a) for d in ("fashion-mnist", "mnist-5k") for e in (0.1, 0.2)
            for a in ("", "other")]
    scopes = {c: case_scope(c) for c in fgsm}
    assert len(set(scopes.values())) == 4  # per dataset and model, across ε
    assert scopes[fgsm[0]] == scopes[fgsm[2]] == "fashion-mnist-fgsm"
    assert case_scope(Case("smoke", "mnist-5k", "l2-pgd", 1.0)) == "mnist-5k-l2-pgd-eps1"
    assert case_scope(Case("smoke", "mnist-5k", "l1-bb", None)) == "l1-bb"


def test_the_evaluation_checks_over_a_models_pgd_runs_go_with_those_runs():
    """test_monotone_in_epsilon, test_converged and test_white_box_beats_black_box read all of a model's L∞ PGD
    runs, test_covers_single_step one of them: on another worker they would wait for its locks."""
    from labelflip_models.gate.profiles import cases, get_profile
    from labelflip_models.gate.xdist_scheduling import scopes

    split = _scheduler(scopes(cases(get_profile("smoke"))))._split_scope
    pgd = {split(f"t.py::test_class_flip_rate[fashion-mnist-linf-pgd-eps{e}-Bag]") for e in (0.02, 0.05, 0.1, 0.2)}
    assert pgd == {"fashion-mnist-linf-pgd"}
    for test in ("test_monotone_in_epsilon[fashion-mnist-linf-pgd]", "test_converged[fashion-mnist-linf-pgd]",
                 "test_white_box_beats_black_box[fashion-mnist-linf-pgd]",
                 "test_covers_single_step[fashion-mnist-eps0.1]"):
        assert split(f"t.py::{test}") == "fashion-mnist-linf-pgd", test
    assert split("t.py::test_covers_single_step[mnist-5k-eps0.1]") == "mnist-5k-linf-pgd"
    assert split("t.py::test_epsilon_bound[fashion-mnist-l2-pgd-eps1]") == "fashion-mnist-l2-pgd-eps1"
    assert split("t.py::test_noise_histogram[mnist-5k-white-noise]") == "mnist-5k-white-noise"
