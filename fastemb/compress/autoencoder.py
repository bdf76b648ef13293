"""A small trained autoencoder (torch, CPU): in_dim → hidden → out_dim, trained to reconstruct the sample.

Only the encoder is applied at index and query time. The loss is reconstruction MSE plus a term that keeps
the pairwise cosine similarities of the codes close to those of the inputs, which is what retrieval needs."""
from __future__ import annotations

import numpy as np

from fastemb.compress.base import Compressor


def _mlp(sizes: list[int]):
    from torch import nn

    layers: list = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.GELU()]
    return nn.Sequential(*layers[:-1])


class AutoencoderCompressor(Compressor):
    method = "autoencoder"

    def _hidden(self) -> int:
        return int(self.params.get("hidden", max(self.out_dim, (self.in_dim + self.out_dim) // 2)))

    def _fit(self, x: np.ndarray) -> None:
        import torch
        import torch.nn.functional as F

        torch.manual_seed(int(self.params.get("seed", 0)))
        h = self._hidden()
        enc, dec = _mlp([self.in_dim, h, self.out_dim]), _mlp([self.out_dim, h, self.in_dim])
        opt = torch.optim.AdamW(list(enc.parameters()) + list(dec.parameters()), lr=float(self.params.get("lr", 1e-3)))
        data = torch.from_numpy(x)
        bs = int(self.params.get("batch_size", 256))
        gen = torch.Generator().manual_seed(0)
        for _ in range(int(self.params.get("epochs", 10))):
            for idx in torch.randperm(len(data), generator=gen).split(bs):
                xb = data[idx]
                z = enc(xb)
                sim_in = F.normalize(xb, dim=1) @ F.normalize(xb, dim=1).T
                sim_z = F.normalize(z, dim=1) @ F.normalize(z, dim=1).T
                loss = F.mse_loss(dec(z), xb) * self.in_dim + F.mse_loss(sim_z, sim_in)
                opt.zero_grad()
                loss.backward()
                opt.step()
        self._state = {k: v.detach().numpy().copy() for k, v in enc.state_dict().items()}
        self._build()

    def _build(self) -> None:
        import torch

        self._enc = _mlp([self.in_dim, self._hidden(), self.out_dim])
        self._enc.load_state_dict({k: torch.from_numpy(v) for k, v in self._state.items()})
        self._enc.eval()

    def _transform(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self._enc(torch.from_numpy(x)).numpy()

    def _arrays(self) -> dict[str, np.ndarray]:
        return {k.replace(".", "__"): v for k, v in self._state.items()}

    def _set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self._state = {k.replace("__", "."): v for k, v in arrays.items()}
        self._build()
