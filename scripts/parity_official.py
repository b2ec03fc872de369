#!/usr/bin/env python
"""Our transformer forward against Lightricks' official ltx-core source, pass by pass and modality by modality.

For a developer with the official repository checked out (`git clone https://github.com/Lightricks/LTX-2`);
neither the suite nor CI needs it. The tiny bundle's transformer (`ltx_ray.model.tiny`, LTX-2.3 or
LTX-2.5 format) runs the sampler's own guidance passes (`ltx_ray.sample.sampler`: positive, negative,
STG on its block, the modality-isolated pass with A2V/V2A skipped, as one batch, as the sampler runs
them) on av2av inputs: clean reference tokens at timestep 0, target tokens at σ. Each call's inputs
are replayed through the official `LTXModel`, built by the official builder from the same file, in a
child process with the official `ltx-core` first on its path. Printed per pass and modality: the
relative difference ||ours − official|| / ||official|| of the velocity, for our loader
(`ltx_ray.model.transformer`) and for ltx-core 1.0.0 as installed (before our override).

    python scripts/parity_official.py --official-src ~/src/LTX-2 [--version 2.3|2.5] [--sigma 0.6]

Exit status 1 when a pass of ours differs by more than --tolerance (default 1e-4, fp32).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

PASSES = ("positive", "negative", "stg", "modality")


def main() -> int:
    """Parse the arguments and run the comparison (or, with `--worker`, the official side)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official-src", type=Path, help="a checkout of github.com/Lightricks/LTX-2 (release 1.2.0)")
    parser.add_argument("--version", choices=("2.3", "2.5"), default="2.3", help="the tiny bundle's format")
    parser.add_argument("--sigma", type=float, default=0.6, help="the target tokens' noise level")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", nargs=2, metavar=("INPUTS", "OUTPUTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return _official(Path(args.worker[0]), Path(args.worker[1]))
    if args.official_src is None:
        parser.error("--official-src DIR is required")
    source = args.official_src.expanduser().resolve() / "packages" / "ltx-core" / "src"
    if not (source / "ltx_core").is_dir():
        parser.error(f"{args.official_src}: no packages/ltx-core/src/ltx_core (not a Lightricks/LTX-2 checkout)")
    return _compare(source, args)


# --- our side ------------------------------------------------------------------------------------


class _Recorder(torch.nn.Module):
    """Runs a transformer and keeps each call's inputs and outputs, for replaying them elsewhere."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, []

    def forward(self, video, audio, perturbations):
        """The model's velocities; the inputs and outputs are recorded."""
        out = self.model(video=video, audio=audio, perturbations=perturbations)
        self.calls.append({"video": _fields(video), "audio": _fields(audio),
                           "perturbations": [_perturbation_spec(p) for p in perturbations.perturbations],
                           "velocity": tuple(v.detach().clone() for v in out)})
        return out


def _fields(modality) -> dict:
    names = ("latent", "sigma", "timesteps", "positions", "context", "context_mask", "keyframes_mask")
    return {n: getattr(modality, n, None) for n in names}


def _perturbation_spec(config) -> list[tuple[str, list[int] | None]]:
    return [(p.type.name, p.blocks) for p in (config.perturbations or [])]


def _compare(source: Path, args) -> int:
    from ltx_core.components.guiders import MultiModalGuiderParams
    from ltx_core.loader import SingleGPUModelBuilder
    from ltx_core.model.transformer.model_configurator import LTXV_MODEL_COMFY_RENAMING_MAP, LTXModelConfigurator

    from ltx_ray.model.loader import load_transformer
    from ltx_ray.model.tiny import write_tiny_bundle
    from ltx_ray.sample.sampler import Clip, Conditioning, Guidance, TargetShape, _Denoising, SamplerSettings
    from ltx_ray.config.scaling import ReferenceScaling

    torch.manual_seed(args.seed)
    work = Path(tempfile.mkdtemp(prefix="ltx-parity-"))
    if args.version == "2.3":
        checkpoint, _ = write_tiny_bundle(work / "bundle", seed=args.seed)
    else:
        from ltx_ray.model.tiny import write_tiny_bundle_25

        checkpoint = write_tiny_bundle_25(work / "bundle", seed=args.seed).transformer
    ours = load_transformer(checkpoint, dtype=torch.float32)
    depth = len(ours.transformer_blocks)
    params = MultiModalGuiderParams(cfg_scale=3.0, stg_scale=1.0, stg_blocks=[depth - 1], rescale_scale=0.7,
                                    modality_scale=3.0)
    settings = SamplerSettings(ReferenceScaling(), 1, Guidance(video=params, audio=params))
    cond, shape = _random_clip(ours, TargetShape, Conditioning)
    rows = {}
    models = {"ours": ours}
    if args.version == "2.3":  # 1.0.0 cannot build a 2.5 transformer at all
        builder = SingleGPUModelBuilder(model_class_configurator=LTXModelConfigurator, model_path=str(checkpoint),
                                        model_sd_ops=LTXV_MODEL_COMFY_RENAMING_MAP)
        models["ltx-core 1.0.0"] = builder.build(device=torch.device("cpu"), dtype=torch.float32).eval()
    calls = {}
    for name, model in models.items():
        recorder = _Recorder(model)
        clip = Clip(cond=cond, shape=shape, seed=args.seed)
        state = _Denoising(recorder, clip.cond, clip.shape, torch.Generator().manual_seed(args.seed), settings)
        with torch.no_grad():
            state.denoised(recorder, settings.guidance.passes, torch.tensor(args.sigma))
        calls[name] = recorder.calls
    inputs, outputs = work / "inputs.pt", work / "official.pt"
    torch.save({"checkpoint": str(checkpoint), "calls": calls["ours"], "keyframes": args.version == "2.5"}, inputs)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(source), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, __file__, "--worker", str(inputs), str(outputs)], check=True, env=env)
    official = torch.load(outputs)
    worst = 0.0
    print(f"LTX-{args.version} tiny bundle, fp32, reference tokens at t=0, target at sigma={args.sigma}")
    print(f"relative difference of the velocity against the official ltx-core in {source.parents[2]}")
    header = f"{'pass':<10} {'modality':<7}" + "".join(f" {name:>16}" for name in models)
    print(header)
    for i, name in enumerate(settings.guidance.passes):
        for m, modality in enumerate(("video", "audio")):
            ref = official[0][m][i]
            cells = []
            for model_name in models:
                got = calls[model_name][0]["velocity"][m][i]
                diff = ((got - ref).norm() / ref.norm()).item()
                rows[(name, modality, model_name)] = diff
                cells.append(f" {diff:>16.2e}")
            worst = max(worst, rows[(name, modality, "ours")])
            print(f"{name:<10} {modality:<7}" + "".join(cells))
    ok = worst < args.tolerance
    print(f"ours: largest {worst:.2e} {'<' if ok else '>='} {args.tolerance:.0e}: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


def _random_clip(model, TargetShape, Conditioning):
    """A reference clip's latents and two prompts' contexts, random, at the transformer's sizes."""
    v_channels = model.patchify_proj.in_features
    a_in = model.audio_patchify_proj.in_features
    mel_bins = 16
    a_channels = a_in // mel_bins
    dim_v = model.transformer_blocks[0].attn2.to_k.in_features
    dim_a = model.transformer_blocks[0].audio_attn2.to_k.in_features
    tokens = 16

    def mask(padding: int) -> torch.Tensor:  # left padding, as the tokenizer pads
        m = torch.ones(1, tokens, dtype=torch.long)
        m[:, :padding] = 0
        return m

    cond = Conditioning(
        ref_video=torch.randn(1, v_channels, 2, 2, 3), ref_audio=torch.randn(1, a_channels, 9, mel_bins),
        video_context=torch.randn(1, tokens, dim_v), audio_context=torch.randn(1, tokens, dim_a),
        context_mask=mask(0),
        negative_video_context=torch.randn(1, tokens, dim_v), negative_audio_context=torch.randn(1, tokens, dim_a),
        negative_context_mask=mask(5),
    )
    shape = TargetShape(video_channels=v_channels, frames=2, height=2, width=3, audio_channels=a_channels,
                        audio_frames=9, mel_bins=mel_bins)
    return cond, shape


# --- the official side (a child process: the official ltx_core is first on sys.path) --------------


def _official(inputs: Path, outputs: Path) -> int:
    import ltx_core
    from ltx_core.guidance.perturbations import (
        BatchedPerturbationConfig,
        Perturbation,
        PerturbationConfig,
        PerturbationType,
    )
    from ltx_core.loader import SingleGPUModelBuilder
    from ltx_core.model.transformer.modality import Modality
    from ltx_core.model.transformer.model_configurator import LTXV_MODEL_COMFY_RENAMING_MAP, LTXModelConfigurator

    print(f"official ltx_core: {Path(ltx_core.__file__).parent}", file=sys.stderr)
    saved = torch.load(inputs)
    builder = SingleGPUModelBuilder(model_class_configurator=LTXModelConfigurator, model_path=saved["checkpoint"],
                                    model_sd_ops=LTXV_MODEL_COMFY_RENAMING_MAP)
    model = builder.build(device=torch.device("cpu"), dtype=torch.float32).eval()
    results = []
    for call in saved["calls"]:
        modalities = []
        for name in ("video", "audio"):
            f = dict(call[name])
            if not saved["keyframes"]:
                f.pop("keyframes_mask")
            modalities.append(Modality(enabled=True, **f))
        batch = BatchedPerturbationConfig(
            [PerturbationConfig([Perturbation(PerturbationType[t], blocks) for t, blocks in spec] or None)
             for spec in call["perturbations"]],
            num_blocks=model.num_blocks, device="cpu", dtype=torch.float32,
        )
        with torch.no_grad():
            results.append(tuple(v.clone() for v in model(video=modalities[0], audio=modalities[1],
                                                            perturbations=batch)))
    torch.save(results, outputs)
    return 0


if __name__ == "__main__":
    if "--worker" not in sys.argv:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
