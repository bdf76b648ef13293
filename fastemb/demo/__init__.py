"""``fastemb demo``: the whole pipeline, one command, on an embedded local Ray."""
