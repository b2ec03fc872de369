"""The dataset stage: `training_data_url` -> validated, fitted training pairs.

    fetch.py      bring a URL onto local disk (path, file://, http(s), s3, gs)
    archive.py    safe zip extraction (zip-slip, symlinks, bombs, duplicates)
    pairs.py      <name>_start / <name>_end / <name>.txt pairing and captions
    media.py      probe clips; decode and fit video and audio (pure functions)
    ingest.py     the manifest, `fit_pair`, `fit_reference`, `ingest`, the debug archive
    synthetic.py  sample clips for tests, benchmarks and the demo
    pipeline.py   the Ray Data pipeline that runs `fit_pair` and the encoders at scale
"""
