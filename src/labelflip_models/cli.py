"""`labelflip` command line: train, attack and probe the reference models or your own, and report the results."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from .attacks import ATTACKS, NORMS, AttackResult, Bounds, check_epsilon_for, make_attack
from .attacks.engine import ENGINES, check_engine
from .attacks.registry import FAMILIES, attack_name
from .bench.report import compare, load_baseline, load_report, make_baseline, markdown_table, write_baseline
from .bench.throughput import ARCHS as THROUGHPUT_ARCHS
from .bench.throughput import measure as measure_throughput
from .data import DATASETS, Dataset, Preprocess, first_n, is_builtin, load_dataset
from .data.own import describe_source
from .devices import resolve_device, start_device
from .errors import ConfigError, LabelflipError
from .gate.config import REFERENCE_BASELINES
from .gate.decisions import Decision, decision_record
from .gate.profiles import PROFILES, Case
from .gate.scaffold import config_section, write_test_file
from .models.cache import SHIPPED_DIR, load_or_train
from .models.io import parse_bounds, parse_channel_values, parse_class_names
from .reports import load_runs, load_strength, write_report
from .runs.evaluate import attack_images, load_user_model, probe_noise
from .runs.model_checks import ModelCheck, checks_on_test_images
from .runs.results import model_block, with_model_checks, write_noise, write_run
from .storage.out_dir import check_out_dir

# The library's parameters, as this command line names them (LabelflipError.phrased).
OPTION_NAMES = {name: "--" + name.replace("_", "-") for name in (
    "arch", "mean", "std", "bounds", "class_names", "trust_pickle", "data_dir", "download", "device", "engine",
    "force", "dataset", "resize", "center_crop")}
# Exit statuses besides 0: 1 a verdict (bench-compare found a regression), 2 bad input, 70 a bug (sysexits'
# EX_SOFTWARE), 130 interrupted.
EXIT_BUG = 70


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, metavar="NAME_OR_PATH",
                   help=f"a built-in dataset ({', '.join(DATASETS)}) or the path of your own test set: an ImageFolder "
                        "tree, a .npz with x and y, or a datasets save_to_disk folder (with --model)")
    p.add_argument("--data-dir", help="directory holding datasets (default: $LABELFLIP_DATA_DIR)")
    p.add_argument("--download", action="store_true", help="allow torchvision to download a missing dataset")
    p.add_argument("--seed", type=int, default=0, help="training and attack seed (default 0)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    p.add_argument("--arch", help="architecture: of the reference model (default: the paper's for the dataset, "
                                  "cw-mnist or, for cifar-10, cw-cifar; also preact-resnet18), or of a state-dict "
                                  "--model")


def _model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("your own model (default: labelflip's reference model for --dataset)")
    g.add_argument("--model", help="TorchScript file, or state_dict / safetensors file together with --arch")
    g.add_argument("--mean", help="normalisation mean the model expects: one value or one per channel")
    g.add_argument("--std", help="normalisation std the model expects: one value or one per channel")
    g.add_argument("--bounds", default="0,1", help="LO,HI pixel range of the model's input (default 0,1); "
                                                   "ε is in these units")
    g.add_argument("--class-names", help="comma-separated class names in the model's output order, or @FILE with one "
                                         "name per line; your own data's classes are matched to them by name")
    g.add_argument("--resize", type=int, metavar="N", help="your own data: resize each image's shorter side to N "
                                                           "pixels (torchvision's Resize, antialiased)")
    g.add_argument("--center-crop", type=int, metavar="N", help="your own data: then crop the centred N×N square")
    g.add_argument("--trust-pickle", action="store_true",
                   help="load a pickled whole-module checkpoint (this executes code from the file)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="labelflip", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train (or load from cache) the reference model")
    _common(train)
    train.add_argument("--retrain", action="store_true",
                       help="train (or take from the model cache) even where labelflip ships the reference weights")
    attack = sub.add_parser("attack", help="attack test images, write flip_matrix.csv (flip_pairs.csv above 100 "
                                           "classes) and result.json")
    _common(attack)
    _model_options(attack)
    attack.add_argument("--attack", required=True, choices=sorted([*ATTACKS, *FAMILIES]),
                        help="the attack; names without a norm (autoattack, apgd-ce, apgd-t, fab-t, square, pgd, "
                             "deepfool) take it from --norm")
    attack.add_argument("--norm", choices=sorted(NORMS), help="the norm of an --attack named without one")
    attack.add_argument("--epsilon", type=float,
                        help="budget of a fixed-ε attack, in the attack's norm and pixel space (omit for minimal "
                             "attacks: l2-cw, l0-bb, l1-bb, l2-deepfool, linf-deepfool)")
    attack.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="override one of the attack's parameters (its reference's names and defaults: "
                             "Foolbox's or pyautoattack's), e.g. --param steps=100 (repeatable)")
    attack.add_argument("--limit", type=int, help="attack only the first N test images (dataset order)")
    attack.add_argument("--batch-size", type=int, help="images per batch (default: 256 on a CPU, 4096 on a GPU)")
    attack.add_argument("--engine", default="auto", choices=ENGINES,
                        help="auto (default): labelflip's native kernels where it has one, in bf16 where the "
                             "hardware runs it natively (minimal attacks: fp32), else the reference; reference (or "
                             "foolbox): the attack's reference implementation, Foolbox or pyautoattack; native / "
                             "native-fp32: native kernels in bf16 / fp32")
    attack.add_argument("--no-evaluation-checks", action="store_true",
                        help="skip the evaluation checks after the attack: the large-ε probe, and for linf-pgd at "
                             "an ε its convergence, L∞ Square and FGSM on the same images (docs/methods.md)")
    attack.add_argument("--out", required=True, help="output directory")
    run = sub.add_parser("run", help="compute a gate profile's cases into a runs directory for "
                                     "`pytest --labelflip-runs`; under torchrun or srun, split over the processes")
    run.add_argument("--profile", default="smoke", choices=list(PROFILES), help="gate profile (default smoke)")
    run.add_argument("--dataset", metavar="NAME_OR_PATH",
                     help="only this dataset's cases (needed with --model): a built-in name or your test set's path")
    run.add_argument("--case", action="append", default=[], metavar="TEXT",
                     help="only the cases whose id contains TEXT, e.g. linf-pgd (repeatable)")
    run.add_argument("--out", required=True, help="runs directory: one folder per case; rerun to complete it")
    run.add_argument("--data-dir", help="directory holding datasets (default: $LABELFLIP_DATA_DIR)")
    run.add_argument("--download", action="store_true", help="allow torchvision to download a missing dataset")
    run.add_argument("--seed", type=int, default=0, help="training and attack seed, as the gate's (default 0)")
    run.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda (each process its local "
                                                     "GPU), cuda:N")
    run.add_argument("--engine", default="auto", choices=ENGINES, help="the attacks' engine, as the gate's "
                                                                       "--labelflip-engine (default auto)")
    run.add_argument("--arch", help="architecture (registry name) of a state-dict --model")
    run.add_argument("--batch-size", type=int, help="images per batch (default: 256 on a CPU, 4096 on a GPU); the "
                                                    "processes share each case by whole batches, so many processes "
                                                    "need small enough batches")
    run.add_argument("--uncapped", action="store_true", help="attack every selected image, lifting per-class caps, "
                                                             "as the gate's --labelflip-uncapped")
    _model_options(run)
    noise = sub.add_parser("noise", help="white-noise probe: classify uniform-noise images, write noise.json")
    _common(noise)
    _model_options(noise)
    noise.add_argument("--n", type=int, default=10000, help="number of noise images (default 10000)")
    noise.add_argument("--out", required=True, help="output directory")
    report = sub.add_parser("report", help="heatmaps, trend plots, summary.md, report.html and report.json of runs")
    report.add_argument("runs", nargs="+", metavar="RUN_DIR", help="directories written by attack/noise (or parents)")
    report.add_argument("--out", required=True, help="output directory")
    table = sub.add_parser("bench-table", help="Markdown table from a pytest-benchmark JSON report")
    table.add_argument("report", help="file written by pytest --benchmark-json")
    baseline = sub.add_parser("bench-baseline", help="write a benchmark baseline (ratios to the reference loop)")
    baseline.add_argument("reports", nargs="+", metavar="REPORT",
                          help="files written by pytest --benchmark-json; several runs give median ratios")
    baseline.add_argument("--out", required=True, help="baseline file to write (JSON)")
    bench_compare = sub.add_parser("bench-compare", help="judge a benchmark report against a baseline: exit 1 on a "
                                                         "regression, 2 on bad input")
    bench_compare.add_argument("report", help="file written by pytest --benchmark-json")
    bench_compare.add_argument("--baseline", required=True, help="file written by labelflip bench-baseline")
    bench_compare.add_argument("--margin", type=float, default=0.25,
                               help="a ratio more than this fraction above the baseline's regressed (default 0.25)")
    init = sub.add_parser("init", help="set up the gate in your repository: write DIR/test_labelflip.py and print the "
                                       "pytest config section for your model")
    init.add_argument("--dir", default="robustness_tests", help="folder of the generated test file "
                                                               "(default robustness_tests)")
    init.add_argument("--force", action="store_true", help="overwrite a test_labelflip.py with other content")
    init.add_argument("--model", help="your model file (TorchScript, or a state dict with --arch); default: "
                                      "labelflip's reference models")
    init.add_argument("--dataset", metavar="NAME_OR_PATH", help="the dataset your model classifies (needed with "
                                                                "--model): a built-in name or your test set's path")
    init.add_argument("--arch", help="architecture (registry name) of a state-dict --model")
    init.add_argument("--baselines", help="baseline folder, relative to the folder you run init in: the repository "
                                          "root (default with --model: DIR/baselines)")
    init.add_argument("--profile", default="smoke", choices=list(PROFILES), help="gate profile (default smoke)")
    speed = sub.add_parser("throughput", help="training and L∞-PGD images/s and GFLOP/s of an architecture, on "
                                              "synthetic CIFAR-10-shaped data")
    speed.add_argument("--arch", required=True, choices=THROUGHPUT_ARCHS)
    speed.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    speed.add_argument("--batch-size", type=int, help="images per step (default: the recipe's batch size)")
    speed.add_argument("--seconds", type=float, default=3.0, help="time each measurement for about this long "
                                                                  "(default 3)")
    for command in sub.choices.values():
        command.add_argument("--debug", action="store_true",
                             help="show the traceback of an unexpected internal error (a bug)")
    return parser


def _train(args: argparse.Namespace, progress: bool):
    if not is_builtin(args.dataset) and not Path(args.dataset).exists():
        raise ConfigError(f"--dataset: unknown dataset {args.dataset!r}: neither a built-in dataset "
                          f"({', '.join(DATASETS)}) nor an existing path to your own test set")
    if not is_builtin(args.dataset):
        raise ConfigError(f"--dataset {args.dataset}: labelflip trains and attacks its reference models on the "
                          f"built-in datasets ({', '.join(DATASETS)}); gate your own data with your own --model")
    device = resolve_device(args.device)
    data = load_dataset(args.dataset, args.data_dir, args.download)
    trained = load_or_train(data, arch=args.arch, seed=args.seed, device=device, progress=progress,
                            shipped=not getattr(args, "retrain", False))
    return data, trained


def cmd_train(args: argparse.Namespace, progress: bool) -> None:
    data, trained = _train(args, progress)
    side = trained.sidecar
    how = (f"trained in {side['train_seconds']} s" if trained.trained_now
           else "the shipped reference weights" if trained.weights_path.is_relative_to(SHIPPED_DIR)
           else "loaded from cache")
    print(f"{data.name}: test accuracy {trained.test_accuracy:.4f} ({how}, seed {side['seed']})")
    print(f"model: {trained.weights_path}")
    if data.note:
        print(f"note: {data.note}")


def _parse_params(items: list[str]) -> dict[str, Any]:
    params = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"--param needs NAME=VALUE, got {item!r}")
        try:
            params[name] = json.loads(value)
        except ValueError:
            params[name] = value  # a bare string, e.g. loss=logits
    return params


def _model_and_data(args: argparse.Namespace, progress: bool) -> tuple[Dataset, nn.Module, dict[str, Any], Bounds]:
    """The dataset (class names overridden if asked) and the model under attack: the user's file or our reference."""
    bounds = Bounds(*parse_bounds(args.bounds))
    mean = parse_channel_values(args.mean, "mean") if args.mean else None
    std = parse_channel_values(args.std, "std") if args.std else None
    if args.model is None:
        if mean or std or args.trust_pickle or args.bounds != "0,1" or args.resize or args.center_crop:
            raise ConfigError("--mean/--std/--bounds/--trust-pickle/--resize/--center-crop describe a --model and "
                              "its data; none given")
        data, trained = _train(args, progress)
        model = trained.model
        info = model_block(model, arch=trained.sidecar["arch"], path=trained.weights_path, reference=trained.sidecar)
    else:
        data = _user_data(args)
        model = load_user_model(Path(args.model), data, bounds, arch=args.arch, mean=mean, std=std,
                                trust_pickle=args.trust_pickle).to(resolve_device(args.device))
        info = model_block(model, arch=args.arch, path=args.model)
    if args.class_names and is_builtin(args.dataset):
        data = replace(data, class_names=parse_class_names(args.class_names, data.num_classes))
    return data, model, info, bounds


def _user_data(args: argparse.Namespace) -> Dataset:
    """The dataset a --model classifies: a built-in one, or the user's own, its classes in --class-names' order."""
    for option, value in (("--resize", args.resize), ("--center-crop", args.center_crop)):
        if value is not None and value <= 0:
            raise ConfigError(f"{option} must be a positive number of pixels, got {value}")
    if is_builtin(args.dataset):
        if args.resize or args.center_crop:
            raise ConfigError("--resize/--center-crop apply to your own data, not to a built-in --dataset")
        return load_dataset(args.dataset, args.data_dir, args.download)
    if args.data_dir or args.download:
        raise ConfigError("--data-dir/--download locate built-in datasets; --dataset already names your data's path")
    names = None
    if args.class_names:
        names = parse_class_names(args.class_names, len(describe_source(args.dataset).class_names))
    return load_dataset(args.dataset, class_names=names, preprocess=Preprocess(args.resize, args.center_crop))


def cmd_attack(args: argparse.Namespace, progress: bool) -> None:
    out = check_out_dir(args.out)
    try:
        name = attack_name(args.attack, args.norm)
    except ConfigError as e:
        raise ConfigError(f"--attack/--norm: {e}") from None
    attack = make_attack(name, **_parse_params(args.param))
    if args.limit is not None and args.limit <= 0:
        raise ConfigError(f"--limit must be a positive number of images, got {args.limit}")
    if args.batch_size is not None and args.batch_size <= 0:
        raise ConfigError(f"--batch-size must be positive, got {args.batch_size}")
    # Checked before any model is loaded or trained.
    check_epsilon_for(attack, args.epsilon, Bounds(*parse_bounds(args.bounds)))
    check_engine(args.engine, attack.native_kernel)
    data, model, info, bounds = _model_and_data(args, progress)
    checks = checks_on_test_images(model, data, bounds, at_most=args.limit)
    _print_checks(checks)
    indices = first_n(data.test_labels, args.limit or len(data.test_labels))
    selection = f"first {len(indices)} test images"
    summary, attacked = attack_images(data, model, info, indices, selection, attack, args.epsilon, bounds=bounds,
                                      seed=args.seed, engine=args.engine, batch_size=args.batch_size,
                                      progress=progress)
    # Written before the evaluation checks run, so that an error or an interrupt there keeps the attack's result.
    csv_path, json_path = write_run(out, with_model_checks(summary, checks))
    frac = summary["flip_fraction"]
    budget = "minimal perturbation" if args.epsilon is None else f"ε={args.epsilon:g}"
    sym = summary["analysis"]["symmetry"]
    print(f"{data.name} {name} {budget}: {frac['count']}/{frac['n']} images flipped "
          f"({_rate(frac)}), clean accuracy {_rate(summary['clean_accuracy'])}, "
          f"attack success {_rate(summary['attack_success'])}")
    kept = summary["survives_8bit"]
    print(f"saved as 8-bit images, {kept['count']} of {kept['n']} flipped images still flip ({_rate(kept)})")
    print(f"symmetry: entrywise {_score(sym['entrywise'])}, induced {_score(sym['induced'])}; catch-all classes: "
          f"{', '.join(summary['analysis']['catch_all']['classes']) or 'none'}")
    if "autoattack" in summary:
        robust = summary["robust_accuracy"]["overall"]
        broken = ", ".join(f"{k} {v}" for k, v in summary["autoattack"]["broken_by"].items())
        print(f"robust accuracy {_rate(robust)} (95% interval {robust['ci'][0]:.3f}-{robust['ci'][1]:.3f}); "
              f"images broken first by: {broken}")
    if not args.no_evaluation_checks:
        case = Case("attack", data.name, name, args.epsilon)
        evaluation = _evaluation_checks(args, data, model, info, bounds, indices, selection, case, summary, attacked)
        records = [{"name": check, **decision_record(d)} for check, d in evaluation.items()]
        write_run(out, with_model_checks(summary, checks, records))
        _print_evaluation(evaluation)
    print(f"wrote {csv_path} and {json_path}")
    if data.note:
        print(f"note: {data.note}")
    covered = len(np.unique(data.test_labels[indices]))
    if covered < data.num_classes:
        # Some test sets are ordered by class (mnist-5k's split is): a small --limit then sees only a few classes.
        print(f"note: the first {len(indices)} test images cover {covered} of {data.num_classes} classes; the flip "
              "statistics describe those classes only (a larger --limit covers more)")


def _evaluation_checks(args: argparse.Namespace, data: Dataset, model: nn.Module, info: dict[str, Any],
                       bounds: Bounds, indices: np.ndarray, selection: str, case: Case, summary: dict[str, Any],
                       attacked: AttackResult) -> dict[str, Decision]:
    """The evaluation checks `labelflip attack`'s run supports (gate/evaluation_checks.one_run_checks), FGSM on
    the same images where the single-step check asks for it."""
    from .attacks.engine import engine_where_it_applies
    from .gate.evaluation_checks import one_run_checks
    from .gate.profiles import SINGLE_STEP
    from .gate.shared_runs import CaseRun

    def single_step() -> CaseRun:
        fgsm = make_attack(SINGLE_STEP)
        done = attack_images(data, model, info, indices, selection, fgsm, case.epsilon, bounds=bounds, seed=args.seed,
                             engine=engine_where_it_applies(args.engine, fgsm.native_kernel),
                             batch_size=args.batch_size)
        return CaseRun.from_attack(replace(case, attack=SINGLE_STEP), *done, indices)

    return one_run_checks(CaseRun.from_attack(case, summary, attacked, indices), model, data, bounds,
                          seed=args.seed, engine=args.engine, batch_size=args.batch_size, single_step=single_step)


def _print_evaluation(evaluation: dict[str, Decision]) -> None:
    """Like _print_checks, for the evaluation checks after the attack."""
    failed = {name: d for name, d in evaluation.items() if not d.passed}
    if evaluation and not failed:
        print(f"evaluation checks: all {len(evaluation)} passed ({', '.join(evaluation)})")
    for name, d in failed.items():
        print(f"evaluation check failed, the figures above may not mean what they say: {name}: {d.message}")


def _print_checks(checks: list[ModelCheck]) -> None:
    """One line for the model checks, or one per failed check: its figures would mislead (docs/methods.md)."""
    failed = [c for c in checks if not c.passed]
    if not failed:
        print(f"model checks: all {len(checks)} passed")
    for c in failed:
        print(f"model check failed, the figures below may not mean what they say: {c.name}: {c.message}")
    for c in checks:
        if c.passed and c.warning:
            print(f"model check warning: {c.name}: {c.message}")


def _rate(r: dict[str, Any]) -> str:
    return "undefined (no images)" if r["rate"] is None else f"{r['rate']:.3f}"


def _score(s: dict[str, Any]) -> str:
    if s["score"] is None:
        return "undefined (no flips)"
    return f"{s['score']:.3f} [{s['ci'][0]:.3f}, {s['ci'][1]:.3f}] p={s['p_value']:.3g}"


def cmd_run(args: argparse.Namespace, progress: bool) -> None:
    from .gate.profiles import cases, get_profile
    from .gate.runs_dir import compute_runs
    from .runs.distributed import init_world, leave_world, rank_device, world_from_env

    if args.model is not None and args.dataset is None:
        raise ConfigError("--model needs --dataset: the dataset your model classifies")
    if args.dataset is not None and not is_builtin(args.dataset) and args.model is None:
        raise ConfigError(f"--dataset {args.dataset}: a path to your own test set is computed with your own --model")
    datasets = None if args.dataset is None else (describe_source(args.dataset).name if not is_builtin(args.dataset)
                                                  else args.dataset,)
    selected = [c for c in cases(get_profile(args.profile), datasets, own_model=args.model is not None)
                if not args.case or any(text in c.id for text in args.case)]
    if not selected:
        raise ConfigError(f"--case {' '.join(args.case)}: no case of profile {args.profile} matches")
    if args.batch_size is not None and args.batch_size <= 0:
        raise ConfigError(f"--batch-size must be positive, got {args.batch_size}")
    out = check_out_dir(Path(args.out))
    world = world_from_env()
    # This rank's own GPU is the one started, not GPU 0 in every rank.
    device = start_device(rank_device(world, resolve_device(args.device, start=False)))
    init_world(world, device)
    models: dict[tuple[str, str], tuple[Dataset, nn.Module, dict[str, Any]]] = {}

    def model_of(case: Case) -> tuple[Dataset, nn.Module, dict[str, Any]]:
        if (case.dataset, case.arch) not in models:
            one = argparse.Namespace(**{**vars(args), "device": device, "arch": case.arch or args.arch,
                                        "dataset": args.dataset or case.dataset})
            data, model, info, _ = _model_and_data(one, progress=False)
            models[case.dataset, case.arch] = data, model, info
        return models[case.dataset, case.arch]

    computed = compute_runs(selected, out, model_of, seed=args.seed, bounds=Bounds(*parse_bounds(args.bounds)),
                            engine=args.engine, uncapped=args.uncapped, batch_size=args.batch_size, world=world,
                            progress=True)
    leave_world(world)
    if world.main:
        print(f"{out}: {len(selected)} cases of profile {args.profile}, {len(computed)} computed now; gate them with "
              f"pytest robustness_tests --labelflip-profile {args.profile} --labelflip-runs {out}")


def cmd_noise(args: argparse.Namespace, progress: bool) -> None:
    out = check_out_dir(args.out)
    if args.n <= 0:
        raise ConfigError(f"--n must be a positive number of images, got {args.n}")
    data, model, info, bounds = _model_and_data(args, progress)
    noise = probe_noise(data, model, info, args.n, args.seed, bounds)
    path = write_noise(out, noise)
    shares = noise["histogram"]["histogram"]
    top = ", ".join(f"{name} {shares[name]['share']:.1%}" for name in noise["histogram"]["top"][:3])
    print(f"{data.name}: {noise['n']} uniform-noise images; most land in: {top}")
    print(f"wrote {path}")


def cmd_report(args: argparse.Namespace, progress: bool) -> None:
    out = check_out_dir(args.out)
    results, noise = load_runs([Path(r) for r in args.runs])
    # A gate session's gate-runs/ folder also holds its attack-strength comparisons: the report tables them too.
    written = write_report(out, results, noise, load_strength([Path(r) for r in args.runs]))
    print(f"report of {len(results)} attack runs and {len(noise)} noise probes:")
    for what, path in written.items():
        print(f"  {what}: {path}")


def cmd_bench_table(args: argparse.Namespace, progress: bool) -> None:
    print(markdown_table(load_report(args.report)), end="")


def cmd_bench_baseline(args: argparse.Namespace, progress: bool) -> None:
    baseline = make_baseline(*(load_report(path) for path in args.reports))
    write_baseline(args.out, baseline)
    n = sum(len(impls) for impls in baseline["kernels"].values())
    print(f"wrote a baseline of {n} benchmarks ({baseline['device_class']}, median of {len(args.reports)} "
          f"run(s)) to {args.out}")


def cmd_bench_compare(args: argparse.Namespace, progress: bool) -> int:
    comparison = compare(load_report(args.report), load_baseline(args.baseline), args.margin)
    print(comparison.markdown())
    print(comparison.summary())
    return 1 if comparison.failed else 0


def cmd_init(args: argparse.Namespace, progress: bool) -> None:
    settings = {"labelflip_profile": args.profile}
    if args.model is not None:
        if not Path(args.model).is_file():
            raise ConfigError(f"--model: no model file at {args.model}")
        if args.dataset is None:
            raise ConfigError("--model needs --dataset: the dataset your model classifies")
        if not is_builtin(args.dataset):
            describe_source(args.dataset)  # an own test set must exist and be readable now, not at the gate's run
        settings |= {"labelflip_model": args.model, "labelflip_dataset": args.dataset,
                     "labelflip_baselines": args.baselines or str(Path(args.dir) / "baselines")}
        if args.arch:
            settings["labelflip_arch"] = args.arch
    elif args.arch:
        raise ConfigError("--arch describes a --model; none given")
    elif args.dataset and not is_builtin(args.dataset):
        raise ConfigError(f"--dataset {args.dataset}: your own data is gated with your own --model")
    elif args.baselines is None and not (REFERENCE_BASELINES / args.profile).is_dir():
        raise ConfigError(f"profile {args.profile!r} ships no reference baselines (those of "
                          f"{', '.join(sorted(p.name for p in REFERENCE_BASELINES.iterdir() if p.is_dir()))} do): "
                          "name the folder to record them in with --baselines DIR")
    else:
        settings |= {"labelflip_dataset": args.dataset} if args.dataset else {}
        settings |= {"labelflip_baselines": args.baselines} if args.baselines else {}
    # Without the data the gate's tests skip: in CI that would be a green run that checked nothing.
    settings["labelflip_require_data"] = True
    path, changed = write_test_file(Path(args.dir), args.force)
    print(f"{'wrote' if changed else 'up to date:'} {path}")
    print(f"\nAdd to the pyproject.toml in {Path.cwd()} (its paths are relative to that folder; in a pytest.ini: "
          "the same keys under [pytest], without quotes):\n")
    print(config_section(settings))
    print("and *.obtained.* to .gitignore: a failing gate writes its observed runs beside the baselines.\n")
    print("Then:")
    if args.model is not None:
        print(f"  pytest {args.dir} --labelflip-regen   # once: record your model's baselines (review, commit them)")
    print(f"  pytest {args.dir} -n auto   # the gate")


def cmd_throughput(args: argparse.Namespace, progress: bool) -> None:
    print(measure_throughput(args.arch, resolve_device(args.device), args.batch_size, args.seconds).table(), end="")


COMMANDS = {"train": cmd_train, "attack": cmd_attack, "run": cmd_run, "noise": cmd_noise, "report": cmd_report,
            "bench-table": cmd_bench_table, "bench-baseline": cmd_bench_baseline, "bench-compare": cmd_bench_compare,
            "throughput": cmd_throughput, "init": cmd_init}


def run(argv: Sequence[str] | None = None) -> int:
    """The command's exit status; LabelflipError (bad input) and argparse's SystemExit propagate."""
    args = build_parser().parse_args(argv)
    # A command returns a status only when its verdict, not an error, decides it (bench-compare: 1 = regression).
    return COMMANDS[args.command](args, sys.stderr.isatty()) or 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return run(argv)
    except LabelflipError as exc:
        print(f"labelflip: error: {exc.phrased(OPTION_NAMES)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        kept = ("finished cases and chunks are kept in --out; rerun the command to go on" if argv[:1] == ["run"]
                else "no partial results were written")
        print(f"labelflip: interrupted; {kept}", file=sys.stderr)
        return 130
    except Exception as exc:  # anything else is labelflip's fault, not the input's
        if "--debug" in argv:
            raise
        what = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"labelflip: internal error (a bug in labelflip, please report it): {type(exc).__name__}"
              f"{': ' + what if what else ''}; rerun with --debug for the traceback", file=sys.stderr)
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
