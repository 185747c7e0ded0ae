"""Every tool's command line, apart from the tool: ``hhalign COMMAND --help`` and a mistyped or missing argument
answer from here, before torch, Lightning or transformers are imported (they take seconds); each tool parses its
arguments with the same parser."""

from __future__ import annotations

from collections.abc import Callable

from hhalign.models.sampling import ENGINES, Sampling
from hhalign.options import ToolParser
from hhalign.tools.describe import CHAT_TEMPLATE_HELP, on_or_off


def _sampling(parser: ToolParser, temperature_help: str) -> None:
    """The sampling options, with the defaults that ``generate``, ``evaluate`` and the online objectives share."""
    defaults = Sampling()
    parser.add_argument("--max_new_tokens", type=int, default=defaults.max_new_tokens)
    parser.add_argument("--temperature", type=float, default=defaults.temperature, help=temperature_help)
    parser.add_argument("--top_p", type=float, default=defaults.top_p)


def _engine(parser: ToolParser) -> None:
    parser.add_argument(
        "--engine", choices=ENGINES, default="hf",
        help="what samples: hf (transformers' generate) or vllm (vLLM in this process; pip install 'hhalign[vllm]')",
    )  # fmt: skip


def score_parser() -> ToolParser:
    parser = ToolParser(prog="hhalign score", description="Rewards from a trained reward model.")
    parser.add_argument("--model", required=True, help="exported reward-model folder or RewardModule .ckpt")
    parser.add_argument("--prompt", help="a question or an hh-rlhf dialogue prefix")
    parser.add_argument("--response", action="append", default=[], help="a response to score (repeatable)")
    parser.add_argument("--pairs", help="JSONL of pairs (hh-rlhf or prompt/chosen/rejected): prints accuracy")
    parser.add_argument("--max_length", type=int, default=2048)
    parser.add_argument("--chat_template", nargs="?", const=True, type=on_or_off, help=CHAT_TEMPLATE_HELP)
    return parser


def generate_parser() -> ToolParser:
    parser = ToolParser(prog="hhalign generate", description="A reply from a trained policy.")
    parser.add_argument("--model", required=True, help="exported policy folder or SFT/DPO .ckpt")
    parser.add_argument("--prompt", required=True, help="a question or an hh-rlhf dialogue prefix")
    _sampling(parser, "1 samples the model itself; 0 is greedy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chat_template", nargs="?", const=True, type=on_or_off, help=CHAT_TEMPLATE_HELP)
    _engine(parser)
    return parser


def evaluate_parser() -> ToolParser:
    parser = ToolParser(
        prog="hhalign evaluate",
        description="A policy judged by generation on held-out prompts: given a run directory, its export against "
        "its reference on its validation pairs; or models and data by path.",
    )
    parser.add_argument(
        "run", nargs="?", help="an `hhalign fit` run directory: its export, reference and validation pairs"
    )
    parser.add_argument("--policy", help="policy folder or .ckpt (default RUN/export)")
    parser.add_argument("--reference", help="the model to compare with (default: the run's reference)")
    parser.add_argument("--judge", required=True, help="a reward model's export folder or RM .ckpt")
    parser.add_argument(
        "--data", help="pairs or prompts to sample, in any record format (default: the run's validation pairs)"
    )
    parser.add_argument("--prompts", type=int, default=64, help="held-out prompts, drawn with --seed")
    parser.add_argument("--samples", type=int, default=1, help="completions per prompt and model")
    _sampling(parser, "1 (the default) samples the model itself")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--out", help="folder for evaluation.json and samples.jsonl (default RUN/eval)")
    parser.add_argument("--label", help="this point's name in `hhalign plot --frontier` (default: the run, β)")
    parser.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, cuda:1, …")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--max_length", type=int, help="with --data: prompt + reply tokens (the run's, or 512)")
    parser.add_argument("--max_response_length", type=int, help="with --data: reply tokens (the run's)")
    chat_help = f"with --data: {CHAT_TEMPLATE_HELP}"
    parser.add_argument("--chat_template", nargs="?", const=True, type=on_or_off, help=chat_help)
    _engine(parser)
    return parser


def export_parser() -> ToolParser:
    parser = ToolParser(
        prog="hhalign export",
        description="A checkpoint as a Hugging Face folder (safetensors), with its model card and what trained it; "
        "the DPO reference is never exported.",
    )
    parser.add_argument(
        "--ckpt", required=True, help="a .ckpt written by `hhalign fit` (or an FSDP run's .ckpt folder)"
    )
    parser.add_argument("--out", required=True, help="folder to write the Hugging Face model into")
    parser.add_argument(
        "--adapters_only", action="store_true", help="a LoRA run: its adapters alone, in peft's format (else merged)"
    )
    return parser


def plot_parser() -> ToolParser:
    parser = ToolParser(
        prog="hhalign plot",
        description="A run's training curves from its metrics.csv, or (--frontier) reward against KL of evaluations.",
    )
    parser.add_argument("paths", nargs="+", metavar="RUN_DIR", help="a run directory holding metrics.csv")
    parser.add_argument("--frontier", action="store_true", help="reward against KL of evaluations (several paths)")
    parser.add_argument("--out", help="image to write (default: the run's curves.png, or frontier.png)")
    return parser


def summary_parser() -> ToolParser:
    parser = ToolParser(prog="hhalign summary", description="The final validation numbers of several runs.")
    parser.add_argument("run_dirs", nargs="+", help="run directories of finished fits")
    return parser


PARSERS: dict[str, Callable[[], ToolParser]] = {
    "score": score_parser,
    "generate": generate_parser,
    "evaluate": evaluate_parser,
    "export": export_parser,
    "plot": plot_parser,
    "summary": summary_parser,
}
"""The tools whose modules are heavy to import, by command."""
