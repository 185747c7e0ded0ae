"""Shared-prompt packing: the row layout, its attention mask, and equality with the plain path."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from hhalign.data.batches import collate_packed_pairs, collate_pairs
from hhalign.data.pairs import PairTokenizer, TokenizedPair
from hhalign.data.reading import read_records
from hhalign.models.forward import model_inputs, position_ids_from_mask, response_logps
from hhalign.models.layout import scored_tokens, shared_prompt_attention, unpack
from hhalign.models.loading import load_model
from hhalign.objectives import DPOModule, RewardModule
from tests.conftest import SHIPPED
from tests.oracles import sequence_logps

PAIRS = [
    TokenizedPair(prompt=[5, 6], chosen=[7, 1], rejected=[8, 9, 1]),
    TokenizedPair(prompt=[5], chosen=[4, 4, 4, 1], rejected=[3, 1]),
]


def test_packed_collator_exact_tensors():
    batch = collate_packed_pairs(PAIRS, pad_token_id=1)  # pad == EOS
    assert torch.equal(batch.input_ids, torch.tensor([[5, 6, 7, 1, 8, 9, 1], [5, 4, 4, 4, 1, 3, 1]]))
    assert torch.equal(batch.attention_mask, torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]]))
    # the rejected response restarts right after the prompt
    assert torch.equal(batch.position_ids, torch.tensor([[0, 1, 2, 3, 2, 3, 4], [0, 1, 2, 3, 4, 1, 2]]))
    assert batch.prompt_lengths.tolist() == [2, 1]
    assert batch.chosen_lengths.tolist() == [2, 4]
    assert batch.rejected_lengths.tolist() == [3, 2]


def test_shared_prompt_mask_hides_chosen_from_rejected():
    pairs = [TokenizedPair(prompt=[5, 6], chosen=[7, 1], rejected=[8, 1]), TokenizedPair([5], [4, 1], [3, 1])]
    mask = shared_prompt_attention(collate_packed_pairs(pairs, pad_token_id=0)).int()
    # row 0: prompt 0-1, chosen 2-3, rejected 4-5; rejected queries see the prompt and themselves only
    expected_0 = [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 1, 0],
        [1, 1, 0, 0, 1, 1],
    ]
    # row 1: prompt 0, chosen 1-2, rejected 3-4, one pad that sees only itself
    expected_1 = [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 0, 0, 1, 0, 0],
        [1, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],
    ]
    assert mask.shape == (2, 1, 6, 6)
    assert mask[0, 0].tolist() == expected_0 and mask[1, 0].tolist() == expected_1


def test_scored_tokens_of_a_packed_row_point_the_first_rejected_token_at_the_prompt():
    scored = scored_tokens(collate_packed_pairs(PAIRS[:1], pad_token_id=1))
    # chosen 7, 1 at columns 2-3 are scored by 1-2; rejected 8, 9, 1 at 4-6 by 1 (the prompt's end), 4, 5
    assert scored.predictors.tolist() == [1, 2, 1, 4, 5]
    assert scored.labels.tolist() == [7, 1, 8, 9, 1]
    assert scored.sequences.tolist() == [0, 0, 1, 1, 1]


def test_unpack_gives_the_plain_layout():
    plain = collate_pairs(PAIRS, pad_token_id=1)
    unpacked = unpack(collate_packed_pairs(PAIRS, pad_token_id=1))
    assert torch.equal(unpacked.attention_mask, plain.attention_mask)
    assert torch.equal(unpacked.loss_mask, plain.loss_mask)
    real = plain.attention_mask.bool()
    assert torch.equal(unpacked.input_ids[real], plain.input_ids[real])


def _real_pairs(tokenizer, n: int = 8) -> list[TokenizedPair]:
    records = read_records(str(SHIPPED)).records[:64]
    return PairTokenizer(tokenizer, max_length=256, max_response_length=128)(records)[:n]


@pytest.mark.parametrize(
    ("dtype", "attn", "rtol"),
    [(torch.float32, "sdpa", 1e-5), (torch.float32, "eager", 1e-5), (torch.float64, "sdpa", 1e-10)],
)
def test_packed_log_probs_equal_the_plain_path(tiny_dir: Path, tokenizer, dtype, attn, rtol):
    """Every pair of a real batch, against full-vocabulary logits of separate chosen/rejected rows.

    (``eager`` is checked in float32 only: its softmax runs in float32 whatever the model dtype.)"""
    pairs = _real_pairs(tokenizer)
    plain = collate_pairs(pairs, tokenizer.pad_token_id)
    packed = collate_packed_pairs(pairs, tokenizer.pad_token_id)
    model = load_model(str(tiny_dir), dtype=dtype, attn_implementation=attn).eval()
    with torch.no_grad():
        logits = model(
            input_ids=plain.input_ids,
            attention_mask=plain.attention_mask,
            position_ids=position_ids_from_mask(plain.attention_mask),
        ).logits
        expected, expected_n = sequence_logps(logits, plain.input_ids, plain.loss_mask)
        got, got_n = response_logps(model, model_inputs(model, packed))
    assert model_inputs(model, packed).attention_mask.dim() == 4  # the packed path really ran
    assert torch.equal(got_n, expected_n)
    relative = ((got - expected).abs() / expected.abs()).max().item()
    assert relative < rtol, relative
    assert packed.attention_mask.sum() < plain.attention_mask.sum()


def test_attention_without_4d_masks_falls_back_to_plain_rows():
    model = SimpleNamespace(config=SimpleNamespace(_attn_implementation="flash_attention_2"))
    packed = collate_packed_pairs(PAIRS, pad_token_id=1)
    inputs = model_inputs(model, packed)  # type: ignore[arg-type]
    assert inputs.attention_mask.dim() == 2 and inputs.batch.input_ids.shape[0] == 4
    assert torch.equal(inputs.batch.loss_mask, collate_pairs(PAIRS, pad_token_id=1).loss_mask)


def _dpo_grads(module: DPOModule, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    module.policy.zero_grad()
    out = module.pair_outputs(batch)
    out.losses.mean().backward()
    grads = {k: p.grad.clone() for k, p in module.policy.named_parameters()}
    return out.losses.detach(), grads


def test_dpo_losses_and_gradients_equal_packed_and_plain(tiny_dir: Path, tokenizer):
    torch.manual_seed(0)
    pairs = _real_pairs(tokenizer)
    module = DPOModule(str(tiny_dir), beta=0.1)
    module.configure_model()
    # move the policy off the reference so the losses differ from ln 2 and carry signal
    with torch.no_grad():
        for p in module.policy.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    packed = collate_packed_pairs(pairs, tokenizer.pad_token_id)
    plain = collate_pairs(pairs, tokenizer.pad_token_id)
    loss_packed, grads_packed = _dpo_grads(module, packed)
    loss_plain, grads_plain = _dpo_grads(module, plain)
    torch.testing.assert_close(loss_packed, loss_plain, rtol=1e-5, atol=1e-6)
    assert loss_plain.std() > 0
    for name, grad in grads_plain.items():
        torch.testing.assert_close(grads_packed[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_gradient_checkpointing_changes_nothing_but_memory(tiny_dir: Path, tokenizer):
    pairs = _real_pairs(tokenizer, 4)
    batch = collate_packed_pairs(pairs, tokenizer.pad_token_id)
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        module = DPOModule(str(tiny_dir), gradient_checkpointing=checkpointing)
        module.configure_model()
        with torch.no_grad():
            for p in module.policy.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        results.append(_dpo_grads(module, batch))
    assert getattr(module.policy, "is_activation_checkpointing", None) or module.policy.is_gradient_checkpointing
    torch.testing.assert_close(results[0][0], results[1][0])
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, msg=name)


def test_reward_model_rewards_equal_packed_and_plain(tiny_dir: Path, tokenizer):
    pairs = _real_pairs(tokenizer)
    module = RewardModule(str(tiny_dir))
    module.configure_model()
    module.eval()
    with torch.no_grad():
        packed = module.batch_rewards(collate_packed_pairs(pairs, tokenizer.pad_token_id))
        plain = module.batch_rewards(collate_pairs(pairs, tokenizer.pad_token_id))
    torch.testing.assert_close(packed, plain, rtol=1e-5, atol=1e-6)


def test_scoring_forwards_build_no_kv_cache(tiny_dir: Path, tokenizer):
    """Training and scoring read every position once: a KV cache would be memory spent on nothing."""
    from hhalign.models.forward import backbone

    model = load_model(str(tiny_dir))
    batch = collate_packed_pairs(_real_pairs(tokenizer, 2), tokenizer.pad_token_id)
    inputs = model_inputs(model, batch)
    assert inputs.forward_args()["use_cache"] is False
    with torch.no_grad():
        assert backbone(model)(**inputs.forward_args()).past_key_values is None
