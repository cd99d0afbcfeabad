"""The configuration reference, generated from the config's own declarations (mia_tasks.config).

Every key is a dataclass field declared with ``metadata=allow(rule, meaning)``: its default, what it accepts
(the rule, in words) and what it means. ``layerleak config`` prints the resolved config with those meanings
as YAML comments; ``layerleak config --markdown`` prints ``reference_markdown()``, which is checked in as
docs/configuration.md (tests/test_docs.py regenerates it and fails when the checked-in file differs):

    layerleak config --markdown > docs/configuration.md
"""

from __future__ import annotations

import copy
import dataclasses
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml

from .config import ATTACK_SETTINGS, Config, attack_settings, stage_hashes
from .rules import META_HELP


@dataclass(frozen=True)
class Key:
    """One config key: its dotted name, its section's name, its value in the config walked, and its declarations."""

    key: str
    section: str
    value: Any
    accepts: str
    meaning: str


def keys(cfg: Config | None = None) -> Iterator[Key]:
    """Every key of ``cfg`` (default: the declared defaults) in declaration order."""
    def walk(obj: Any, where: str, section: str) -> Iterator[Key]:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            key = f"{where}.{f.name}" if where else f.name
            if dataclasses.is_dataclass(value):
                yield from walk(value, key, key)
                continue
            rule = f.metadata.get("rule")
            yield Key(key, section, value, rule.describe() if rule else "", f.metadata.get(META_HELP, ""))
    yield from walk(cfg if cfg is not None else Config(), "", "")


def sections(cfg: Config | None = None) -> dict[str, str]:
    """{section name ('' for the top level): its docstring's first paragraph}, in declaration order."""
    cfg = cfg if cfg is not None else Config()
    out = {"": _doc(type(cfg))}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = _doc(type(value))
    return out


def _doc(cls: type) -> str:
    doc = cls.__doc__ or ""
    if doc.startswith(f"{cls.__name__}("):  # dataclasses make up a signature where no docstring is written
        return ""
    return " ".join(doc.strip().split("\n\n")[0].split())


def yaml_value(value: Any) -> str:
    """A value as one line of YAML flow style (``null``, ``[grad]``, ``{depth: 20}``)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, allow_unicode=True).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


class _Changed:
    """A value no key has: put in place of a key's, it shows which hashes read that key."""

    def __repr__(self) -> str:
        return "<changed>"


def _replaced(cfg: Config, key: str) -> Config:
    out = copy.deepcopy(cfg)
    *parents, last = key.split(".")
    node: Any = out
    for part in parents:
        node = getattr(node, part)
    setattr(node, last, _Changed())
    return out


def _defence_settings(cfg: Config) -> list[Any]:
    """What each kind of defence records (and its hashes cover) under ``cfg``."""
    from .defences import SETTINGS, defence_settings

    out = []
    for name in SETTINGS:
        try:
            out.append(defence_settings(dataclasses.replace(cfg.defence, name=name), cfg.defence.layers))
        except (KeyError, TypeError, ValueError):
            out.append(None)
    return out


def _calibrated(cfg: Config) -> Config:
    """``cfg`` with offline-calibrated attacks on one reference model: where references enter the sweep's hash."""
    out = copy.deepcopy(cfg)
    out.attack.calibration, out.references.count = "offline", 1
    return out


def hashed_by(key: str, cfg: Config | None = None) -> list[str]:
    """The stage hashes (config.stage_hashes), attack results (config.attack_settings) and defences
    (defences.defence_settings) that change when ``key`` changes, read off the code by putting a value no key has
    in place of the key's in ``cfg`` (default: the declared defaults); a stage whose hash reads the key only with
    calibrated attacks is marked so."""
    cfg = cfg if cfg is not None else Config()

    def changes(base: Config) -> list[str]:
        changed = _replaced(base, key)
        before, after = stage_hashes(base), stage_hashes(changed)
        out = [stage for stage in before if stage != "config" and before[stage] != after[stage]]
        if any(attack_settings(base, name) != attack_settings(changed, name) for name in ATTACK_SETTINGS):
            out.append("attacks")
        if key.startswith("defence.") and _defence_settings(base) != _defence_settings(changed):
            out.append("defences")
        return out
    plain = changes(cfg)
    return plain + [f"{stage} (calibrated)" for stage in changes(_calibrated(cfg)) if stage not in plain]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def reference_markdown(preset: Config | None = None, preset_name: str = "default.yaml") -> str:
    """docs/configuration.md: every key with its default, what it accepts, what it means and what it changes;
    with ``preset``, the values that preset (the one ``layerleak run`` uses) sets differently."""
    defaults = Config()
    docs = sections(defaults)
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated from mia_tasks/config.py by `layerleak config --markdown > docs/configuration.md`;",
        "     tests/test_docs.py fails when this file differs from what the declarations give. Do not edit by hand. -->",
        "",
        "Every key of the config, as `mia_tasks/config.py` declares it: its default, what it accepts (the rule the",
        "config is validated with before any work starts), what it means, and which outputs in OUT are made again",
        "when it changes: the stage hashes it enters (`mia_tasks.config.stage_hashes`; *attacks*: the settings an",
        "attack result records, `attack_settings`; *defences*: a defence's folder and hashes; *(calibrated)*: only",
        "with `attack.calibration` or a calibrated `sweep.baseline`), read off the code at the defaults. *none*: the",
        "key changes no result (paths, devices, batch sizes, actors, which attack or layers a command picks, whose",
        "results are stored under their own names). Set a key in a YAML preset or with",
        "`--set key=value`; `layerleak config [--config PRESET] [--set k=v]` prints the resolved config with the",
        "same meanings. See [the run folder](../ARCHITECTURE.md#the-run-folder-contract) for what the stages write.",
    ]
    current = None
    for k in keys(defaults):
        if k.section != current:
            current = k.section
            lines += ["", f"## `{current}`" if current else "## Top level", ""]
            if docs.get(current):
                lines += [docs[current], ""]
            lines += ["| key | default | accepts | meaning | made again when it changes |", "|---|---|---|---|---|"]
        changes = ", ".join(hashed_by(k.key, defaults)) or "none"
        lines.append(f"| `{k.key}` | `{_cell(yaml_value(k.value))}` | {_cell(k.accepts)} | {_cell(k.meaning)} | {changes} |")
    text = "\n".join(lines)
    if preset is not None:
        differ = [(k.key, yaml_value(k.value)) for k, d in zip(keys(preset), keys(defaults)) if k.value != d.value]
        text += f"\n\n## What `{preset_name}` sets\n\n`layerleak run` without `--config` uses the preset `{preset_name}`, " \
                f"which sets these keys differently from the declared defaults above:\n\n| key | `{preset_name}` |\n|---|---|\n"
        text += "\n".join(f"| `{key}` | `{_cell(value)}` |" for key, value in differ)
    return text + "\n"


def commented_yaml(cfg: Config, width: int = 110) -> str:
    """The resolved config as YAML: each key preceded by its meaning as a comment, followed by what it accepts."""
    out: list[str] = []
    docs = sections(cfg)
    current = None
    for k in keys(cfg):
        depth = k.key.count(".")
        indent = "  " * depth
        if k.section != current:
            current = k.section
            if current:
                out.append("")
                out += textwrap.wrap(docs.get(current, ""), width, initial_indent="# ", subsequent_indent="# ", break_on_hyphens=False)
                out.append(f"{current}:")
        if k.meaning:
            out += textwrap.wrap(k.meaning, width - len(indent), initial_indent=f"{indent}# ", subsequent_indent=f"{indent}#   ",
                               break_on_hyphens=False)
        line = f"{indent}{k.key.rsplit('.', 1)[-1]}: {yaml_value(k.value)}"
        out.append(f"{line:42s} # {k.accepts}")
    return "\n".join(out) + "\n"
