"""`labelflip` command line: train and attack the reference models."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .attacks import ATTACKS, Bounds, check_epsilon, make_attack, run_attack
from .data import DATASETS, first_n, load_dataset
from .devices import resolve_device
from .errors import LabelflipError
from .model_cache import load_or_train
from .report import benchmark_table, build_result, check_out_dir, write_run


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--data-dir", help="directory holding datasets (default: $LABELFLIP_DATA_DIR)")
    p.add_argument("--download", action="store_true", help="allow torchvision to download a missing dataset")
    p.add_argument("--seed", type=int, default=0, help="training and attack seed (default 0)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    p.add_argument("--arch", default="cw-mnist", help="architecture of the reference model")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="labelflip", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train (or load from cache) the reference model")
    _common(train)
    attack = sub.add_parser("attack", help="attack test images, write flip_matrix.csv and result.json")
    _common(attack)
    attack.add_argument("--attack", required=True, choices=sorted(ATTACKS))
    attack.add_argument("--epsilon", type=float, required=True, help="L∞ budget in pixel space ([0, 1])")
    attack.add_argument("--limit", type=int, help="attack only the first N test images (dataset order)")
    attack.add_argument("--batch-size", type=int, default=256)
    attack.add_argument("--out", required=True, help="output directory")
    table = sub.add_parser("bench-table", help="Markdown table from a pytest-benchmark JSON report")
    table.add_argument("report", help="file written by pytest --benchmark-json")
    return parser


def _train(args: argparse.Namespace, progress: bool):
    device = resolve_device(args.device)
    data = load_dataset(args.dataset, args.data_dir, args.download)
    trained = load_or_train(data, arch=args.arch, seed=args.seed, device=device, progress=progress)
    return data, trained


def cmd_train(args: argparse.Namespace, progress: bool) -> None:
    data, trained = _train(args, progress)
    side = trained.sidecar
    how = f"trained in {side['train_seconds']} s" if trained.trained_now else "loaded from cache"
    print(f"{data.name}: test accuracy {trained.test_accuracy:.4f} ({how}, seed {side['seed']})")
    print(f"model: {trained.weights_path}")
    if data.note:
        print(f"note: {data.note}")


def cmd_attack(args: argparse.Namespace, progress: bool) -> None:
    start = time.perf_counter()
    out = check_out_dir(args.out)
    check_epsilon(args.epsilon, Bounds())
    if args.limit is not None and args.limit <= 0:
        raise LabelflipError(f"--limit must be a positive number of images, got {args.limit}")
    if args.batch_size <= 0:
        raise LabelflipError(f"--batch-size must be positive, got {args.batch_size}")
    data, trained = _train(args, progress)
    indices = first_n(data.test_labels, args.limit or len(data.test_labels))
    images, labels = data.tensors("test", indices)
    result = run_attack(trained.model, images, labels, make_attack(args.attack), args.epsilon,
                        batch_size=args.batch_size, seed=args.seed, progress=progress)
    model_info = {"arch": args.arch, "sha256": trained.sha256, "test_accuracy": trained.test_accuracy,
                  "path": str(trained.weights_path)}
    summary = build_result(data, model_info, f"first {len(indices)} test images", result,
                           resolve_device(args.device), time.perf_counter() - start)
    csv_path, json_path = write_run(out, summary)
    frac = summary["flip_fraction"]
    print(f"{data.name} {args.attack} ε={args.epsilon:g}: {frac['count']}/{frac['n']} images flipped "
          f"({frac['rate']:.3f}), clean accuracy {summary['clean_accuracy']['rate']:.3f}, "
          f"attack success {summary['attack_success']['rate']:.3f}")
    print(f"wrote {csv_path} and {json_path}")
    if data.note:
        print(f"note: {data.note}")


def cmd_bench_table(args: argparse.Namespace, progress: bool) -> None:
    try:
        bench = json.loads(Path(args.report).read_text())
    except (OSError, ValueError) as exc:
        raise LabelflipError(f"cannot read benchmark report {args.report}: {exc}") from None
    print(benchmark_table(bench), end="")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    progress = sys.stderr.isatty()
    try:
        commands = {"train": cmd_train, "attack": cmd_attack, "bench-table": cmd_bench_table}
        commands[args.command](args, progress)
    except LabelflipError as exc:
        print(f"labelflip: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("labelflip: interrupted; no partial results were written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
