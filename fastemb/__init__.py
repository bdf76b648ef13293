"""fastemb: tune text-embedding models on a Ray cluster and ship them."""

__version__ = "0.1.0"
