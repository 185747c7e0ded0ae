"""A real pretrained model (SmolLM2-135M-Instruct: pad == EOS == the chat template's end-of-turn marker)
through the paths the tiny model cannot check, and the GGUF import that brings it here."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from hhalign.data.batches import collate_packed_pairs, collate_pairs
from hhalign.data.pairs import PairTokenizer
from hhalign.data.reading import read_records
from hhalign.data.templates import ChatTemplate, to_messages
from hhalign.errors import ModelLoadError
from hhalign.models.importing import IMPORT_INFO, import_gguf
from hhalign.models.layout import last_tokens, scored_tokens
from hhalign.models.loading import load_model, load_tokenizer
from hhalign.objectives import DPOModule, RewardModule
from tests.conftest import REPO, SHIPPED, shipped_records, write_jsonl
from tests.gguf_files import dequantized, rotary_to_interleaved, write_llama_gguf

pytestmark = pytest.mark.real  # SmolLM2-135M: part of make test, left out of make test-fast

TEXT = "\n\nHuman: How do I bake bread?\n\nAssistant: Mix flour, water, salt and yeast."


# --- the GGUF import, on a file written here ---------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_gguf(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    path = write_llama_gguf(model, tiny_dir, tmp_path_factory.mktemp("gguf") / "tiny.F32.gguf")
    return path, model


def test_gguf_import_gives_the_same_model_and_tokenizer(tiny_gguf, tiny_dir: Path, tmp_path: Path):
    path, original = tiny_gguf
    out = import_gguf(path, tmp_path / "imported")
    imported = AutoModelForCausalLM.from_pretrained(out)  # a plain folder now: no gguf_file, no quantizer
    assert not hasattr(imported.config, "quantization_config") and (out / "model.safetensors").is_file()
    expected = original.state_dict()
    for name, tensor in imported.state_dict().items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0, msg=name)
    ids = torch.tensor([AutoTokenizer.from_pretrained(tiny_dir)(TEXT, add_special_tokens=False)["input_ids"]])
    assert AutoTokenizer.from_pretrained(out)(TEXT, add_special_tokens=False)["input_ids"] == ids[0].tolist()
    with torch.no_grad():
        torch.testing.assert_close(imported(ids).logits, original(ids).logits, rtol=1e-5, atol=1e-5)
    info = (out / IMPORT_INFO).read_text()
    assert str(path) in info and "dequantized" in info


def test_gguf_import_dequantizes_quantized_weights(tiny_dir: Path, tmp_path: Path):
    original = AutoModelForCausalLM.from_pretrained(tiny_dir)
    path = write_llama_gguf(original, tiny_dir, tmp_path / "tiny.Q8_0.gguf", quantization="Q8_0")
    imported = AutoModelForCausalLM.from_pretrained(import_gguf(path, tmp_path / "imported")).state_dict()
    heads = original.config.num_attention_heads
    for name in ("model.layers.0.mlp.down_proj.weight", "model.layers.1.self_attn.q_proj.weight"):
        weight = original.state_dict()[name].numpy()
        stored = rotary_to_interleaved(weight, heads) if "q_proj" in name else weight
        got = imported[name].numpy()
        got = rotary_to_interleaved(got, heads) if "q_proj" in name else got
        assert not torch.equal(torch.from_numpy(got), torch.from_numpy(stored))  # 8-bit: not the same numbers
        torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(dequantized(stored, "Q8_0")))


def test_gguf_import_errors_name_the_file(tmp_path: Path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        import_gguf(tmp_path / "missing.gguf", tmp_path / "out")
    not_gguf = tmp_path / "weights.gguf"
    not_gguf.write_bytes(b"this is not a gguf file")
    with pytest.raises(ModelLoadError, match="could not read .*weights.gguf"):
        import_gguf(not_gguf, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- the real model -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_tokenizer(smollm2_dir: Path):
    return load_tokenizer(str(smollm2_dir))


@pytest.fixture(scope="module")
def real_pairs(real_tokenizer) -> list:
    records = read_records(str(SHIPPED / "helpful-base-test.jsonl.gz")).records[:24]
    return PairTokenizer(real_tokenizer, 1024, None, ChatTemplate(real_tokenizer))(records)  # nothing cut


def test_the_real_tokenizer_pads_with_its_eos(smollm2_dir: Path, real_tokenizer):
    end_of_turn = real_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert real_tokenizer.pad_token_id == real_tokenizer.eos_token_id == end_of_turn
    licence = (smollm2_dir / "LICENSE-WEIGHTS.txt").read_text()
    assert "Apache-2.0" in licence and "SmolLM2-135M-Instruct" in licence


def test_chat_template_pairs_share_their_prompt_tokens_and_match_the_template(real_tokenizer, real_pairs):
    """Chosen and rejected are one prompt list plus a response, and prompt + response is exactly what
    tokenizing the whole templated conversation gives: the shared prompt is the template's own tokens."""
    records = read_records(str(SHIPPED / "helpful-base-test.jsonl.gz")).records[:24]
    template = ChatTemplate(real_tokenizer)
    checked = 0
    for record, pair in zip(records, PairTokenizer(real_tokenizer, 4096, None, template)(records), strict=True):
        for dialogue, response in ((record.chosen, pair.chosen), (record.rejected, pair.rejected)):
            full = real_tokenizer.apply_chat_template(to_messages(dialogue), tokenize=False).rstrip()
            assert pair.prompt + response == real_tokenizer(full, add_special_tokens=False)["input_ids"]
            assert response[-1] == real_tokenizer.eos_token_id  # the template's end of turn, once
            assert response[-2] != real_tokenizer.eos_token_id
            checked += 1
    assert checked == 48


def test_every_response_eos_is_scored_although_it_is_the_pad_id(real_tokenizer, real_pairs):
    eos = real_tokenizer.eos_token_id
    pairs = real_pairs[:6]
    for batch in (collate_packed_pairs(pairs, eos), collate_pairs(pairs, eos)):
        scored = scored_tokens(batch)
        for sequence in range(2 * len(pairs)):
            labels = scored.labels[scored.sequences == sequence].tolist()
            pair = pairs[sequence % len(pairs)]
            assert labels == (pair.chosen if sequence < len(pairs) else pair.rejected)
            assert labels[-1] == eos


@pytest.fixture(scope="module")
def real_reward_module(smollm2_dir: Path) -> RewardModule:
    torch.manual_seed(0)
    module = RewardModule(str(smollm2_dir))
    module.configure_model()
    return module.eval()


def test_reward_is_read_at_the_last_real_token_not_the_first_pad_equal_one(real_reward_module, real_pairs):
    """Each padded row's reward equals the reward of the same sequence alone, unpadded; the library's own
    pooling (first pad id) would read a sequence at the EOS that ends its prompt's system turn instead."""
    pairs = real_pairs[:4]
    eos = real_pairs[0].chosen[-1]
    for batch in (collate_packed_pairs(pairs, eos), collate_pairs(pairs, eos)):
        rows, cols = last_tokens(batch)
        assert (batch.input_ids[rows, cols] == eos).all()
        with torch.no_grad():
            padded = real_reward_module.batch_rewards(batch)
            alone = [
                real_reward_module.rewards(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))[0]
                for ids in [p.prompt + p.chosen for p in pairs] + [p.prompt + p.rejected for p in pairs]
            ]
        torch.testing.assert_close(padded, torch.stack(alone), rtol=1e-4, atol=1e-4)
    assert eos in pairs[0].prompt[:-1]  # the prompt holds earlier EOS tokens: first-pad pooling would stop there


def test_dpo_step_zero_is_ln2_exactly_on_the_real_model(smollm2_dir: Path, real_pairs, real_tokenizer):
    module = DPOModule(str(smollm2_dir))
    module.configure_model()
    out = module.pair_outputs(collate_packed_pairs(real_pairs[:4], real_tokenizer.eos_token_id))
    assert torch.equal(out.losses.detach(), torch.full((4,), math.log(2)))
    assert (out.chosen_rewards == 0).all() and (out.rejected_rewards == 0).all()


def _fit_real(output_dir: Path, smollm2_dir: Path, config: str, data: Path, trial: str) -> Path:
    from hhalign.cli import main

    main([
        "fit", "--config", str(REPO / config), "--model.model_name_or_path", str(smollm2_dir),
        "--data.path", str(data), "--data.max_length", "160", "--data.max_response_length", "64",
        "--data.batch_size", "2", "--data.val_batch_size", "2", "--data.valid_fraction", "0.25",
        "--trainer.max_steps", "1", "--trainer.val_check_interval", "1", "--model.warmup_steps", "0",
        "--output_dir", str(output_dir),
        "--trial_name", trial, "--trainer.enable_progress_bar", "false",
    ])  # fmt: skip
    return output_dir / "smollm2" / trial


def _first_row(run_dir: Path, column: str) -> float:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return next(float(r[column]) for r in csv.DictReader(handle) if r.get(column))


@pytest.mark.slow
def test_real_dpo_run_starts_at_ln2_and_its_export_loads_back(smollm2_dir: Path, tmp_path: Path, real_tokenizer):
    data = write_jsonl(tmp_path / "pairs.jsonl", shipped_records(12))
    run_dir = _fit_real(tmp_path / "out", smollm2_dir, "configs/smollm2/dpo.yaml", data, "dpo")
    assert _first_row(run_dir, "train/loss") == pytest.approx(math.log(2), abs=1e-7)
    exported = AutoModelForCausalLM.from_pretrained(run_dir / "export")
    trained = load_model(str(run_dir / "checkpoints" / "last.ckpt"))
    ids = torch.tensor([real_tokenizer(TEXT)["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(exported(ids).logits, trained(ids).logits, rtol=1e-5, atol=1e-5)
        original = AutoModelForCausalLM.from_pretrained(smollm2_dir)(ids).logits
    assert not torch.allclose(exported(ids).logits, original)  # one step moved it


@pytest.mark.slow
def test_real_reward_model_export_scores_as_training_did(smollm2_dir: Path, tmp_path: Path, real_tokenizer):
    data = write_jsonl(tmp_path / "pairs.jsonl", shipped_records(12))
    run_dir = _fit_real(tmp_path / "out", smollm2_dir, "configs/smollm2/rm.yaml", data, "rm")
    exported = AutoModelForSequenceClassification.from_pretrained(run_dir / "export")
    trained = RewardModule(str(run_dir / "checkpoints" / "last.ckpt"))
    trained.configure_model()
    ids = real_tokenizer(TEXT)["input_ids"] + [real_tokenizer.eos_token_id]
    with torch.no_grad():
        expected = trained.eval().rewards(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
        torch.testing.assert_close(exported(torch.tensor([ids])).logits[:, 0], expected, rtol=1e-5, atol=1e-5)
