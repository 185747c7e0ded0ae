"""The ``hhalign`` command: help, the tools beside training (plain argparse) and, by way of
``hhalign.trainer_cli``, the training commands (LightningCLI). This module imports neither torch nor Lightning,
so that ``hhalign --help``, a mistyped command and a training command without its config answer at once."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hhalign.commands import TOOLS, TRAINER_COMMANDS, overview, training_help
from hhalign.errors import UserError
from hhalign.options import closest

RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")
"""Where launchers put a process's rank: torchrun, Lightning's own launcher, SLURM's srun (which sets only
``SLURM_PROCID``), LSF's jsrun."""


def launched_worker() -> bool:
    """True in every process of a multi-process run but rank 0's, from the launcher's variables (read before the
    trainer exists): those processes must not delete, write or report what rank 0 does."""
    return any(os.environ.get(name, "0") not in ("0", "") for name in RANK_VARIABLES)


def check_training_command(argv: list[str]) -> None:
    """What can be said of a training command before Lightning is imported: one with nothing to train on, and a
    ``--config`` file that does not exist."""
    command, rest = argv[0], argv[1:]
    if not rest:
        raise UserError(
            f"{command} needs a run's settings: hhalign {command} --config configs/tiny/dpo.yaml (the recipes are "
            f"in configs/; any key of one can follow as a flag, e.g. --model.beta 0.1); hhalign {command} --help "
            "lists every option"
        )
    configs = [arg.split("=", 1)[1] for arg in rest if arg.startswith("--config=")]
    configs += [value for flag, value in zip(rest, rest[1:], strict=False) if flag == "--config"]
    for path in configs:
        if path.lstrip().startswith("{") or Path(path).is_file():  # a file, or YAML given inline
            continue
        folder = Path(path).parent
        near = closest(Path(path).name, [p.name for p in folder.glob("*.yaml")]) if folder.is_dir() else None
        hint = f"; did you mean {folder / near}?" if near else ""
        raise UserError(f"--config {path}: no such file{hint}")


DATA_USAGE = "usage: hhalign data inspect [--config RUN.yaml] [--data.path P] [--data.* ...] [--model.* ...]"
DATA_HELP = (
    f"{DATA_USAGE}\n  reads and tokenizes the data as `hhalign fit` with the same flags would (no weights loaded, "
    "nothing written), and prints its audit: what was kept, cut and dropped, lengths, formats"
)


def data_main(argv: list[str]) -> None:
    """``hhalign data inspect``; its help and usage errors answer before anything heavy is imported."""
    if argv[:1] in ([], ["-h"], ["--help"]) or (argv[:1] == ["inspect"] and argv[1:2] in (["-h"], ["--help"])):
        print(DATA_HELP)
        return
    if argv[:1] != ["inspect"]:
        raise UserError(f"data: the one subcommand is inspect; {DATA_USAGE}")
    args = argv[1:]
    if not any(a == "--config" or a.startswith(("--config=", "--model")) for a in args):
        raise UserError(
            "data inspect: name the run's tokenizer and objective: --config RUN.yaml, or --model hhalign.DPOModule "
            "--model.model_name_or_path M"
        )
    check_training_command(["data inspect", *args])
    from hhalign.trainer_cli import inspect_data

    inspect_data(args)


def _tool(name: str) -> Callable[[list[str]], Any]:
    module, function = TOOLS[name][0].split(":")
    return getattr(importlib.import_module(module), function)


def main(args: list[str] | None = None) -> None:
    """Entry point; ``args`` lets tests run the real CLI in-process."""
    argv = sys.argv[1:] if args is None else list(args)
    try:
        if argv[:1] in ([], ["-h"], ["--help"]):
            print(overview())
            return
        if argv[0] in TOOLS:
            from hhalign.tools.parsers import PARSERS

            if argv[0] in PARSERS:  # help and argument errors, before the tool's heavy imports
                early = PARSERS[argv[0]]()
                early.notes = False  # the tool's own parse says it
                early.parse_args(argv[1:])
            _tool(argv[0])(argv[1:])
            return
        if argv[0] not in TRAINER_COMMANDS:
            near = closest(argv[0], [*TRAINER_COMMANDS, *TOOLS])
            hint = f"; did you mean {near}?" if near else ""
            raise UserError(f"no command {argv[0]!r}{hint} (hhalign --help lists them)")
        if argv[1:] in (["-h"], ["--help"]):  # at once; `--help all` is Lightning's full list
            print(training_help(argv[0]))
            return
        if argv[1:] in (["-h", "all"], ["--help", "all"]):
            argv = [argv[0], "--help"]
        check_training_command(argv)
        from hhalign.trainer_cli import run

        run(argv, from_sys_argv=args is None)
    except UserError as err:  # every process meets it; rank 0 says it once
        sys.exit(1 if launched_worker() else f"hhalign: error: {err}")


def __getattr__(name: str) -> Any:
    """The training CLI's names (``HHAlignCLI``, ``data_main``, …), imported when first asked for."""
    if name.startswith("__"):  # probes of module attributes (``__path__``, ``__wrapped__``) import nothing
        raise AttributeError(name)
    import hhalign.trainer_cli

    return getattr(hhalign.trainer_cli, name)


if __name__ == "__main__":
    main()
