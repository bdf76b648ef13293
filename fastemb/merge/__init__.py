"""Weight-space merging (``fastemb merge``, and ``export.merge`` of a training job): ``weights.py`` (the
interpolation and what models it accepts), ``select.py`` (the weight chosen on the dev sets), ``job.py`` (the
driver)."""
