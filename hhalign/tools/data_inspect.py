"""``hhalign data inspect``: what a run would train on, read and tokenized as the run would, without training.

It takes the same ``--config`` and ``--data.*`` flags as ``hhalign fit`` and builds the same data module (the
objective decides the kind of example, the model's tokenizer tokenizes), but loads no weights and writes nothing
but the tokenization cache.
"""

from __future__ import annotations

import sys
from typing import Any

from hhalign.data.audit import SCORED
from hhalign.errors import UserError

USAGE = "usage: hhalign data inspect [--config RUN.yaml] [--data.path P] [--data.* ...] [--model.* ...]"


def main(argv: list[str]) -> None:
    if not argv or argv[0] != "inspect" or argv[1:2] in (["-h"], ["--help"]):
        print(USAGE, file=sys.stderr if argv[:1] != ["inspect"] else sys.stdout)
        print("  reads and tokenizes the data as `hhalign fit` with the same flags would, and prints its audit")
        if not argv or argv[0] != "inspect":
            raise SystemExit(2)
        return
    data = build_data(argv[1:])
    data.setup("inspect")
    print(report(data))


def build_data(args: list[str]) -> Any:
    """The data module ``hhalign fit`` would build from these flags (the model is configured, not loaded)."""
    from hhalign.cli import HHAlignCLI
    from hhalign.data.datamodule import PreferenceDataModule
    from hhalign.objectives.base import AlignmentModule

    if not any(a == "--config" or a.startswith(("--config=", "--model")) for a in args):
        raise UserError(
            "data inspect: name the run's tokenizer and objective: --config RUN.yaml, or --model hhalign.DPOModule "
            "--model.model_name_or_path M"
        )

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
        parser_kwargs={"exit_on_error": False},
    )
    return cli.datamodule


def report(data: Any) -> str:
    """The audit as text: format, counts, drops and cuts, token lengths, the length baseline, two examples."""
    s, hp = data.summary, data.hparams
    kept = s["kept"]
    lines = [
        f"source:     {hp.path}" + (f" (data_dir {hp.data_dir})" if hp.data_dir else ""),
        "format:     " + ", ".join(f"{fmt} ({where})" for where, fmt in s["format"].items()),
        f"tokenizer:  {hp.tokenizer_name_or_path}  chat template: {'on' if s['chat_template'] else 'off'}  "
        f"max_length {hp.max_length}, max_response_length {hp.max_response_length or hp.max_length}",
        f"examples:   {hp.examples}: {kept['train']:,} train + {kept['val']:,} validation ({s['validation']})",
        f"read:       {s['read']:,} records; kept {kept['train'] + kept['val']:,}",
        "dropped:    " + (", ".join(f"{k} {v:,}" for k, v in s["dropped"].items()) or "none"),
        "truncated:  "
        + (", ".join(f"{k} {v:.1%}" for k, v in s["truncated_share"].items()) or "none")
        + ("  (response: of replies; others: of examples)" if "response" in s["truncated_share"] else ""),
        "tokens:     " + "  ".join(f"{q:>5}" for q in ("p50", "p90", "p99", "max")),
    ]
    for name, stats in s["tokens"].items():
        lines.append(f"  {name:<9} " + "  ".join(f"{v:>5}" for v in stats.values()))
    if "longer_reply_wins" in s:
        lines.append(f"longer reply wins: {s['longer_reply_wins']:.3f} of pairs (the chosen reply has more tokens)")
    for number, text in enumerate(s["rendered"], start=1):
        lines += [f"--- example {number} (scored tokens between {SCORED[0]} {SCORED[1]}) ---", text]
    return "\n".join(lines)
