"""The ``layerleak`` command line: one subcommand per stage, plus ``run`` for the whole audit.

    layerleak run                                   # the default audit on scikit-learn's digits
    layerleak run --config flows/configs/cifar10-jpeg-alexnet.yaml --set dataset.root=DIR --out runs/c10
    layerleak models alexnet                        # layers in forward order with parameter counts
"""

from __future__ import annotations

import argparse
import sys
import time

from mia_tasks.errors import LayerleakError

from .bench import BENCHES

STAGES = ("run", "train", "extract", "attack", "sweep", "report", "paper")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML preset (a path, or a name in flows/configs/); default: default.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. --set train.epochs=5")
    p.add_argument("--out", help="run directory (default: output.dir of the config)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="layerleak", description="Which layers of a trained network leak membership?")
    sub = p.add_subparsers(dest="command", required=True)
    helps = {
        "run": "the whole audit: splits, target, features, sweep, Shapley values, report",
        "train": "draw membership splits and train the target (skipped when OUT has it)",
        "extract": "per-sample gradient/activation statistics of every layer -> OUT/features/",
        "attack": "one membership attack over every repeat -> OUT/attacks/<name>.json",
        "sweep": "attack every coalition of layers, then exact Shapley values -> OUT/shapley.json",
        "report": "report.json, report.md, report.html and plots from what OUT holds",
        "paper": "the seed study's experiments (figures 3-6) on this config",
    }
    for name in STAGES:
        sp = sub.add_parser(name, help=helps[name], description=helps[name])
        _common(sp)
        if name == "attack":
            sp.add_argument("--attack", choices=("logistic", "nasr", "loss-threshold", "confidence-threshold"), help="default: attack.name")
            sp.add_argument("--layers", help="comma-separated layer names (default: all audited layers)")
            sp.add_argument("--features", help="comma-separated feature kinds among grad,out,loss (default: attack.kinds)")
        if name == "paper":
            sp.add_argument("--experiment", default="all", choices=("groups-grad", "groups-out", "single-layer", "shapley", "all"))
            sp.add_argument("--attack", default="logistic", choices=("logistic", "nasr"))
    m = sub.add_parser("models", help="list architectures, or one architecture's audited layers")
    m.add_argument("arch", nargs="?", help="an architecture name or module:factory")
    m.add_argument("--num-classes", type=int, default=100)
    m.add_argument("--in-channels", type=int, default=3)
    m.add_argument("--input-size", type=int, default=32)
    m.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="architecture option, e.g. depth=56")
    b = sub.add_parser("bench", help="benchmarks: " + ", ".join(BENCHES), formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="\n".join(f"{k:12s} {v}" for k, v in BENCHES.items()))
    b.add_argument("what", choices=tuple(BENCHES))
    b.add_argument("rest", nargs=argparse.REMAINDER, help="options of the benchmark (--device, --json, --quick, ...)")
    return p


def _models(args: argparse.Namespace) -> int:
    import torch
    import yaml

    from mia_tasks.models import ARCHS, audited_layers, build, default_groups, param_count

    if not args.arch:
        for name, factory in ARCHS.items():
            print(f"{name:10s} {(factory.__doc__ or '').strip().splitlines()[0]}")
        print("or a model of your own: --set model.arch=package.module:factory (or path/to/file.py:factory)")
        return 0
    options = {}
    for item in args.option:
        k, _, v = item.partition("=")
        options[k] = yaml.safe_load(v)
    model = build(args.arch, args.num_classes, args.in_channels, input_size=args.input_size, **options)
    layers = audited_layers(model, torch.zeros(2, args.in_channels, args.input_size, args.input_size))
    groups = default_groups(layers)
    group_of = {l: g for g, ls in groups.items() for l in ls}
    total = sum(p.numel() for p in model.parameters())
    audited = 0
    print(f"{'depth':>5}  {'layer':32s} {'type':8s} {'params':>10}  group")
    for i, name in enumerate(layers, 1):
        n = param_count(model, name)
        audited += n
        print(f"{i:>5}  {name:32s} {type(model.get_submodule(name)).__name__:8s} {n:>10,}  {group_of[name]}")
    print(f"{len(layers)} audited layers, {audited:,} parameters of {total:,} in the model"
          + ("" if audited == total else f" (the other {total - audited:,} are normalisation layers)"))
    return 0


def _bench(args: argparse.Namespace) -> int:
    """Run flows/bench/<what>.py's main on the remaining arguments (imported only when asked: torch is slow to load)."""
    import importlib

    return importlib.import_module(f"flows.bench.{args.what}").main(args.rest)


def _stage(args: argparse.Namespace) -> int:
    from mia_tasks.rundir import RunDir

    from .presets import load

    overrides = list(args.set)
    if args.out:
        overrides.append(f"output.dir={args.out}")
    cfg = load(args.config, overrides)
    rd = RunDir(cfg.output.dir)
    hashes = rd.prepare(cfg)
    from . import pipeline  # stages start Ray only when they have work to do

    start = time.perf_counter()
    pipeline.STAGE_FUNCTIONS[args.command](cfg, rd, hashes, args)
    print(f"[layerleak] {args.command} done in {time.perf_counter() - start:.1f}s; outputs in {rd.uri}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "models":
            return _models(args)
        if args.command == "bench":
            return _bench(args)
        return _stage(args)
    except LayerleakError as e:
        print(f"layerleak: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("layerleak: interrupted; finished parts are kept, rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
