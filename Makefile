# The two commands a newcomer runs: `make demo` and `make test`.
# Both create .venv on first use: torch==2.13.0 first (the CPU build on disk here), then cxrfm with its extras.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.cxrfm-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[eval,serve,test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/cxrfm demo --out runs/demo

# the demo on autoencoder latents (docs/latents.md): a small autoencoder, pretraining on its latents, reconstructions
.PHONY: demo-latents
demo-latents: $(STAMP)
	$(BIN)/cxrfm demo --latents --out runs/demo-latents

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) runs .cxrfm-cache
