"""K completions of one prompt behind one copy of it (``GroupBatch``): the row layout, its attention mask, and
equality with separate ``prompt + completion`` rows for log-probs, gradients and the last-token states."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from hhalign.data.batches import collate_groups, collate_sequences
from hhalign.models.forward import last_hidden, model_inputs, position_ids_from_mask, response_logps
from hhalign.models.layout import group_attention, last_tokens, scored_tokens, unpack_groups
from hhalign.models.loading import load_model
from tests.oracles import sequence_logps

EOS = 1  # the pad id too, as in tokenizers that pad with their EOS
PROMPTS = [[5, 6], [5]]
COMPLETIONS = [[[7, 1], [8, 9, 1], [4]], [[3, 1], [2, 2, 2, 1], [6, 1]]]


def _plain_rows(prompts, completions):
    rows = [p + c for p, group in zip(prompts, completions, strict=True) for c in group]
    targets = [[0] * len(p) + [1] * len(c) for p, group in zip(prompts, completions, strict=True) for c in group]
    return collate_sequences(rows, targets, EOS)


def test_group_collator_exact_tensors():
    batch = collate_groups(PROMPTS, COMPLETIONS, pad_token_id=EOS)
    assert torch.equal(batch.input_ids, torch.tensor([[5, 6, 7, 1, 8, 9, 1, 4, 1], [5, 3, 1, 2, 2, 2, 1, 6, 1]]))
    assert torch.equal(batch.attention_mask[0], torch.tensor([1, 1, 1, 1, 1, 1, 1, 1, 0]))
    # each completion's positions restart right after its prompt
    assert torch.equal(batch.position_ids, torch.tensor([[0, 1, 2, 3, 2, 3, 4, 2, 0], [0, 1, 2, 1, 2, 3, 4, 1, 2]]))
    assert torch.equal(batch.completion_lengths, torch.tensor([[2, 3, 1], [2, 4, 2]]))
    assert batch.group_size == 3 and batch.n_sequences == 6
    with pytest.raises(ValueError, match="same number of completions"):
        collate_groups(PROMPTS, [COMPLETIONS[0], COMPLETIONS[1][:2]], EOS)


def test_group_mask_shows_each_completion_the_prompt_and_itself_only():
    allowed = group_attention(collate_groups(PROMPTS, COMPLETIONS, EOS))[0, 0]
    # row 0: prompt at 0-1, completion 0 at 2-3, completion 1 at 4-6, completion 2 at 7, padding at 8
    assert allowed[6].tolist() == [True, True, False, False, True, True, True, False, False]
    assert allowed[7].tolist() == [True, True, False, False, False, False, False, True, False]
    assert allowed[3].tolist() == [True, True, True, True, False, False, False, False, False]
    assert allowed[8].tolist() == [False] * 8 + [True]  # padding reads itself: no empty softmax row
    assert not allowed.triu(1).any()  # causal


def test_scored_and_last_tokens_of_a_group_row():
    batch = collate_groups(PROMPTS, COMPLETIONS, EOS)
    scored = scored_tokens(batch)
    row0 = scored.rows == 0
    # completion 1 of prompt 0 starts at column 4; its first token is predicted by the prompt's last state
    assert scored.predictors[row0].tolist() == [1, 2, 1, 4, 5, 1]
    assert scored.sequences[row0].tolist() == [0, 0, 1, 1, 1, 2]
    assert scored.labels[row0].tolist() == [7, 1, 8, 9, 1, 4]
    rows, cols = last_tokens(batch)
    assert rows.tolist() == [0, 0, 0, 1, 1, 1] and cols.tolist() == [3, 6, 7, 2, 6, 8]


def test_unpack_gives_prompt_major_plain_rows():
    plain = unpack_groups(collate_groups(PROMPTS, COMPLETIONS, EOS))
    expected = _plain_rows(PROMPTS, COMPLETIONS)
    assert torch.equal(plain.attention_mask, expected.attention_mask)
    assert torch.equal(plain.loss_mask, expected.loss_mask)
    assert torch.equal(plain.input_ids * plain.attention_mask, expected.input_ids * expected.attention_mask)


def test_attention_without_4d_masks_gets_plain_rows():
    model = SimpleNamespace(config=SimpleNamespace(_attn_implementation="flash_attention_2"))
    inputs = model_inputs(model, collate_groups(PROMPTS, COMPLETIONS, EOS))  # type: ignore[arg-type]
    assert inputs.attention_mask.dim() == 2 and inputs.batch.input_ids.shape[0] == 6


def _real_groups(tokenizer, k: int = 4):
    """Prompts from real text and K completions of different lengths each, every one ending with EOS."""
    texts = ["How do I bake bread at home?", "What is the capital of France?", "Tell me a joke about cats."]
    prompts = [tokenizer(t)["input_ids"] for t in texts]
    generator = torch.Generator().manual_seed(0)
    vocab = len(tokenizer)
    completions = [
        [torch.randint(3, vocab, (1 + (3 * j + i) % 7,), generator=generator).tolist() + [tokenizer.eos_token_id]
         for j in range(k)]
        for i in range(len(prompts))
    ]  # fmt: skip
    return prompts, completions


@pytest.mark.parametrize(
    ("dtype", "attn", "rtol"),
    [(torch.float32, "sdpa", 1e-5), (torch.float32, "eager", 1e-5), (torch.float64, "sdpa", 1e-10)],
)
def test_group_log_probs_equal_separate_rows(tiny_dir: Path, tokenizer, dtype, attn, rtol):
    prompts, completions = _real_groups(tokenizer)
    group = collate_groups(prompts, completions, tokenizer.pad_token_id)
    plain = _plain_rows(prompts, completions)
    model = load_model(str(tiny_dir), dtype=dtype, attn_implementation=attn).eval()
    with torch.no_grad():
        logits = model(
            input_ids=plain.input_ids,
            attention_mask=plain.attention_mask,
            position_ids=position_ids_from_mask(plain.attention_mask),
        ).logits
        expected, expected_n = sequence_logps(logits, plain.input_ids, plain.loss_mask)
        inputs = model_inputs(model, group)
        got, got_n = response_logps(model, inputs)
    assert inputs.attention_mask.dim() == 4  # the group layout really ran
    assert torch.equal(got_n, expected_n)
    assert ((got - expected).abs() / expected.abs()).max().item() < rtol
    assert group.attention_mask.sum() < plain.attention_mask.sum()  # each prompt computed once, not K times


def test_group_gradients_and_last_states_equal_separate_rows(tiny_dir: Path, tokenizer):
    prompts, completions = _real_groups(tokenizer)
    model = load_model(str(tiny_dir)).train()
    weights = torch.randn(len(prompts) * 4, generator=torch.Generator().manual_seed(1))
    results = []
    for batch in (collate_groups(prompts, completions, tokenizer.pad_token_id), _plain_rows(prompts, completions)):
        model.zero_grad()
        logps, _ = response_logps(model, model_inputs(model, batch))
        (weights * logps).sum().backward()
        with torch.no_grad():
            states = last_hidden(model, model_inputs(model, batch))
        results.append((logps.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}, states))
    (group_logps, group_grads, group_states), (plain_logps, plain_grads, plain_states) = results
    torch.testing.assert_close(group_logps, plain_logps, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(group_states, plain_states, rtol=1e-5, atol=1e-5)  # a reward model reads here
    for name, grad in plain_grads.items():
        # summed in another order (the prompt once, not K times): float noise scales with the tensor's largest
        # gradient (one embedding entry of 0.0057 was 4e-6 off beside entries of 10.5 on one machine)
        scale = max(1.0, grad.abs().max().item())
        torch.testing.assert_close(group_grads[name], grad, rtol=1e-4, atol=1e-6 * scale, msg=name)


def test_token_values_laid_out_one_sequence_per_row():
    from hhalign.losses.logps import tokens_by_sequence

    values = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], requires_grad=True)
    sequences = torch.tensor([2, 0, 2, 0, 0, 3])  # sequence 1 has no token
    rows, mask = tokens_by_sequence(values, sequences, 4)
    assert rows.tolist() == [[2.0, 4.0, 5.0], [0.0, 0.0, 0.0], [1.0, 3.0, 0.0], [6.0, 0.0, 0.0]]
    assert mask.tolist() == [[True, True, True], [False] * 3, [True, True, False], [True, False, False]]
    (rows * torch.arange(1.0, 4.0)).sum().backward()  # weight = position + 1
    assert values.grad.tolist() == [1.0, 1.0, 2.0, 2.0, 3.0, 1.0]


def test_group_token_log_probs_sum_to_the_sequence_log_probs(tiny_dir: Path, tokenizer):
    from hhalign.losses.logps import tokens_by_sequence
    from hhalign.models.forward import response_states

    prompts, completions = _real_groups(tokenizer)
    model = load_model(str(tiny_dir)).eval()
    with torch.no_grad():
        states = response_states(model, model_inputs(model, collate_groups(prompts, completions, EOS)))
        rows, mask = tokens_by_sequence(states.token_logps(), states.scored.sequences, states.scored.n_sequences)
        sums, counts = states.sequence_logps()
    torch.testing.assert_close(rows.sum(-1), sums)
    assert mask.sum(-1).tolist() == counts.tolist() == [len(c) for group in completions for c in group]
