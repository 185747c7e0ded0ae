"""The one command: ``hhalign --help`` lists every command, each has its ``--help``, one flag style (the old
kebab-case spellings answer with a notice), and a mistyped command or option gets the closest one suggested."""

from __future__ import annotations

import pytest

from hhalign.cli import TOOLS, TRAINER_COMMANDS, main


def test_help_lists_every_command_with_a_line(capsys: pytest.CaptureFixture[str]):
    main(["--help"])
    out = capsys.readouterr().out
    for command in [*TRAINER_COMMANDS, *TOOLS]:
        assert any(line.split()[:1] == [command] and len(line.split()) > 2 for line in out.splitlines()), command
    assert "predict" not in out


@pytest.mark.parametrize("command", [*TRAINER_COMMANDS, *TOOLS])
def test_every_command_has_its_help(command: str, capsys: pytest.CaptureFixture[str]):
    args = [command, "inspect", "--help"] if command == "data" else [command, "--help"]
    with pytest.raises(SystemExit) as stop:
        main(args)
        raise SystemExit(0)  # a tool whose --help returns instead of exiting
    assert stop.value.code in (0, None)
    out = capsys.readouterr().out
    assert "usage:" in out.lower() and "--" in out


def test_tool_options_use_underscores_and_the_old_spelling_answers_with_a_notice(tiny_dir, capsys):
    main(["generate", "--model", str(tiny_dir), "--prompt", "hi", "--max_new_tokens", "2"])
    assert "note:" not in capsys.readouterr().err
    main(["generate", "--model", str(tiny_dir), "--prompt", "hi", "--max-new-tokens", "2"])
    assert "hhalign generate: note: --max-new-tokens is now --max_new_tokens" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["fti"], "no command 'fti'; did you mean fit?"),
        (["predict"], "no command 'predict'"),
        (["fit", "--config", "configs/tiny/dpo.yaml", "--model.bta", "0.1"], "did you mean --model.beta?"),
        (["fit", "--config", "configs/tiny/dpo.yaml", "--data.max_lenght", "3"], "did you mean --data.max_length?"),
        (["fit", "--config", "configs/tiny/dpo.yaml", "--trainer.max_step", "3"], "did you mean --trainer.max_steps?"),
        (["fit", "--config", "configs/tiny/dpo.yaml", "--model.class_path", "hhalign.DPOModul"],
         "--model: no class 'hhalign.DPOModul'; did you mean hhalign.DPOModule?"),
        (["fit", "--config", "configs/tiny/dpo.yaml", "--model", "hhalign.Nothing"],
         "the objectives: hhalign.DPOModule"),
    ],
)  # fmt: skip
def test_a_mistyped_command_or_option_gets_the_closest_suggested(args, message, capsys):
    with pytest.raises(SystemExit) as stop:
        main(args)
    said = capsys.readouterr().err + str(stop.value.code)  # a parse error is printed, a user error is the exit
    assert message in said and said.count("hhalign: error:") == 1


def test_a_mistyped_tool_option_gets_the_closest_suggested(tiny_dir, capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--model", str(tiny_dir), "--prompt", "hi", "--max_new_token", "2"])
    assert "did you mean --max_new_tokens?" in capsys.readouterr().err


def test_generate_draws_as_evaluate_and_the_online_objectives_do(tiny_dir, capsys):
    """One generation path: `hhalign generate` with its defaults prints what ``sample_completions`` draws with
    ``Sampling()``'s defaults (temperature 1, top-p 1, no top-k, 64 tokens) from the same seed."""
    from hhalign.data.pairs import PairTokenizer
    from hhalign.models.generation import Sampling, sample_completions
    from hhalign.models.loading import load_model, load_tokenizer

    main(["generate", "--model", str(tiny_dir), "--prompt", "How do I bake bread?", "--seed", "5"])
    printed = capsys.readouterr().out.strip()
    tokenizer = load_tokenizer(str(tiny_dir))
    ids = PairTokenizer(tokenizer, 1).encode_prompt("\n\nHuman: How do I bake bread?\n\nAssistant:")
    model = load_model(str(tiny_dir)).eval()
    (drawn,) = sample_completions(model, [ids], Sampling(), tokenizer.eos_token_id, tokenizer.pad_token_id, 5)
    assert printed == tokenizer.decode(drawn.tokens, skip_special_tokens=True).strip() and len(drawn.tokens) > 3
