"""Export a trained model to a standard Hugging Face folder: ``hhalign export --ckpt PATH --out DIR``,
or automatically at the end of ``fit`` with the ``ExportAtFitEnd`` callback. The DPO reference is
never exported; weights are written as safetensors."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from torch import nn

from hhalign.checkpoint_files import EXPORT_INFO, read_checkpoint, read_trained_weights
from hhalign.errors import UserError
from hhalign.models.loading import load_tokenizer, merged, model_from_trained
from hhalign.tools.describe import (
    CARD,
    describe_training,
    model_card,
    readable_by_the_user,
    trained_chat_template,
    training_section,
)
from hhalign.tools.parsers import export_parser
from hhalign.training.sharding import model_on_one_process


def export_model(model: nn.Module, tokenizer: Any, out: str | Path, info: dict[str, Any]) -> Path:
    """Write ``model`` (safetensors), its tokenizer and ``hhalign_export.json`` (provenance and, for a
    reward model, the mean and standard deviation of its validation rewards and how to read it) into ``out``.

    A reward model is made readable by plain ``transformers`` where hhalign trained it to read: see
    ``readable_reward_model``.
    """
    out, started = Path(out), time.time() - 1  # mtimes may be coarser than the clock
    out.mkdir(parents=True, exist_ok=True)
    if info.get("head") == "reward":
        tokenizer = copy.deepcopy(tokenizer)
        info = {**info, "reading": readable_reward_model(model, tokenizer)}
        (out / CARD).write_text(reward_card(info["reading"]) + training_section(info))
    else:
        (out / CARD).write_text(model_card(info))
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n")
    readable_by_the_user(out, started)
    return out


TRIMMED_TEMPLATE = (
    "{% set hhalign_rendered %}TEMPLATE{% endset %}"
    "{% if add_generation_prompt %}{{ hhalign_rendered }}{% else %}{{ hhalign_rendered.rstrip() }}{% endif %}"
)
"""A chat template that renders a finished conversation without the whitespace after its last end-of-turn."""
PROBE = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


def readable_reward_model(model: nn.Module, tokenizer: Any) -> dict[str, Any]:
    """Make ``AutoModelForSequenceClassification`` read the score at each reply's EOS, as hhalign trained it.

    The library pools the rightmost token that is not ``config.pad_token_id``. With pad == EOS that is the token
    before the EOS, so the export pads with a special token that never ends a real sequence (UNK, else BOS); and
    a chat template that ends a turn with ``<eos>\n`` (SmolLM2's) would be read at the ``\n``, so the exported
    template leaves out the whitespace after a finished conversation's last end-of-turn. Returns how to read it.
    """
    eos = tokenizer.eos_token_id
    if tokenizer.pad_token_id == eos:
        spare = next((t for t in (tokenizer.unk_token, tokenizer.bos_token) if t and t != tokenizer.eos_token), None)
        if spare is not None:
            tokenizer.pad_token = spare
    plain = tokenizer.pad_token_id != eos
    model.config.pad_token_id = tokenizer.pad_token_id if plain else None  # None: unpadded rows read at the end
    trimmed = False
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str):
        rendered = tokenizer.apply_chat_template(PROBE, tokenize=False)
        if rendered != rendered.rstrip() and rendered.rstrip().endswith(tokenizer.eos_token):
            tokenizer.chat_template = TRIMMED_TEMPLATE.replace("TEMPLATE", template)
            trimmed = tokenizer.apply_chat_template(PROBE, tokenize=False) == rendered.rstrip()
            if not trimmed:
                tokenizer.chat_template = template
    return {
        "score_at": "the EOS that ends each reply",
        "eos_token_id": eos,
        "pad_token_id": tokenizer.pad_token_id,
        "batched_with_padding": plain,
        "chat_template_trimmed": trimmed,
    }


def reward_card(reading: dict[str, Any]) -> str:
    """The export's README: how to score with it outside hhalign."""
    batch = (
        "Batches may be padded on either side: the pad token is never the last real token."
        if reading["batched_with_padding"]
        else "Its tokenizer pads with its EOS, so score one unpadded sequence at a time."
    )
    ending = (
        "The chat template ends a finished conversation at its last end-of-turn (no trailing newline), so the "
        "score is read there."
        if reading["chat_template_trimmed"]
        else "Without a chat template, end each text with the EOS token."
    )
    return f"""# hhalign reward model

Trained with hhalign (Bradley-Terry on preference pairs) to read its score at the EOS token that ends each reply
(id {reading["eos_token_id"]}). Read it with plain `transformers`:

```python
from transformers import AutoModelForSequenceClassification, AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained(PATH)
model = AutoModelForSequenceClassification.from_pretrained(PATH)
texts = tokenizer.apply_chat_template(conversations, tokenize=False)  # each ending with the assistant's reply
batch = tokenizer(texts, padding=True, add_special_tokens=False, return_tensors="pt")
scores = model(**batch).logits[:, 0]
```

{batch} {ending}
Scores are comparable between replies to the same prompt; `hhalign_export.json` holds their validation mean and
standard deviation.
"""


def export_adapters(model: nn.Module, tokenizer: Any, out: str | Path, info: dict[str, Any]) -> Path:
    """Write a LoRA run's adapters alone, in peft's format (``PeftModel.from_pretrained(base, out)`` reads them
    over the base the run started from), with the tokenizer and ``hhalign_export.json``."""
    out, started = Path(out), time.time() - 1
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / EXPORT_INFO).write_text(json.dumps({**info, "format": "peft adapters"}, indent=2) + "\n")
    readable_by_the_user(out, started)
    return out


def export_checkpoint(ckpt: str, out: str, adapters_only: bool = False) -> Path:
    """Export the trained model of an hhalign checkpoint (a LoRA run's adapters alone with ``adapters_only``)."""
    trained = read_trained_weights(ckpt)
    lora = trained.hparams.get("lora_rank", 0) > 0
    if adapters_only and not lora:
        raise UserError(f"--adapters_only: {ckpt} is not a LoRA run (no --model.lora_rank); export it whole")
    model = model_from_trained(trained, trained.head, merge=not adapters_only)
    info = {"source": str(ckpt), "module": trained.module, "base": trained.base, "head": trained.head}
    if trained.reward_stats:
        info["reward_stats"] = trained.reward_stats
    data = dict(read_checkpoint(ckpt, mmap=True).get("datamodule_hyper_parameters") or {})
    tokenizer = load_tokenizer(trained.base)
    chat = _with_the_runs_template(tokenizer, data.get("chat_template", False))
    if (recorded := trained_chat_template(ckpt)) is not None:
        chat = chat or recorded
    described = describe_training(trained.module, trained.hparams, data, chat, tokenizer, trained.step)
    write = export_adapters if adapters_only else export_model
    return write(model, tokenizer, out, {**info, "step": trained.step, **described})


def _with_the_runs_template(tokenizer: Any, option: bool | str) -> bool:
    """Put a run's own template (``--data.chat_template TEMPLATE``) into the tokenizer its export carries;
    whether the option asks for a chat template."""
    if isinstance(option, str):
        from hhalign.data.templates import template_for

        template_for(tokenizer, option, None)
    return bool(option)


class ExportAtFitEnd(Callback):
    """Export the trained model when ``fit`` ends (on the main process), by default to
    ``<run dir>/export``; the folder can serve as the next stage's ``model_name_or_path``."""

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = dirpath
        self.trained = False
        """Whether this fit trained at all: a resumed run that had already reached ``max_steps`` does not."""

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.trained = True  # not called when the loop has nothing left to do

    def on_fit_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        out = Path(self.dirpath or Path(trainer.default_root_dir) / "export")
        if not self.trained and (out / "config.json").is_file():  # keep the export and what it records
            pl_module.print(
                f"hhalign: nothing left to train (the run is at step {trainer.global_step} of max_steps "
                f"{trainer.max_steps}; raise --trainer.max_steps to go on); its export {out} is kept as it was"
            )
            return
        model = model_on_one_process(trainer, pl_module)  # under FSDP, gathered whole on rank 0: every rank joins
        critic = None
        if getattr(pl_module, "critic", None) is not None:  # PPO's value model, exported beside the policy
            critic = model_on_one_process(trainer, pl_module, "critic", pl_module.critic_start, "reward")
        if not trainer.is_global_zero or model is None:
            return
        hp = pl_module.hparams
        info = {
            "source": "fit",
            "module": type(pl_module).__name__,
            "base": hp.model_name_or_path,
            "head": pl_module.head,
            "step": trainer.global_step,
        }
        if getattr(pl_module, "reward_stats", None):
            info["reward_stats"] = pl_module.reward_stats  # from the last validation: normalise scores with it
        tokenizer = load_tokenizer(hp.model_name_or_path, hp.trust_remote_code)
        datamodule = getattr(trainer, "datamodule", None)
        data = dict(getattr(datamodule, "hparams", {}) or {})
        chat = _with_the_runs_template(tokenizer, data.get("chat_template", False))
        chat = bool(getattr(datamodule, "summary", {}).get("chat_template", chat))  # conversational records too
        info |= describe_training(
            type(pl_module).__name__, dict(hp), data, chat, tokenizer, trainer.global_step, trainer.callback_metrics
        )
        export_model(merged(model), tokenizer, out, info)  # LoRA adapters merged
        pl_module.print(f"exported the trained model to {out}")
        if hasattr(model, "merge_and_unload"):  # and, for a LoRA run, the adapters alone beside it
            export_adapters(model, tokenizer, out / "adapter", info)
            pl_module.print(f"exported the LoRA adapters to {out / 'adapter'}")
        if critic is not None:  # a scalar head, read as a reward model is
            export_model(critic, tokenizer, out / "critic", {**info, "head": "reward", "role": "critic"})
            pl_module.print(f"exported the critic to {out / 'critic'}")


def main(argv: list[str] | None = None) -> None:
    parser = export_parser()
    args = parser.parse_args(argv)
    print(f"exported {args.ckpt} to {export_checkpoint(args.ckpt, args.out, args.adapters_only)}")
