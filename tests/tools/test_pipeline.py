"""base → SFT → DPO/RM: dialogue targets, the SFT loss, chaining from a checkpoint, export and curves."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from hhalign.cli import main
from hhalign.data.batches import SequenceBatch, collate_dialogues, collate_packed_pairs
from hhalign.data.datamodule import PreferenceDataModule
from hhalign.data.dialogues import DialogueTokenizer, dialogue_pieces
from hhalign.data.records import Record
from hhalign.models.forward import position_ids_from_mask
from hhalign.objectives import DPOModule, RewardModule, SFTModule
from hhalign.tools.export import export_checkpoint
from hhalign.tools.plot import plot_run
from hhalign.tools.summary import accuracy_interval, format_summary, summary_table, wilson_interval
from tests.conftest import fit_tiny
from tests.oracles import sequence_logps

DIALOGUE = "\n\nHuman: hi there\n\nAssistant: hello!\n\nHuman: how are you?\n\nAssistant: fine, thanks."


def test_dialogue_pieces_mark_assistant_turns_only():
    pieces = dialogue_pieces(DIALOGUE)
    assert "".join(text for text, _ in pieces) == DIALOGUE
    assert [text for text, target in pieces if target] == [" hello!", " fine, thanks."]


def test_dialogue_targets_are_the_assistant_tokens_and_the_eos(tokenizer):
    [dialogue] = DialogueTokenizer(tokenizer, max_length=256)([Record(DIALOGUE, "x", None, "t")])
    targets = [i for i, t in zip(dialogue.ids, dialogue.targets, strict=True) if t]
    assert targets[-1] == tokenizer.eos_token_id and dialogue.ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(targets[:-1]) == " hello! fine, thanks."
    context = [i for i, t in zip(dialogue.ids, dialogue.targets, strict=True) if not t]
    assert "how are you?" in tokenizer.decode(context) and "hello" not in tokenizer.decode(context)


def test_long_dialogue_loses_its_first_turns(tokenizer):
    tokenize = DialogueTokenizer(tokenizer, max_length=20)  # 33 tokens whole, 18 from the second turn
    [dialogue] = tokenize([Record(DIALOGUE, "x", None, "t")])
    assert len(dialogue.ids) <= 20 and "fine" in tokenizer.decode(dialogue.ids)
    assert "hi there" not in tokenizer.decode(dialogue.ids) and tokenize.counts["cut:dialogue_turns"] == 1


def test_sft_loss_is_the_token_mean_of_target_cross_entropy(tiny_dir: Path, tokenizer):
    records = [Record(DIALOGUE, "x", None, "a"), Record(DIALOGUE.replace("fine", "great"), "x", None, "b")]
    batch = collate_dialogues(DialogueTokenizer(tokenizer, 256)(records), tokenizer.pad_token_id)
    module = SFTModule(str(tiny_dir))
    module.configure_model()
    out = module.step_outputs(batch)
    with torch.no_grad():
        logits = module.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=position_ids_from_mask(batch.attention_mask),
        ).logits
    logps, n_tokens = sequence_logps(logits, batch.input_ids, batch.loss_mask)
    torch.testing.assert_close(out.loss.detach(), -logps.sum() / n_tokens.sum())
    assert math.log(4096) - 0.5 < out.loss.item() < math.log(4096) + 0.5  # a random model: about uniform


def test_data_module_builds_dialogues_for_sft(tiny_dir: Path, small_jsonl: Path):
    data = PreferenceDataModule(str(small_jsonl), str(tiny_dir), max_length=256, examples="dialogues")
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert type(batch) is SequenceBatch and batch.input_ids.shape[0] == 8
    assert (batch.loss_mask <= batch.attention_mask).all() and batch.loss_mask.sum() > 0


def _fit(tmp_path: Path, tiny_dir: Path, data: Path, config: str, trial: str) -> Path:
    return fit_tiny(tmp_path, tiny_dir, data, config, trial=trial)


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Path:
    from tests.conftest import shipped_records, write_jsonl

    tmp_path = tmp_path_factory.mktemp("pipeline")
    data = write_jsonl(tmp_path / "pairs.jsonl", shipped_records(48))
    return _fit(tmp_path, tiny_dir, data, "configs/tiny/sft.yaml", "sft")


@pytest.mark.slow
def test_sft_fit_writes_curves_summary_and_export(sft_run: Path):
    with open(sft_run / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert any(r.get("val/perplexity") for r in rows) and any(r.get("train/tokens_seen") for r in rows)
    summary = json.loads((sft_run / "summary.json").read_text())
    assert summary["module"] == "SFTModule" and summary["steps"] == 4
    final = summary["final_validation"]
    assert math.isclose(final["val/perplexity"], math.exp(final["val/loss"]), rel_tol=1e-4)
    assert (sft_run / "curves.png").stat().st_size > 10_000
    exported = {p.name for p in (sft_run / "export").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= exported


@pytest.mark.slow
def test_dpo_and_rm_start_from_an_sft_checkpoint(sft_run: Path):
    ckpt = str(sft_run / "checkpoints" / "last.ckpt")
    sft = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    dpo = DPOModule(ckpt)
    dpo.configure_model()
    for name, value in dpo.policy.state_dict().items():
        assert torch.equal(value, sft[f"model.{name}"]), name
        assert torch.equal(dpo.ref.state_dict()[name], value), name  # the reference defaults to the same weights
    rm = RewardModule(ckpt)
    rm.configure_model()
    backbone = rm.model.model.state_dict()
    assert all(torch.equal(v, sft[f"model.model.{k}"]) for k, v in backbone.items())


@pytest.mark.slow
def test_export_reloads_with_plain_transformers_and_matches(
    sft_run: Path, tmp_path: Path, tiny_dir: Path, small_jsonl: Path, tokenizer
):
    # a causal LM: per-sequence log-probs of the exported folder equal the checkpoint's
    ckpt = sft_run / "checkpoints" / "last.ckpt"
    out = export_checkpoint(str(ckpt), str(tmp_path / "sft-export"))
    records = [Record(DIALOGUE, "x", None, "a"), Record(DIALOGUE.replace("fine", "great"), "x", None, "b")]
    batch = collate_dialogues(DialogueTokenizer(tokenizer, 256)(records), tokenizer.pad_token_id)
    module = SFTModule(str(ckpt))
    module.configure_model()
    module.eval()
    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        expected = module.step_outputs(batch).metrics["loss"][0]
        logits = plain(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        logps, n = sequence_logps(logits, batch.input_ids, batch.loss_mask)
    torch.testing.assert_close(-logps / n, expected, rtol=1e-5, atol=1e-5)
    # a reward model: one unpadded sequence at a time, plain transformers reads the EOS as we do
    run_dir = _fit(tmp_path, tiny_dir, small_jsonl, "configs/tiny/rm.yaml", "rm")
    rm_ckpt = run_dir / "checkpoints" / "last.ckpt"
    rm_out = export_checkpoint(str(rm_ckpt), str(tmp_path / "rm-export"))
    rm = RewardModule(str(rm_ckpt))
    rm.configure_model()
    rm.eval()
    scorer = AutoModelForSequenceClassification.from_pretrained(rm_out).eval()
    assert not any(k.startswith("ref") for k in scorer.state_dict())
    with torch.no_grad():
        for row, mask in zip(batch.input_ids, batch.attention_mask, strict=True):
            ids = row[mask.bool()][None]
            theirs = scorer(input_ids=ids).logits[0, 0]
            torch.testing.assert_close(theirs, rm.rewards(ids, torch.ones_like(ids))[0], rtol=1e-5, atol=1e-5)
    info = json.loads((rm_out / "hhalign_export.json").read_text())
    assert info["module"] == "RewardModule" and info["step"] == 4
    assert info["reward_stats"]["count"] > 0 and info["reward_stats"]["std"] > 0  # for normalising scores


def test_wilson_interval_matches_newcombe():
    """Newcombe (1998), Statistics in Medicine 17:857, table I: 81/263 and 0/10."""
    low, high = wilson_interval(81, 263)
    assert round(low, 4) == 0.2553 and round(high, 4) == 0.3662
    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.2775, abs=1e-4))
    with pytest.raises(ValueError, match="n must be positive"):
        wilson_interval(0, 0)


def test_summary_table_shows_the_accuracy_interval(tmp_path: Path):
    summary = {"module": "DPOModule", "model": "m", "steps": 5, "run_dir": str(tmp_path / "exp" / "dpo")}
    summary["final_validation"] = {
        "val/reward_accuracy": 0.75,
        "val/examples": 40.0,
        "val/length_baseline": 0.6,
        "val/chosen_shorter_rate": 0.25,
        "val/reward_accuracy_chosen_shorter": 0.7,
    }
    for metric in ("reward_accuracy", "length_baseline", "reward_accuracy_chosen_shorter"):
        summary[f"{metric}_interval"] = accuracy_interval(summary["final_validation"], metric)
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    table = summary_table([str(tmp_path)])
    low, high = wilson_interval(30, 40)
    assert f"0.750 [{low:.3f}, {high:.3f}] (40)" in table and "| exp/dpo | DPOModule | m | 5 | 0.7500 |" in table
    assert "0.600 [{:.3f}, {:.3f}]".format(*wilson_interval(24, 40)) in table  # longer wins in 24 of 40
    assert "0.700 [{:.3f}, {:.3f}] (10)".format(*wilson_interval(7, 10)) in table  # 7 of the 10 chosen-shorter
    text = format_summary(summary)
    assert "over 40 pairs" in text and "over 10 pairs; on the pairs whose chosen reply is the shorter" in text


def test_plot_draws_every_dpo_panel(tmp_path: Path):
    import matplotlib.image

    run_dir = tmp_path / "exp" / "run"
    run_dir.mkdir(parents=True)
    names = ["loss", "reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward", "logps_chosen"]
    columns = ["step"] + [f"{stage}/{n}" for stage in ("train", "val") for n in names]
    with open(run_dir / "metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        for step in range(40):
            writer.writerow({"step": step, **{f"train/{n}": math.sin(step / 5) + step / 40 for n in names}})
            if step % 10 == 9:
                writer.writerow({"step": step, **{f"val/{n}": step / 40 for n in names}})
    image = matplotlib.image.imread(plot_run(run_dir))
    assert image.shape[0] > 300 and image.shape[1] > 800
    assert image[..., :3].std() > 0.05  # drawn, not blank


@pytest.mark.slow
def test_score_and_generate_use_the_training_format(
    sft_run: Path, tmp_path: Path, tiny_dir: Path, small_jsonl: Path, tokenizer, capsys: pytest.CaptureFixture[str]
):
    from hhalign.data.pairs import PairTokenizer
    from hhalign.data.reading import read_records

    main(["generate", "--model", str(sft_run / "export"), "--prompt", "How do I bake bread?", "--max_new_tokens", "8"])
    main(["generate", "--model", str(sft_run / "export"), "--prompt", "How do I bake bread?", "--max_new_tokens", "8"])
    first, second = capsys.readouterr().out.rstrip("\n").split("\n")[-2:]
    assert first == second and first.strip()  # greedy by default: the same reply twice
    run_dir = _fit(tmp_path, tiny_dir, small_jsonl, "configs/tiny/rm.yaml", "rm")
    ckpt = str(run_dir / "checkpoints" / "last.ckpt")
    main(["score", "--model", ckpt, "--pairs", str(small_jsonl), "--max_length", "128"])
    lines = capsys.readouterr().out.strip().split("\n")
    scored = [json.loads(line) for line in lines if line.startswith("{")]
    assert lines[-1].startswith(f"pairs: {len(scored)}  preference accuracy: ")
    # the same numbers as the module computes on a training batch of the same pairs

    pairs = PairTokenizer(tokenizer, 128)(read_records(str(small_jsonl)).records)[:4]
    module = RewardModule(ckpt)
    module.configure_model()
    module.eval()
    with torch.no_grad():
        out = module.pair_outputs(collate_packed_pairs(pairs, tokenizer.pad_token_id))
    expected = [s["chosen_reward"] for s in scored[:4]]
    torch.testing.assert_close(out.chosen_rewards, torch.tensor(expected), rtol=1e-4, atol=1e-5)


def test_score_report_puts_the_length_baseline_beside_the_accuracy():
    """Four pairs: chosen longer in pairs 0 and 2, shorter in 1 and 3; rewards rank 0, 1 and 2 right. Accuracy
    3/4, longer wins 2/4, and of the two chosen-shorter pairs one (pair 1) is ranked right."""
    from hhalign.data.pairs import TokenizedPair
    from hhalign.tools.use import pair_report

    pairs = [TokenizedPair([1], [5] * c, [6] * r) for c, r in ((3, 1), (1, 2), (4, 2), (2, 5))]
    report = pair_report(pairs, [1.0, 1.0, 1.0, 0.0], [0.0, 0.5, 0.0, 1.0])
    low, high = wilson_interval(3, 4)
    assert f"preference accuracy: 0.7500 ({low:.3f}–{high:.3f}, n=4)" in report
    assert "longer-wins baseline: 0.5000" in report and "accuracy when chosen is shorter: 0.5000" in report
    assert "n=2)" in report
