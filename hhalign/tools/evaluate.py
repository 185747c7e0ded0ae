"""``hhalign evaluate``: a policy judged by generation on held-out prompts (``hhalign.tools.judging``),
given a run directory (its export against its reference, on its validation pairs) or models and data
by path; and ``EvaluateAtFitEnd``, the same evaluation when ``fit`` ends, logged with the run."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import Callback

from hhalign.data.pairs import TokenizedPair
from hhalign.errors import UserError
from hhalign.models.engines import open_engine
from hhalign.models.generation import Sampling
from hhalign.models.loading import load_model, load_tokenizer
from hhalign.tools.describe import trained_chat_template
from hhalign.tools.judging import RESULTS_FILE, Evaluation, Judge, check_reward_model, choose_prompts, evaluate
from hhalign.tools.judging import format_results as format_results
from hhalign.tools.parsers import evaluate_parser
from hhalign.training.sharding import is_fsdp, model_on_one_process

EVAL_DIR = "eval"
LOGGED = {
    "win_rate_vs_reference": ("policy_vs_reference", "win_rate"),
    "win_rate_vs_chosen": ("policy_vs_chosen", "win_rate"),
    "tie_rate_vs_reference": ("policy_vs_reference", "tie_rate"),
    "kl": ("kl", "sequence", "mean"),
    "kl_se": ("kl", "sequence", "se"),
    "kl_per_token": ("kl", "per_token"),
    "policy_reward": ("reward", "policy", "mean"),
    "reference_reward": ("reward", "reference", "mean"),
    "policy_tokens": ("length", "policy", "mean"),
    "reference_tokens": ("length", "reference", "mean"),
}
"""The scalars an evaluation logs as ``eval/<name>``, and where each sits in its results."""


def logged_scalars(results: dict[str, Any]) -> dict[str, float]:
    out = {}
    for name, keys in LOGGED.items():
        value: Any = results
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None:  # prompt-only data has no chosen reply to compare with
            out[f"eval/{name}"] = float(value)
    return out


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """What a run says about itself in its ``config.yaml``: the model it started from, its reference, its
    data settings and its objective's hyperparameters."""
    config_file = Path(run_dir) / "config.yaml"
    if not config_file.is_file():
        raise UserError(f"{config_file} does not exist; give the directory of an `hhalign fit` run")
    config = yaml.safe_load(config_file.read_text()) or {}
    model = config.get("model") or {}
    hparams = model.get("init_args") or {}
    base = hparams.get("model_name_or_path")
    if not base:
        raise UserError(f"{config_file} names no model.init_args.model_name_or_path")
    return {
        "base": base,
        "reference": hparams.get("ref_model_name_or_path") or base,
        "objective": model.get("class_path", ""),
        "hparams": {k: hparams[k] for k in ("beta", "loss_type") if k in hparams},
        "data": config.get("data") or {},
        "name": f"{Path(run_dir).parent.name}/{Path(run_dir).name}",
    }


def held_out_pairs(data: dict[str, Any], tokenizer_path: str) -> list[TokenizedPair]:
    """A run's validation pairs, tokenized as its training saw them (from the cache when it has them)."""
    from hhalign.data.datamodule import PreferenceDataModule

    accepted = inspect.signature(PreferenceDataModule).parameters
    settings = {k: v for k, v in data.items() if k in accepted} | {"examples": "pairs"}
    module = PreferenceDataModule(**settings | {"tokenizer_name_or_path": tokenizer_path})
    module.setup("validate")
    return list(module.val_examples)


def pairs_from_file(path: str, tokenizer: Any, max_length: int, max_response_length: int | None, chat: bool) -> list:
    from hhalign.data.reading import read_examples

    return read_examples(path, tokenizer, max_length, max_response_length, chat)


def check_same_vocabulary(tokenizer: Any, others: dict[str, str]) -> None:
    """Policy, reference and judge must read the same token ids: the log-ratios and the judge's scores are
    computed on the policy's tokens."""
    vocab = tokenizer.get_vocab()
    for option, path in others.items():
        if load_tokenizer(path).get_vocab() != vocab:
            raise UserError(f"{option} {path!r} has another vocabulary than the policy; all three must share one")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def pick_dtype(name: str) -> torch.dtype:
    """The weights' dtype: ``auto`` keeps float32 weights (log-probs and KL in fp32); on CUDA sampling then runs
    under bf16 autocast (``sampling_autocast``)."""
    return torch.float32 if name == "auto" else getattr(torch, name)


def sampling_autocast(name: str, device: torch.device) -> Any:
    """bf16 autocast for ``--dtype auto`` on CUDA (sampling and judging; log-probs leave it); none elsewhere:
    bf16 is ~100x slower on CPUs."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=name == "auto" and device.type == "cuda")


def main(argv: list[str] | None = None) -> None:
    parser = evaluate_parser()
    args = parser.parse_args(argv)
    if not args.run and not (args.policy and args.reference and args.data and args.out):
        parser.error("give a run directory, or --policy, --reference, --data and --out")
    if args.prompts < 1 or args.samples < 1 or args.batch_size < 1:
        parser.error("--prompts, --samples and --batch_size must be at least 1")
    try:
        sampling = Sampling(args.max_new_tokens, args.temperature, args.top_p)
    except ValueError as err:
        parser.error(str(err))
    run = read_run(args.run) if args.run else None
    policy_path = args.policy or str(Path(args.run) / "export")
    reference_path: str = args.reference or (run or {})["reference"]
    if not Path(policy_path).exists() and policy_path == str(Path(args.run or "") / "export"):
        raise UserError(f"{policy_path} does not exist: the run has not finished, or give --policy PATH.ckpt")
    check_reward_model(args.judge)
    tokenizer = load_tokenizer(policy_path)
    check_same_vocabulary(tokenizer, {"--reference": reference_path, "--judge": args.judge})
    if args.data:  # formatted as the run's training was, unless told otherwise
        data = (run or {}).get("data", {})
        max_length = args.max_length or data.get("max_length") or 512
        recorded = bool(data["chat_template"]) if "chat_template" in data else trained_chat_template(policy_path)
        chat = args.chat_template if args.chat_template is not None else bool(recorded)
        pairs = pairs_from_file(
            args.data, tokenizer, max_length, args.max_response_length or data.get("max_response_length"), chat
        )
    else:
        pairs = held_out_pairs(run["data"], run["base"])  # type: ignore[index]
    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype)
    policy = load_model(policy_path, dtype=dtype).to(device)
    reference = load_model(reference_path, dtype=dtype).to(device)
    judge = Judge.load(args.judge, device, args.batch_size)
    engine = open_engine(args.engine)
    try:
        with sampling_autocast(args.dtype, device):
            evaluation = evaluate(
                policy, reference, judge, choose_prompts(pairs, args.prompts, args.seed), sampling,
                tokenizer.eos_token_id, tokenizer.pad_token_id, args.samples, args.seed, args.batch_size,
                decode=lambda ids, prompt=False: tokenizer.decode(ids, skip_special_tokens=not prompt), engine=engine,
            )  # fmt: skip
    finally:
        engine.close()
    evaluation.results |= {
        "label": args.label or label_of(run),
        "policy": policy_path,
        "reference": reference_path,
        "judge": args.judge,
        "source": args.data or f"{args.run} (validation pairs)",
        "held_out_pairs": len(pairs),
        "seed": args.seed,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "engine": args.engine,
        "run": (run or {}).get("name"),
        "hparams": (run or {}).get("hparams", {}),
    }
    path = evaluation.write(args.out or Path(args.run) / EVAL_DIR)
    print(format_results(evaluation.results))
    print(f"  results: {path}\n  samples: {path.parent / 'samples.jsonl'}")


def label_of(run: dict[str, Any] | None) -> str | None:
    if run is None:
        return None
    beta = run["hparams"].get("beta")
    return f"{run['name']} (β={beta:g})" if beta is not None else run["name"]


class EvaluateAtFitEnd(Callback):
    """``hhalign evaluate`` on the trained policy when ``fit`` ends: ``prompts`` of the validation pairs,
    judged by the reward model at ``judge``; written to ``<run dir>/eval`` (or ``dirpath``), logged as
    ``eval/…`` and shown in the run's summary. The judge is checked before training starts."""

    def __init__(
        self,
        judge: str,
        prompts: int = 64,
        samples: int = 1,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int = 0,
        batch_size: int = 16,
        dirpath: str | None = None,
    ) -> None:
        self.judge, self.prompts, self.samples, self.seed, self.batch_size = judge, prompts, samples, seed, batch_size
        self.sampling = Sampling(max_new_tokens, temperature, top_p)
        self.dirpath = dirpath
        self.evaluation_summary: dict[str, Any] | None = None

    def setup(self, trainer: L.Trainer, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        if pl_module.head != "causal_lm" or pl_module.examples != "pairs":
            raise UserError(
                f"EvaluateAtFitEnd judges a policy on the prompts of held-out pairs; {type(pl_module).__name__} "
                f"trains a {pl_module.head} model on {pl_module.examples}: remove the callback from this config"
            )
        if not Path(self.judge).exists():
            raise UserError(
                f"EvaluateAtFitEnd judge {self.judge!r} does not exist; train the reward model first "
                "(its run's export), or remove the callback"
            )
        check_reward_model(self.judge)

    @torch.no_grad()
    def on_fit_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        # each process holds the whole policy, or under FSDP rank 0 gathers it: one process evaluates
        policy = model_on_one_process(trainer, pl_module)
        if trainer.is_global_zero and policy is not None:
            self._evaluate(trainer, pl_module, policy)
        trainer.strategy.barrier("EvaluateAtFitEnd")

    def _evaluate(self, trainer: L.Trainer, pl_module: Any, policy: Any) -> None:
        hp = pl_module.hparams
        tokenizer = load_tokenizer(hp.model_name_or_path, hp.trust_remote_code)
        pairs = choose_prompts(trainer.datamodule.val_examples, self.prompts, self.seed)  # type: ignore[attr-defined]
        judge = Judge.load(self.judge, pl_module.device, self.batch_size)
        # the loaded reference, or the starting weights again: with LoRA the reference is the policy with its
        # adapters off, and after precompute_ref_logps it is gone
        reference = None if is_fsdp(trainer) else getattr(pl_module, "ref", None)  # a sharded one runs only inside FSDP
        if reference is None:
            path = hp.ref_model_name_or_path or hp.model_name_or_path
            reference = load_model(path, dtype=next(pl_module.parameters()).dtype).to(pl_module.device)
        with trainer.precision_plugin.forward_context():
            evaluation = evaluate(
                policy.to(pl_module.device), reference, judge, pairs, self.sampling, tokenizer.eos_token_id,
                tokenizer.pad_token_id, self.samples, self.seed, self.batch_size,
                decode=lambda ids, prompt=False: tokenizer.decode(ids, skip_special_tokens=not prompt),
            )  # fmt: skip
        evaluation.results |= {"judge": self.judge, "step": trainer.global_step, "label": None}
        self._finish(trainer, pl_module, evaluation)

    def _finish(self, trainer: L.Trainer, pl_module: Any, evaluation: Evaluation) -> None:
        out = Path(self.dirpath or Path(trainer.default_root_dir) / EVAL_DIR)
        path = evaluation.write(out)
        self.evaluation_summary = logged_scalars(evaluation.results) | {"eval/results": str(path)}
        for logger in trainer.loggers:
            logger.log_metrics(logged_scalars(evaluation.results), step=trainer.global_step)
        pl_module.print(format_results(evaluation.results) + f"\n  results: {path}")


__all__ = ["EvaluateAtFitEnd", "RESULTS_FILE", "main", "read_run"]
