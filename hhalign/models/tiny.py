"""``hhalign make-tiny``: an offline tokenizer and random-init Llama-style model for CPU runs and tests.

The tokenizer is a byte-level BPE trained on the shipped hh-rlhf text. Its pad token *is* its EOS
token and it prepends a BOS, as many real tokenizers do, so every run here exercises the cases
where comparing ids with ``pad_token_id`` would go wrong.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from hhalign.options import ToolParser

if TYPE_CHECKING:  # imported where used, so that `hhalign make-tiny --help` answers without them
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
SIZES = {
    # ~2.1M parameters: embeddings 0.5M (tied), 6 blocks of 0.26M
    "tiny": {"hidden_size": 128, "num_hidden_layers": 6, "num_attention_heads": 4, "intermediate_size": 512},
    # ~8M parameters
    "small": {"hidden_size": 256, "num_hidden_layers": 8, "num_attention_heads": 8, "intermediate_size": 768},
}
VOCAB_SIZE = 4096
DEFAULT_DATA = "data/hh-rlhf"


def _texts(data: str) -> Iterator[str]:
    from hhalign.data.reading import read_records

    for record in read_records(data, on_bad_record="skip", counts=Counter(), pairs=False).records:
        yield record.chosen
        yield record.rejected


def build_tokenizer(data: str = DEFAULT_DATA, vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on the records under ``data``; pad = EOS, BOS prepended."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(_texts(data), trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=EOS, model_max_length=2048
    )


def build_model(tokenizer: PreTrainedTokenizerFast, size: str = "tiny", seed: int = 0) -> LlamaForCausalLM:
    """A random-init Llama with tied embeddings; the same seed gives the same weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        num_key_value_heads=None,
        **SIZES[size],
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def make_tiny(out: str, size: str = "tiny", data: str = DEFAULT_DATA, seed: int = 0) -> tuple[Path, int]:
    """Write tokenizer and model to ``out`` with ``save_pretrained`` (safetensors); return the folder and
    the parameter count."""
    folder = Path(out)
    tokenizer = build_tokenizer(data)
    model = build_model(tokenizer, size, seed)
    tokenizer.save_pretrained(folder)
    model.save_pretrained(folder)
    return folder, sum(p.numel() for p in model.parameters())


def main(argv: list[str] | None = None) -> None:
    parser = ToolParser(prog="hhalign make-tiny", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder to write the tokenizer and model into")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--data", default=DEFAULT_DATA, help="JSONL file or folder to train the tokenizer on")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    folder, n_params = make_tiny(args.out, args.size, args.data, args.seed)
    print(f"wrote {args.size} model ({n_params / 1e6:.1f}M parameters) and tokenizer to {folder}")
