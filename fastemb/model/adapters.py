"""Bottleneck adapters inside a frozen BERT-like encoder.

An adapter (Houlsby et al., 2019, "Parameter-Efficient Transfer Learning for NLP") is
``x + W_up · act(W_down · x)``: a down-projection to ``size`` dimensions, a nonlinearity, an up-projection back
and a residual connection. ``W_up`` and its bias start at zero, so a model with fresh adapters computes exactly
what its base computes. Each adapter is applied to the output of a sub-block's projection, before dropout, the
block's residual connection and its LayerNorm:

* ``placement="pfeiffer"``: after the feed-forward block only (``encoder.layer[i].output.dense``), the placement
  Pfeiffer et al. (2021, "AdapterFusion") found as good as two adapters per layer at half the parameters;
* ``placement="houlsby"``: after the attention block too (``encoder.layer[i].attention.output.dense``).

The adapter modules live next to the projection they follow (``encoder.layer.0.output.adapter.down.weight``), so
every base weight keeps its name. ``BertModelWithAdapters`` is a ``BertModel`` with adapters built from its config
(``BertAdapterConfig``, model type ``fastemb_bert_adapters``); ``save_pretrained`` writes an ordinary model folder
plus a copy of this file, and also ``adapters.safetensors``, the adapter weights alone with their settings.

This file imports only torch, safetensors and transformers: the exported folder carries it, so
``AutoModel.from_pretrained(folder, trust_remote_code=True)`` and
``sentence_transformers.SentenceTransformer(folder, trust_remote_code=True)`` rebuild the same model. fastemb
registers the classes (``register_auto_classes``) and loads such folders without remote code.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModel, BertConfig, BertModel

MODEL_TYPE = "fastemb_bert_adapters"
ADAPTER_WEIGHTS = "adapters.safetensors"
ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh}
PLACEMENTS = {"pfeiffer": ("output",), "houlsby": ("attention.output", "output")}


class BottleneckAdapter(nn.Module):
    """``x + up(act(down(x)))`` with ``up`` zero-initialised (the identity at the start)."""

    def __init__(self, hidden_size: int, size: int, activation: str = "gelu"):
        super().__init__()
        self.down = nn.Linear(hidden_size, size)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(size, hidden_size)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x):
        return x + self.up(self.act(self.down(x)))

    def after(self, module: nn.Module, args, output):
        """Forward hook on the projection this adapter follows: replaces its output."""
        return self(output)


def _check_settings(size: int, layers: list[int] | None, placement: str, activation: str, num_layers: int) -> None:
    if size < 1:
        raise ValueError(f"model.adapters.size: must be >= 1, got {size}")
    if placement not in PLACEMENTS:
        raise ValueError(f"model.adapters.placement: {placement!r} is not one of {sorted(PLACEMENTS)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"model.adapters.activation: {activation!r} is not one of {sorted(ACTIVATIONS)}")
    bad = [i for i in (layers or []) if not 0 <= i < num_layers]
    if bad or (layers is not None and (not layers or sorted(set(layers)) != list(layers))):
        raise ValueError(f"model.adapters.layers: {layers} must be increasing, distinct indices in 0..{num_layers - 1} "
                         f"(the model has {num_layers} layers)")


def insert_adapters(model: BertModel, size: int, layers: list[int] | None = None, placement: str = "pfeiffer",
                    activation: str = "gelu") -> list[str]:
    """Add adapters to ``model`` in place (all layers when ``layers`` is None); returns their module names."""
    blocks = model.encoder.layer
    _check_settings(size, layers, placement, activation, len(blocks))
    names = []
    for i in range(len(blocks)) if layers is None else layers:
        for path in PLACEMENTS[placement]:
            block = blocks[i].get_submodule(path)
            block.adapter = BottleneckAdapter(model.config.hidden_size, size, activation)
            block.dense.register_forward_hook(block.adapter.after)
            names.append(f"encoder.layer.{i}.{path}.adapter")
    return names


class BertAdapterConfig(BertConfig):
    """A BERT config plus the adapters' settings."""
    model_type = MODEL_TYPE

    adapter_size: int = 64
    adapter_layers: list[int] | None = None
    adapter_placement: str = "pfeiffer"
    adapter_activation: str = "gelu"

    def adapter_settings(self) -> dict:
        return {"size": self.adapter_size, "layers": self.adapter_layers, "placement": self.adapter_placement,
                "activation": self.adapter_activation}


class BertModelWithAdapters(BertModel):
    """``BertModel`` with bottleneck adapters built from its config."""
    config_class = BertAdapterConfig

    def __init__(self, config: BertAdapterConfig, add_pooling_layer: bool = True):
        super().__init__(config, add_pooling_layer=add_pooling_layer)
        insert_adapters(self, **config.adapter_settings())

    def adapter_state_dict(self, state_dict: dict | None = None) -> dict:
        """The adapters' weights only (``…adapter.down.weight`` etc.), of ``state_dict`` (default: the model's)."""
        weights = self.state_dict() if state_dict is None else state_dict
        return {k: v.detach().contiguous() for k, v in weights.items() if is_adapter_parameter(k)}

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs):
        """The whole model (loadable with ``trust_remote_code=True``), and ``adapters.safetensors`` beside it (both
        from ``state_dict=`` when given: weights ZeRO-3 gathered from every rank)."""
        super().save_pretrained(save_directory, *args, **kwargs)
        metadata = {"adapters": json.dumps(self.config.adapter_settings()), "hidden_size": str(self.config.hidden_size)}
        save_file(self.adapter_state_dict(kwargs.get("state_dict")), str(Path(save_directory) / ADAPTER_WEIGHTS),
                  metadata=metadata)


BertAdapterConfig.register_for_auto_class()
BertModelWithAdapters.register_for_auto_class("AutoModel")


def is_adapter_parameter(name: str) -> bool:
    return ".adapter." in name


def with_adapters(transformer: nn.Module, size: int = 64, layers: list[int] | None = None,
                  placement: str = "pfeiffer", activation: str = "gelu") -> BertModelWithAdapters:
    """A ``BertModelWithAdapters`` holding ``transformer``'s weights and fresh adapters (same outputs at the start)."""
    if not isinstance(transformer, BertModel):
        raise ValueError(f"model.adapters: supported for BERT-family encoders (BertModel, e.g. MiniLM); the base is "
                         f"a {type(transformer).__name__}")
    if isinstance(transformer, BertModelWithAdapters):
        if transformer.config.adapter_settings() != {"size": size, "layers": layers, "placement": placement,
                                                      "activation": activation}:
            raise ValueError(f"model.adapters: the base already has adapters {transformer.config.adapter_settings()}; "
                             "give the same settings to keep training them, or start from a model without adapters")
        return transformer
    _check_settings(size, layers, placement, activation, len(transformer.encoder.layer))
    raw = transformer.config.to_dict()
    raw.update(model_type=MODEL_TYPE, adapter_size=size, adapter_layers=layers, adapter_placement=placement,
               adapter_activation=activation)
    config = BertAdapterConfig.from_dict(raw)
    config._attn_implementation = transformer.config._attn_implementation
    model = BertModelWithAdapters(config, add_pooling_layer=transformer.pooler is not None)
    missing, unexpected = model.load_state_dict(transformer.state_dict(), strict=False)
    not_adapters = [k for k in missing if not is_adapter_parameter(k)]
    if unexpected or not_adapters:
        raise ValueError(f"model.adapters: could not copy the base's weights (missing {not_adapters}, "
                         f"unexpected {unexpected})")
    return model.to(next(transformer.parameters()).dtype)


def load_adapters(transformer: nn.Module, path: str | os.PathLike) -> BertModelWithAdapters:
    """``transformer`` (a base without adapters) plus the adapters saved in ``path`` (``adapters.safetensors``)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "adapters" not in meta:
        raise ValueError(f"{path}: not an adapter file written by fastemb (no 'adapters' metadata)")
    model = with_adapters(transformer, **json.loads(meta["adapters"]))
    weights = load_file(str(path))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing_adapters = [k for k in missing if is_adapter_parameter(k)]
    if unexpected or missing_adapters:
        raise ValueError(f"{path}: adapter weights do not fit this model (missing {missing_adapters}, "
                         f"unexpected {unexpected})")
    return model


def register_auto_classes() -> None:
    """Let ``AutoConfig`` / ``AutoModel`` load ``fastemb_bert_adapters`` folders without remote code."""
    AutoConfig.register(MODEL_TYPE, BertAdapterConfig, exist_ok=True)
    AutoModel.register(BertAdapterConfig, BertModelWithAdapters, exist_ok=True)
