"""Archive to clips, on the driver and in each decode task: a `training_data_url` becomes validated, fitted pairs.

    archive.py    safe zip extraction (zip-slip, symlinks, bombs, duplicates, over-long names)
    pairs.py      <name>_start / <name>_end / <name>.txt pairing and captions
    media/        probe clips; decode and fit video and audio; write clips (pure functions, PyAV)
    ingest.py     the manifest, `probe_pair`, `fit_pair`, `fit_reference`, the debug archive

Bringing a URL onto local disk is `ltx_ray.fetch`, beside storage; the clips become latents in `ltx_ray.latents`.
"""
