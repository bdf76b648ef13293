"""fastemb: tune text-embedding models on a Ray cluster and ship them."""
from fastemb.imports import install as _install_import_rules
from fastemb.logs import install as _install_logging

__version__ = "0.1.0"

_install_logging()  # the ``fastemb`` logger's one handler, in every process that imports fastemb (fastemb/logs.py)
_install_import_rules()  # ``import deepspeed`` without MLflow (fastemb/imports.py)
