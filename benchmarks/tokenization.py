"""Tokenizing a full-size dataset: ``python benchmarks/tokenization.py [--pairs 160000] [--tokenizer DIR]``.

hh-rlhf's train split holds 160,800 pairs. This writes a file of that size by repeating the shipped pairs,
then times ``PreferenceDataModule.setup`` three ways in fresh processes: no cache (what every run paid
before), the first cached run (tokenize and write the cache) and a rerun (a cache hit).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SETUP = """
import sys, time
from hhalign.data.datamodule import PreferenceDataModule
start = time.perf_counter()
data = PreferenceDataModule(sys.argv[1], sys.argv[2], max_length=512, cache_tokenized=sys.argv[3] == "1")
data.setup("fit")
print(time.perf_counter() - start, len(data.train_examples) + len(data.val_examples))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=160_000)
    parser.add_argument("--tokenizer", default=str(REPO / "artifacts" / "smollm2-135m-instruct"))
    args = parser.parse_args()
    lines = []
    for name in ("helpful-base-test.jsonl.gz", "harmless-base-test.jsonl.gz"):
        with gzip.open(REPO / "data" / "hh-rlhf" / name, "rt", encoding="utf-8") as handle:
            lines += [line for line in handle if line.strip()]
    work = Path(tempfile.mkdtemp(prefix="hhalign-tokenize-"))
    data = work / "pairs.jsonl"
    data.write_text("".join(lines[i % len(lines)] for i in range(args.pairs)))
    env = {**os.environ, "HHALIGN_CACHE": str(work / "cache"), "HF_HUB_OFFLINE": "1"}
    report = {"pairs": args.pairs, "tokenizer": args.tokenizer}
    for label, cached in (("no cache", "0"), ("first cached run", "1"), ("cached rerun", "1")):
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", SETUP, str(data), args.tokenizer, cached], env=env,
                             capture_output=True, text=True, check=True)  # fmt: skip
        setup_seconds, kept = out.stdout.split()[-2:]
        report[label] = {"setup_s": round(float(setup_seconds), 2), "process_s": round(time.perf_counter() - start, 2)}
        report["kept"] = int(kept)
        print(f"{label:18s} setup {float(setup_seconds):7.2f} s  (process {time.perf_counter() - start:6.2f} s)")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
