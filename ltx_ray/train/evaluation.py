"""Held-out evaluation during training: is the LoRA learning, and does it use its reference?

At step 0, every `train.eval_every` steps and after the last, every rank takes part in one
evaluation (`Evaluator.run`) of two splits of pairs (`ltx_ray.latents.holdout`): the held-out pairs
and a fixed sample of as many training pairs. Each pair is scored by the av2av loss per modality at
a fixed ladder of σ (`SIGMAS`) with fixed noise per (pair, σ) (seeded by the run's seed and the pair),
without gradients, twice: with its own reference, and with another pair's (video and audio; a fixed
derangement: pair k of the two splits listed one after the other gets pair k+1's, the last the
first's). So every point of a run is comparable with every other:

- `eval/<split>/loss_<modality>`: the mean own-reference loss, and `..._sigma_<σ>` per σ; the gap
  between `train` and `holdout` is overfitting;
- `eval/<split>/reference_gain_<modality>`: swapped-reference loss / own-reference loss (also per σ).
  Above 1 the LoRA conditions on the reference; at 1 it ignores it.

A unit (a pair with one of its references) is one no-grad forward of its σ ladder as a batch of
`len(SIGMAS)` samples: on a GPU its activations come and go block by block, below a training
micro-step's, which keeps every block's input for backward (`ltx-ray estimate` counts the latter).
Its cost in FLOPs is that of 2 x 2 x `holdout_pairs` x `len(SIGMAS)` sample forwards per evaluation,
against about 4 (forward, recomputation, backward) x `global_batch_size` per training step.

The work is spread over the ranks (pair and reference by pair and reference, round robin; under
ZeRO-3, where a forward is a collective, every rank runs as many), each rank's losses go into its
rows of one table, and one all-reduce on the training device (NCCL has no CPU tensors) gives every
rank all of them: the same figures whatever the world size.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ltx_ray.config.schema import JobConfig
from ltx_ray.latents.cache import LATENT_TENSORS
from ltx_ray.model.av2av import ReferenceScaling
from ltx_ray.model.objective import av2av_sample_losses

SIGMAS = (0.1, 0.3, 0.5, 0.7, 0.9)
SPLITS = ("holdout", "train")
MODALITIES = ("video", "audio")
# A held-out reference gain below this: the modality barely depends on its reference.
NEAR_ONE = 1.1
REFERENCE_ADVICE = ("the spec's advice: make the pairs well aligned and differing only by the intended "
                    "transformation, check that the reference scaling matches at inference; more steps or a "
                    "higher rank help a transformation that stays too weak")


def improves(loss: float, best: Mapping[str, Any] | None) -> bool:
    """Whether a held-out loss is the run's lowest yet (`best`: the lowest so far, or None); a loss that is not
    finite (a diverged run) never is."""
    return math.isfinite(loss) and (best is None or loss < best["loss"])


def should_evaluate(job: JobConfig, done: int) -> bool:
    """An evaluation after `done` steps (0: before the first): every `train.eval_every` and after the last."""
    every = job.train.evaluation_interval(job.preview.every)
    return done % every == 0 or done == job.request.number_of_steps


@dataclass(frozen=True)
class Unit:
    """One forward of the evaluation: a pair of a split, with its own reference or the deranged one."""

    split: str
    position: int  # in the split
    swapped: bool


@dataclass(frozen=True)
class Evaluation:
    """The figures of one evaluation: `losses[(split, swapped)]` is `[pairs, len(SIGMAS), 2]` (video, audio)."""

    step: int
    losses: dict[tuple[str, bool], torch.Tensor]
    seconds: float

    def loss(self, split: str, modality: str, *, swapped: bool = False) -> float:
        return float(self._mean(split, swapped)[MODALITIES.index(modality)])

    def reference_gain(self, split: str, modality: str) -> float:
        return self.loss(split, modality, swapped=True) / max(self.loss(split, modality), 1e-12)

    @property
    def holdout_loss(self) -> float:
        """The held-out loss, video + audio: what the best checkpoint is chosen by."""
        return sum(self.loss("holdout", m) for m in MODALITIES)

    def metrics(self) -> dict[str, float]:
        """The W&B keys of this evaluation."""
        out: dict[str, float] = {"eval/seconds": self.seconds}
        for split in SPLITS:
            if self.losses[(split, False)].shape[0] == 0:
                continue
            own, swapped = self.losses[(split, False)].mean(0), self.losses[(split, True)].mean(0)  # [σ, 2]
            for j, m in enumerate(MODALITIES):
                out[f"eval/{split}/loss_{m}"] = self.loss(split, m)
                out[f"eval/{split}/reference_gain_{m}"] = self.reference_gain(split, m)
                for i, sigma in enumerate(SIGMAS):
                    out[f"eval/{split}/loss_{m}_sigma_{sigma}"] = float(own[i, j])
                    out[f"eval/{split}/reference_gain_{m}_sigma_{sigma}"] = float(swapped[i, j] / own[i, j].clamp(min=1e-12))
        return out

    def line(self) -> str:
        """The evaluation in one console line."""
        def pair(split: str, what) -> str:
            return " ".join(f"{m} {what(split, m):.4g}" for m in MODALITIES)

        text = f"eval at step {self.step}: held-out loss {pair('holdout', self.loss)}"
        if self.losses[("train", False)].shape[0]:
            text += f" (training pairs {pair('train', self.loss)})"
        return text + f"; reference gain {pair('holdout', self.reference_gain)} [{self.seconds:.1f} s]"

    def summary(self) -> dict[str, Any]:
        """What the final checkpoint records of the last evaluation (the result's summary reads it back)."""
        return {"step": self.step, **{k: v for k, v in self.metrics().items()
                                      if "_sigma_" not in k and k != "eval/seconds"}}

    def _mean(self, split: str, swapped: bool) -> torch.Tensor:
        return self.losses[(split, swapped)].mean(dim=(0, 1))


def reference_warnings(summary: Mapping[str, Any]) -> list[str]:
    """One sentence per modality whose held-out reference gain stays near 1 in `summary` (`Evaluation.summary`)."""
    out = []
    for m in MODALITIES:
        gain = summary.get(f"eval/holdout/reference_gain_{m}")
        if gain is not None and gain < NEAR_ONE:
            out.append(f"{m} barely depends on its reference: at step {summary['step']} its held-out loss with "
                       f"another pair's reference is {gain:.2f}x its loss with its own (above 1: the reference "
                       f"helps; 1: it is ignored); {REFERENCE_ADVICE}")
    return out


class Evaluator:
    """One rank's part in the run's evaluations over fixed sets of samples (`sets`: split -> samples)."""

    def __init__(self, job: JobConfig, sets: Mapping[str, Sequence[dict[str, Any]]], *, rank: int, world: int,
                 device: torch.device, dtype: torch.dtype):
        self.job, self.rank, self.world, self.device, self.dtype = job, rank, world, device, dtype
        self.sets = {split: sets.get(split, ()) for split in SPLITS}
        self.scaling = ReferenceScaling.from_request(job.request)
        # Every pair of both splits, in order: pair k is evaluated with pair k+1's reference (the last, the first's).
        self.listed = [(split, i) for split in SPLITS for i in range(len(self.sets[split]))]
        if len(self.listed) < 2:
            raise ValueError("an evaluation needs at least two pairs (a held-out one and a training one)")
        self.units = [Unit(split, i, swapped) for split, i in self.listed for swapped in (False, True)]
        self.row = {unit: k for k, unit in enumerate(self.units)}
        self.sigma = torch.tensor(SIGMAS, dtype=torch.float32, device=device)  # copied to the device once
        self.lockstep = job.cluster.zero_stage == 3  # a forward gathers the parameters: every rank runs as many

    def mine(self) -> list[Unit | None]:
        """This rank's units, round robin; under ZeRO-3 padded (None: run one, keep nothing) to the most any rank has."""
        units: list[Unit | None] = list(self.units[self.rank::self.world])
        if self.lockstep:
            units += [None] * (math.ceil(len(self.units) / self.world) - len(units))
        return units

    def run(self, module: torch.nn.Module, step: int) -> Evaluation:
        """Evaluate `module` (the transformer with its LoRA; every rank calls this: it ends in an all-reduce)."""
        started = time.perf_counter()
        table = torch.zeros(len(self.units), len(SIGMAS), len(MODALITIES), dtype=torch.float32, device=self.device)
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                for unit in self.mine():
                    losses = self._losses(module, unit or self.units[0])
                    if unit is not None:
                        table[self.row[unit]] = losses
        finally:
            module.train(was_training)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(table)  # every entry is one rank's, the others' zeros: the sum is that value, exactly
        table = table.cpu()  # the evaluation's one device-to-host transfer
        losses = {}
        for split in SPLITS:
            for swapped in (False, True):
                rows = [k for k, u in enumerate(self.units) if u.split == split and u.swapped == swapped]
                losses[(split, swapped)] = table[rows]
        return Evaluation(step=step, losses=losses, seconds=time.perf_counter() - started)

    def reference_of(self, split: str, position: int) -> dict[str, Any]:
        """The sample whose reference pair (`split`, `position`) gets when swapped."""
        k = self.row[Unit(split, position, False)] // 2  # units are listed pair by pair, own then swapped
        other_split, other = self.listed[(k + 1) % len(self.listed)]
        return self.sets[other_split][other]

    def batch(self, unit: Unit) -> dict[str, torch.Tensor]:
        """A unit's batch: its pair once per σ of the ladder, with its own reference or the deranged one."""
        sample = self.sets[unit.split][unit.position]
        reference = self.reference_of(unit.split, unit.position) if unit.swapped else sample
        batch = {}
        for col in LATENT_TENSORS:
            source = reference if col in ("ref_video", "ref_audio") else sample
            one = source[col] if col == "context_mask" else source[col].to(device=self.device, dtype=self.dtype)
            batch[col] = one.unsqueeze(0).expand(len(SIGMAS), *one.shape).contiguous()  # copied once, then repeated
        return batch

    def _losses(self, module: torch.nn.Module, unit: Unit) -> torch.Tensor:
        sample = self.sets[unit.split][unit.position]
        generators = [torch.Generator(device=self.device).manual_seed(_noise_seed(self.job.seed, int(sample["index"]), i))
                      for i in range(len(SIGMAS))]
        video, audio = av2av_sample_losses(module, self.batch(unit), generators, self.sigma, self.scaling)
        return torch.stack([video, audio], dim=-1)


def _noise_seed(seed: int, pair: int, sigma_index: int) -> int:
    """The noise of pair `pair` (its index in the archive's manifest) at σ number `sigma_index`, the same at
    every evaluation of the run and with either reference."""
    digest = hashlib.blake2b(f"ltx-ray-eval:{seed}:{pair}:{sigma_index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)
