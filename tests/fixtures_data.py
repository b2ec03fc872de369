"""Fixtures of the dataset stage: sample clips and archives."""
