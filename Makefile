# Set-up, tests and the main job. `make help` lists the targets.
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
NPROC ?= 1
ARGS ?=

.PHONY: help install test test-gpu compile-kernels train

help:
	@echo "make install          install torch (CPU build, only if none is installed) and bridge with its dependencies"
	@echo "make test             CPU test suite + compile check of every flash-kernel translation unit"
	@echo "make test-gpu         GPU-only tests (on a machine with CUDA)"
	@echo "make train            main job: pretrain the tiny GPT on the embedded corpus (ARGS='key=value ...')"

install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "torch==$(TORCH_VERSION)"
	$(PYTHON) -m pip install -e ".[dev]"

test:
	$(PYTHON) -m pytest -q -m "not gpu" tests
	bash scripts/compile_kernels.sh

test-gpu:
	$(PYTHON) -m pytest -q -m gpu tests

compile-kernels:
	bash scripts/compile_kernels.sh

# Installs only when bridge or one of its dependencies is missing (not on every run). The launcher mode of
# scripts/train.py starts NPROC processes as torchrun does and keeps a failure to its one error line.
train:
	@$(PYTHON) -c "import bridge, megatron.core, hydra, omegaconf" 2>/dev/null || $(MAKE) --no-print-directory install
	$(PYTHON) scripts/train.py --nproc-per-node=$(NPROC) --config-name gpt_pretrain $(ARGS)
