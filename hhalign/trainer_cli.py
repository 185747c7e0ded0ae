"""The training commands (``fit``, ``validate``, ``test``) and ``data inspect``: LightningCLI with hhalign's run
directories, loggers and refusals. ``hhalign.cli`` imports this only when such a command runs: Lightning and
torch take seconds to import, and help or a mistyped command should not wait for them."""

from __future__ import annotations

import logging
import signal
import sys
import uuid
from functools import partial
from pathlib import Path
from typing import Any, Literal

import yaml
from jsonargparse import ArgumentError, Namespace
from lightning.pytorch.callbacks.progress import ProgressBar as LightningProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from hhalign.cli import launched_worker
from hhalign.commands import TRAINER_COMMANDS, known_options, objective_classes
from hhalign.data.datamodule import PreferenceDataModule
from hhalign.errors import UserError, explain_parse_error
from hhalign.objectives.base import AlignmentModule
from hhalign.options import expand_extends, import_class
from hhalign.tools.plot import PlotAtFitEnd
from hhalign.tools.summary import RunSummary
from hhalign.training.callbacks import ProgressBar
from hhalign.training.checkpointing import AtomicCheckpointIO
from hhalign.training.loggers import ResumableCSVLogger, ResumeLogs, check_logger_packages
from hhalign.training.preemption import Preempted, Preemption
from hhalign.training.rundir import (
    EarlierRun,
    RecordResume,
    ReplaceEarlierRun,
    RunRecord,
    check_resume_last,
    check_run_name,
)
from hhalign.training.sharding import check_placement

WANDB_ID_FILE = "wandb_run_id.txt"
PARSER_OPTIONS = {"exit_on_error": False, "allow_abbrev": False}
QUIET_PARSERS: dict[str, Any] = PARSER_OPTIONS | {command: PARSER_OPTIONS for command in TRAINER_COMMANDS}
"""Parse errors are raised to ``main``, which prints them as one line, instead of after a usage dump; an option
is spelled whole (``--trainer.max_step`` would otherwise be taken for ``max_steps``, as the tools refuse it)."""


class SaveConfigEverywhere(SaveConfigCallback):
    """``config.yaml`` in the run directory (Lightning's part) and the same resolved config in the wandb
    run's config under ``hhalign_config``, so a wandb run alone says how to reproduce it."""

    def save_config(self, trainer: Any, pl_module: Any, stage: str) -> None:
        resolved = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.config.update({"hhalign_config": resolved}, allow_val_change=True)


class HHAlignCLI(LightningCLI):
    """Adds the run naming (``outputs/<experiment_name>/<trial_name>/``) and the default loggers."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {k: v for k, v in LightningCLI.subcommands().items() if k in TRAINER_COMMANDS}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--experiment_name", type=str, default="hhalign", help="Group of runs; wandb project.")
        parser.add_argument("--trial_name", type=str, default="run", help="This run; wandb run name.")
        parser.add_argument("--output_dir", type=str, default="outputs", help="Root of every run directory.")
        parser.add_argument(
            "--wandb_mode",
            type=Literal["disabled", "offline", "online"],
            default="disabled",
            help="wandb logging beside the CSV log, which is always written.",
        )
        parser.add_argument(
            "--overwrite", type=bool, default=False, help="Replace an earlier run in the run directory."
        )
        parser.link_arguments("model.init_args.model_name_or_path", "data.tokenizer_name_or_path")
        # the data module builds the kind of example the chosen objective reads
        parser.link_arguments("model.examples", "data.examples", apply_on="instantiate")

    def run_dir(self) -> Path:
        get = partial(self._get, self.config)
        return Path(get("output_dir")) / get("experiment_name") / get("trial_name")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """As Lightning's, with each ``--config`` that ``extends`` a base expanded first."""
        if isinstance(args, (dict, Namespace)):
            return super().parse_arguments(parser, args)
        self.config = parser.parse_args(expand_extends(list(sys.argv[1:] if args is None else args)))

    def _parse_ckpt_path(self) -> None:
        """Keep the config the user gave. Lightning would load the whole checkpoint here to replace the
        model's options with the saved ones, silently ignoring flags such as a changed reference; the
        checkpoint's fingerprints refuse a resume whose data or reference differ instead."""

    def before_instantiate_classes(self) -> None:
        """Refuse, before anything loads or is written, what cannot run here (a strategy, an accelerator, an
        objective under FSDP), a run name outside the output folder, a resume with nothing to resume, and a run
        over an earlier one unless asked to resume it or replace it (which sets it aside until the new run has
        a checkpoint)."""
        get = partial(self._get, self.config)
        for option in ("experiment_name", "trial_name"):
            check_run_name(option, str(get(option)))
        model = get("model", default=None)
        objective = import_class(getattr(model, "class_path", None))
        init_args = dict(vars(getattr(model, "init_args", None) or Namespace()))
        check_placement(get("trainer", default=None) or {}, objective, init_args, str(self.subcommand))
        check_logger_packages((get("trainer", default=None) or {}).get("logger"))
        if launched_worker() or self.subcommand != "fit":
            return  # a process started beside rank 0, which decides for all of them
        run_dir = self.run_dir()
        if get("ckpt_path") == "last":
            callbacks = (get("trainer", default=None) or {}).get("callbacks") or []
            named = [getattr(c, "init_args", None) and c.init_args.get("dirpath") for c in callbacks]
            check_resume_last(run_dir, [Path(d) for d in named if d])
        if get("ckpt_path") is not None:
            RunRecord.snapshot(run_dir)  # put back unless the resume is accepted
        earlier = any((run_dir / name).exists() for name in ("metrics.csv", "checkpoints"))
        if not earlier or get("ckpt_path") is not None:
            return
        if not get("overwrite"):
            raise UserError(
                f"{run_dir} already holds a run. Resume it with --ckpt_path last, choose another --trial_name, "
                "or pass --overwrite true to replace it (it is kept until the new run writes a checkpoint)"
            )
        EarlierRun.set_aside(run_dir)

    def default_loggers(self) -> list[Logger]:
        """The CSV log, always; wandb when switched on, continuing the same wandb run on resume."""
        get = partial(self._get, self.config)
        loggers: list[Logger] = [
            ResumableCSVLogger(get("output_dir"), name=get("experiment_name"), version=get("trial_name"))
        ]
        if get("wandb_mode") != "disabled":
            id_file = self.run_dir() / WANDB_ID_FILE
            run_id = id_file.read_text().strip() if id_file.exists() else f"{get('trial_name')}-{uuid.uuid4().hex[:8]}"
            if not launched_worker():  # wandb logs from rank 0 alone; its id is the one kept
                id_file.parent.mkdir(parents=True, exist_ok=True)
                id_file.write_text(run_id + "\n")
            loggers.append(
                WandbLogger(
                    project=get("experiment_name"),
                    name=get("trial_name"),
                    id=run_id,
                    resume="allow",
                    save_dir=str(self.run_dir()),
                    mode=get("wandb_mode"),
                )
            )
        return loggers

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        trainer_config = self._get(self.config_init, "trainer", default={})
        configured = trainer_config.get("logger")
        if configured is not False:  # the user's loggers beside the CSV log: it comes first, so the run's log
            more = [] if configured in (None, True) else configured if isinstance(configured, list) else [configured]
            kwargs["logger"] = [*self.default_loggers(), *more]  # dir, checkpoints and config stay the run's
        # after the configured callbacks, so the curves and the summary see the export and the last rows
        extra = [ResumeLogs(), RecordResume(), Preemption(), ReplaceEarlierRun(), PlotAtFitEnd(), RunSummary()]
        own_bar = any(isinstance(c, LightningProgressBar) for c in trainer_config.get("callbacks") or [])
        if trainer_config.get("enable_progress_bar") is not False and not own_bar:  # "Epoch 0", not "Epoch 0/-2"
            extra.append(ProgressBar())
        kwargs["callbacks"] = [*(trainer_config.get("callbacks") or []), *extra]
        if not trainer_config.get("plugins"):
            kwargs["plugins"] = [AtomicCheckpointIO()]
        if trainer_config.get("default_root_dir") is None:
            kwargs["default_root_dir"] = str(self.run_dir())
        return super().instantiate_trainer(**kwargs)


class DropAdverts(logging.Filter):
    """Lightning's info log suggests a cloud logger on every run; the CSV log and wandb are ours."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


for _name in ("lightning.fabric.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero"):  # whichever logs
    logging.getLogger(_name).addFilter(DropAdverts())


def inspect_data(args: list[str]) -> None:
    """``hhalign data inspect``: the data module ``fit`` would build from these flags, set up (read, tokenized,
    audited) without loading any weights or writing a run, and its report."""
    from hhalign.tools.data_inspect import report

    class DataOnly(HHAlignCLI):
        def before_instantiate_classes(self) -> None:
            """Nothing is written: no run directory is checked or replaced."""

        def instantiate_classes(self) -> None:
            self.config_init = self.parser.instantiate_classes(self.config)
            self.datamodule = self._get(self.config_init, "data")

    cli = DataOnly(
        AlignmentModule,
        PreferenceDataModule,
        subclass_mode_model=True,
        args=args,
        run=False,
        auto_configure_optimizers=False,
        save_config_callback=None,
        parser_kwargs=PARSER_OPTIONS,
    )
    cli.datamodule.setup("inspect")
    print(report(cli.datamodule))


def _finish_wandb() -> None:
    """Close the wandb run at the end of the command, so an offline run's file is complete (Lightning leaves
    it open for notebooks; a command line has nothing more to log)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def run(argv: list[str], from_sys_argv: bool) -> None:
    """A training command; ``from_sys_argv``: Lightning reads ``sys.argv`` itself (no warning about args)."""
    try:
        HHAlignCLI(
            AlignmentModule,
            PreferenceDataModule,
            subclass_mode_model=True,
            args=None if from_sys_argv else argv,
            save_config_callback=SaveConfigEverywhere,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            parser_kwargs=QUIET_PARSERS,
        )
        _finish_wandb()
    except Preempted as stop:  # the Preemption callback has said how to resume
        sys.exit(stop.exit_code)
    except SIGTERMException:
        sys.exit(128 + signal.SIGTERM)
    except ArgumentError as err:  # jsonargparse's, for a bad option or config value: one line, no usage dump
        print(f"hhalign: error: {explain_parse_error(str(err), known_options(), objective_classes())}", file=sys.stderr)
        sys.exit(2)
    finally:  # what a failed command changed in a run directory is put back
        RunRecord.restore_pending()  # a refused resume's config and data summary
        EarlierRun.restore_pending()  # the run that --overwrite set aside, unless its replacement has a checkpoint
