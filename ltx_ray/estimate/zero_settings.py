"""DeepSpeed's ZeRO buffers and gradient precision, sized for the LoRA: what training runs with and the estimate lays out.

`ltx_ray.train.deepspeed_config` puts `zero_settings`' dict into the config it
hands to `deepspeed.initialize`; `estimate.zero_layout` reads the same keys
back to count the buffers. The function lives here, in the sizing stage, because
the estimate runs on the driver before any training code exists (the
package's stage order: tests/test_layout.py).

Everything is sized from the model's exact counts (`memory.model_counts`). The
LTX-2.3 22B with a rank-32 LoRA on its six attentions: 213.9 M trainable
elements; tensors up to 151 M elements (`adaln_single`; each feed-forward
weight is 67 M); 391 M per block; the smallest adapted weight is an audio
attention's 2048 x 2048 (4.2 M).
"""

from __future__ import annotations

from typing import Any

# Gradient reductions per backward pass (ZeRO-2 and -3): the reduce bucket holds 1/8 of the LoRA.
REDUCTIONS_PER_BACKWARD = 8


def zero_settings(counts: dict[str, int], *, stage: int, overlap_comm: bool) -> dict[str, Any]:
    """The `zero_optimization` section and the gradient dtypes of the DeepSpeed config, from `counts`."""
    lora = counts["trainable_parameters"]
    zero: dict[str, Any] = {
        "stage": stage,
        # Reduce the gradients on a side stream while backward goes on (GPUs; a CPU has no streams).
        "overlap_comm": overlap_comm,
        # Gradients are copied into the reduction bucket as they arrive: one flat buffer, no fragmentation.
        "contiguous_gradients": True,
        # DeepSpeed's default, 5e8 elements, exceeds the whole LoRA (214 M in the 22B): the bucket never
        # fills, so nothing is reduced before backward ends and nothing overlaps, while ZeRO-2 still
        # allocates it in full, twice with overlap_comm (2 x 5e8 x 2 B = 1.9 GiB per GPU). An eighth of
        # the LoRA (26.7 M elements in the 22B, six blocks' worth of gradients, 107 MB per reduction in
        # fp32) is large enough for NCCL to run at full bandwidth, and seven of the eight reductions
        # overlap the rest of backward; the buffers come to 107 MB.
        "reduce_bucket_size": _even(-(-lora // REDUCTIONS_PER_BACKWARD)),
        # ZeRO-2 all-gathers the updated LoRA after each step into the parameters' own flat buffer (no
        # copy is made): the whole LoRA in one collective. ZeRO-3 does not read it.
        "allgather_bucket_size": _even(lora),
    }
    if stage == 3:
        block, prefetch = counts["block_parameters"], 2 * counts["largest_parameter"]
        zero.update({
            # 0 would partition every norm, bias, scale-shift table, attention gate and LoRA A/B (5,130
            # tensors in the 22B, 2,304 of them the LoRA's, nearly all under 0.2 M elements), each
            # all-gathered on its own in forward, recomputation and backward: latency, not bandwidth.
            # Everything smaller than the smallest weight the LoRA adapts stays whole on every rank (the
            # 22B: 261 M elements, 0.5 GB in bf16); the attention and feed-forward weights are partitioned.
            "stage3_param_persistence_threshold": counts["smallest_adapted_weight"] - 1,
            # Elements all-gathered ahead of use. DeepSpeed's default (5e7) is less than one feed-forward
            # weight of the 22B (67 M): never more than one weight ahead. Two of the model's largest
            # tensors keep the next weights' gathers in flight while the current ones compute.
            "stage3_prefetch_bucket_size": prefetch,
            # A parameter used again within two blocks' worth of parameters stays gathered: a block
            # recomputed for backward (gradient checkpointing) is not gathered a third time for its
            # backward right after.
            "stage3_max_reuse_distance": 2 * block,
            # The gathered working set: the block in use plus the prefetch bucket (DeepSpeed stops
            # prefetching at this bound; the estimate counts it).
            "stage3_max_live_parameters": block + prefetch,
        })
    return {
        # bf16 gradients are all-reduced and summed over micro-steps in bf16 unless these say otherwise:
        # 8 bits of mantissa lose the small per-rank and per-micro-step contributions. Reduce in fp32 and
        # keep each rank's partition of the summed gradients in fp32 (ZeRO-2: the bf16 bucket is cast
        # for the all-reduce and the result added to an fp32 partition; ZeRO-3: the bucket is fp32).
        # DeepSpeed 0.19 accepts both with ZeRO-2 and -3 (tests/test_deepspeed_config.py); in fp32
        # training they change nothing.
        "communication_data_type": "fp32",
        "data_types": {"grad_accum_dtype": "fp32"},
        "zero_optimization": zero,
    }


def _even(n: int) -> int:
    """`n` rounded up to an even count: DeepSpeed aligns 16-bit collectives to 4 bytes."""
    return n + n % 2
