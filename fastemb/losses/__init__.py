"""Training losses, one per module (see each module's docstring for what it computes and its source)."""
from fastemb.losses.infonce import InfoNCELoss

__all__ = ["InfoNCELoss"]
