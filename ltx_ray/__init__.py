"""ltx-ray: distributed audio+video IC-LoRA training for LTX-2.3 and LTX-2.5 on Ray Train and DeepSpeed."""

__version__ = "0.1.0"
