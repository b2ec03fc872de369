"""How a reference clip is scaled against its target, as one value: `ReferenceScaling`.

Clip fitting, the model's token positions, sampling and the memory estimate all take it
(`ltx_ray.model.av2av` names it for the model side); it is built from the request or from a
LoRA file's metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from ltx_ray.config.resolution import reference_frames, reference_size
from ltx_ray.config.schema import RequestConfig
from ltx_ray.errors import ModelError, Problem


@dataclass(frozen=True)
class ReferenceScaling:
    """How a reference clip is scaled against its target, and the target's frame rate: one value for the
    fitting of clips, the token positions of training and sampling, and the memory estimate.

    `downscale`: the reference is `1/downscale` of the target's width and height. `temporal`: it keeps
    frame 0, then frame 1 and every `temporal`-th frame after it. `frame_rate`: the target's frames
    per second (the reference runs at `frame_rate / temporal`).
    """

    downscale: int = 1
    temporal: int = 1
    frame_rate: float = 24.0

    @classmethod
    def from_request(cls, request: RequestConfig, *, validation: bool = False) -> "ReferenceScaling":
        """The request's factors, at its training clips' frame rate (or its validation clips' with `validation`)."""
        rate = request.validation_frame_rate if validation else request.frame_rate
        return cls(request.reference_downscale_factor, request.reference_temporal_scale_factor, float(rate))

    @classmethod
    def from_lora_metadata(cls, metadata: Mapping[str, str], *, frame_rate: float,
                           name: str = "the LoRA") -> "ReferenceScaling":
        """The factors a LoRA file's metadata records (a missing key means 1, as ltx-core's own readers
        `read_lora_reference_*` have it), for clips at `frame_rate`; `ModelError` naming `name` when one
        is not an integer in 1..8."""
        return cls(_factor(metadata, "reference_downscale_factor", name),
                   _factor(metadata, "reference_temporal_scale_factor", name), float(frame_rate))

    def size(self, width: int, height: int) -> tuple[int, int]:
        """The reference's (width, height) for a target of `width` x `height` pixels."""
        return reference_size(width, height, self.downscale)

    def frames(self, frames: int) -> int:
        """The reference's frame count for a target of `frames` frames."""
        return reference_frames(frames, self.temporal)


def _factor(metadata: Mapping[str, str], key: str, name: str) -> int:
    try:
        value = int(metadata.get(key, 1))
    except ValueError:
        raise ModelError(Problem(name, f"metadata {key}={metadata[key]!r} is not an integer")) from None
    if not 1 <= value <= 8:
        raise ModelError(Problem(name, f"metadata {key}={value} is outside 1..8")) from None
    return value
