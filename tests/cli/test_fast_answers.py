"""The front door answers without importing torch or Lightning: ``hhalign --help``, ``hhalign data --help``, a
mistyped command, a training command with no settings and a ``--config`` file that does not exist (each took 5 s
here, 20-66 s on a loaded machine, importing both to print a line)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

PROBE = """
import json, sys
from hhalign.cli import main
try:
    main(sys.argv[1:])
    code = 0
except SystemExit as stop:
    code = stop.code
heavy = sorted(m for m in ("torch", "lightning", "transformers") if m in sys.modules)
print(json.dumps({"code": code if isinstance(code, int) or code is None else str(code), "heavy": heavy}))
"""
TOOL_HELP = ["score", "generate", "evaluate", "export", "plot", "summary", "make-tiny", "get-model", "import-gguf"]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--help"], None),
        ([], None),
        (["fit", "--help"], None),
        (["validate", "-h"], None),
        (["data", "--help"], None),
        (["data"], None),
        (["data", "inspect", "--help"], None),
        (["data", "inspet"], "data: the one subcommand is inspect"),
        (["fitt"], "no command 'fitt'; did you mean fit?"),
        (["fit"], "fit needs a run's settings: hhalign fit --config configs/tiny/dpo.yaml"),
        (["validate"], "validate needs a run's settings"),
        (["fit", "--config", "configs/tiny/dpoo.yaml"], "no such file; did you mean configs/tiny/dpo.yaml?"),
        (["fit", "--config=configs/nope/x.yaml", "--model.beta", "0.1"], "--config configs/nope/x.yaml: no such file"),
    ],
)
def test_the_front_door_answers_without_torch_or_lightning(argv: list[str], says: str | None):
    probe = subprocess.run([sys.executable, "-c", PROBE, *argv], cwd=REPO, capture_output=True, text=True, timeout=60)
    result = json.loads(probe.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    if says is None:
        expected = {
            "data": "usage: hhalign data inspect",
            "fit": "usage: hhalign fit --config RECIPE.yaml",
            "validate": "usage: hhalign validate",
        }.get(argv[0] if argv else "", "training (Lightning):")
        assert result["code"] in (0, None) and expected in probe.stdout
    else:
        assert result["code"].startswith("hhalign: error: ") and says in result["code"]


@pytest.mark.parametrize("tool", TOOL_HELP)
def test_every_tools_help_and_a_missing_argument_answer_without_torch(tool: str):
    helped = subprocess.run([sys.executable, "-c", PROBE, tool, "--help"], cwd=REPO, capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    result = json.loads(helped.stdout.strip().splitlines()[-1])
    assert result == {"code": 0, "heavy": []} and f"usage: hhalign {tool}" in helped.stdout
    missing = subprocess.run([sys.executable, "-c", PROBE, tool], cwd=REPO, capture_output=True, text=True, timeout=60)
    result = json.loads(missing.stdout.strip().splitlines()[-1])
    assert result == {"code": 2, "heavy": []} and "required" in missing.stderr


def test_the_short_training_help_names_real_options():
    """Every option ``hhalign fit --help`` shows is one the command takes (the full list checks it)."""
    from hhalign.commands import COMMON_OPTIONS, known_options

    known = known_options()
    for option in (o for options in COMMON_OPTIONS.values() for o in options):
        assert option in known or option.startswith("--model.optimizer."), option
