"""The published LTX-2.3 configuration (and LTX-2.5's differences), as far as this package needs it without the real files.

`TRANSFORMER_FLAGS` are the architecture flags of the `transformer` section
of `ltx-2.3-22b-dev.safetensors`'s `config` header (ltx-core's configurator
checks several of them); the tiny bundle uses them with tiny sizes.
`LTX23_22B_CONFIG` stands in for the whole header where the real file cannot
be read (`ltx-ray estimate`).
"""

from __future__ import annotations

from typing import Any

# Built-in stand-in for `ltx-2.3-22b-dev.safetensors`'s `config` (no weights can be downloaded here).
# transformer: the architecture flags are those of the published LTX-2.3 header (the tiny bundle copies
#   them: ltx_ray.model.tiny), the sizes are the 22B's, which are also ltx-core's LTXModelConfigurator
#   defaults: 48 blocks, video 32 heads x 128 (4096 wide, 128 latent channels, text context 4096), audio
#   32 heads x 64 (2048 wide, 128 = 8 channels x 16 mel bins, context 2048). Built, it has 18.99 B
#   parameters; the text projection and connectors (Gemma side) and the VAEs make up the rest of "22B".
# vae: the LTX-2 video VAE's block list (res_x stacks of 4, 6, 4, 2, 2 between the 2x stages, the last
#   all-axes stage keeping its width), 128 latent channels, base width 128.
# audio_vae: 8 latent channels x 16 mel bins (64 / 4), width 128 with multipliers 1, 2, 4.
# Point `model.checkpoint` at the real file (local or remote) to estimate from its own header instead.
TRANSFORMER_FLAGS = {
    "_class_name": "AVTransformer3DModel", "activation_fn": "gelu-approximate", "attention_bias": True,
    "attention_type": "default", "double_self_attention": False, "dropout": 0.0,
    "norm_elementwise_affine": False, "norm_eps": 1e-06, "num_embeds_ada_norm": 1000, "num_vector_embeds": None,
    "only_cross_attention": False, "cross_attention_norm": True, "upcast_attention": False,
    "use_linear_projection": False, "qk_norm": "rms_norm", "standardization_norm": "rms_norm",
    "positional_embedding_type": "rope", "positional_embedding_theta": 10000.0,
    "positional_embedding_max_pos": [20, 2048, 2048], "timestep_scale_multiplier": 1000,
    "av_ca_timestep_scale_multiplier": 1000.0, "use_audio_video_cross_attention": True, "share_ff": False,
    "audio_positional_embedding_max_pos": [20], "av_cross_ada_norm": True, "use_embeddings_connector": True,
    "use_middle_indices_grid": True, "apply_gated_attention": True, "connector_apply_gated_attention": True,
    "caption_projection_first_linear": False, "caption_projection_second_linear": False,
    "caption_proj_input_norm": False, "caption_proj_before_connector": True, "cross_attention_adaln": True,
    "text_encoder_norm_type": "per_token_rms", "rope_type": "split", "frequencies_precision": "float64",
    "connector_positional_embedding_max_pos": [4096], "connector_num_learnable_registers": 128,
}
LTX23_22B_CONFIG: dict[str, Any] = {
    "transformer": {
        **TRANSFORMER_FLAGS,
        "num_layers": 48, "num_attention_heads": 32, "attention_head_dim": 128, "cross_attention_dim": 4096,
        "in_channels": 128, "out_channels": 128, "audio_num_attention_heads": 32, "audio_attention_head_dim": 64,
        "audio_cross_attention_dim": 2048, "audio_in_channels": 128, "audio_out_channels": 128,
    },
    "vae": {
        "_class_name": "CausalVideoAutoencoder", "dims": 3, "in_channels": 3, "out_channels": 3,
        "latent_channels": 128, "patch_size": 4, "norm_layer": "pixel_norm", "latent_log_var": "uniform",
        "spatial_padding_mode": "zeros", "encoder_base_channels": 128, "decoder_base_channels": 128,
        "encoder_blocks": [
            ["res_x", {"num_layers": 4}], ["compress_space_res", {"multiplier": 2}],
            ["res_x", {"num_layers": 6}], ["compress_time_res", {"multiplier": 2}],
            ["res_x", {"num_layers": 4}], ["compress_all_res", {"multiplier": 2}],
            ["res_x", {"num_layers": 2}], ["compress_all_res", {"multiplier": 1}],
            ["res_x", {"num_layers": 2}],
        ],
    },
    "audio_vae": {"model": {"params": {"ddconfig": {
        "double_z": True, "mel_bins": 64, "z_channels": 8, "resolution": 256, "downsample_time": False,
        "in_channels": 2, "out_ch": 2, "ch": 128, "ch_mult": [1, 2, 4], "num_res_blocks": 2,
        "attn_resolutions": [], "dropout": 0.0, "mid_block_add_attention": False, "norm_type": "pixel",
        "causality_axis": "height",
    }, "sampling_rate": 16000}}},
}


# LTX-2.5's transformer: the 22B's sizes with the flags ltx-core 1.2.0 reads for it (model_configurator.py:
# "LTX 2.5 (gemma4) sets ff_bias=false"; the keyframe marker the 2.5 pipelines' keyframe features need).
# The published file's own header is the authority; this stands in where it cannot be read (sizing).
LTX25_TRANSFORMER_FLAGS = {"ff_bias": False, "use_keyframes_abs_pos_embedding": True}
LTX25_22B_TRANSFORMER: dict[str, Any] = {**LTX23_22B_CONFIG["transformer"], **LTX25_TRANSFORMER_FLAGS}
