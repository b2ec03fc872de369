# The two commands: `make demo` and `make test`. Both set up .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ltx-ray-installed
DEMO_BUNDLE := .cache/tiny-bundle/ltx-2.3-tiny.safetensors
DEMO_DATA := .cache/demo/av2av_pairs.zip
DEMO25 := .cache/tiny-bundle-25
DEMO25_MODEL := model.checkpoint=$(DEMO25)/ltx-2.5-tiny-transformer.safetensors \
	model.video_vae=$(DEMO25)/ltx-2.5-tiny-video-vae.safetensors model.audio_vae=$(DEMO25)/ltx-2.5-tiny-audio-vae.safetensors \
	model.text_encoder=$(DEMO25)/gemma4-tiny-with-proj-ltx-2.5.safetensors

.PHONY: demo demo-ltx25 test setup clean

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

# The same on the tiny LTX-2.5 bundle (split files, a packed Gemma-4), then `ltx-ray generate` with its LoRA.
demo-ltx25: $(STAMP) $(DEMO25)/ltx-2.5-tiny-transformer.safetensors $(DEMO_DATA)
	$(VENV)/bin/ltx-ray train conf/demo.yaml storage.run_name=demo-ltx25 $(DEMO25_MODEL)
	$(VENV)/bin/ltx-ray generate conf/demo.yaml $(DEMO25_MODEL) --lora runs/demo-ltx25/outputs/ic_lora_av2av.safetensors \
		--reference-video .cache/demo/validation_ref.mp4 --prompt "av_st9le a bright square" --out runs/demo-ltx25/generated.mp4
	@echo "Outputs are in runs/demo-ltx25/outputs/; the generated clip is runs/demo-ltx25/generated.mp4."

$(DEMO25)/ltx-2.5-tiny-transformer.safetensors: | $(STAMP)
	$(PY) scripts/make_tiny_bundle.py --version 2.5 --out $(DEMO25)

$(DEMO_BUNDLE): | $(STAMP)
	$(PY) scripts/make_tiny_bundle.py --out .cache/tiny-bundle

$(DEMO_DATA): | $(STAMP)
	$(PY) scripts/make_sample_dataset.py --out .cache/demo

clean:
	rm -rf runs .cache .pytest_cache
