"""Reports: loading run files, PNG charts, the Markdown summary, the HTML page and the report directory."""

from __future__ import annotations

import base64
import io
import json
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.image import imread

from labelflip_models.errors import ConfigError
from labelflip_models.reports.html import report_html
from labelflip_models.reports.load import load_runs
from labelflip_models.reports.markdown import summary_markdown
from labelflip_models.reports.plots import heatmap_png, noise_png, trend_png
from labelflip_models.reports.write import write_report

FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
SHA = "0123456789abcdef" * 4


def _score(m: np.ndarray, norm: str) -> float | None:
    """The schema's symmetry score, written out independently of labelflip_models.analysis.symmetry."""
    off = m * (1 - np.eye(len(m)))
    if off.sum() == 0:
        return None
    size = (lambda a: np.abs(a).sum()) if norm == "entrywise" else (lambda a: np.abs(a).sum(0).max())
    sym, anti = size((off + off.T) / 2), size((off - off.T) / 2)
    return float((sym - anti) / (sym + anti))


def _share(k: int, n: int) -> dict[str, Any]:
    return {"share": k / n if n else None, "ci": [max(0.0, k / n - 0.05), min(1.0, k / n + 0.05)] if n else None}


def _rate(k: int, n: int) -> dict[str, Any]:
    if n == 0:
        return {"count": 0, "n": 0, "rate": None, "ci": [0.0, 1.0]}
    return {"count": k, "n": n, "rate": k / n, "ci": [max(0.0, k / n - 0.02), min(1.0, k / n + 0.02)]}


def make_result(matrix: np.ndarray, names: list[str], dataset: str = "fashion-mnist", attack: str = "linf-pgd",
                epsilon: float | None = 0.1, sha: str = SHA) -> dict[str, Any]:
    """A plausible result.json following the agreed schema, with the analysis filled in by hand."""
    m = np.asarray(matrix)
    k, n = len(names), int(m.sum())
    off = m * (1 - np.eye(k, dtype=int))
    flips = off.sum(1)
    symmetry = {norm: {"score": _score(m, norm), "ci": None, "se": 0.03, "p_value": 0.0005}
                for norm in ("entrywise", "induced")}
    for s in symmetry.values():
        s["ci"] = None if s["score"] is None else [s["score"] - 0.1, min(1.0, s["score"] + 0.1)]
    targets = {}
    for i, name in enumerate(names):
        order = np.argsort(-np.where(np.arange(k) == i, -1, off[i]), kind="stable")
        t, r = int(order[0]), int(order[1])
        targets[name] = {"target": names[t] if flips[i] else None, "count": int(off[i, t]), "flips": int(flips[i]),
                         **_share(int(off[i, t]), int(flips[i])), "runner_up": names[r] if off[i, r] else None,
                         "runner_up_count": int(off[i, r]), "p_value": 0.0001 if flips[i] else None,
                         "strong": bool(off[i, t] > 2 * off[i, r])}
    landed = off.sum(0)
    total = int(off.sum())
    minimal = epsilon is None
    result = {
        "schema": "labelflip.result/2",
        "dataset": {"name": dataset, "fingerprint": "f" * 16, "source": "idx", "note": "", "selection": "first 1000",
                    "n": n},
        "model": {"sha256": sha, "architecture": "cnn"},
        "attack": {"name": attack, "norm": "linf", "minimal": minimal, "epsilon": epsilon, "steps": 40},
        "class_names": names, "flip_matrix": m.tolist(),
        "per_class_flip_rate": {nm: _rate(int(f), int(t)) for nm, f, t in zip(names, flips, m.sum(1))},
        "flip_fraction": _rate(total, n), "clean_accuracy": _rate(int(0.9 * n), n),
        "attack_success": _rate(total, n), "survives_8bit": _rate(total * 3 // 4, total),
        "analysis": {
            "symmetry": {"flips": total, **symmetry, "norms": {}, "confidence": 0.95, "bootstrap": {},
                         "permutation": {}},
            "dominant_targets": targets,
            "pairs": [{"a": names[0], "b": names[6], "a_to_b": int(off[0, 6]), "b_to_a": int(off[6, 0]),
                       "share_a_to_b": _share(int(off[0, 6]), int(flips[0])),
                       "share_b_to_a": _share(int(off[6, 0]), int(flips[6])), "kind": "symmetric"},
                      {"a": names[5], "b": names[7], "a_to_b": int(off[5, 7]), "b_to_a": int(off[7, 5]),
                       "share_a_to_b": _share(int(off[5, 7]), int(flips[5])),
                       "share_b_to_a": _share(int(off[7, 5]), int(flips[7])), "kind": "one-way"}],
            "catch_all": {"threshold": 2 / k, "flips": total,
                          "shares": {nm: {"count": int(c), **_share(int(c), total)} for nm, c in zip(names, landed)},
                          "classes": [nm for nm, c in zip(names, landed) if total and c / total > 2 / k]},
        },
        "provenance": {"seed": 0, "device": "cpu (Test CPU)", "machine": {"platform": "Linux-test", "cpu": "Test CPU",
                                                                          "cores": 2},
                       "versions": {"python": "3.11.2", "labelflip": "0.1.0", "torch": "2.4.0"},
                       "timestamp": "2024-05-01T12:00:00+00:00", "wall_seconds": 1.0, "attack_seconds": 0.5},
    }
    if minimal:
        result["minimal_norms"] = {
            "per_class": {nm: {"n": int(m[i].sum()), "failed": i % 2, "median": 0.01 * (i + 1) if i != 3 else None,
                               "ci": [0.01 * i, 0.01 * (i + 2)] if i != 3 else None,
                               "q25": 0.005 * (i + 1), "q75": 0.02 * (i + 1) if i != 3 else None}
                          for i, nm in enumerate(names)},
            "per_pair": {}}
    return result


def flip_matrix(epsilon: float, k: int = 10, n_per_class: int = 100, seed: int = 0) -> np.ndarray:
    """Flips grow with ε and drift towards class 6 (a catch-all), with a 0 <-> 6 exchange."""
    rng = np.random.default_rng(seed)
    m = np.zeros((k, k), dtype=int)
    for i in range(k):
        p = np.full(k, 1.0)
        p[6] += 6 * epsilon * 10
        p[(i + 1) % k] += 3
        p[i] = 0
        flipped = int(n_per_class * min(0.95, 4 * epsilon))
        m[i] = rng.multinomial(flipped, p / p.sum())
        m[i, i] += n_per_class - flipped
    for a, b, extra in ((0, 6, 30), (6, 0, 25)):
        moved = min(extra, int(m[a, a]))
        m[a, b] += moved
        m[a, a] -= moved
    return m


def make_noise(names: list[str], dataset: str = "fashion-mnist", sha: str = SHA) -> dict[str, Any]:
    counts = [10, 0, 5, 3, 900, 2, 40, 0, 30, 10]
    n = sum(counts)
    hist = {nm: {"count": c, **_share(c, n)} for nm, c in zip(names, counts)}
    return {"schema": "labelflip.noise/2", "dataset": {"name": dataset, "n_classes": len(names)},
            "model": {"sha256": sha}, "n": n, "seed": 3, "bounds": [0.0, 1.0], "class_names": names, "counts": counts,
            "histogram": {"n": n, "histogram": hist, "top": sorted(names, key=lambda c: -hist[c]["count"])},
            "provenance": {"device": "cpu (Test CPU)", "timestamp": "2024-05-02T09:00:00+00:00"}}


def fixed_runs(epsilons: tuple[float, ...] = (0.03, 0.1), **kw: Any) -> list[dict[str, Any]]:
    return [make_result(flip_matrix(e), FASHION, epsilon=e, **kw) for e in epsilons]


def _dump(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


# --- load_runs ---------------------------------------------------------------------------------------

def test_load_runs_finds_runs_one_and_two_levels_down_and_accepts_files(tmp_path: Path) -> None:
    a, b, c = fixed_runs((0.01, 0.03, 0.1))
    _dump(tmp_path / "runs" / "pgd-0.01" / "result.json", a)
    _dump(tmp_path / "runs" / "fashion" / "pgd-0.03" / "result.json", b)
    _dump(tmp_path / "runs" / "fashion" / "noise" / "noise.json", make_noise(FASHION))
    _dump(tmp_path / "runs" / "a" / "b" / "c" / "result.json", c)  # three levels down: not searched
    direct = _dump(tmp_path / "elsewhere.json", c)
    # The directory's run named again directly is read once.
    results, noise = load_runs([tmp_path / "runs", direct, tmp_path / "runs" / "pgd-0.01" / "result.json"])
    assert [r["attack"]["epsilon"] for r in results] == [0.03, 0.01, 0.1]  # sorted paths, then the file
    assert len(noise) == 1 and noise[0]["counts"] == make_noise(FASHION)["counts"]


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    (json.dumps({"schema": "labelflip.baseline/1"}), "schema 'labelflip.baseline/1'"),
    (json.dumps({**fixed_runs((0.1,))[0], "flip_matrix": [[1, 2], [3, 4]]}), "10x10 matrix"),
    (json.dumps({**fixed_runs((0.1,))[0], "class_names": ["a"] * 10}), "duplicates"),
    (json.dumps({**fixed_runs((0.1,))[0], "attack": {"name": "fgsm", "epsilon": -1}}), "positive number"),
    (json.dumps({**make_noise(FASHION), "counts": [1, 2]}), "'counts'"),
])
def test_load_runs_rejects_bad_files(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "result.json").write_text(content)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_runs([tmp_path / "run"])


def test_load_runs_rejects_missing_and_empty_inputs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_runs([tmp_path / "nope"])
    with pytest.raises(ConfigError, match="no result.json or noise.json"):
        load_runs([tmp_path])
    with pytest.raises(ConfigError, match="no run"):
        load_runs([])


# --- plots ---------------------------------------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _pixels(png: bytes) -> np.ndarray:
    assert png.startswith(PNG_SIGNATURE)
    return imread(io.BytesIO(png), format="png")


def test_heatmap_is_a_readable_png_of_the_agreed_size() -> None:
    result = fixed_runs((0.1,))[0]
    png = heatmap_png(result)
    pixels = _pixels(png)
    assert pixels.shape[:2] == (660, 770)  # 7 x 6 in at 110 dpi
    assert pixels[..., :3].std() > 0.1  # not a blank canvas
    assert heatmap_png(result) == png  # deterministic: reports can be diffed


def test_heatmap_copes_with_empty_rows_and_no_analysis() -> None:
    m = flip_matrix(0.1)
    m[3] = 0  # a class absent from the selection
    result = make_result(m, FASHION, epsilon=None)
    del result["analysis"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a 0/0 row would warn and draw a NaN colour
        assert _pixels(heatmap_png(result)).shape[:2] == (660, 770)


def test_trend_and_noise_pngs() -> None:
    assert _pixels(trend_png(fixed_runs((0.1, 0.01, 0.03)))).shape[:2] == (770, 880)
    assert _pixels(noise_png(make_noise(FASHION))).shape[:2] == (440, 770)


@pytest.mark.parametrize("runs, message", [
    (fixed_runs((0.1,)), "two or more epsilons"),
    (fixed_runs((0.1, 0.1)), "two or more epsilons"),
    (fixed_runs((0.1,)) + fixed_runs((0.2,), attack="fgsm"), "one dataset and attack"),
    (fixed_runs((0.1,)) + [make_result(flip_matrix(0.1), FASHION, epsilon=None)], "fixed-ε"),
])
def test_trend_needs_one_fixed_attack_over_several_epsilons(runs: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        trend_png(runs)


# --- Markdown --------------------------------------------------------------------------------------------

def _md_tables(text: str) -> dict[str, list[list[str]]]:
    """Each '#### title' table's rows, header included, split on unescaped pipes."""
    tables: dict[str, list[list[str]]] = {}
    title = ""
    for line in text.splitlines():
        if line.startswith("#### "):
            title = line[5:]
            tables[title] = []
        elif line.startswith("|") and not line.startswith("|---"):
            tables[title].append([c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]])
    return tables


@pytest.fixture(scope="module")
def report_input() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return fixed_runs((0.03, 0.1)) + [make_result(flip_matrix(0.3), FASHION, attack="deepfool", epsilon=None)], \
        [make_noise(FASHION)]


def test_markdown_runs_table_shows_each_runs_numbers(report_input: Any) -> None:
    results, noise = report_input
    text = summary_markdown(results, noise)
    rows = _md_tables(text)["Runs"]
    assert rows[0][:6] == ["attack", "ε", "n", "clean acc", "flipped", "still flipped at 8 bits"]
    assert len(rows) == 1 + len(results)
    for row, result in zip(rows[1:], results):
        m = np.array(result["flip_matrix"])
        assert row[0] == result["attack"]["name"]
        assert row[1] == ("minimal" if result["attack"]["epsilon"] is None else f"{result['attack']['epsilon']:g}")
        assert row[2] == str(m.sum()) and row[3] == "90.0%"
        assert row[4] == f"{100 * (m.sum() - np.trace(m)) / m.sum():.1f}%"
        assert row[5] == f"{100 * result['survives_8bit']['rate']:.1f}%"
        assert row[6].startswith(f"{_score(m, 'entrywise'):.2f} [") and row[7] == "<0.001"
        assert row[8].startswith(f"{_score(m, 'induced'):.2f} [")
        assert row[10] == ", ".join(result["analysis"]["catch_all"]["classes"])
    assert "model 0123456789ab" in text
    assert "2024-05-01 to 2024-05-02" in text and "torch 2.4.0" in text


def test_markdown_details_come_from_the_largest_epsilon_and_the_other_probes(report_input: Any) -> None:
    results, noise = report_input
    tables = _md_tables(summary_markdown(results, noise))
    assert not any("ε = 0.03" in title for title in tables)
    targets = tables["Dominant flip target per class — linf-pgd, ε = 0.1"]
    m = flip_matrix(0.1)
    off = m - np.diag(np.diag(m))
    for row, i in zip(targets[1:], range(10)):
        assert row[:3] == [FASHION[i], str(off[i].sum()), FASHION[int(np.argmax(off[i]))]]
        assert row[6] == ("✓" if results[1]["analysis"]["dominant_targets"][FASHION[i]]["strong"] else "")
    pairs = tables["Significant class pairs — linf-pgd, ε = 0.1"]
    assert pairs[1][:4] == ["T-shirt/top ↔ Shirt", "symmetric", str(off[0, 6]), str(off[6, 0])]
    assert pairs[2][:2] == ["Sandal → Sneaker", "one-way"]
    norms = tables["Minimal L∞ perturbation per class — deepfool"]
    assert norms[1] == ["T-shirt/top", "100", "0", "0.010 [0.000, 0.020]", "0.005 – 0.020"]
    assert norms[4][3] == "∞"  # median None with images attacked: most attacks failed
    top = tables["White noise: 1000 uniform images in [0, 1] (seed 3)"]
    assert [r[:2] for r in top[1:3]] == [["Coat", "900"], ["Shirt", "40"]]


def test_markdown_tables_which_autoattack_component_broke_the_images() -> None:
    ensemble = make_result(flip_matrix(0.1), FASHION, attack="linf-autoattack")
    ensemble["autoattack"] = {"components": ["apgd-ce", "apgd-t", "fab-t", "square"],
                              "broken_by": {"apgd-ce": 700, "apgd-t": 12, "fab-t": 0, "square": 1}}
    square = make_result(flip_matrix(0.03), FASHION, attack="linf-square", epsilon=0.03)
    square["autoattack"] = {"components": ["square"], "broken_by": {"square": 40}}
    rows = _md_tables(summary_markdown([square, ensemble], []))["AutoAttack: images broken first by each component"]
    assert rows[1:] == [["linf-autoattack", "0.1", "700", "12", "0", "1"], ["linf-square", "0.03", "—", "—", "—", "40"]]
    # Runs of other attacks have no such table.
    assert "AutoAttack: images broken" not in summary_markdown(fixed_runs(), [])


def test_markdown_escapes_names_that_would_be_markup_or_break_tables() -> None:
    names = ["<b>", "a|b", *FASHION[2:]]
    text = summary_markdown([make_result(flip_matrix(0.1), names)], [])
    assert not re.search(r"(?<!\\)<b>", text) and "\\<b>" in text
    for rows in _md_tables(text).values():
        assert len({len(r) for r in rows}) == 1  # 'a|b' did not add a column
    assert ["\\<b>", "a\\|b"] == [r[0] for r in _md_tables(text)[
        "Dominant flip target per class — linf-pgd, ε = 0.1"][1:3]]


def test_runs_of_different_models_for_one_dataset_are_refused() -> None:
    runs = fixed_runs((0.1,)) + fixed_runs((0.2,), sha="f" * 64)
    with pytest.raises(ConfigError, match="2 different models"):
        summary_markdown(runs, [])
    with pytest.raises(ConfigError, match="two runs of linf-pgd at ε = 0.1"):
        summary_markdown(fixed_runs((0.1, 0.1)), [])


# --- HTML ------------------------------------------------------------------------------------------------

def test_html_is_self_contained_embeds_every_image_and_escapes_names() -> None:
    names = ["<b>", *FASHION[1:]]
    results = [make_result(flip_matrix(e), names, epsilon=e) for e in (0.03, 0.1)]
    images = {"heatmaps/fashion-mnist-linf-pgd-eps0.1.png": b"\x89PNG one", "trends/fashion-mnist-linf-pgd.png":
              b"\x89PNG two", "extra/unplaced.png": b"\x89PNG three"}
    page = report_html(results, [make_noise(names)], images)
    assert page.startswith("<!DOCTYPE html>")
    assert "http://" not in page and "https://" not in page and "<script" not in page.lower()
    assert "<link" not in page.lower() and "@import" not in page
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert sorted(srcs) == sorted("data:image/png;base64," + base64.b64encode(d).decode() for d in images.values())
    assert "<b>" not in page and "&lt;b&gt;" in page
    # Same content as the Markdown: every Markdown table title appears as an HTML heading.
    for title in _md_tables(summary_markdown(results, [make_noise(names)])):
        assert f"<h3>{title.replace('<', '&lt;').replace('>', '&gt;')}</h3>" in page


# --- write_report -----------------------------------------------------------------------------------------

def test_write_report_writes_images_texts_and_index(tmp_path: Path, report_input: Any) -> None:
    results, noise = report_input
    out = tmp_path / "report"
    files = write_report(out, results, noise)
    expected = {"heatmaps/fashion-mnist-linf-pgd-eps0.03.png", "heatmaps/fashion-mnist-linf-pgd-eps0.1.png",
                "heatmaps/fashion-mnist-deepfool-epsmin.png", "trends/fashion-mnist-linf-pgd.png",
                "noise/fashion-mnist.png", "summary.md", "report.html", "report.json"}
    assert set(files) == expected and all(files[n] == out / n and files[n].is_file() for n in expected)
    assert list(files)[-1] == "report.json"
    for name in expected - {"summary.md", "report.html", "report.json"}:
        _pixels(files[name].read_bytes())
    assert files["summary.md"].read_text() == summary_markdown(results, noise)
    assert files["report.html"].read_text().count("data:image/png;base64,") == 5
    index = json.loads(files["report.json"].read_text())
    assert [(r["attack"], r["epsilon"], r["heatmap"]) for r in index["runs"]] == [
        ("linf-pgd", 0.03, "heatmaps/fashion-mnist-linf-pgd-eps0.03.png"),
        ("linf-pgd", 0.1, "heatmaps/fashion-mnist-linf-pgd-eps0.1.png"),
        ("deepfool", None, "heatmaps/fashion-mnist-deepfool-epsmin.png")]
    m = flip_matrix(0.1)
    assert index["runs"][1]["symmetry"]["entrywise"]["score"] == pytest.approx(_score(m, "entrywise"))
    assert index["trends"] == [{"dataset": "fashion-mnist", "attack": "linf-pgd",
                                "image": "trends/fashion-mnist-linf-pgd.png"}]
    assert index["noise"][0]["top"] == ["Coat", "Shirt", "Bag"]
    assert not list(out.rglob("*.tmp"))


@pytest.mark.parametrize("failed", [False, True])
def test_a_gate_report_opens_with_its_verdict(tmp_path: Path, failed: bool) -> None:
    results = fixed_runs((0.1,))
    verdict = {"passed": not failed,
               "failed": [{"test": "t.py::test_class_flip_rate[c-9]", "message": "class '9' rose <by> +0.3",
                          "kind": "less robust"}] * failed,
               "drift": [{"test": "t.py::test_white_noise[d]", "message": "noise moved"}]}
    files = write_report(tmp_path / "report", results, [], verdict=verdict)
    summary = files["summary.md"].read_text()
    head = summary.split("### fashion-mnist")[0]
    assert ("**Gate failed**: 1 test(s) found the model less robust" if failed else "**Gate passed**") in head
    assert "1 drift item(s), reported, not failed" in head and "- t.py::test\\_white\\_noise[d]: noise moved" in head
    assert ("class '9' rose \\<by> +0.3" in head) == failed
    page = files["report.html"].read_text()
    assert page.index("<h2>Verdict</h2>") < page.index("<h2>fashion-mnist</h2>")
    assert ('class="failed"' in page) == failed and ("&lt;by&gt;" in page) == failed
    assert json.loads(files["report.json"].read_text())["verdict"] == verdict
    # Outside a gate session (labelflip report) there is no verdict.
    assert "Verdict" not in write_report(tmp_path / "plain", results, [])["summary.md"].read_text()


def test_write_report_refuses_bad_output_and_empty_input(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        write_report(tmp_path / "file", fixed_runs((0.1,)), [])
    with pytest.raises(ConfigError, match="nothing to report"):
        write_report(tmp_path / "out", [], [])
    assert not (tmp_path / "out").exists()


# --- attack strength vs AutoAttack ---------------------------------------------------------------------------

def strength_record(attack: str, epsilon: float, n: int = 20, case_flips: int = 8, aa_flips: int = 15,
                    missed: int = 7, only_case: int = 0, p_value: float = 0.0078, subject: str = "fashion-mnist",
                    **kw: Any) -> dict[str, Any]:
    """An attack_strength.json as test_attack_strength writes it (gate/strength.py)."""
    case = f"{subject}-{attack}-eps{epsilon:g}"
    record = {"schema": "labelflip.attack-strength/1", "case": case, "subject": subject, "dataset": subject,
              "attack": attack, "epsilon": epsilon}
    if kw.get("reason"):
        return {**record, "compared": False, "reason": kw["reason"]}
    return {**record, "compared": True, "autoattack_case": f"{subject}-linf-autoattack-eps{epsilon:g}", "n": n,
            "case_flips": case_flips, "autoattack_flips": aa_flips, "missed": missed, "only_case": only_case,
            "p_value": p_value, "alpha": 0.01, "margin": 0.05, "weak": p_value < 0.01,
            "verdict": kw.get("verdict", "weaker" if p_value < 0.01 else "not shown"), "message": "…"}


def strength_records() -> list[dict[str, Any]]:
    return [strength_record("linf-pgd", 0.1, case_flips=15, missed=1, only_case=1, p_value=0.75),
            strength_record("linf-pgd", 0.03),
            strength_record("linf-pgd", 0.2, n=400, case_flips=300, aa_flips=301, missed=1, only_case=0, p_value=0.5,
                            verdict="as strong"),
            strength_record("l2-pgd", 1.0, reason="profile 'smoke' has no l2-autoattack case at ε=1"),
            strength_record("linf-pgd", 0.1, subject="mnist-5k")]  # another subject: not in this section


def test_markdown_tables_attack_strength_per_case_in_its_datasets_section(report_input: Any) -> None:
    results, noise = report_input
    text = summary_markdown(results, noise, strength_records())
    rows = _md_tables(text)["Attack strength vs AutoAttack"]
    assert rows[0] == ["attack", "ε", "n", "flipped", "AutoAttack flipped", "missed", "only by attack", "p", "verdict"]
    assert rows[1:] == [["linf-pgd", "0.03", "20", "40.0%", "75.0%", "7", "0", "0.008", "weaker"],
                        ["linf-pgd", "0.1", "20", "75.0%", "75.0%", "1", "1", "0.750", "not shown (n = 20, p = 0.750)"],
                        ["linf-pgd", "0.2", "400", "75.0%", "75.2%", "1", "0", "0.500", "as strong"]]
    note = text[text.index("#### Attack strength vs AutoAttack"):]
    assert "exact one-sided McNemar" in note and "weaker when p < 0.01" in note
    assert "as strong when the images show AutoAttack flips at most 0.05 of them more" in note
    assert "Not compared: l2-pgd at ε = 1: profile 'smoke' has no l2-autoattack case at ε=1." in note
    # Without records (runs made outside a gate session) there is no such table.
    assert "Attack strength" not in summary_markdown(results, noise)


def test_html_and_report_json_carry_the_attack_strength_table(tmp_path: Path, report_input: Any) -> None:
    results, noise = report_input
    page = report_html(results, noise, {}, strength_records())
    assert "<h3>Attack strength vs AutoAttack</h3>" in page and "<td>0.008</td><td>weaker</td>" in page
    files = write_report(tmp_path / "report", results, noise, strength_records())
    assert files["summary.md"].read_text() == summary_markdown(results, noise, strength_records())
    index = json.loads(files["report.json"].read_text())
    assert [(r["case"], r["compared"]) for r in index["attack_strength"]] == [
        ("fashion-mnist-linf-pgd-eps0.1", True), ("fashion-mnist-linf-pgd-eps0.03", True),
        ("fashion-mnist-linf-pgd-eps0.2", True), ("fashion-mnist-l2-pgd-eps1", False),
        ("mnist-5k-linf-pgd-eps0.1", True)]


def test_load_strength_finds_the_gate_sessions_records_and_rejects_others(tmp_path: Path) -> None:
    from labelflip_models.reports.load import load_strength

    runs = tmp_path / "gate-runs"
    for record in strength_records():
        _dump(runs / record["case"] / "attack_strength.json", record)
        _dump(runs / record["case"] / "result.json", make_result(flip_matrix(0.1), FASHION))
    found = load_strength([runs])
    assert [r["case"] for r in found] == sorted(r["case"] for r in strength_records())
    assert load_strength([runs / "fashion-mnist-linf-pgd-eps0.1" / "result.json"]) == []
    _dump(runs / "bad" / "attack_strength.json", {"schema": "labelflip.attack-strength/0"})
    with pytest.raises(ConfigError, match="expected 'labelflip.attack-strength/1'"):
        load_strength([runs])
