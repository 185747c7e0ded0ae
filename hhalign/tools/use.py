"""Using trained models: ``hhalign score`` (rewards of responses, accuracy over pairs) and
``hhalign generate`` (a policy's reply). Both read exported folders or hhalign ``.ckpt`` files and
format text exactly as training did: an hh-rlhf prompt with BOS, the response, then EOS."""

from __future__ import annotations

import json
from typing import Any

import torch

from hhalign.data.batches import collate_sequences
from hhalign.data.pairs import ASSISTANT, HUMAN, PairTokenizer, TokenizedPair
from hhalign.data.reading import read_pairs
from hhalign.data.templates import ChatTemplate
from hhalign.models.engines import HFEngine, RolloutEngine, open_engine
from hhalign.models.generation import Sampling
from hhalign.models.loading import load_model, load_tokenizer
from hhalign.objectives.reward import RewardModule
from hhalign.rewards.model import check_reward_model
from hhalign.tools.describe import chat_template_for
from hhalign.tools.parsers import generate_parser, score_parser


def as_prompt(text: str) -> str:
    """A bare question becomes a one-turn hh-rlhf prompt ending where the assistant speaks."""
    if HUMAN in text or ASSISTANT in text:
        return text if text.rstrip().endswith(ASSISTANT.strip()) else text + ASSISTANT
    return f"{HUMAN} {text}{ASSISTANT}"


def _rows(pairs: list[TokenizedPair]) -> list[list[int]]:
    return [p.prompt + p.chosen for p in pairs] + [p.prompt + p.rejected for p in pairs]


@torch.no_grad()
def rewards(
    module: RewardModule, sequences: list[list[int]], batch_size: int = 16, description: str | None = None
) -> list[float]:
    """Reward of each token sequence, read at its last token as in training (one padded batch at a time);
    a progress bar when given its ``description``."""
    from tqdm.auto import tqdm

    out: list[float] = []
    for start in tqdm(range(0, len(sequences), batch_size), desc=description, disable=description is None):
        batch = collate_sequences(sequences[start : start + batch_size], None, pad_token_id=0).to(module.device)
        out += module.batch_rewards(batch).tolist()
    return out


def pair_report(pairs: list[TokenizedPair], chosen: list[float], rejected: list[float]) -> str:
    """Accuracy with its 95% interval, beside the length baseline and the accuracy on chosen-shorter pairs."""
    from hhalign.tools.summary import wilson_interval

    def share(hits: int, n: int) -> str:
        return f"{hits / n:.4f} ({'{:.3f}–{:.3f}'.format(*wilson_interval(hits, n))}, n={n})" if n else "n/a"

    right = [c > r for c, r in zip(chosen, rejected, strict=True)]
    longer = sum(len(p.chosen) > len(p.rejected) for p in pairs)
    shorter = [ok for ok, p in zip(right, pairs, strict=True) if len(p.chosen) < len(p.rejected)]
    return (
        f"pairs: {len(pairs)}  preference accuracy: {share(sum(right), len(pairs))}  "
        f"longer-wins baseline: {share(longer, len(pairs))}  "
        f"accuracy when chosen is shorter: {share(sum(shorter), len(shorter))}"
    )


def score(argv: list[str] | None = None) -> None:
    parser = score_parser()
    args = parser.parse_args(argv)
    if bool(args.pairs) == bool(args.prompt and args.response):
        parser.error("give --pairs FILE, or --prompt and at least one --response")
    check_reward_model(args.model, "--model")  # a policy would load with a random score head: made-up rewards
    args.chat_template = chat_template_for(args.chat_template, args.model)
    tokenizer = load_tokenizer(args.model)
    module = RewardModule(args.model)
    module.configure_model()
    module.eval()
    template = ChatTemplate(tokenizer) if args.chat_template else None
    tokenize = PairTokenizer(tokenizer, args.max_length, template=template)
    if args.pairs:
        pairs = read_pairs(args.pairs, tokenizer, args.max_length, chat_template=args.chat_template)
        values = rewards(module, _rows(pairs))
        chosen, rejected = values[: len(pairs)], values[len(pairs) :]
        for c, r in zip(chosen, rejected, strict=True):
            print(json.dumps({"chosen_reward": round(c, 6), "rejected_reward": round(r, 6)}))
        print(pair_report(pairs, chosen, rejected))
        return
    prompt = as_prompt(args.prompt)
    prompt_ids = tokenize.encode_prompt(prompt)
    values = rewards(module, [prompt_ids + tokenize.encode_response(prompt, r) for r in args.response])
    for text, value in zip(args.response, values, strict=True):
        print(json.dumps({"response": text, "reward": round(value, 6)}))


def generate_reply(
    model: Any,
    tokenizer: Any,
    prompt: str,
    sampling: Sampling,
    seed: int = 0,
    chat: bool = False,
    engine: RolloutEngine | None = None,
) -> str:
    """One reply, drawn as ``hhalign evaluate`` and the online objectives draw, by ``engine`` (default: Hugging
    Face generation)."""
    template = ChatTemplate(tokenizer) if chat else None
    ids = PairTokenizer(tokenizer, 1, template=template).encode_prompt(as_prompt(prompt))
    stop_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    ((completion,),) = (engine or HFEngine()).sample(model, [ids], 1, sampling, stop_id, pad_id, seed)
    return tokenizer.decode(completion.tokens, skip_special_tokens=True)


def generate(argv: list[str] | None = None) -> None:
    parser = generate_parser()
    args = parser.parse_args(argv)
    model = load_model(args.model).eval()
    tokenizer = load_tokenizer(args.model)
    sampling = Sampling(args.max_new_tokens, args.temperature, args.top_p)
    chat = chat_template_for(args.chat_template, args.model)
    engine = open_engine(args.engine)
    try:
        print(generate_reply(model, tokenizer, args.prompt, sampling, args.seed, chat, engine))
    finally:
        engine.close()
