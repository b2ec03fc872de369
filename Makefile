# The two commands: `make demo` and `make test`. Both set up .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ltx-ray-installed
DEMO_BUNDLE := .cache/tiny-bundle/ltx-2.3-tiny.safetensors
DEMO_DATA := .cache/demo/av2av_pairs.zip

.PHONY: demo test setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest tests

# The whole job on embedded defaults: sample archive -> Ray Data preprocessing ->
# 2-worker CPU training with DeepSpeed ZeRO-2 on the tiny model -> validation reel -> outputs.
demo: $(STAMP) $(DEMO_BUNDLE) $(DEMO_DATA)
	$(VENV)/bin/ltx-ray train conf/demo.yaml
	@echo
	@echo "Outputs are in runs/demo/outputs/: the LoRA (ic_lora_av2av.safetensors), config.json,"
	@echo "the validation reel (validation_reel.mp4: reference | generated, with the generated audio)"
	@echo "and the offline W&B run (wandb/). Open the reel with any video player, e.g. 'ffplay runs/demo/outputs/validation_reel.mp4'."

$(DEMO_BUNDLE): | $(STAMP)
	$(PY) scripts/make_tiny_bundle.py --out .cache/tiny-bundle

$(DEMO_DATA): | $(STAMP)
	$(PY) scripts/make_sample_dataset.py --out .cache/demo

clean:
	rm -rf runs .cache .pytest_cache
