"""A user's own test set: Fashion-MNIST written out as PNG folders and as an .npz gives the built-in loader's flip
matrices; class order follows the model's names; a datasets folder loads; 100 and 1,000 generated classes go
through the CLI, the report and the gate (regen, pass, a weakened model fails)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from labelflip_models.data import load_dataset
from labelflip_models.data.own import describe_source
from labelflip_models.errors import DataError
from labelflip_models.gate.cases import run_case
from labelflip_models.gate.profiles import Case

from .helpers import GATE_FILE, run_cli
from .own_data import class_names, generated, save_model, write_image_folder, write_npz

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    """(built-in Fashion-MNIST, its reference model, the test set as PNG folders, as an .npz)."""
    from labelflip_models.models.cache import load_or_train
    from labelflip_models.runs.results import model_block

    data = load_dataset("fashion-mnist")
    model = load_or_train(data).model
    root = tmp_path_factory.mktemp("fashion")
    # Folder names sort in the built-in order; file names keep each class's images in test-set order.
    folders = [f"{i}-{name.replace('/', '-')}" for i, name in enumerate(data.class_names)]
    write_image_folder(root / "png", data.test_images[..., None], data.test_labels, folders)
    npz = write_npz(root / "fashion.npz", data.test_images, data.test_labels, list(data.class_names))
    return data, model, model_block(model), root / "png", npz


def _flips(case: Case, data, model, info) -> np.ndarray:
    result, _ = run_case(case, data, model, info, seed=0)
    return np.array(result["flip_matrix"])


@pytest.mark.parametrize("attack, epsilon", [("fgsm", 0.1), ("linf-pgd", 0.05), ("l2-deepfool", None)])
def test_fashion_mnist_npz_gives_the_builtin_flip_matrix(fashion, attack, epsilon):
    data, model, info, _, npz = fashion
    own = load_dataset(str(npz))
    assert own.class_names == data.class_names and own.class_order == "class_names in the .npz"
    case = Case("smoke", "fashion-mnist", attack, epsilon)
    assert np.array_equal(_flips(case, own, model, info), _flips(case, data, model, info))


@pytest.mark.parametrize("attack, epsilon", [("fgsm", 0.1), ("l2-deepfool", None)])
def test_fashion_mnist_png_folders_give_the_builtin_flip_matrix(fashion, attack, epsilon):
    """Bit-identical for deterministic attacks. Random starts are drawn in image order, and a folder tree orders
    the images by class, so L∞ PGD's starts differ per image (same distribution) and its matrix is not compared."""
    data, model, info, png, _ = fashion
    own = load_dataset(str(png))
    assert own.class_order == "sorted folder names" and own.num_classes == 10
    order = np.argsort(data.test_labels, kind="stable")
    assert np.array_equal(own.test_images[np.arange(len(order))], data.test_images[order])
    case = Case("smoke", "fashion-mnist", attack, epsilon)
    assert np.array_equal(_flips(case, own, model, info), _flips(case, data, model, info))


def test_class_names_reorder_folders_by_name(tmp_path):
    _, images, labels = generated(3, 2)
    write_image_folder(tmp_path, images, labels, ["cat", "dog", "ant"])
    assert load_dataset(str(tmp_path)).class_names == ("ant", "cat", "dog")  # sorted folder names
    own = load_dataset(str(tmp_path), class_names=("dog", "cat", "ant"))
    assert own.class_names == ("dog", "cat", "ant") and own.class_order == "`class_names` (the model's order)"
    # Folder "ant" (sorted first) holds the images labelled 2 here, which the model calls class 2 ("ant").
    ant = images[labels == 2]
    assert np.array_equal(own.test_images[np.flatnonzero(own.test_labels == 2)], ant)
    with pytest.raises(DataError, match=r"names without data: 'emu'; data without a name: 'ant'"):
        load_dataset(str(tmp_path), class_names=("dog", "cat", "emu"))


def test_train_test_split_reads_test(tmp_path):
    _, images, labels = generated(2, 3)
    write_image_folder(tmp_path / "train", images, labels, ["a", "b"])
    write_image_folder(tmp_path / "test", images[:4], labels[:4], ["a", "b"])
    assert len(load_dataset(str(tmp_path)).test_labels) == 4
    write_image_folder(tmp_path / "train", images[:1], labels[:1], ["c", "d"])
    with pytest.raises(DataError, match=r"train/ and test/ hold different class folders \(only in train/: 'c'"):
        describe_source(tmp_path)


def test_non_images_are_ignored_and_counted(tmp_path):
    _, images, labels = generated(2, 2)
    write_image_folder(tmp_path, images, labels, ["a", "b"])
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "a" / ".DS_Store").write_bytes(b"\0")
    own = load_dataset(str(tmp_path))
    assert len(own.test_labels) == 4 and own.note == "1 files without an image extension ignored"


def test_resize_and_center_crop(tmp_path):
    from labelflip_models.data import Preprocess

    for name, size in (("a", (40, 30)), ("b", (30, 40))):
        (tmp_path / name).mkdir()
        Image.fromarray(np.full((*size, 3), 200, np.uint8)).save(tmp_path / name / "1.png")
    with pytest.raises(DataError, match=r"images differ in size: .* declare `resize` and/or `center_crop`"):
        load_dataset(str(tmp_path))
    own = load_dataset(str(tmp_path), preprocess=Preprocess(resize=16, center_crop=12))
    assert own.test_images.shape == (2, 12, 12, 3) and (own.test_images[np.arange(2)] == 200).all()


def test_npz_layouts(tmp_path):
    _, images, labels = generated(3, 2)
    nchw = write_npz(tmp_path / "nchw.npz", images.transpose(0, 3, 1, 2), labels)
    floats = write_npz(tmp_path / "floats.npz", images.astype(np.float32) / 255, labels)
    a, b = load_dataset(str(nchw)), load_dataset(str(floats))
    assert np.array_equal(a.test_images, images) and a.class_names == ("0", "1", "2")
    assert np.array_equal(a.tensors("test")[0], b.tensors("test")[0])


def test_datasets_save_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    _, images, labels = generated(3, 2)
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["x", "y", "z"])})
    split = datasets.Dataset.from_dict({"img": [Image.fromarray(i) for i in images], "label": labels.tolist()},
                                       features=features)
    datasets.DatasetDict({"test": split}).save_to_disk(str(tmp_path / "hf"))
    own = load_dataset(str(tmp_path / "hf"))
    assert own.class_names == ("x", "y", "z") and own.class_order == "the ClassLabel's names"
    assert np.array_equal(own.test_images[np.arange(len(labels))], images)
    assert np.array_equal(own.test_labels, labels)


@pytest.fixture(scope="module", params=[100, 1000], ids=["100-classes", "1000-classes"])
def many(request, tmp_path_factory):
    """A generated K-class ImageFolder (20 images per class), its model, and a weakened model whose class 0
    absorbs flips."""
    k = request.param
    root = tmp_path_factory.mktemp(f"k{k}")
    templates, images, labels = generated(k, 20, seed=1)
    write_image_folder(root / "data", images, labels, class_names(k))
    return k, root, save_model(templates, root / "model.pt"), save_model(templates, root / "weak.pt", catch_all=2.5)


def test_many_classes_through_cli_and_report(many, capsys, tmp_path):
    k, root, model, _ = many
    status, out, err = run_cli(capsys, ["attack", "--dataset", str(root / "data"), "--model", str(model),
                                        "--attack", "fgsm", "--epsilon", "0.1", "--out", str(tmp_path / "run")])
    assert status == 0, err
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["dataset"]["n"] == 20 * k and len(result["class_names"]) == k
    assert result["dataset"]["class_order"] == "sorted folder names"
    status, _, err = run_cli(capsys, ["report", str(tmp_path / "run"), "--out", str(tmp_path / "report")])
    assert status == 0, err
    assert (tmp_path / "report" / "summary.md").is_file() and (tmp_path / "report" / "report.html").is_file()


def test_many_classes_through_the_gate(many, pytester_gate):
    """Regen, then an unchanged rerun passes, then the weakened model fails; FGSM's cases only (the profile's
    other attacks add minutes, not coverage of many classes)."""
    k, root, model, weak = many
    pytester_gate.makepyfile(test_gate=GATE_FILE)
    pytester_gate.makefile(".toml", pyproject=f"""
[tool.pytest.ini_options]
labelflip_profile = "quick"
labelflip_model = "{model}"
labelflip_dataset = "{root / 'data'}"
labelflip_baselines = "baselines"
""")
    # With 20 images per class, a catch-all that takes a little from every class is a loss no single class's test
    # can be sure of at 1,000 classes; the case's robust accuracy shows it.
    selected = ("-k", "fgsm and (flip_rate or success or robust_accuracy)", "-p", "no:cacheprovider")
    assert pytester_gate.runpytest(*selected, "--labelflip-regen").ret == 0
    again = pytester_gate.runpytest(*selected)
    per_class = 1 if k > 100 else k
    again.assert_outcomes(passed=2 + per_class)
    failed = pytester_gate.runpytest(*selected, f"--labelflip-model={weak}", "-W", "ignore::UserWarning")
    text = failed.stdout.str()
    assert failed.parseoutcomes().get("failed", 0) >= 1, text
    assert "less robust" in text, text


def _attack(data, model, monkeypatch, chunk: int, keep_bytes: int, attack: str = "fgsm"):
    from labelflip_models.attacks import Bounds, make_attack
    from labelflip_models.runs import evaluate

    monkeypatch.setattr(evaluate, "CHUNK_IMAGES", chunk)
    monkeypatch.setattr(evaluate, "KEEP_BYTES", keep_bytes)
    # Batches of 7: a chunk is at least one batch.
    return evaluate.attack_images(data, model, {}, np.arange(len(data.test_labels)), "all", make_attack(attack),
                                  0.1, bounds=Bounds(), seed=0, batch_size=7)


def test_streamed_chunks_and_reduced_runs_give_the_same_figures(tmp_path, monkeypatch):
    """Chunks of 7 images decoded by workers, and a run that keeps only per-image figures, agree with one chunk that
    keeps everything (FGSM: no random start, so the chunks' seeds do not matter)."""
    from .own_data import NearestTemplate

    templates, images, labels = generated(5, 9)
    data = load_dataset(str(write_image_folder(tmp_path, images, labels, class_names(5))))
    model = NearestTemplate(templates).eval()
    whole, kept = _attack(data, model, monkeypatch, 1024, 1 << 30)
    streamed, reduced = _attack(data, model, monkeypatch, 7, 0)
    assert kept.kept and not reduced.kept and reduced.images is None
    for key in ("flip_matrix", "per_class_flip_rate", "robust_accuracy", "perturbation", "perturbation_linf"):
        assert streamed[key] == whole[key], key
    assert torch_equal(reduced.norms, kept.norms) and reduced.adversarial_range == kept.adversarial_range


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_random_starts_do_not_depend_on_the_chunks(tmp_path, monkeypatch):
    """Seeded once per run, the chunks continue one random stream: L∞ PGD's adversarials are bit-identical in
    chunks of 7 and in one chunk."""
    from .own_data import NearestTemplate

    templates, images, labels = generated(4, 8)
    data = load_dataset(str(write_npz(tmp_path / "set.npz", images, labels)))
    model = NearestTemplate(templates).eval()
    _, whole = _attack(data, model, monkeypatch, 1024, 1 << 30, "linf-pgd")
    _, chunked = _attack(data, model, monkeypatch, 7, 1 << 30, "linf-pgd")
    assert torch_equal(whole.raw, chunked.raw) and torch_equal(whole.adv_pred, chunked.adv_pred)


def test_an_image_that_fails_to_decode_in_a_worker_is_one_error(tmp_path, monkeypatch):
    templates, images, labels = generated(2, 3)
    write_image_folder(tmp_path, images, labels, ["a", "b"])
    png = sorted((tmp_path / "b").iterdir())[0]
    png.write_bytes(png.read_bytes()[:60])  # the header still parses; the pixels are cut off
    from .own_data import NearestTemplate

    data = load_dataset(str(tmp_path))
    with pytest.raises(DataError) as raised:
        _attack(data, NearestTemplate(templates).eval(), monkeypatch, 4, 1 << 30)
    assert str(raised.value).startswith(f"cannot read image {png}") and "\n" not in str(raised.value)


def test_val_split_and_dataset_names(tmp_path, monkeypatch):
    from labelflip_models.data.names import dataset_key

    _, images, labels = generated(2, 3)
    write_image_folder(tmp_path / "imagenet" / "train", images, labels, ["a", "b"])
    write_image_folder(tmp_path / "imagenet" / "val", images[:2], labels[:2], ["a", "b"])
    assert len(load_dataset(str(tmp_path / "imagenet")).test_labels) == 2  # val/, as ImageNet's tree has it
    monkeypatch.chdir(tmp_path / "imagenet")
    assert dataset_key(".") == "imagenet" and dataset_key("cifar-10") == "cifar-10"


def test_deep_images_are_refused_not_clipped(tmp_path):
    _, images, labels = generated(2, 1)
    write_image_folder(tmp_path, images, labels, ["a", "b"])
    Image.fromarray(np.full((8, 8), 4000, np.uint16)).save(tmp_path / "a" / "deep.png")
    with pytest.raises(DataError, match=r"image .*deep.png has I;16 pixels \(16-bit or float\)"):
        load_dataset(str(tmp_path))


def test_npz_names_as_bytes_and_floats_resized_stay_in_range(tmp_path):
    from labelflip_models.data import Preprocess

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (4, 9, 9, 3)).astype(np.float32)
    x[:, ::2] = 1.0
    path = write_npz(tmp_path / "f.npz", x, np.array([0, 1, 0, 1]))
    np.savez(path, x=x, y=np.array([0, 1, 0, 1]), class_names=np.array([b"cat", b"dog"]))
    own = load_dataset(str(path), preprocess=Preprocess(resize=5))
    assert own.class_names == ("cat", "dog") and own.test_images.max() <= 1 and own.test_images.min() >= 0


def test_datasets_with_two_label_columns_is_refused(tmp_path):
    datasets = pytest.importorskip("datasets")
    _, images, labels = generated(2, 1)
    features = datasets.Features({"img": datasets.Image(), "fine": datasets.ClassLabel(names=["x", "y"]),
                                  "coarse": datasets.ClassLabel(names=["p", "q"])})
    datasets.Dataset.from_dict({"img": [Image.fromarray(i) for i in images], "fine": labels.tolist(),
                                "coarse": labels.tolist()}, features=features).save_to_disk(str(tmp_path / "hf"))
    with pytest.raises(DataError, match=r"several ClassLabel columns \(fine, coarse\)"):
        load_dataset(str(tmp_path / "hf"))
