"""The docs: docs/configuration.md is what the config's declarations give, every key declares a meaning that
`layerleak config` prints, the README stays short and its commands parse, and relative links resolve."""

from __future__ import annotations

from pathlib import Path


from flows.cli import main
from mia_tasks.configdoc import keys

ROOT = Path(__file__).resolve().parent.parent
REGENERATE = "layerleak config --markdown > docs/configuration.md"


def test_configuration_md_is_generated_from_the_declarations(capsys):
    """The CI check: docs/configuration.md is exactly what `layerleak config --markdown` prints."""
    assert main(["config", "--markdown"]) == 0
    generated = capsys.readouterr().out
    checked_in = (ROOT / "docs" / "configuration.md").read_text()
    assert checked_in == generated, f"docs/configuration.md differs from the config's declarations; regenerate it: {REGENERATE}"


def test_every_key_declares_a_meaning_and_layerleak_config_prints_it(capsys):
    missing = [k.key for k in keys() if not k.meaning.strip()]
    assert not missing, f"config keys without a meaning (allow(rule, meaning) in mia_tasks/config.py): {missing}"
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    comments = " ".join(line.split("#", 1)[1].strip() for line in out.splitlines() if line.lstrip().startswith("#"))
    comments = " ".join(comments.split())
    for k in keys():
        assert " ".join(k.meaning.split()) in comments, k.key
        assert f"`{k.key}`" in (ROOT / "docs" / "configuration.md").read_text()


def test_config_markdown_refuses_a_resolved_config(capsys):
    assert main(["config", "--markdown", "--set", "seed=1"]) == 2
    assert "layerleak: error: layerleak config --markdown documents the declared defaults" in capsys.readouterr().err
