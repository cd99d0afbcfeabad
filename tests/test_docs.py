"""The docs: docs/configuration.md is what the config's declarations give, every key declares a meaning that
`layerleak config` prints, the README stays short and its commands parse, and relative links resolve."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from flows.cli import main, parser
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


DOCS = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_slug(line.lstrip("#")) for line in path.read_text().splitlines() if re.match(r"#{1,6} ", line)}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc):
    """Every relative link in the README, ARCHITECTURE.md, CHANGELOG.md and docs/*.md names an existing file
    (and, with #anchor, a heading in it)."""
    broken = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.is_file() and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(target)
    assert not broken, f"{doc.relative_to(ROOT)}: links that resolve to nothing: {broken}"


README = ROOT / "README.md"
CI_TEST_LINE = re.compile(r'^pip install -e "\.\[test\]" && python -m pytest', re.M)  # .ci/run's grep


def test_readme_is_short_and_keeps_the_two_commands():
    text = README.read_text()
    assert len(text.splitlines()) < 250
    assert CI_TEST_LINE.search(text), ".ci/run finds the README's test command with this pattern"
    assert re.search(r"^pip install -e \. && layerleak run ", text, re.M)
    assert "## Auditing your own model" in text and "(docs/own-model.md)" in text


def _commands(text: str) -> list[str]:
    """The `layerleak` commands of a Markdown text: lines of its fenced code blocks (backslash continuations
    joined, `python -m flows.cli` read as layerleak) and inline code spans; placeholders ('...', '[--x]') skipped."""
    found = []
    for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"^.*?(python -m flows\.cli|layerleak) ", "layerleak ", line) if " -- python -m flows.cli " in line else line
            if line.strip().startswith(("layerleak ", "python -m flows.cli ")):
                found.append(line.strip())
    found += [c for c in re.findall(r"`(layerleak [^`\n]+)`", text) if len(c.split()) > 2]  # not a bare 'layerleak attack'
    return [c for c in found if "..." not in c and "[" not in c and "|" not in c.split("#")[0]]


def _parse(command: str) -> bool:
    """Whether the CLI's parser accepts ``command`` (shell comments, redirections and '&& ...' dropped)."""
    words = shlex.split(command, comments=True)
    if words[:3] == ["python", "-m", "flows.cli"]:
        words = ["layerleak", *words[3:]]
    for stop in (">", "&&", "|"):
        words = words[:words.index(stop)] if stop in words else words
    try:
        parser().parse_args(words[1:])
    except SystemExit:
        return False
    return True


def test_readme_commands_parse():
    """Every `layerleak` command the README shows is one the CLI accepts (this catches a renamed subcommand or
    option; the tour's commands are cheap enough to run by hand on the default run)."""
    commands = _commands(README.read_text())
    assert len(commands) >= 10
    bad = [c for c in commands if not _parse(c)]
    assert not bad, f"README commands the CLI does not accept: {bad}"


@pytest.mark.parametrize("doc", sorted((ROOT / "docs").glob("*.md")), ids=lambda p: p.name)
def test_docs_commands_parse(doc):
    bad = [c for c in _commands(doc.read_text()) if not _parse(c)]
    assert not bad, f"{doc.name}: commands the CLI does not accept: {bad}"
