"""What a run's data looks like once tokenized: token lengths, the share truncated, the "longer reply wins"
rate, and examples rendered exactly as the model sees them. ``hhalign data inspect`` prints it; every run keeps
it in ``data_summary.json``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

SCORED = ("⟦", "⟧")
"""Marks around the tokens a loss reads, in rendered examples."""
PERCENTILES = (50, 90, 99)


def spans(example: Any) -> dict[str, tuple[list[int], bool]]:
    """The example's named token spans, each with whether a loss scores it (its kind decides by its fields)."""
    fields = vars(example)
    if "targets" in fields:  # a dialogue: context and targets interleave; one span, marked in render
        return {"dialogue": (example.ids, True)}
    names = [name for name in ("prompt", "chosen", "rejected", "completion") if name in fields]
    return {name: (fields[name], name != "prompt") for name in names}


def percentiles(values: Sequence[int]) -> dict[str, int]:
    """p50 / p90 / p99 / max by the nearest rank, on whole tokens."""
    ordered = sorted(values)
    if not ordered:
        return {}
    out = {f"p{q}": ordered[min(len(ordered) - 1, max(0, -(-q * len(ordered) // 100) - 1))] for q in PERCENTILES}
    return out | {"max": ordered[-1]}


def render(example: Any, decode: Any) -> str:
    """The example's text as the model reads it, special tokens included, each scored span between ``SCORED``."""
    if "targets" in vars(example):
        text, run, scored = [], [], None
        for token, target in zip(example.ids, example.targets, strict=True):
            if scored is not None and bool(target) != scored:
                text.append(_wrap(decode(run), scored))
                run = []
            run.append(token)
            scored = bool(target)
        text.append(_wrap(decode(run), bool(scored)))
        return "".join(text)
    named = spans(example)
    prompt = decode(named.pop("prompt")[0])
    replies = [(name, _wrap(decode(ids), True)) for name, (ids, _) in named.items()]
    if not replies:
        return prompt
    (first, text), *others = replies
    label = f"  [{'desirable' if example.desirable else 'undesirable'}]" if "desirable" in vars(example) else ""
    lines = [f"{prompt}{text}{label}" if first == "completion" else f"{prompt}{text}  [{first}]"]
    return "\n".join(lines + [f"[{name}, after the same prompt] {text}" for name, text in others])


def _wrap(text: str, scored: bool) -> str:
    return f"{SCORED[0]}{text}{SCORED[1]}" if scored else text


def audit(examples: Sequence[Any], counts: dict[str, int], tokenizer: Any, shown: int = 2) -> dict[str, Any]:
    """Token lengths per span, the share cut to fit by reason (of examples; of replies for ``response``), the
    "longer reply wins" rate of pairs (the chosen reply has more tokens) and ``shown`` rendered examples."""
    if not examples:
        return {}
    lengths = {name: percentiles([len(spans(e)[name][0]) for e in examples]) for name in spans(examples[0])}
    replies = sum(scored for _, scored in spans(examples[0]).values())
    truncated = {
        reason: round(n / (len(examples) * (replies if reason == "response" else 1)), 4)
        for key, n in counts.items()
        if key.startswith("cut:") and (reason := key.split(":", 1)[1])
    }
    out: dict[str, Any] = {"tokens": lengths, "truncated_share": truncated}
    if "chosen" in lengths:
        out["longer_reply_wins"] = round(sum(len(e.chosen) > len(e.rejected) for e in examples) / len(examples), 4)

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=False)

    out["rendered"] = [render(e, decode) for e in examples[:shown]]
    return out


DROP_ADVICE = {
    "prompt_too_long": "the prompts do not fit: raise data.max_length (now {max_length})",
    "identical_after_truncation": "the replies are identical once cut: raise data.max_response_length",
    "identical": "chosen and rejected are the same text: check which columns hold them (--data.columns)",
    "unpaired": "the records are unpaired completions (prompt, completion, label): KTO reads those "
    "(--model hhalign.KTOModule); this objective needs pairs (prompt, chosen, rejected)",
    "prompt_only": "the records hold a prompt but no chosen/rejected pair: map the columns that hold the two "
    "replies with --data.columns, or give prompts to an online objective (--model hhalign.RLOOModule)",
    "no_shared_prompt": "chosen and rejected share no leading prompt: give an explicit 'prompt'",
    "empty_response": "a reply is empty: check the data",
    "bad_record": "the records are unreadable (data.on_bad_record: skip dropped them): set it to error to see why",
}


def nothing_left(what: str, source: str, counts: Counter[str], max_length: int) -> str:
    """Why no example of ``source`` survived, from what dropped most of them, and the advice for that cause."""
    drops = {k.split(":", 1)[-1]: v for k, v in counts.items() if not k.startswith("cut:") and v}
    if not drops:
        return f"{source}: no {what} to train on; check the data"
    cause = max(drops, key=lambda k: drops[k])
    advice = DROP_ADVICE.get(cause, "check the data").format(max_length=max_length)
    listed = ", ".join(f"{n} {k}" for k, n in sorted(drops.items(), key=lambda kv: -kv[1]))
    return f"{source}: no {what} left ({listed}); {advice}"
