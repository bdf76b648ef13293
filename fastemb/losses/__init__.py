"""Training losses, one per module (see each module's docstring for what it computes and its source)."""
from fastemb.losses.attention_distill import AttentionDistillLoss
from fastemb.losses.clip import SymmetricInfoNCELoss
from fastemb.losses.distill_kl import DistillKLLoss
from fastemb.losses.embedding_mse import EmbeddingMSELoss
from fastemb.losses.hidden_state import HiddenStateDistillLoss
from fastemb.losses.hierarchical import HierarchicalInfoNCELoss
from fastemb.losses.infonce import InfoNCELoss
from fastemb.losses.margin_mse import MarginMSELoss
from fastemb.losses.multi_view import MultiViewInfoNCELoss
from fastemb.losses.matryoshka import MatryoshkaLoss

__all__ = ["AttentionDistillLoss", "DistillKLLoss", "EmbeddingMSELoss", "HiddenStateDistillLoss",
           "HierarchicalInfoNCELoss", "InfoNCELoss", "MarginMSELoss", "MatryoshkaLoss", "MultiViewInfoNCELoss",
           "SymmetricInfoNCELoss"]
