"""Precomputed reference log-probs: equal to the online ones, carried by the batches, cached for a resume."""

from __future__ import annotations

import csv
import math
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest
import torch

from hhalign.data.batches import collate_packed_pairs, collate_pairs
from hhalign.data.examples import ExampleSettings, PairExamples
from hhalign.data.pairs import PairTokenizer
from hhalign.data.reading import read_records
from hhalign.objectives import DPOModule
from hhalign.objectives.precompute import CACHE_FILE, reference_logps
from tests.conftest import SHIPPED, fit_tiny


@pytest.mark.parametrize("collate", [collate_packed_pairs, collate_pairs], ids=["packed", "plain"])
def test_precomputed_reference_gives_the_online_losses_and_rewards(tiny_dir: Path, tokenizer, collate):
    records = read_records(str(SHIPPED / "helpful-base-test.jsonl.gz")).records[:12]
    pairs = PairTokenizer(tokenizer, 160, 64)(records)[:6]
    torch.manual_seed(0)
    module = DPOModule(str(tiny_dir), beta=0.1)
    module.configure_model()
    with torch.no_grad():
        for p in module.policy.parameters():  # move the policy off its reference, so rewards are not all 0
            p.add_(torch.randn_like(p) * 0.02)
        online = module.pair_outputs(collate(pairs, tokenizer.pad_token_id))
    pad = partial(collate, pad_token_id=tokenizer.pad_token_id)
    values = reference_logps(module, pairs, pad, PairExamples(ExampleSettings(160)).length, show=False)
    assert values.shape == (6, 2) and values.dtype == torch.float32
    carried = pad([replace(p, ref_logps=tuple(v)) for p, v in zip(pairs, values.tolist(), strict=True)])
    assert carried.ref_logps is not None and carried.ref_logps.shape == (12,)
    module.ref = None  # the precomputed path must not need it
    with torch.no_grad():
        offline = module.pair_outputs(carried)
    torch.testing.assert_close(offline.chosen_rewards, online.chosen_rewards, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(offline.rejected_rewards, online.rejected_rewards, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(offline.losses, online.losses, rtol=1e-5, atol=1e-6)
    assert (online.chosen_rewards != 0).all()


@pytest.mark.slow
def test_fit_with_precomputed_reference_caches_it_and_a_resume_reuses_it(
    tmp_path: Path, tiny_dir: Path, small_jsonl: Path, capsys: pytest.CaptureFixture[str]
):
    run = fit_tiny(tmp_path, tiny_dir, small_jsonl, "configs/tiny/dpo.yaml", "--model.precompute_ref_logps", "true",
                   steps=2, val_every=2)  # fmt: skip
    assert (run / CACHE_FILE).is_file() and "reused" not in capsys.readouterr().out
    with open(run / "metrics.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("train/loss")]
    assert float(rows[0]["train/loss"]) == pytest.approx(math.log(2), abs=1e-6)  # policy = reference at step 0
    assert not any(r.get("train/kl_chosen") for r in rows)  # no reference logits: no KL diagnostic
    fit_tiny(tmp_path, tiny_dir, small_jsonl, "configs/tiny/dpo.yaml", "--model.precompute_ref_logps", "true",
             "--ckpt_path", "last", steps=3, val_every=3)  # fmt: skip
    assert f"reference log-probs: reused {run / CACHE_FILE}" in capsys.readouterr().out
