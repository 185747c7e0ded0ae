"""Judging a policy by generation: the sampler, the KL estimate against an exact enumeration, win rates
with ties apart, completions cut at their first EOS when pad == EOS, and the statistics by hand."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from hhalign.data.pairs import TokenizedPair
from hhalign.models.generation import (
    Completion,
    Sampling,
    completion_logps,
    first_completion,
    sample_completions,
    sample_groups,
)
from hhalign.tools import estimates
from hhalign.tools.judging import Judge, evaluate
from tests.oracles import sequence_logps

EOS = 4  # the toy vocabulary: ids 0..4, EOS = pad = 4


def toy_model(seed: int, vocab: int = 5) -> LlamaForCausalLM:
    """A one-layer Llama over a 5-token vocabulary with large weights, so its distributions are far from
    uniform and two seeds give a KL well above zero."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=32, initializer_range=0.6, eos_token_id=EOS,
        pad_token_id=EOS, bos_token_id=0, tie_word_embeddings=False,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def exact_logp(model: nn.Module, prompt: list[int], completion: list[int]) -> float:
    """log p(completion | prompt) from one unpadded full forward: the oracle, independent of the sampler's
    batching and of ``completion_logps``."""
    ids = torch.tensor([prompt + completion])
    mask = torch.tensor([[0] * len(prompt) + [1] * len(completion)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    return float(sequence_logps(logits.double(), ids, mask)[0][0])


def every_completion(max_new_tokens: int, vocab: int = 5) -> list[list[int]]:
    """Every completion a sampler can return: n non-EOS tokens then EOS (n < max), or max non-EOS tokens."""
    words = [t for t in range(vocab) if t != EOS]
    out = []
    for n in range(max_new_tokens + 1):
        for body in itertools.product(words, repeat=n):
            out.append([*body, EOS] if n < max_new_tokens else list(body))
    return out


def test_first_completion_cuts_at_the_first_eos_which_is_also_the_pad():
    assert first_completion([1, 2, EOS, EOS, EOS], EOS) == Completion([1, 2, EOS], True)
    assert first_completion([EOS, 3, EOS], EOS) == Completion([EOS], True)
    assert first_completion([1, 2, 3], EOS) == Completion([1, 2, 3], False)
    # a judge reads every reply at its end-of-reply token, as a reward model is trained to
    assert first_completion([1, 2, 3], EOS).ended(EOS) == [1, 2, 3, EOS]
    assert first_completion([1, EOS, EOS], EOS).ended(EOS) == [1, EOS]


def test_sampled_kl_equals_the_exact_kl_by_enumeration_within_its_standard_error():
    """KL(π‖π_ref) of completions of at most 3 tokens over a 5-token vocabulary has 85 outcomes a prompt:
    enumerated exactly, it must match the estimate from 1,500 samples of π (three prompts of different
    lengths, batched and left-padded together) to within 3 standard errors."""
    policy, reference = toy_model(1), toy_model(2)
    prompts = [[0, 1, 2], [0, 3], [0, 2, 1, 3, 1]]
    sampling = Sampling(max_new_tokens=3)
    outcomes = every_completion(3)
    exact = []
    for prompt in prompts:
        p = torch.tensor([exact_logp(policy, prompt, y) for y in outcomes], dtype=torch.float64)
        q = torch.tensor([exact_logp(reference, prompt, y) for y in outcomes], dtype=torch.float64)
        assert float(p.exp().sum()) == pytest.approx(1.0, abs=1e-6)  # the outcomes are all there is
        exact.append(float((p.exp() * (p - q)).sum()))
    repeated = [prompt for prompt in prompts for _ in range(500)]
    drawn = sample_completions(policy, repeated, sampling, EOS, EOS, seed=0, batch_size=len(repeated))  # one batch
    tokens = [c.tokens for c in drawn]
    assert all(t in outcomes for t in tokens)
    ratios = [
        a - b
        for a, b in zip(
            completion_logps(policy, repeated, tokens, 256),
            completion_logps(reference, repeated, tokens, 256),
            strict=True,
        )
    ]
    estimate = estimates.kl_estimate(ratios, [len(t) for t in tokens])
    target = sum(exact) / len(exact)
    assert target > 0.2  # the models differ enough for the check to mean something
    assert estimate.sequence.se < 0.15 * target
    assert abs(estimate.sequence.mean - target) < 3 * estimate.sequence.se, (estimate, exact)


def test_batched_log_probs_of_sampled_completions_equal_the_unpadded_oracle():
    policy = toy_model(3)
    prompts = [[0, 1], [0, 2, 3, 1, 2, 3], [0]]
    torch.manual_seed(5)
    expected_next_draw = torch.rand(3)
    torch.manual_seed(5)
    drawn = sample_completions(policy, prompts, Sampling(max_new_tokens=6), EOS, EOS, seed=1, batch_size=3)
    assert torch.equal(torch.rand(3), expected_next_draw)  # the caller's random state is left as it was
    assert sample_completions(policy, prompts, Sampling(max_new_tokens=6), EOS, EOS, seed=1, batch_size=3) == drawn
    values = completion_logps(policy, prompts, [c.tokens for c in drawn], batch_size=3)
    expected = [exact_logp(policy, p, c.tokens) for p, c in zip(prompts, drawn, strict=True)]
    torch.testing.assert_close(torch.tensor(values).double(), torch.tensor(expected).double(), rtol=1e-5, atol=1e-5)


def test_groups_hold_k_seeded_completions_of_each_prompt():
    policy = toy_model(3)
    prompts = [[0, 1], [0, 2, 3, 1, 2, 3], [0]]
    groups = sample_groups(policy, prompts, 4, Sampling(max_new_tokens=6), EOS, EOS, seed=2, batch_size=4)
    assert [len(g) for g in groups] == [4, 4, 4]
    assert groups == sample_groups(policy, prompts, 4, Sampling(max_new_tokens=6), EOS, EOS, seed=2, batch_size=4)
    assert groups != sample_groups(policy, prompts, 4, Sampling(max_new_tokens=6), EOS, EOS, seed=3, batch_size=4)
    assert all(len({tuple(c.tokens) for c in g}) > 1 for g in groups)  # K draws, not one draw copied K times
    for prompt, group in zip(prompts, groups, strict=True):
        for completion in group:  # each sample is a completion of its own prompt, cut at its first EOS
            assert EOS not in completion.tokens[:-1] and completion.finished == (completion.tokens[-1:] == [EOS])
            values = completion_logps(policy, [prompt], [completion.tokens])
            assert values[0] == pytest.approx(exact_logp(policy, prompt, completion.tokens), abs=1e-5)
    with pytest.raises(ValueError, match="at least one completion"):
        sample_groups(policy, prompts, 0, Sampling(), EOS, EOS)


def stopping_model(model: LlamaForCausalLM, eos_logit: float) -> LlamaForCausalLM:
    """``model`` with its head replaced by one that adds ``eos_logit`` to EOS: at 50 it stops at once."""
    head = model.lm_head
    biased = nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        biased.weight.copy_(head.weight)
        biased.bias.zero_()
        biased.bias[model.config.eos_token_id] = eos_logit
    model.lm_head = biased
    return model


def real_pairs(tokenizer, n: int) -> list[TokenizedPair]:
    from hhalign.data.formats import to_record
    from hhalign.data.pairs import PairTokenizer
    from tests.conftest import shipped_records

    return PairTokenizer(tokenizer, 96, 32)([to_record(r, f"row {i}") for i, r in enumerate(shipped_records(n + 8))])[
        :n
    ]


def length_judge() -> Judge:
    return Judge(lambda sequences: [len(s) for s in sequences], "length")


def test_a_model_against_itself_wins_half_within_the_interval_and_has_zero_kl(tiny_dir: Path, tokenizer):
    from hhalign.models.loading import load_model
    from hhalign.objectives.reward import RewardModule

    policy = load_model(str(tiny_dir))
    module = RewardModule(str(tiny_dir))
    module.configure_model()
    judge = Judge(module.eval(), "tiny random reward model")
    pairs = real_pairs(tokenizer, 48)
    result = evaluate(
        policy, policy, judge, pairs, Sampling(max_new_tokens=12), tokenizer.eos_token_id, tokenizer.pad_token_id,
        seed=3, batch_size=16, progress=False,
    ).results  # fmt: skip
    duel = result["policy_vs_reference"]
    assert duel["wins"] + duel["losses"] >= 40  # different seeds: different completions
    assert duel["interval95"][0] <= 0.5 <= duel["interval95"][1]
    assert result["kl"]["sequence"]["mean"] == 0.0 and result["kl"]["per_token"] == 0.0
    assert result["reward"]["policy"]["n"] == 48


def test_a_length_judge_always_prefers_a_model_over_one_that_stops_at_once(tiny_dir: Path, tokenizer):
    """With the tiny tokenizer (pad == EOS) the stopping model's completions are a lone EOS; every
    comparison the length judge decides goes to the policy, so the win rate is 1.0."""
    from hhalign.models.loading import load_model

    policy = load_model(str(tiny_dir))
    stopper = stopping_model(load_model(str(tiny_dir)), eos_logit=50.0)
    pairs = real_pairs(tokenizer, 32)
    evaluation = evaluate(
        policy, stopper, length_judge(), pairs, Sampling(max_new_tokens=8), tokenizer.eos_token_id,
        tokenizer.pad_token_id, seed=0, batch_size=8, progress=False,
    )  # fmt: skip
    result = evaluation.results
    assert all(row["reference_tokens"] == 1 and row["reference_finished"] for row in evaluation.rows)
    duel = result["policy_vs_reference"]
    assert duel["losses"] == 0 and duel["wins"] >= 28
    assert duel["win_rate"] == 1.0 and duel["interval95"][0] > 0.85
    assert result["length"]["reference"]["mean"] == 1.0
    assert result["judge_prefers_longer"] == 1.0
    for row, pair in zip(evaluation.rows, pairs, strict=True):  # judged with an EOS added where cut short
        assert row["policy_reward"] == len(pair.prompt) + row["policy_tokens"] + (not row["policy_finished"])
    assert not all(row["policy_finished"] for row in evaluation.rows)


def test_generated_pad_eos_rows_are_scored_up_to_their_first_eos_only(tiny_dir: Path, tokenizer):
    """Rows of one batch finish at different steps and are padded with EOS after it: each completion keeps
    one EOS, at its end; its log-prob and its reward are those of exactly those tokens, not the padding."""
    from hhalign.models.loading import load_model
    from hhalign.objectives.reward import RewardModule

    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    eos = tokenizer.eos_token_id
    model = stopping_model(load_model(str(tiny_dir)), eos_logit=4.0)  # stops after a few tokens, at random
    prompts = [p.prompt for p in real_pairs(tokenizer, 16)]
    drawn = sample_completions(model, prompts, Sampling(max_new_tokens=16), eos, eos, seed=0, batch_size=16)
    finished = [c for c in drawn if c.finished]
    assert len({len(c.tokens) for c in finished}) >= 3  # padding after an early EOS did happen
    assert all(c.tokens.count(eos) == 1 and c.tokens[-1] == eos for c in finished)
    values = completion_logps(model, prompts, [c.tokens for c in drawn], batch_size=16)
    expected = [exact_logp(model, p, c.tokens) for p, c in zip(prompts, drawn, strict=True)]
    torch.testing.assert_close(torch.tensor(values).double(), torch.tensor(expected).double(), rtol=1e-4, atol=1e-4)
    padded = exact_logp(model, prompts[0], drawn[0].tokens + [eos] * 3)
    assert padded < expected[0] - 1e-3  # counting the padding would have changed the number

    module = RewardModule(str(tiny_dir))
    module.configure_model()
    judge = Judge(module.eval(), "tiny reward model")
    sequences = [p + c.tokens for p, c in zip(prompts, drawn, strict=True)]
    alone = [judge([s])[0] for s in sequences]
    torch.testing.assert_close(torch.tensor(judge(sequences)), torch.tensor(alone), rtol=1e-4, atol=1e-5)


def test_win_rates_count_ties_apart():
    """3 wins, 1 tie, 1 loss: win rate 3/4 over the decisive four, tie rate 1/5; Wilson on (3, 4)."""
    rate = estimates.compare([2.0, 2.0, 2.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0])
    assert (rate.wins, rate.ties, rate.losses) == (3, 1, 1)
    assert rate.win_rate == 0.75 and rate.tie_rate == 0.2
    p, n, z = 0.75, 4, 1.96
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert rate.interval == pytest.approx((centre - half, centre + half))
    two_per_prompt = estimates.compare([2.0, 2.0, 2.0, 0.0], [1.0] * 4, samples=2)
    assert two_per_prompt.interval == pytest.approx(estimates.wilson_interval(1.5, 2))  # prompts, not samples


def test_means_and_the_kl_estimate_by_hand():
    """Values 1, 3 | 2, 6 (two samples a prompt): prompt means 2 and 4, mean 3, SE sqrt(2/2) = 1.
    Log-ratios 1, −1, 4 over 2 + 2 + 4 tokens: sequence KL 4/3, per token 4/8."""
    mean = estimates.mean_over_prompts([1.0, 3.0, 2.0, 6.0], samples=2)
    assert (mean.mean, mean.se, mean.n) == (3.0, 1.0, 2)
    assert mean.interval == pytest.approx((3 - 1.96, 3 + 1.96))
    kl = estimates.kl_estimate([1.0, -1.0, 4.0], [2, 2, 4])
    assert kl.sequence.mean == pytest.approx(4 / 3) and kl.per_token == 0.5
    assert kl.sequence.se == pytest.approx(math.sqrt(((1 - 4 / 3) ** 2 + (7 / 3) ** 2 + (8 / 3) ** 2) / 2 / 3))
    with pytest.raises(ValueError, match="whole groups"):
        estimates.mean_over_prompts([1.0, 2.0, 3.0], samples=2)


def test_the_judge_length_agreement_and_the_longer_wins_baseline():
    scores_a, scores_b = [1.0, 0.0, 5.0, 2.0], [0.0, 1.0, 5.0, 2.0]
    lengths_a, lengths_b = [9, 9, 3, 4], [2, 2, 1, 4]
    # decisive with different lengths: rows 0 (longer won) and 1 (shorter won)
    assert estimates.judge_prefers_longer(scores_a, scores_b, lengths_a, lengths_b) == 0.5
    baseline = estimates.longer_wins(lengths_a, lengths_b)
    assert (baseline.wins, baseline.ties, baseline.losses) == (3, 1, 0)


def test_the_judge_gets_its_batches_on_its_own_device():
    """A judge on a GPU got CPU batches: ``EvaluateAtFitEnd`` failed after the whole epoch."""
    from hhalign.tools.use import rewards

    seen = []

    class OnMeta:  # stands for a reward model on another device than the CPU batches are built on
        device = torch.device("meta")

        def batch_rewards(self, batch):
            seen.append(batch.input_ids.device)
            return torch.zeros(batch.input_ids.shape[0])

    rewards(OnMeta(), [[1, 2, 3], [4, 5], [6]], batch_size=2)  # type: ignore[arg-type]
    assert seen == [torch.device("meta")] * 2


def test_completion_log_probs_stay_in_float32_when_sampling_runs_under_bf16_autocast():
    """The KL estimate is a difference of two summed log-probs: bf16 would put ≥0.04 nats of error in each."""
    policy = toy_model(4)
    prompts = [[0, 1], [0, 2, 3, 1, 2, 3]]
    completions = [[2, 3, EOS], [1, 1, 2]]
    plain = completion_logps(policy, prompts, completions, batch_size=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = completion_logps(policy, prompts, completions, batch_size=2)
    assert under_autocast == plain
