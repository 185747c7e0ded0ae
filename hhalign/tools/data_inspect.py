"""``hhalign data inspect``'s report: what a run would train on, read and tokenized as the run would.

The command (``hhalign.cli.data_main``, then ``hhalign.trainer_cli.inspect_data``) builds the data module
``hhalign fit`` would from the same flags, loading
no weights; this module writes what it found.
"""

from __future__ import annotations

from typing import Any

from hhalign.data.audit import SCORED


def report(data: Any) -> str:
    """The audit as text: format, counts, drops and cuts, token lengths, the length baseline, two examples."""
    s, hp = data.summary, data.hparams
    kept = s["kept"]
    lines = [
        f"source:     {hp.path}" + (f" (data_dir {hp.data_dir})" if hp.data_dir else ""),
        "format:     " + ", ".join(f"{fmt} ({where})" for where, fmt in s["format"].items()),
        *([f"pairs from: {s['pairs_from']}"] if "pairs_from" in s else []),
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
