import json
import subprocess
import sys

import pytest

from labelflip_models.bench.report import (
    BASELINE_SCHEMA,
    compare,
    load_baseline,
    load_report,
    make_baseline,
    markdown_table,
    write_baseline,
)
from labelflip_models.errors import ConfigError

from .helpers import run_cli

CPU = "Intel(R) Xeon(R) Platinum 8480+"
CLASS = "cpu-avx512bf16"


def entry(kernel, impl, ratio, images_per_s=1000.0, device_class=CLASS, gflops=None):
    info = {"kernel": kernel, "impl": impl, "engine": f"{impl} engine", "device": "cpu", "device_class": device_class,
            "batch": 256, "images_per_s": images_per_s, "ratio_to_reference": ratio, "gflops_per_s": gflops}
    return {"name": f"test_{impl}[{kernel}]", "fullname": f"robustness_tests/benchmarks/x.py::test_{impl}[{kernel}]",
            "stats": {"min": 0.1, "median": 0.11, "rounds": 3}, "extra_info": info}


def standard_entries(pgd_ratio=0.35, device_class=CLASS):
    return [entry("linf-pgd", "labelflip", pgd_ratio, 2925.7, device_class, gflops=41.25),
            entry("linf-pgd", "torchattacks", 1.4, 731.4, device_class),
            entry("linf-pgd", "reference", 1.0, 1024.0, device_class),
            entry("fgsm", "labelflip", 0.5, 90000.0, device_class)]


def write_report(tmp_path, benchmarks, name="bench.json"):
    report = {"machine_info": {"node": "ci", "processor": "x86_64", "cpu": {"brand_raw": CPU}},
              "commit_info": {"id": "abc"}, "datetime": "2024-05-01T12:00:00", "version": "5.3.1",
              "benchmarks": benchmarks}
    path = tmp_path / name
    path.write_text(json.dumps(report))
    return path




def test_module_does_not_import_torch():
    code = "import sys, labelflip_models.bench.report; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_table_has_one_row_per_kernel_with_missing_impls_dashed(tmp_path):
    no_kernel = {"name": "test_other", "stats": {"min": 1.0}, "extra_info": {}}
    table = markdown_table(load_report(write_report(tmp_path, standard_entries() + [no_kernel])))
    heading, _, header, _, fgsm, pgd = table.splitlines()
    assert CPU in heading and CLASS in heading
    assert header.startswith("| kernel | device | labelflip images/s | labelflip ratio_to_reference |")
    assert pgd == "| linf-pgd | cpu | 2,926 | 0.35 (2.9× faster) | 731 | 1.40 (1.4× slower) | 1,024 | 41.2 |"
    assert fgsm == "| fgsm | cpu | 90,000 | 0.50 (2.0× faster) | – | – | – | – |"


def test_table_has_a_pair_of_columns_per_other_implementation_timed(tmp_path):
    entries = [entry("l2-cw", "labelflip", 0.8, 500.0), entry("l2-cw", "foolbox", 1.6, 250.0),
               entry("linf-apgd-ce", "labelflip", 0.9, 100.0), entry("linf-apgd-ce", "pyautoattack", 1.1, 80.0),
               entry("linf-apgd-ce", "torchattacks", 1.0, 90.0)]
    _, _, header, rule, cw, apgd = markdown_table(load_report(write_report(tmp_path, entries))).splitlines()
    assert header == ("| kernel | device | labelflip images/s | labelflip ratio_to_reference | foolbox images/s "
                      "| foolbox ratio | pyautoattack images/s | pyautoattack ratio | torchattacks images/s "
                      "| torchattacks ratio | reference images/s | labelflip GFLOP/s |")
    assert rule.count("|") == header.count("|")
    assert cw == "| l2-cw | cpu | 500 | 0.80 (1.2× faster) | 250 | 1.60 (1.6× slower) | – | – | – | – | – | – |"
    assert apgd.split(" | ")[4:10] == ["–", "–", "80", "1.10 (1.1× slower)", "90", "1.00 (same)"]


def test_baseline_round_trip(tmp_path):
    report = load_report(write_report(tmp_path, standard_entries()))
    baseline = make_baseline(report)
    assert baseline["schema"] == BASELINE_SCHEMA and baseline["device_class"] == CLASS
    assert baseline["kernels"] == {
        "fgsm": {"labelflip": {"ratio_to_reference": 0.5, "images_per_s": 90000.0, "runs": 1}},
        "linf-pgd": {"labelflip": {"ratio_to_reference": 0.35, "images_per_s": 2925.7, "runs": 1},
                     "torchattacks": {"ratio_to_reference": 1.4, "images_per_s": 731.4, "runs": 1}}}
    prov = baseline["provenance"]
    assert (prov["machine"], prov["run_datetimes"], prov["pytest_benchmark_version"], prov["sources"]) == \
        (CPU, ["2024-05-01T12:00:00"], "5.3.1", ["bench.json"]) and prov["created"]
    path = tmp_path / "baselines" / "bench-baseline.json"
    write_baseline(path, baseline)
    assert path.read_text() == json.dumps(baseline, indent=2, sort_keys=True) + "\n"
    assert load_baseline(path) == baseline
    comparison = compare(report, load_baseline(path), 0.25)
    assert [v.verdict for v in comparison.verdicts] == ["ok"] * 3 and not comparison.failed


@pytest.mark.parametrize("factor, verdict", [(1.0, "ok"), (1.25 * 0.999, "ok"), (1.25 * 1.001, "regressed"),
                                             (0.99 / 1.25, "improved")])
def test_compare_judges_the_ratio_against_the_margin(tmp_path, factor, verdict):
    baseline = make_baseline(load_report(write_report(tmp_path, standard_entries(), "old.json")))
    current = load_report(write_report(tmp_path, standard_entries(pgd_ratio=0.35 * factor), "new.json"))
    comparison = compare(current, baseline, 0.25)
    verdicts = {(v.kernel, v.impl): v.verdict for v in comparison.verdicts}
    assert verdicts == {("fgsm", "labelflip"): "ok", ("linf-pgd", "labelflip"): verdict,
                        ("linf-pgd", "torchattacks"): "ok"}
    assert comparison.failed == (verdict == "regressed")


def test_missing_kernel_fails_and_new_kernel_is_fine(tmp_path):
    baseline = make_baseline(load_report(write_report(tmp_path, standard_entries(), "old.json")))
    entries = [e for e in standard_entries() if e["extra_info"]["kernel"] != "fgsm"] + [entry("l2-cw", "labelflip", 2)]
    comparison = compare(load_report(write_report(tmp_path, entries, "new.json")), baseline, 0.25)
    verdicts = {(v.kernel, v.impl): v.verdict for v in comparison.verdicts}
    assert verdicts[("fgsm", "labelflip")] == "missing" and verdicts[("l2-cw", "labelflip")] == "new"
    assert comparison.failed and "fgsm/labelflip missing from this run" in comparison.summary()


def test_other_device_class_is_not_comparable(tmp_path):
    baseline = make_baseline(load_report(write_report(tmp_path, standard_entries(), "old.json")))
    current = load_report(write_report(tmp_path, standard_entries(pgd_ratio=9.0, device_class="cpu"), "new.json"))
    comparison = compare(current, baseline, 0.25)
    assert not comparison.comparable and not comparison.failed and comparison.verdicts == []
    assert "Not comparable" in comparison.markdown() and "nothing compared" in comparison.summary()


@pytest.mark.parametrize("margin", [-0.1, float("nan"), float("inf")])
def test_margin_must_be_finite_and_non_negative(tmp_path, margin):
    report = load_report(write_report(tmp_path, standard_entries()))
    with pytest.raises(ConfigError, match="margin must be a finite number >= 0"):
        compare(report, make_baseline(report), margin)


@pytest.mark.parametrize("content, message", [
    (None, "does not exist; run: pytest robustness_tests/benchmarks"),
    ("{not json", "is not JSON"),
    ({"machine_info": {}}, 'not a pytest-benchmark JSON report .no "benchmarks" list'),
    ({"benchmarks": [{"name": "t", "extra_info": {"size": 3}}]},
     "no labelflip benchmark.*run: pytest robustness_tests/benchmarks -p no:xdist --benchmark-json=FILE"),
    ({"benchmarks": [entry("fgsm", "labelflip", float("nan"))]}, "ratio_to_reference must be a finite positive"),
    ({"benchmarks": [entry("fgsm", "labelflip", float("inf"))]}, "ratio_to_reference must be a finite positive"),
    ({"benchmarks": [entry("fgsm", "labelflip", 0.0)]}, "ratio_to_reference must be a finite positive"),
    ({"benchmarks": [entry("fgsm", "labelflip", -1.0)]}, "ratio_to_reference must be a finite positive"),
    ({"benchmarks": [entry("fgsm", "labelflip", 1.0), entry("fgsm", "labelflip", 1.0)]}, "more than one.*fgsm"),
    ({"benchmarks": [entry("fgsm", "labelflip", 1.0), entry("l2-cw", "labelflip", 1.0, device_class="cpu")]},
     "mixes device classes"),
])
def test_bad_reports(tmp_path, content, message):
    path = tmp_path / "bench.json"
    if content is not None:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ConfigError, match=message):
        load_report(path)


def test_bad_baselines(tmp_path):
    report = load_report(write_report(tmp_path, standard_entries()))
    good = make_baseline(report)
    cases = [({**good, "schema": "labelflip.result/1"}, "schema is 'labelflip.result/1'"),
             ({k: v for k, v in good.items() if k != "kernels"}, "no 'kernels' key"),
             ({**good, "kernels": {"fgsm": {"labelflip": {"images_per_s": 1.0}}}}, "no 'ratio_to_reference' key"),
             ({**good, "kernels": {"fgsm": {"labelflip": {"ratio_to_reference": 0}}}}, "baseline fgsm/labelflip")]
    for baseline, message in cases:
        with pytest.raises(ConfigError, match=message):
            compare(report, baseline, 0.25)
    with pytest.raises(ConfigError, match="does not exist; write one with: labelflip bench-baseline"):
        load_baseline(tmp_path / "missing.json")


def test_cli_table_baseline_and_compare(capsys, tmp_path):
    report = write_report(tmp_path, standard_entries(), "old.json")
    rc, out, err = run_cli(capsys, ["bench-table", str(report)])
    assert rc == 0 and "| linf-pgd | cpu | 2,926 | 0.35 (2.9× faster) |" in out and err == ""

    baseline = tmp_path / "baseline.json"
    rc, out, _ = run_cli(capsys, ["bench-baseline", str(report), "--out", str(baseline)])
    assert rc == 0 and str(baseline) in out and load_baseline(baseline)["device_class"] == CLASS

    rc, out, _ = run_cli(capsys, ["bench-compare", str(report), "--baseline", str(baseline)])
    assert rc == 0 and "| linf-pgd | labelflip | 0.35 | 0.35 | +0.0% | ok |" in out
    assert out.splitlines()[-1] == "no regression beyond the 25% margin (3 compared, 0 improved, 0 new)"

    slower = write_report(tmp_path, standard_entries(pgd_ratio=0.7), "new.json")
    rc, out, _ = run_cli(capsys, ["bench-compare", str(slower), "--baseline", str(baseline)])
    assert rc == 1
    assert out.splitlines()[-1] == "regression beyond the 25% margin: linf-pgd/labelflip ratio 0.35 → 0.7 (+100.0%)"
    rc, _, _ = run_cli(capsys, ["bench-compare", str(slower), "--baseline", str(baseline), "--margin", "1.5"])
    assert rc == 0

    other = write_report(tmp_path, standard_entries(pgd_ratio=0.7, device_class="cpu"), "other.json")
    rc, out, _ = run_cli(capsys, ["bench-compare", str(other), "--baseline", str(baseline)])
    assert rc == 0 and "not comparable" in out


@pytest.mark.parametrize("argv, message", [
    (["bench-table", "missing.json"], "does not exist"),
    (["bench-compare", "bench.json", "--baseline", "missing.json"], "does not exist"),
    (["bench-compare", "bench.json", "--baseline", "bench.json"], "not a benchmark baseline"),
    (["bench-compare", "bench.json", "--baseline", "baseline.json", "--margin", "-1"], "margin must be"),
])
def test_cli_bad_input_exits_2_with_one_clear_line(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    report = load_report(write_report(tmp_path, standard_entries()))
    write_baseline(tmp_path / "baseline.json", make_baseline(report))
    rc, out, err = run_cli(capsys, argv)
    assert rc == 2 and message in err and "Traceback" not in err and out == ""


def test_failed_bench_baseline_leaves_no_file(capsys, tmp_path):
    report = write_report(tmp_path, [entry("fgsm", "labelflip", float("nan"))])
    rc, _, err = run_cli(capsys, ["bench-baseline", str(report), "--out", str(tmp_path / "out" / "baseline.json")])
    assert rc == 2 and "ratio_to_reference" in err
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]
    target = tmp_path / "taken"
    target.mkdir()
    good = write_report(tmp_path, standard_entries(), "good.json")
    rc, _, err = run_cli(capsys, ["bench-baseline", str(good), "--out", str(target)])
    assert rc == 2 and f"cannot write {target} (Is a directory); no file was replaced" in err
    assert list(target.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json", "good.json", "taken"]


def test_other_implementations_are_shown_but_not_gated(tmp_path):
    baseline = make_baseline(load_report(write_report(tmp_path, standard_entries(), "old.json")))
    entries = standard_entries()
    for e in entries:
        if e["extra_info"]["impl"] == "torchattacks":
            e["extra_info"]["ratio_to_reference"] *= 3  # a slower torchattacks release is not our regression
    comparison = compare(load_report(write_report(tmp_path, entries, "new.json")), baseline, 0.25)
    assert [v.verdict for v in comparison.verdicts if v.impl == "torchattacks"] == ["regressed"]
    assert not comparison.failed and "(for information)" in comparison.markdown()


def test_baseline_of_several_runs_takes_median_ratios(tmp_path):
    runs = [load_report(write_report(tmp_path, standard_entries(pgd_ratio=r), f"run{i}.json"))
            for i, r in enumerate((0.30, 0.45, 0.35))]
    baseline = make_baseline(*runs)
    assert baseline["kernels"]["linf-pgd"]["labelflip"]["ratio_to_reference"] == 0.35
    assert baseline["kernels"]["linf-pgd"]["labelflip"]["runs"] == 3
    assert baseline["provenance"]["sources"] == ["run0.json", "run1.json", "run2.json"]
    other = load_report(write_report(tmp_path, standard_entries(device_class="cuda-H100"), "gpu.json"))
    with pytest.raises(ConfigError, match="one device class"):
        make_baseline(runs[0], other)
