"""The model stage: everything that touches the network, on top of Lightricks' `ltx-core`.

- `files`     the model's files (LTX-2.3's single file, LTX-2.5's four) and their generation, checked as a set.
- `transformer` the transformer as the current ltx-core (1.2.0) computes it, on ltx-core 1.0.0.
- `gemma4`    LTX-2.5's packed Gemma-4 text encoder.
- `loader`    builds the transformer, VAEs, vocoder and text encoder from those files.
- `tiny`      writes tiny random bundles in the real formats (2.3: one file + Gemma-3; 2.5: four files).
- `encode`    batch encoders/decoders: frames, waveforms and captions to latents and back.
- `tokens`    patchify and RoPE positions of target and reference tokens; the sigma sampler.
- `av2av`     what training, sampling and estimation share: the reference scaling, the sequence
              positions, the latent geometry, the LoRA model and the job's dtype.
- `objective` the av2av IC-LoRA training step (a pure function of model, batch, generator).
- `lora`      PEFT LoRA on the transformer and the LoRA file ltx-core can fuse (`export_lora`, `LoraMetadata`).

Nothing here reaches into DeepSpeed: ZeRO-3's partitioned build and its gathers are in
`ltx_ray.train.zero3`, on top of `loader.transformer_blueprint` / `transformer_tensors`.
"""
