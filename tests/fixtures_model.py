"""Fixtures of the model stage: the tiny LTX-2.3 bundle."""
