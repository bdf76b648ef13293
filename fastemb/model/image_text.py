"""Image–text two-tower model: a fastemb text encoder and an image tower, each followed by a linear projection into
one shared, L2-normalised space (CLIP's layout, Radford et al. 2021).

Saved in the sentence-transformers folder format as a ``Router`` (sentence-transformers ≥ 5.1) with two routes::

    text:  text_0_Transformer → text_1_Pooling → [text_2_Normalize →] text_k_Dense → text_k+1_Normalize
    image: image_0_Transformer → image_1_Pooling (mean) → image_2_Dense → image_3_Normalize

so ``SentenceTransformer(path).encode(["a red apple"])`` and ``.encode([PIL.Image.open(...)])`` both work, and give
the vectors fastemb gives (tests/test_image_text.py checks ≤ 1e-5). sentence-transformers infers the route from the
input's type and encodes ONE modality per call: a list mixing pictures and strings is refused by it; encode each
modality separately. fastemb loads the same folder with :meth:`ImageTextModel.load`.

The text projection starts as the identity when the shared space has the text encoder's width, so the untrained
model's text side is the base text model's; the image projection starts at random.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fastemb.model.encoder import Encoder
from fastemb.model.image_tower import BUILTIN, ImageTower, builtin_vision, load_vision, pixel_values

ROUTER_CONFIG = "router_config.json"


def is_image_text_folder(path: str | Path) -> bool:
    """Whether a folder holds an image–text model (a Router with an ``image`` route)."""
    cfg = Path(path) / ROUTER_CONFIG
    return cfg.is_file() and "image" in json.loads(cfg.read_text()).get("structure", {})


class ImageTextModel(nn.Module):
    """Text encoder + image tower + one projection each; ``embed``/``embed_pixels`` keep the graph (training),
    ``encode``/``encode_images`` return float32 numpy (inference). Vectors are L2-normalised."""

    normalize = True  # vectors are unit length: search by inner product

    def __init__(self, text: Encoder, image: ImageTower, processor, text_proj: nn.Linear, image_proj: nn.Linear):
        super().__init__()
        self.text, self.image, self.processor = text, image, processor
        self.text_proj, self.image_proj = text_proj, image_proj

    # ----------------------------------------------------------------- building / loading / saving
    @classmethod
    def build(cls, text_base: str, vision: str, image_size: int, widths: Sequence[int], depths: Sequence[int],
              dim: int | None, max_length: int | None, seed: int) -> "ImageTextModel":
        """A new model: the text encoder of ``text_base`` and ``vision`` (a folder, or ``builtin``: a ConvNeXt of
        ``widths``/``depths`` at ``image_size`` initialised from ``seed``, the same on every worker)."""
        torch.manual_seed(seed)
        text = Encoder.load(text_base, max_length=max_length)
        vision_model, processor = (builtin_vision(image_size, widths, depths) if vision == BUILTIN
                                   else load_vision(vision))
        image = ImageTower(vision_model)
        dim = dim or text.dim
        text_proj, image_proj = nn.Linear(text.dim, dim), nn.Linear(image.dim, dim)
        if dim == text.dim:  # the untrained text side is the base text model's
            with torch.no_grad():
                text_proj.weight.copy_(torch.eye(dim))
                text_proj.bias.zero_()
        return cls(text, image, processor, text_proj, image_proj)

    @classmethod
    def from_spec(cls, spec) -> "ImageTextModel":
        """The untrained model a train job's ``model`` and ``image_text`` sections describe (seeded by
        ``train.seed``), its ``image_text.freeze`` tower locked."""
        it = spec.image_text
        model = cls.build(spec.model.base, it.vision, it.image_size, it.widths, it.depths, it.dim,
                          spec.model.max_length, spec.train.seed)
        model.freeze(it.freeze)
        return model

    @classmethod
    def load(cls, path: str | Path, max_length: int | None = None) -> "ImageTextModel":
        """Load a folder :meth:`save` wrote (a sentence-transformers Router with text and image routes)."""
        from transformers import AutoModel, AutoTokenizer

        root = Path(path)
        if not is_image_text_folder(root):
            raise ValueError(f"{root}: not an image–text model folder (no {ROUTER_CONFIG} with an image route)")
        routes = json.loads((root / ROUTER_CONFIG).read_text())["structure"]
        text_dirs, image_dirs = ({_kind(d): root / d for d in routes[r]} for r in ("text", "image"))
        transformer = AutoModel.from_pretrained(text_dirs["Transformer"], local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(text_dirs["Transformer"], local_files_only=True)
        st_cfg = json.loads((text_dirs["Transformer"] / "sentence_bert_config.json").read_text())
        pooling = json.loads((text_dirs["Pooling"] / "config.json").read_text()).get("pooling_mode", "mean")
        normalized = [d for d in routes["text"] if _kind(d) == "Normalize"]
        text = Encoder(transformer, tokenizer, pooling, normalize=len(normalized) > 1,
                       max_length=max_length or st_cfg.get("max_seq_length") or 256)
        vision, processor = load_vision(image_dirs["Transformer"])
        return cls(text, ImageTower(vision), processor, _load_dense(text_dirs["Dense"]),
                   _load_dense(image_dirs["Dense"]))

    def save(self, path: str | Path, model_card: str | None = None, max_seq_length: int | None = None,
             weights=None) -> None:
        """Write the sentence-transformers Router folder (see the module docstring); ``max_seq_length``: the text
        route's tokens per text (default: the encoder's). ``weights`` (a ZeRO-3 gather) is not supported here."""
        if weights is not None:
            raise ValueError("image–text models are not trained with ZeRO-3 (train.zero_stage ≤ 2)")
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.base.modules import Dense, Normalize, Router
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

        length = max_seq_length or self.text.max_length
        with tempfile.TemporaryDirectory(prefix="fastemb-image-text-") as tmp:
            self.text.save(Path(tmp) / "text", max_seq_length=length)
            self.image.vision.save_pretrained(Path(tmp) / "image", safe_serialization=True)
            self.processor.save_pretrained(Path(tmp) / "image")
            text_route = [Transformer(str(Path(tmp) / "text"), max_seq_length=length),
                          Pooling(self.text.dim, self.text.pooling)]
            if self.text.normalize:
                text_route.append(Normalize())
            text_route += [_dense(self.text_proj, Dense), Normalize()]
            image_route = [Transformer(str(Path(tmp) / "image")), Pooling(self.image.dim, "mean"),
                           _dense(self.image_proj, Dense), Normalize()]
            model = SentenceTransformer(modules=[Router({"text": text_route, "image": image_route},
                                                        default_route="text")], device="cpu")
            model.save(str(path))
        if model_card:
            (Path(path) / "README.md").write_text(model_card)

    # ----------------------------------------------------------------- forward / encode
    @property
    def dim(self) -> int:
        return int(self.text_proj.out_features)

    def embed(self, texts: list[str]) -> torch.Tensor:
        """Texts → unit vectors in the shared space (keeps the graph)."""
        return F.normalize(self.text_proj(self.text.embed(texts)), dim=-1)

    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Processed images (B, 3, H, W) → unit vectors in the shared space (keeps the graph)."""
        weight = self.image_proj.weight  # the engine's device and precision (bf16 / fp16 on a GPU)
        return F.normalize(self.image_proj(self.image(pixels.to(weight.device, weight.dtype))), dim=-1)

    def pixels(self, images: list) -> torch.Tensor:
        """PIL images → the image tower's input, as the exported model's processor makes it."""
        return torch.from_numpy(pixel_values(self.processor, images))

    @torch.inference_mode()
    def encode(self, texts: Iterable[str], batch_size: int = 128, **kwargs) -> np.ndarray:
        """Texts → float32 (n, dim)."""
        was_training = self.training
        self.eval()
        out = self.project_text(self.text.encode(list(texts), batch_size=batch_size, **kwargs))
        self.train(was_training)
        return out

    @torch.inference_mode()
    def project_text(self, pooled: np.ndarray) -> np.ndarray:
        """The text encoder's pooled vectors (n, text dim) → unit vectors in the shared space, float32 (n, dim)."""
        device = self.text_proj.weight.device
        x = torch.as_tensor(pooled, dtype=self.text_proj.weight.dtype, device=device)
        return F.normalize(self.text_proj(x), dim=-1).float().cpu().numpy()

    @torch.inference_mode()
    def encode_images(self, images: Iterable, batch_size: int = 64) -> np.ndarray:
        """PIL images → float32 (n, dim)."""
        was_training = self.training
        self.eval()
        images = list(images)
        out = np.empty((len(images), self.dim), dtype=np.float32)
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            out[start:start + len(chunk)] = self.embed_pixels(self.pixels(chunk)).float().cpu().numpy()
        self.train(was_training)
        return out

    def freeze(self, tower: str) -> None:
        """Freeze one tower's weights (``text``: LiT, Zhai et al. 2022; ``image``: the frozen-random-tower
        ablation; ``none``); the projections always train."""
        if tower not in ("none", "text", "image"):
            raise ValueError(f"freeze must be none, text or image, got {tower!r}")
        for name, module in (("text", self.text), ("image", self.image)):
            for p in module.parameters():
                p.requires_grad_(name != tower)


def _kind(module_dir: str) -> str:
    """``text_2_Dense`` → ``Dense``."""
    return module_dir.rsplit("_", 1)[-1]


def _dense(linear: nn.Linear, dense_cls):
    """A sentence-transformers ``Dense`` (identity activation) holding ``linear``'s weights."""
    dense = dense_cls(linear.in_features, linear.out_features, bias=True, activation_function=nn.Identity())
    with torch.no_grad():
        dense.linear.weight.copy_(linear.weight)
        dense.linear.bias.copy_(linear.bias)
    return dense


def _load_dense(folder: Path) -> nn.Linear:
    """A sentence-transformers ``Dense`` folder (identity activation) as an ``nn.Linear``."""
    from safetensors.torch import load_file

    cfg = json.loads((folder / "config.json").read_text())
    if not cfg.get("activation_function", "").endswith("Identity"):
        raise ValueError(f"{folder}: Dense activation {cfg.get('activation_function')} is not supported (Identity)")
    linear = nn.Linear(cfg["in_features"], cfg["out_features"], bias=cfg.get("bias", True))
    linear.load_state_dict({k.removeprefix("linear."): v for k, v in load_file(folder / "model.safetensors").items()})
    return linear
