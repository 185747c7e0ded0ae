"""The commands ``hhalign`` runs, with a line each for ``hhalign --help``, and every option the training commands
take (for "did you mean" on a mistyped one)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

TRAINER_COMMANDS = {
    "fit": "train an objective: SFT, DPO and its family, KTO, a reward model, RLOO / GRPO, online DPO",
    "validate": "the validation metrics of a checkpoint, on its data or on other data (--data.val_path)",
    "test": "as validate, logged under test/",
}
"""The Trainer methods the command runs (``predict`` is not one: ``score`` and ``generate`` do that work)."""
TOOLS = {
    "data": ("hhalign.cli:data_main", "data inspect: a run's data read and tokenized, without training"),
    "evaluate": ("hhalign.tools.evaluate:main", "sample policy and reference, judge them by a reward model, KL"),
    "export": ("hhalign.tools.export:main", "a checkpoint as a Hugging Face folder (safetensors)"),
    "score": ("hhalign.tools.use:score", "rewards of replies, or of a file's pairs, from a reward model"),
    "generate": ("hhalign.tools.use:generate", "a reply from a policy"),
    "plot": ("hhalign.tools.plot:main", "a run's curves, or the reward-KL frontier of evaluations"),
    "summary": ("hhalign.tools.summary:main", "the final numbers of one or more runs"),
    "get-model": ("hhalign.models.importing:get_model_main", "build a known real model offline (SmolLM2-135M)"),
    "import-gguf": ("hhalign.models.importing:import_main", "a GGUF file as a Hugging Face folder"),
    "make-tiny": ("hhalign.models.tiny:main", "a tiny offline tokenizer and random Llama, for trying the machinery"),
}
"""Subcommands that are not a Trainer method: ``module:function(argv)`` and a line for ``hhalign --help``."""


def overview() -> str:
    """``hhalign --help``: every command with a line."""
    lines = ["usage: hhalign COMMAND [options]   (hhalign COMMAND --help: its options)", "", "training (Lightning):"]
    lines += [f"  {name:<12} {what}" for name, what in TRAINER_COMMANDS.items()]
    lines += ["", "data, runs and models:"]
    lines += [f"  {name:<12} {what}" for name, (_, what) in TOOLS.items()]
    lines += [
        "",
        "Options are written with underscores everywhere: --data.max_length, --trainer.max_steps, --max_new_tokens.",
        "The training commands read YAML: --config configs/smollm2/dpo.yaml, any key then as a flag.",
    ]
    return "\n".join(lines)


COMMON_OPTIONS = {
    "the run": ["--experiment_name", "--trial_name", "--output_dir", "--overwrite", "--ckpt_path", "--wandb_mode"],
    "the model": ["--model.model_name_or_path", "--model.beta", "--model.loss_type", "--model.lora_rank",
                  "--model.optimizer.init_args.lr", "--model.warmup_steps"],
    "the data": ["--data.path", "--data.val_path", "--data.batch_size", "--data.max_length", "--data.chat_template",
                 "--data.columns"],
    "the trainer": ["--trainer.max_steps", "--trainer.val_check_interval", "--trainer.devices",
                    "--trainer.strategy", "--trainer.precision", "--trainer.logger"],
}  # fmt: skip
"""What ``hhalign fit --help`` shows at once; ``--help all`` lists every option with its default."""


def training_help(command: str) -> str:
    """``hhalign fit --help`` (and validate's, test's) without Lightning: how a command is put together, the
    objectives, the options most runs set, and where the full list is."""
    import hhalign

    objectives = [n for n in hhalign.__all__ if n.endswith("Module") and n not in ("AlignmentModule",
                                                                                  "PreferenceDataModule")]  # fmt: skip
    lines = [
        f"usage: hhalign {command} --config RECIPE.yaml [--group.option VALUE ...]",
        "",
        f"{TRAINER_COMMANDS[command]}; the recipe (YAML) sets everything, any of its keys can follow as a flag.",
        "recipes: configs/tiny/ (the offline tiny model), configs/smollm2/ (SmolLM2-135M on a CPU; *-gpu.yaml on",
        "one GPU), configs/*.yaml (7B on 8 GPUs)",
        f"objectives (--model hhalign.X): {', '.join(objectives)}",
        "",
    ]
    lines += [f"{group + ':':<13}{' '.join(options)}" for group, options in COMMON_OPTIONS.items()]
    lines += [
        "",
        f"every option with its default and help:  hhalign {command} --help all   (imports Lightning: seconds)",
        f"one objective's options:                 hhalign {command} --model.help hhalign.DPOModule",
        f"a run's whole resolved config:           hhalign {command} --config RECIPE.yaml --print_config",
    ]
    return "\n".join(lines)


def known_options() -> list[str]:
    """Every option the training commands take, for "did you mean": the top-level ones, the data module's, each
    objective's and the Trainer's, as ``--group.name``."""
    from lightning import Trainer

    from hhalign.data.datamodule import PreferenceDataModule
    from hhalign.objectives.base import AlignmentModule

    def parameters(cls: type) -> set[str]:
        return {n for n in inspect.signature(cls.__init__).parameters if n not in ("self", "args", "kwargs")}

    def subclasses(cls: type) -> list[type]:
        return [cls, *(s for sub in cls.__subclasses__() for s in subclasses(sub))]

    import hhalign.objectives

    for info in pkgutil.iter_modules(hhalign.objectives.__path__):  # every objective, registered as a subclass
        importlib.import_module(f"hhalign.objectives.{info.name}")

    model = set().union(*(parameters(c) for c in subclasses(AlignmentModule)))
    top = ["--config", "--ckpt_path", "--print_config", "--seed_everything", "--experiment_name", "--trial_name",
           "--output_dir", "--wandb_mode", "--overwrite"]  # fmt: skip
    return [
        *top,
        *(f"--model.{n}" for n in sorted(model)),
        *(f"--data.{n}" for n in sorted(parameters(PreferenceDataModule))),
        *(f"--trainer.{n}" for n in sorted(parameters(Trainer))),
    ]


def objective_classes() -> list[str]:
    """The objectives ``--model`` (``class_path``) names, as ``hhalign.DPOModule``."""
    import hhalign

    not_objectives = ("AlignmentModule", "PreferenceDataModule")
    return [f"hhalign.{name}" for name in hhalign.__all__ if name.endswith("Module") and name not in not_objectives]
