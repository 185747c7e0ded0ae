"""What an export says about itself: how to prompt it (the format it was trained on), what trained it (the
objective and its settings, the data, the steps) and how training ended (the last metrics). Written beside the
weights in ``hhalign_export.json`` and as a model card; ``score``, ``generate`` and ``evaluate`` read the prompt
format back, so that a model is asked in the format it learned."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

from hhalign.checkpoint_files import EXPORT_INFO, is_checkpoint_file

RAW_FORMAT = "hh-rlhf text: '\\n\\nHuman: …\\n\\nAssistant:' before each reply"
CARD = "README.md"


def _plain(value: Any) -> bool:
    """Whether a setting reads back from JSON as it was (optimizers and callables do not)."""
    try:
        return json.loads(json.dumps(value)) == value
    except (TypeError, ValueError):
        return False


def prompt_format(chat_template: bool, tokenizer: Any) -> dict[str, Any]:
    """The prompt format of a run: its tokenizer's chat template (named by its hash) or the raw hh-rlhf text."""
    if not chat_template:
        return {"chat_template": False, "description": RAW_FORMAT}
    template = str(getattr(tokenizer, "chat_template", "") or "")
    digest = hashlib.sha256(template.encode()).hexdigest()[:16]
    return {"chat_template": True, "description": f"the exported tokenizer's chat template (sha256 {digest}…)"}


def describe_training(
    module: str, hparams: dict[str, Any], data: dict[str, Any], chat_template: bool, tokenizer: Any, steps: int,
    metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The fields every export's ``hhalign_export.json`` gains beside its provenance."""
    kept_data = ("path", "val_path", "train_split", "val_split", "valid_fraction", "max_length",
                 "max_response_length", "examples", "chat_template", "columns")  # fmt: skip
    numbers = {k: round(float(v), 6) for k, v in (metrics or {}).items() if _finite(v)}
    return {
        "prompt_format": prompt_format(chat_template, tokenizer),
        "objective": {"module": module, "settings": {k: v for k, v in sorted(hparams.items()) if _plain(v)}},
        "data": {k: data[k] for k in kept_data if k in data and _plain(data[k])},
        "steps": steps,
        "final_metrics": dict(sorted(numbers.items())),
    }


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def on_or_off(text: str) -> bool:
    """A command-line true/false (``--chat_template false`` overrides what an export says)."""
    if text.lower() in ("true", "1", "yes", "on"):
        return True
    if text.lower() in ("false", "0", "no", "off"):
        return False
    raise ValueError(text)


CHAT_TEMPLATE_HELP = (
    "render prompts through the tokenizer's chat template (true) or as hh-rlhf text (false); default: the format "
    f"the model was trained on, as its {EXPORT_INFO} (or its run's config.yaml) records it, else false"
)


def chat_template_for(option: bool | None, path: str) -> bool:
    """The prompt format to use with the model at ``path``: the option when given, else the one it learned."""
    return option if option is not None else bool(trained_chat_template(path))


def trained_chat_template(path: str) -> bool | None:
    """Whether the model at ``path`` was trained on chat-template prompts, as its export (or the run config
    beside its checkpoint) records it; None when nothing says."""
    if is_checkpoint_file(path):
        config = Path(path).resolve().parent.parent / "config.yaml"
        if not config.is_file():
            return None
        import yaml

        data = (yaml.safe_load(config.read_text()) or {}).get("data") or {}
        return bool(data["chat_template"]) if "chat_template" in data else None
    info = Path(path) / EXPORT_INFO
    if not info.is_file():
        return None
    recorded = (json.loads(info.read_text()).get("prompt_format") or {}).get("chat_template")
    return None if recorded is None else bool(recorded)


def training_section(info: dict[str, Any]) -> str:
    """What trained an export and how to prompt it, in a few lines of Markdown (empty when unrecorded)."""
    objective = info.get("objective")
    if not objective:
        return ""
    settings = objective.get("settings") or {}
    shown = {k: settings[k] for k in ("beta", "loss_type", "lora_rank", "num_generations") if k in settings}
    data = info.get("data") or {}
    lines = [
        "",
        "## Training",
        "",
        f"`{objective['module']}` from `{info.get('base')}`, {info.get('steps')} optimizer steps on "
        f"`{data.get('path', 'unrecorded data')}`{' (' + json.dumps(shown) + ')' if shown else ''}; every setting "
        f"in `{EXPORT_INFO}`.",
        "",
        f"**Prompt format**: {(info.get('prompt_format') or {}).get('description', 'not recorded')}.",
    ]
    metrics = {k: v for k, v in (info.get("final_metrics") or {}).items() if k.startswith("val/")}
    if metrics:
        lines += ["", "Last validation:", "", "| metric | value |", "|---|---:|"]
        lines += [f"| {k} | {v:.4g} |" for k, v in list(metrics.items())[:24]]
    return "\n".join(lines) + "\n"


def model_card(info: dict[str, Any]) -> str:
    """A policy export's README: how to ask it as it learned, outside hhalign, and what trained it."""
    chat = (info.get("prompt_format") or {}).get("chat_template")
    ask = (
        "tokenizer.apply_chat_template([{'role': 'user', 'content': QUESTION}], add_generation_prompt=True, "
        "return_tensors='pt')"
        if chat
        else "tokenizer('\\n\\nHuman: ' + QUESTION + '\\n\\nAssistant:', return_tensors='pt').input_ids"
    )
    lines = [
        f"# hhalign {info.get('module', 'model')} export",
        "",
        "A causal language model trained with hhalign. Ask it in the format it learned, with plain `transformers`:",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "tokenizer = AutoTokenizer.from_pretrained(PATH)",
        "model = AutoModelForCausalLM.from_pretrained(PATH)",
        f"ids = {ask}",
        "reply = tokenizer.decode(model.generate(ids, max_new_tokens=128)[0, ids.shape[1]:], skip_special_tokens=True)",
        "```",
        "",
        f"`hhalign generate --model PATH --prompt QUESTION` reads the format from `{EXPORT_INFO}`.",
    ]
    return "\n".join(lines) + "\n" + training_section(info)


def readable_by_the_user(folder: Path, written_since: float) -> None:
    """Give the files written into ``folder`` since ``written_since`` (a ``time.time()``) the permissions the
    user's umask grants new files: some writers keep a private temporary file's 0600, and a teammate or a server
    must read the export. Files that were there before are left as they are."""
    mask = os.umask(0)
    os.umask(mask)
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_mtime >= written_since:
            path.chmod(0o666 & ~mask)
