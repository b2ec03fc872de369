"""GPU memory of a run, estimated on CPU from the real architecture (`ltx-ray estimate`)."""
