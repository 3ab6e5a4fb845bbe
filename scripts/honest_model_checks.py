"""The model checks and the gate's evaluation checks on honest user models, as a user hands them over: none may be
flagged.

Three models, each through the CLI on the user's own files (Fashion-MNIST written out as the user would have it):
- a Fashion-MNIST retrain (another seed than the reference) exported with torch.export (.pt2), on PNG folders;
- the same weights as a state dict with `--arch cw-mnist`, on an .npz;
- a torchvision ResNet-18 trained here for one epoch on 32x32 RGB copies of the images (state dict,
  `--arch torchvision:resnet18`), on an .npz in NHWC uint8.

Each model goes through `labelflip attack` (its model and evaluation checks, as result.json records them) and
through the gate (`pytest` on the shipped gate tests, smoke profile, every evaluation test in
gate/session.EVALUATION_TESTS, their outcomes and messages read from JUnit XML). Writes
docs/zoo/model-checks-honest.json (tests/test_model_checks.py checks it), with provenance. Takes about half an hour
on a 2-core CPU.

    python scripts/honest_model_checks.py [--out docs/zoo/model-checks-honest.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from labelflip_models.data import load_dataset
from labelflip_models.gate.session import EVALUATION_TESTS
from labelflip_models.models.cache import load_or_train
from labelflip_models.provenance import machine, now_iso, versions
from labelflip_models.storage.atomic import atomic_write_text

SCHEMA = "labelflip.model-checks-honest/2"
GATE_FILE = ("from labelflip_models.gate.tests.test_flip_structure import *  # noqa: F401,F403\n"
             "from labelflip_models.gate.tests.test_gate import *  # noqa: F401,F403\n")
PER_CLASS = 100  # test images written per class: the checks take 100 per class
RESNET_TRAIN = 10_000


def write_pngs(root: Path, images: np.ndarray, labels: np.ndarray, names: tuple[str, ...]) -> Path:
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / names[label].replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:05d}.png")
    return root


def rgb32(images: np.ndarray) -> np.ndarray:
    """28x28 grey -> 32x32 RGB uint8, NHWC (zero-padded by 2 on each side)."""
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2)))
    return np.repeat(padded[..., None], 3, axis=3)


def train_resnet(images: np.ndarray, labels: np.ndarray, seed: int = 0) -> torch.nn.Module:
    import torchvision

    torch.manual_seed(seed)
    net = torchvision.models.get_model("resnet18", weights=None, num_classes=10)
    x = torch.tensor(images).permute(0, 3, 1, 2).float() / 255
    y = torch.tensor(labels)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    net.train()
    order = torch.randperm(len(x))
    for i in range(0, len(x), 128):
        batch = order[i:i + 128]
        opt.zero_grad()
        F.cross_entropy(net(x[batch]), y[batch]).backward()
        opt.step()
    return net.eval()


def attack(args: list[str]) -> dict:
    out = Path(tempfile.mkdtemp()) / "run"
    command = [str(Path(sys.executable).parent / "labelflip"), "attack", "--attack", "fgsm", "--epsilon", "0.1",
               "--limit", "1000", "--out", str(out), *args]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr}")
    result = json.loads((out / "result.json").read_text())
    return {"command": " ".join(["labelflip", *command[1:]]), "stdout_first_line": done.stdout.splitlines()[0],
            "model_checks": result["model_checks"], "evaluation_checks": result["evaluation_checks"]}


def gate(args: list[str]) -> dict:
    """The gate's evaluation tests on the model `args` name (--labelflip-* options), with -n 2: each test's outcome
    and message, from JUnit XML."""
    work = Path(tempfile.mkdtemp())
    (work / "test_labelflip.py").write_text(GATE_FILE)
    junit = work / "junit.xml"
    command = [sys.executable, "-m", "pytest", str(work / "test_labelflip.py"), "-p", "no:cacheprovider",
               "--rootdir", str(work), "-n", "2", "--labelflip-profile", "smoke", "--labelflip-baselines",
               str(work / "baselines"), "-k", " or ".join(EVALUATION_TESTS), f"--junitxml={junit}", *args]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=work)
    if not junit.exists():
        raise SystemExit(f"{' '.join(command)} wrote no JUnit XML:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    tests = {}
    for case in ET.parse(junit).iter("testcase"):
        problem = next((case.find(tag) for tag in ("failure", "error", "skipped") if case.find(tag) is not None), None)
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        # A decision that passed its test may still say no: test_attack_strength warns on a weaker attack.
        tests[case.get("name")] = {"outcome": "passed" if problem is None else problem.tag,
                                   "decision_passed": props.get("labelflip_passed"),
                                   "message": props.get("labelflip_message") or (problem.get("message", "")
                                                                                  if problem is not None else "")}
    return {"command": " ".join(["pytest", *command[3:]]), "exit_code": done.returncode,
            "seconds": round(time.perf_counter() - start, 1), "tests": tests}


def flagged_by(test: dict) -> bool:
    """Whether a gate test's outcome flags the model: a failure or error, or a decision that said no. A skip (a case
    with no AutoAttack case to compare with) flags nothing."""
    return test["outcome"] in ("failure", "error") or test["decision_passed"] == "False"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/zoo/model-checks-honest.json"))
    args = parser.parse_args()
    start = time.perf_counter()
    data = load_dataset("fashion-mnist")
    pick = np.concatenate([np.flatnonzero(data.test_labels == c)[:PER_CLASS] for c in range(data.num_classes)])
    images, labels = data.test_images[pick], data.test_labels[pick]
    work = Path(tempfile.mkdtemp())
    pngs = write_pngs(work / "png", images, labels, data.class_names)
    np.savez(work / "grey.npz", x=images, y=labels)
    np.savez(work / "rgb.npz", x=rgb32(images), y=labels)

    retrain = load_or_train(data, seed=1).model.eval()
    program = torch.export.export(retrain, (torch.rand(2, 1, 28, 28),), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
    torch.export.save(program, str(work / "retrain.pt2"))
    torch.save(retrain.net.state_dict(), work / "retrain-state.pt")
    resnet = train_resnet(rgb32(data.train_images[:RESNET_TRAIN]), data.train_labels[:RESNET_TRAIN])
    torch.save(resnet.state_dict(), work / "resnet18.pt")
    names = ",".join(n.replace("/", "-") for n in data.class_names)

    options = {  # each model's options, as `labelflip attack` names them; the gate's are --labelflip-<name>
        "retrain seed 1, .pt2, PNG folders": ["--model", str(work / "retrain.pt2"), "--dataset", str(pngs),
                                              "--class-names", names],
        "retrain seed 1, state dict + cw-mnist, .npz": ["--model", str(work / "retrain-state.pt"), "--arch",
                                                        "cw-mnist", "--mean", "0.5", "--std", "1", "--dataset",
                                                        str(work / "grey.npz")],
        "ResNet-18 (torchvision), state dict, RGB .npz": ["--model", str(work / "resnet18.pt"), "--arch",
                                                          "torchvision:resnet18", "--dataset", str(work / "rgb.npz")],
    }
    models = {}
    for name, opts in options.items():
        models[name] = {**attack(opts), "gate": gate([o.replace("--", "--labelflip-", 1) if o.startswith("--")
                                                      else o for o in opts])}
        print(name, json.dumps(models[name]["gate"]["tests"], indent=1), flush=True)
    flagged = {name: [c["name"] for c in m["model_checks"] + m["evaluation_checks"] if not c["passed"]]
               + [t for t, r in m["gate"]["tests"].items() if flagged_by(r)] for name, m in models.items()}
    record = {"schema": SCHEMA, "models": models, "flagged": flagged,
              "provenance": {"timestamp": now_iso(), "machine": machine(), "versions": versions(),
                             "seconds": round(time.perf_counter() - start, 1)}}
    atomic_write_text(args.out, json.dumps(record, indent=1) + "\n")
    print(json.dumps(flagged, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
