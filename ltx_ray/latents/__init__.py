"""Clips to latents (Ray Data): the decode/fit and encode stages, and the latent cache they fill.

    blobs.py      the safetensors-format blob codec tensors travel and are cached in
    cache.py      the latent cache: key, completion marker, verified lookup
    stages.py     the Ray Data decode/fit and encode stages
    report.py     the preprocessing report
    pipeline.py   `preprocess`: plan on the driver, run the stages, publish the cache
    reader.py     a training worker's random access to the cache's samples, by number
"""
