"""The dataset stages: `training_data_url` -> validated, fitted training pairs -> latents in the cache.

Archive to clips (on the driver, and in each decode task):

    fetch.py      bring a URL onto local disk (path, file://, http(s), s3, gs)
    archive.py    safe zip extraction (zip-slip, symlinks, bombs, duplicates, over-long names)
    pairs.py      <name>_start / <name>_end / <name>.txt pairing and captions
    media/        probe clips; decode and fit video and audio; write clips (pure functions)
    ingest.py     the manifest, `probe_pair`, `fit_pair`, `fit_reference`, `ingest`, the debug archive
    synthetic.py  sample clips for tests, benchmarks and the demo
    learning_pairs.py  pairs with a known, learnable transformation (the learning benchmark)

Clips to latents (Ray Data):

    blobs.py      the safetensors-format blob codec tensors travel and are cached in
    cache.py      the latent cache: key, completion marker, verified lookup
    stages.py     the Ray Data decode/fit and encode stages
    report.py     the preprocessing report
    pipeline.py   `preprocess`: plan on the driver, run the stages, publish the cache
"""
