"""The import order docs/architecture.md states, kept true: a package imports only from those below it."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "hhalign"
LAYERS = [
    {"errors", "options", "files", "named"},
    {"checkpoint_files"},
    {"data"},
    {"losses"},
    {"models"},
    {"rewards"},
    {"training"},
    {"objectives"},
    {"tools"},
    {"commands", "cli", "trainer_cli", "__init__", "__main__"},
]
"""Bottom first; the same order as docs/architecture.md."""
RANK = {name: level for level, names in enumerate(LAYERS) for name in names}


def part(module: str) -> str:
    """The top-level part of ``hhalign.X.y``: ``X``."""
    return module.split(".")[1] if module.count(".") else "__init__"


def imports(file: Path) -> list[tuple[int, str]]:
    """Every ``hhalign.…`` module a file imports, at module level or inside a function."""
    found = []
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hhalign"):
            names = [node.module] if node.module != "hhalign" else [f"hhalign.{a.name}" for a in node.names]
            found += [(node.lineno, name) for name in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("hhalign.")]
    return found


def upward_imports() -> list[str]:
    wrong = []
    for file in sorted(PACKAGE.rglob("*.py")):
        relative = file.relative_to(PACKAGE.parent)
        importer = part(".".join(relative.with_suffix("").parts))
        for line, module in imports(file):
            target = part(module)
            if target in RANK and RANK[target] > RANK[importer]:
                wrong.append(f"{relative}:{line} ({importer}) imports {module} ({target})")
    return wrong


def test_every_package_has_a_layer():
    tops = {
        p.stem if p.is_file() else p.name
        for p in PACKAGE.iterdir()
        if p.suffix == ".py" or (p / "__init__.py").exists()
    }
    assert tops <= set(RANK), tops - set(RANK)


def test_no_package_imports_one_above_it():
    assert upward_imports() == []


def test_the_check_catches_an_upward_import(tmp_path, monkeypatch):
    """The test itself can fail: a data module importing the models stage is reported."""
    fake = tmp_path / "hhalign"
    (fake / "data").mkdir(parents=True)
    (fake / "data" / "bad.py").write_text("def f():\n    from hhalign.models.loading import load_model\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert upward_imports() == ["hhalign/data/bad.py:2 (data) imports hhalign.models.loading (models)"]


def test_the_architecture_doc_states_this_order():
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    order = (
        "errors, options, files, named → checkpoint_files → data → losses → models → rewards → training → objectives"
    )
    order += " → tools → commands, cli"
    assert order in text
