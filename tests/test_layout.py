"""The package's shape: light imports where the math lives, the command behind ``python -m``, small files."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO


def test_losses_import_without_lightning_or_transformers():
    code = (
        "import sys, hhalign.losses, hhalign.losses.preference, hhalign.losses.kto, hhalign.losses.reward; "
        "import hhalign.losses.logps; "
        "print(sorted(m for m in ('lightning', 'transformers', 'torchdata', 'datasets') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow  # a fresh interpreter importing Lightning
def test_python_dash_m_hhalign_is_the_command():
    out = subprocess.run(
        [sys.executable, "-m", "hhalign", "summary", "--help"], capture_output=True, text=True, cwd=REPO
    )
    assert out.returncode == 0 and "usage: hhalign summary" in out.stdout


def test_no_source_file_grows_past_300_lines():
    long = {
        str(p.relative_to(REPO)): n
        for p in (REPO / "hhalign").rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 300
    }
    assert not long, long


def test_no_test_statement_is_a_check_that_cannot_fail():
    """A bare ``assert_close(a, b) and torch.equal(c, d)`` runs the first check only (``assert_close`` returns
    None), and a bare comparison checks nothing: every expression statement in the tests must be a call."""
    import ast

    silent = []
    for path in (REPO / "tests").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Expr) and isinstance(node.value, (ast.BoolOp, ast.Compare, ast.UnaryOp)):
                silent.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not silent, silent
