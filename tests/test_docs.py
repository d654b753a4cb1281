"""The documentation's examples run and print what the docs say they print.

Every ```python block of a checked file runs, in order, in one namespace per file: a block with
``>>>`` prompts as a doctest (its outputs compared exactly; ``...`` matches anything), any other
block as a script. So an example that stops working, or whose ``describe()`` output changes,
fails here.
"""

import contextlib
import doctest
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "docs/models.md", "docs/hgs.md"]
FENCE = re.compile(r"^```python\n(.*?)^```", re.M | re.S)


def python_blocks(text: str):
    """``(line, source)`` of every ```python block of a Markdown text (``line`` 1-based)."""
    return [(text[: m.start()].count("\n") + 2, m.group(1)) for m in FENCE.finditer(text)]


def run_blocks(name: str, text: str) -> int:
    """Run every python block of ``text``; returns how many doctest examples were checked."""
    glob: dict = {"__name__": f"docs_{Path(name).stem}"}
    parser = doctest.DocTestParser()
    flags = doctest.ELLIPSIS
    examples = 0
    for line, src in python_blocks(text):
        if ">>>" in src:
            test = parser.get_doctest(src, glob, f"{name}:{line}", name, line - 1)
            out = io.StringIO()
            runner = doctest.DocTestRunner(optionflags=flags)
            runner.run(test, out=out.write, clear_globs=False)
            res = runner.summarize(verbose=False)
            assert res.failed == 0, f"{name} block at line {line}:\n{out.getvalue()}"
            glob = test.globs  # the DocTest ran in a copy: later blocks see its names
            examples += res.attempted
        else:
            with contextlib.redirect_stdout(io.StringIO()):
                exec(compile(src, f"{name}:{line}", "exec"), glob)
    return examples


@pytest.mark.parametrize("name", DOCS)
def test_doc_examples_run(name):
    text = (ROOT / name).read_text()
    assert python_blocks(text), f"{name} has no python examples"
    assert run_blocks(name, text) > 0, f"{name}: no doctest examples checked"


def test_models_doc_covers_the_three_models():
    """The models page shows describe() for Lotka-Volterra, the PK model and the gene pair."""
    text = (ROOT / "docs/models.md").read_text()
    for expected in ("dprey/dt", "dcentral/dt", "dA/dt", "Traceback"):
        assert expected in text


def test_doc_runner_catches_a_wrong_output():
    """The harness above fails when a documented output is wrong (it is not a tautology)."""
    good = "```python\n>>> print(1 + 1)\n2\n```\n"
    assert run_blocks("good.md", good) == 1
    with pytest.raises(AssertionError, match="Expected"):
        run_blocks("bad.md", good.replace("\n2\n", "\n3\n"))
    with pytest.raises(ZeroDivisionError):
        run_blocks("script.md", "```python\nx = 1 / 0\n```\n")


LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
CODE = re.compile(r"^```.*?^```|`[^`\n]*`", re.M | re.S)


def test_relative_links_resolve():
    """Every relative Markdown link in the README and docs/ names a file of the repository."""
    missing = []
    for md in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in LINK.findall(CODE.sub("", md.read_text())):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (md.parent / target).exists():
                missing.append(f"{md.relative_to(ROOT)} -> {target}")
    assert not missing, missing
