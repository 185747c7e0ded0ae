"""The DPO module with the loss family: reference-free SimPO, BCO's running state, LoRA with the
adapters-off reference, and the KL and step-0 diagnostics."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from hhalign.data.batches import collate_packed_pairs, collate_pairs
from hhalign.data.pairs import PairTokenizer
from hhalign.data.reading import read_records
from hhalign.models.forward import model_inputs, response_logps
from hhalign.models.loading import load_model
from hhalign.objectives import DPOModule
from tests.conftest import SHIPPED


@pytest.fixture(scope="module")
def batch(tokenizer) -> dict[str, torch.Tensor]:
    records = read_records(str(SHIPPED)).records[:40]
    pairs = PairTokenizer(tokenizer, max_length=192, max_response_length=96)(records)[:4]
    return collate_packed_pairs(pairs, tokenizer.pad_token_id)


@pytest.mark.parametrize("loss_type", ["simpo", ["simpo", "sft"]])
def test_reference_free_losses_load_no_reference(tiny_dir: Path, batch, loss_type):
    module = DPOModule(str(tiny_dir), loss_type=loss_type, beta=2.0)
    module.configure_model()
    assert module.ref is None
    out = module.pair_outputs(batch)
    assert torch.isfinite(out.losses).all() and "kl_chosen" not in out.extras
    out.losses.mean().backward()
    assert all(p.grad is not None for p in module.policy.parameters() if p.requires_grad)


def test_combined_loss_is_the_weighted_sum(tiny_dir: Path, batch):
    torch.manual_seed(0)
    module = DPOModule(str(tiny_dir), loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.25])
    module.configure_model()
    with torch.no_grad():
        combined = module.pair_outputs(batch).losses
        module.hparams.loss_type, module.hparams.loss_weights = "sigmoid", None
        sigmoid = module.pair_outputs(batch).losses
        logps, n = response_logps(module.policy, model_inputs(module.policy, batch))
    chosen_nll = -logps[:4] / n[:4]  # per pair: each chosen response's mean NLL per token
    torch.testing.assert_close(combined, sigmoid + 0.25 * chosen_nll)


def test_bco_running_mean_is_checkpointed(tiny_dir: Path, batch):
    module = DPOModule(str(tiny_dir), loss_type="bco_pair")
    module.configure_model()
    module.bco_mean, module.bco_count = 0.25, 7
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    restored = DPOModule(str(tiny_dir), loss_type="bco_pair")
    restored.configure_model()
    restored.on_load_checkpoint(checkpoint)
    assert (restored.bco_mean, restored.bco_count) == (0.25, 7)
    with torch.no_grad():
        module.eval()
        out = module.pair_outputs(batch)  # evaluation reads δ without moving it
    assert module.bco_count == 7
    chosen, rejected = out.chosen_rewards, out.rejected_rewards
    expected = -torch.nn.functional.logsigmoid(chosen - 0.25) - torch.nn.functional.logsigmoid(-(rejected - 0.25))
    torch.testing.assert_close(out.losses, expected)


def test_lora_trains_adapters_only_and_its_reference_is_the_base(tiny_dir: Path, batch):
    torch.manual_seed(0)
    module = DPOModule(str(tiny_dir), lora_rank=4, lora_alpha=8)
    module.configure_model()
    module.train()
    assert module.ref is None  # no second copy of the weights
    trainable = [n for n, p in module.policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    optimizer = torch.optim.AdamW([p for p in module.policy.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = module.pair_outputs(batch).losses.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    base = load_model(str(tiny_dir)).eval()
    with torch.no_grad():
        expected, _ = response_logps(base, model_inputs(base, batch))
        with module.reference() as ref:
            got, _ = response_logps(ref, model_inputs(ref, batch))
        trained, _ = response_logps(module.policy, model_inputs(module.policy, batch))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (trained - expected).abs().max() > 1e-3  # the adapters did move the policy


def test_kl_is_zero_at_the_start_and_positive_after_training(tiny_dir: Path, batch):
    torch.manual_seed(0)
    module = DPOModule(str(tiny_dir))
    module.configure_model()
    with torch.no_grad():
        assert module.pair_outputs(batch).extras["kl_chosen"].abs().max() < 1e-6
        for p in module.policy.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        kl = module.pair_outputs(batch).extras["kl_chosen"]
    assert (kl > 0).all()


def test_step_zero_warns_when_policy_and_reference_disagree(tiny_dir: Path, batch, tmp_path: Path):
    import lightning as L

    module = DPOModule(str(tiny_dir))
    module.configure_model()
    with torch.no_grad():
        for p in module.ref.parameters():
            p.add_(0.05)
    module.trainer = L.Trainer(accelerator="cpu", logger=False, default_root_dir=tmp_path)
    module.train()
    with pytest.warns(UserWarning, match="DISAGREE at step 0"):
        out = module.pair_outputs(batch)
    assert abs(float(out.losses.detach().mean()) - math.log(2)) > 1e-4


def test_margins_flow_from_records_to_the_reward_loss(tiny_dir: Path, tokenizer, tmp_path: Path):
    from hhalign.errors import DataError
    from hhalign.objectives import RewardModule
    from tests.conftest import shipped_records, write_jsonl

    raw = shipped_records(6)
    for i, record in enumerate(raw):
        record["margin"] = float(i)
    records = read_records(str(write_jsonl(tmp_path / "m.jsonl", raw))).records
    pairs = PairTokenizer(tokenizer, max_length=256, max_response_length=96)(records)[:3]
    packed = collate_packed_pairs(pairs, tokenizer.pad_token_id)
    assert packed.margins.tolist() == [p.margin for p in pairs] and collate_pairs(pairs, 0).margins.shape == (3,)
    module = RewardModule(str(tiny_dir), center_rewards_coefficient=0.01)
    module.configure_model()
    module.eval()
    with torch.no_grad():
        module.on_validation_epoch_start()
        out = module.pair_outputs(packed)
        module.on_validation_epoch_end()
    c, r = out.chosen_rewards, out.rejected_rewards
    expected = -torch.nn.functional.logsigmoid(c - r - packed.margins) + 0.01 * (c + r) ** 2
    torch.testing.assert_close(out.losses, expected)
    rewards = torch.cat([c, r]).double()
    assert module.reward_stats["count"] == 6
    assert math.isclose(module.reward_stats["mean"], rewards.mean().item(), rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(module.reward_stats["std"], rewards.std(unbiased=False).item(), rel_tol=1e-6)
    raw[0]["margin"] = "big"
    with pytest.raises(DataError, match="'margin' must be a number"):
        read_records(str(write_jsonl(tmp_path / "bad.jsonl", raw)))


def test_lora_export_merges_the_adapters(tiny_dir: Path, batch):
    from hhalign.models.loading import merged

    torch.manual_seed(0)
    module = DPOModule(str(tiny_dir), lora_rank=4)
    module.configure_model()
    with torch.no_grad():
        for name, p in module.policy.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn_like(p) * 0.1)
        plain = merged(module.policy)
        assert not any("lora_" in n for n, _ in plain.named_parameters())
        expected, _ = response_logps(module.policy, model_inputs(module.policy, batch))
        got, _ = response_logps(plain, model_inputs(plain, batch))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
