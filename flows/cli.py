"""The ``layerleak`` command line: one subcommand per stage, plus ``run`` for the whole audit.

    layerleak run                                   # the default audit on scikit-learn's digits
    layerleak run --config flows/configs/cifar10-jpeg-alexnet.yaml --set dataset.root=DIR --out runs/c10
    layerleak models alexnet                        # layers in forward order with parameter counts
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import time

from mia_tasks.errors import LayerleakError, one_line

from .signals import EXIT_SIGTERM, handle_sigterm, terminated

from .bench import BENCHES

STAGES = ("run", "train", "extract", "attack", "sweep", "report", "paper", "defend")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML preset (a path, or a name in flows/configs/); default: default.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. --set train.epochs=5")
    p.add_argument("--out", help="run directory (default: output.dir of the config)")


KEYS_HELP = ("config keys: 'layerleak config' prints every key of the resolved config with its value, what it means and "
             "what it accepts (--config/--set as for run); docs/configuration.md is the same reference; the presets in "
             "flows/configs/ are commented YAML")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="layerleak", description="Which layers of a trained network leak membership?", epilog=KEYS_HELP)
    sub = p.add_subparsers(dest="command", required=True)
    helps = {
        "run": "the whole audit: splits, target, features, sweep, Shapley values, report",
        "train": "draw membership splits and train the target (skipped when OUT has it)",
        "extract": "per-sample gradient/activation statistics of every layer -> OUT/features/",
        "attack": "one membership attack over every repeat -> OUT/attacks/<name>.json",
        "sweep": "attack every coalition of layers, then exact Shapley values -> OUT/shapley.json",
        "report": "report.json, report.md, report.html and plots from what OUT holds",
        "paper": "the seed study's experiments (figures 3-6) on this config",
        "defend": "train a defended target on the same members with the same recipe, audit it into OUT/defences/<name>/",
    }
    for name in STAGES:
        sp = sub.add_parser(name, help=helps[name], description=helps[name], epilog=KEYS_HELP)
        _common(sp)
        if name == "attack":
            sp.add_argument("--attack", metavar="NAME", help="default: attack.name; the choices are attack.name's (layerleak config); "
                            "lira and rmia need references.count")
            sp.add_argument("--layers", help="comma-separated layer names (default: all audited layers)")
            sp.add_argument("--features", help="comma-separated feature kinds among grad,out,loss (default: attack.kinds)")
        if name == "defend":
            sp.add_argument("--defence", help="dp-sgd, layer-dp or regularise (default: defence.name)")
            sp.add_argument("--layers", help="layer-dp: comma-separated layers to protect (default: the top player by Shapley value)")
            sp.add_argument("--epsilon", help="dp-sgd: the target ε (default: defence.epsilon)")
        if name == "paper":
            sp.add_argument("--experiment", default="all", choices=("groups-grad", "groups-out", "single-layer", "shapley", "seed-shapley", "all"),
                            help="seed-shapley: the sweep's players under the seed's own protocol (not in 'all')")
            sp.add_argument("--attack", default="logistic", choices=("logistic", "nasr"))
    c = sub.add_parser("config", help="print the resolved config: every key, its value, what it means and what it accepts",
                       description="Print the resolved config (preset + --set overrides) as YAML, each key commented with what "
                                   "it means and what it accepts. --markdown prints the configuration reference instead "
                                   "(docs/configuration.md is generated with it).")
    _common(c)
    c.add_argument("--markdown", action="store_true", help="print the configuration reference (every key's default, rule, "
                   "meaning and the outputs it changes) as Markdown: layerleak config --markdown > docs/configuration.md")
    m = sub.add_parser("models", help="list architectures, or one architecture's audited layers",
                       description="An architecture's audited layers in forward order, shaped for the config's dataset "
                                   "(default: the default config's digits, 10 classes of 1x8x8 images).")
    m.add_argument("arch", nargs="?", help="an architecture name or module:factory (default: list them)")
    _common(m)
    m.add_argument("--num-classes", type=int, help="override the dataset's number of classes")
    m.add_argument("--in-channels", type=int, help="override the dataset's image channels")
    m.add_argument("--input-size", type=int, help="override the dataset's image size")
    m.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="architecture option, e.g. depth=56")
    cp = sub.add_parser("compare", help="paired differences B - A between two audits of the same samples",
                        description="Paired B - A differences (AUC, accuracy, TPR at 1% FPR) of each attack both run "
                                    "folders hold, by a bootstrap over the audited samples stratified by membership; "
                                    "per-layer Shapley values side by side. E.g. a run and OUT/defences/<name>.")
    cp.add_argument("out_a")
    cp.add_argument("out_b")
    cp.add_argument("--json", metavar="PATH", help="also write the comparison as JSON to PATH")
    cp.add_argument("--replicates", type=int, default=1000)
    b = sub.add_parser("bench", help="benchmarks: " + ", ".join(BENCHES), formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="\n".join(f"{k:12s} {v}" for k, v in BENCHES.items()))
    b.add_argument("what", choices=tuple(BENCHES))
    b.add_argument("rest", nargs=argparse.REMAINDER, help="options of the benchmark (--device, --json, --quick, ...)")
    return p


def _dataset_shape(cfg) -> tuple[int, int, int]:
    """(classes, channels, size) of the config's dataset: read from the data where it loads, else the
    dataset's published shape (a CIFAR root not on this machine still shows the model CIFAR makes)."""
    from mia_tasks.data import load_dataset

    known = {"cifar10": (10, 3, 32), "cifar100": (100, 3, 32), "fashion-mnist": (10, 1, 28), "digits": (10, 1, 8)}
    try:
        data = load_dataset(cfg.dataset)
    except LayerleakError:
        if cfg.dataset.name in known:
            return known[cfg.dataset.name]
        raise
    return data.num_classes, data.in_channels, data.input_size


def _models(args: argparse.Namespace) -> int:
    import torch
    import yaml

    from mia_tasks.models import ARCHS, audited_layers, build, default_groups, param_count

    from .presets import load

    if not args.arch:
        for name, factory in ARCHS.items():
            print(f"{name:10s} {(factory.__doc__ or '').strip().splitlines()[0]}")
        print("or a model of your own: --set model.arch=package.module:factory (or path/to/file.py:factory)")
        return 0
    cfg = load(args.config, [*args.set, f"model.arch={args.arch}"])
    options = dict(cfg.model.options)
    for item in args.option:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise LayerleakError(f"--option {item!r}: expected KEY=VALUE, e.g. depth=56")
        options[k] = yaml.safe_load(v)
    classes, channels, size = _dataset_shape(cfg)
    # the shape is the dataset's; it may be given as options too (--option num_classes=100)
    classes = args.num_classes or options.pop("num_classes", None) or classes
    channels = args.in_channels or options.pop("in_channels", None) or channels
    size = args.input_size or options.pop("input_size", None) or size
    model = build(args.arch, int(classes), int(channels), input_size=int(size), **options)
    layers = audited_layers(model, torch.zeros(2, int(channels), int(size), int(size)))
    groups = default_groups(layers)
    group_of = {l: g for g, ls in groups.items() for l in ls}
    total = sum(p.numel() for p in model.parameters())
    audited = 0
    print(f"{args.arch} for {cfg.dataset.name}: {classes} classes, {channels}x{size}x{size} images")
    print(f"{'depth':>5}  {'layer':32s} {'type':8s} {'params':>10}  group")
    for i, name in enumerate(layers, 1):
        n = param_count(model, name)
        audited += n
        print(f"{i:>5}  {name:32s} {type(model.get_submodule(name)).__name__:8s} {n:>10,}  {group_of[name]}")
    print(f"{len(layers)} audited layers, {audited:,} parameters of {total:,} in the model"
          + ("" if audited == total else f" (the other {total - audited:,} are normalisation layers)"))
    return 0


def _out_overrides(args: argparse.Namespace) -> list[str]:
    """``--out`` as an output.dir override; an empty --out is refused (it used to fall back to the default folder)."""
    if args.out is None:
        return []
    if not args.out.strip():
        raise LayerleakError(f"--out {args.out!r} is an empty path: give the run folder, e.g. --out runs/mine (or leave --out out "
                             "to use output.dir)")
    return [f"output.dir={args.out}"]


def _config(args: argparse.Namespace) -> int:
    """The resolved config as YAML, each key commented with what it means and what it accepts; with --markdown,
    the configuration reference (docs/configuration.md) generated from the same declarations."""
    from mia_tasks.configdoc import commented_yaml, reference_markdown

    from .presets import DEFAULT, load, resolve

    if args.markdown:
        if args.config or args.set or args.out:
            raise LayerleakError("layerleak config --markdown documents the declared defaults: give it no --config, --set or --out")
        print(reference_markdown(load(None, []), DEFAULT), end="")
        return 0
    overrides = [*args.set, *_out_overrides(args)]
    cfg = load(args.config, overrides)
    print(f"# resolved from {resolve(args.config)}" + (f" with --set {' '.join(overrides)}" if overrides else ""))
    print(commented_yaml(cfg), end="")
    return 0


def _bench(args: argparse.Namespace) -> int:
    """Run flows/bench/<what>.py's main on the remaining arguments (imported only when asked: torch is slow to load)."""
    import importlib

    return importlib.import_module(f"flows.bench.{args.what}").main(args.rest)


def _defence_overrides(args: argparse.Namespace) -> list[str]:
    """``defend``'s options as defence.* config keys, so they are validated like any key (one error line)."""
    if args.command != "defend":
        return []
    pairs = (("name", args.defence), ("epsilon", args.epsilon),
             ("layers", None if args.layers is None else "[" + ",".join(l.strip() for l in args.layers.split(",")) + "]"))
    return [f"defence.{k}={v}" for k, v in pairs if v is not None]




def _filesystem_problem(e: OSError, out: str) -> str:
    """An OSError met reading or writing OUT, as one line naming OUT and what to do."""
    where = getattr(e, "filename", None) or out
    if e.errno == errno.ENOSPC:
        return (f"no space left on the disk holding {out} (writing {where}): free space there or choose another --out, "
                f"then rerun the same command; finished parts are kept")
    return f"cannot use OUT {out} ({where}: {e.strerror or one_line(e)}); check the path and its filesystem, or choose another --out"


def _open_out(out: str, run_id: str | None = None):
    """OUT as a RunDir; a filesystem that cannot be reached (an s3:// bucket without network) is one line."""
    from mia_tasks.rundir import RunDir

    try:
        return RunDir(out, run_id=run_id)
    except OSError as e:
        raise LayerleakError(f"cannot open OUT {out}: {one_line(e)}; check the URI, the network and the credentials, "
                             f"or choose a local --out") from None


def _remove_if_bare(root: str) -> None:
    """Remove a folder this command made, when it failed before any stage wrote into it (nothing left behind)."""
    import shutil

    from mia_tasks.rundir import BARE

    try:
        if os.path.isdir(root) and set(os.listdir(root)) <= BARE:
            shutil.rmtree(root)
    except OSError:
        pass


def run_stage(args: argparse.Namespace) -> int:
    """Run one stage command (parsed by ``parser()``) on OUT; bad input raises LayerleakError (main prints it)."""
    import dataclasses

    from mia_tasks.config import stage_hashes
    from mia_tasks.data import dataset_fingerprint
    from mia_tasks.outlock import reading, writing
    from mia_tasks.rundir import new_run_id

    from .presets import load

    overrides = list(args.set) + _defence_overrides(args) + _out_overrides(args)
    cfg = load(args.config, overrides)
    from . import pipeline  # stages start Ray only when they have work to do

    start = time.perf_counter()
    # the data's content enters the stages' hashes, not config.yaml's: a changed image folder is not another
    # config (OUT is not refused), its stages are redone
    hashes = stage_hashes(cfg, dataset_fingerprint(cfg.dataset))
    if args.command in pipeline.READERS:  # reads OUT while no run writes it (a shared lock); writes only its report
        rd = _open_out(cfg.output.dir)
        with reading(rd, args.command):
            saved = None if args.config or args.set else rd.saved_config()
            if saved is not None:  # no --config/--set: report what OUT holds, made with the config it records
                cfg, hashes = saved, stage_hashes(saved, dataset_fingerprint(saved.dataset))
            pipeline.STAGE_FUNCTIONS[args.command](cfg, rd, hashes, args)
    else:  # one writing run at a time: OUT is marked, and locked for the whole command
        rd = _open_out(cfg.output.dir, new_run_id())
        new_out = rd.local and not os.path.lexists(rd.root)
        try:
            with writing(rd):
                saved = None if args.config or args.set else rd.saved_config()
                if saved is not None:  # no --config/--set: continue the audit OUT holds, with the config it records
                    cfg = dataclasses.replace(saved, output=cfg.output,
                                              defence=cfg.defence if args.command == "defend" else saved.defence)
                    hashes = stage_hashes(cfg, dataset_fingerprint(cfg.dataset))
                    print(f"[layerleak] {args.command}: continuing with the config {rd.uri}/config.yaml records")
                rd.prepare(cfg)  # refuses outputs of another config; saves config.yaml
                pipeline.STAGE_FUNCTIONS[args.command](cfg, rd, hashes, args)
        except BaseException as e:
            if new_out:
                _remove_if_bare(rd.root)
            if isinstance(e, OSError):
                raise LayerleakError(_filesystem_problem(e, rd.uri)) from None
            raise
    print(f"[layerleak] {args.command} done in {time.perf_counter() - start:.1f}s; outputs in {rd.uri}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    """layerleak compare OUT_A OUT_B: reads both folders only, no Ray."""
    import json

    from mia_tasks.scores import compare_runs, compare_text

    result = compare_runs(args.out_a, args.out_b, replicates=args.replicates)
    print(compare_text(result), end="")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one command; bad input ends in one ``layerleak: error:`` line and exit 2, Ctrl-C in 130, SIGTERM in 143."""
    handle_sigterm()
    args = parser().parse_args(argv)
    try:
        if args.command == "models":
            return _models(args)
        if args.command == "config":
            return _config(args)
        if args.command == "bench":
            return _bench(args)
        if args.command == "compare":
            return _compare(args)
        return run_stage(args)
    except LayerleakError as e:
        print(f"layerleak: error: {one_line(e)}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt as e:
        how = "terminated (SIGTERM)" if terminated(e) else "interrupted"
        print(f"layerleak: {how}; finished parts are kept, rerun the same command to resume", file=sys.stderr, flush=True)
        return EXIT_SIGTERM if terminated(e) else 130


if __name__ == "__main__":
    sys.exit(main())
