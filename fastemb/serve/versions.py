"""Which model version an arm serves, and loading it: a fixed model folder, or a version of the model registry
(``fastemb/registry.py``), either pinned or following production so that ``fastemb registry promote|rollback`` is
picked up without a restart (``RegistryWatcher``: load the new version beside the old one, then swap).
"""
from __future__ import annotations

import logging
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """One loaded model version: tokeniser + encoder, its forward pass and its search backend, swapped as a unit."""
    version: str
    path: str
    encoder: object  # fastemb.model.encoder.Encoder (tokenizer, settings; the torch model) or a StaticEncoder
    backend: object | None  # fastemb.serve.backends.SearchBackend
    forward: object  # OnnxEncoder | TorchForward | ImageTextForward | StaticEncoder: (ids, mask) -> float32 vectors
    device: str = "cpu"
    loaded_at: float = field(default_factory=time.time)
    images: object | None = None  # an image–text model (fastemb/model/image_text.py): its image tower embeds images

    @property
    def dim(self) -> int:
        return self.images.dim if self.images is not None else self.encoder.dim

    @property
    def max_length(self) -> int:
        return self.encoder.max_length

    @property
    def normalize(self) -> bool:
        return True if self.images is not None else bool(self.encoder.normalize)

    @property
    def modalities(self) -> list[str]:
        """What the model embeds (``/v1/models``)."""
        return ["text", "image"] if self.images is not None else ["text"]


def _local_copy(registry, version: str) -> str:
    """A local folder holding ``version``'s model (copied down when the registry is a remote filesystem)."""
    import pyarrow.fs as pafs

    src = registry.model_path(version)
    if isinstance(registry.fs, pafs.LocalFileSystem):
        return src
    dst = Path(tempfile.mkdtemp(prefix=f"fastemb-{version}-"))
    pafs.copy_files(src, str(dst), source_filesystem=registry.fs, destination_filesystem=pafs.LocalFileSystem())
    return str(dst)


def resolve(arm) -> tuple[str, str]:
    """``(version, local model folder)`` the arm should serve now (``arm`` is an ``ArmSpec``)."""
    if arm.registry:
        from fastemb.registry import Registry

        reg = Registry(arm.registry)
        version = arm.version or reg.state()["production"]
        if not version:
            raise RuntimeError(f"registry {arm.registry}: no production version (run `fastemb registry promote`)")
        reg.show(version)  # raises RegistryError naming the versions when unknown
        return version, _local_copy(reg, version)
    from fastemb.model.encoder import resolve_model_path

    path = resolve_model_path(arm.model)
    return _label(arm.model), path


def _label(model: str) -> str:
    """Version label of a model given by alias or folder: the alias, else the folder's name (its parent's name
    for a folder called ``model``, e.g. ``runs/contrastive/model`` -> ``contrastive``)."""
    p = Path(model)
    if not p.exists():
        return model
    p = p.resolve()
    return p.parent.name if p.name == "model" else p.name


def load(arm, version: str, path: str, device: str = "cpu", threads: int = 1, precision: str = "fp32") -> LoadedModel:
    """Load ``path`` with its forward pass on ``arm.backend`` (an ONNX export made or found in the cache, run with
    ``threads``; or torch on ``device`` in ``precision``), and build the arm's search backend with that model.
    A static folder (``fastemb static``) is its own forward pass: token rows averaged with numpy on the CPU, no
    transformer, so ``backend`` must stay ``auto``."""
    from fastemb.model.encoder import Encoder
    from fastemb.model.forward import load_forward
    from fastemb.model.image_text import is_image_text_folder
    from fastemb.model.static import StaticEncoder, StaticModelError, is_static
    from fastemb.serve.backends import make_backend

    if is_image_text_folder(path):
        return _load_image_text(arm, version, path, device, precision)
    if is_static(path):
        if arm.backend != "auto":
            raise StaticModelError(f"backend: {arm.backend} does not apply to {path}, a static model "
                                   "(token vectors averaged, no transformer to run); leave backend: auto")
        static = StaticEncoder.load(path, max_length=arm.max_length)
        return LoadedModel(version, path, static, make_backend(arm, static.encode), static, "cpu")

    encoder = Encoder.load(path, max_length=arm.max_length).eval().to(device)
    forward = load_forward(encoder, path, arm.backend, threads, device, precision=precision)
    backend = make_backend(arm, lambda texts: encoder.encode(texts, batch_size=64))
    return LoadedModel(version, path, encoder, backend, forward, device)


def _load_image_text(arm, version: str, path: str, device: str, precision: str) -> LoadedModel:
    """An image–text folder: texts through its text tower and projection (torch: the ONNX export covers text
    encoders only), images through its image tower; a corpus is embedded with the text side."""
    from fastemb.model.forward import ImageTextForward
    from fastemb.model.image_text import ImageTextModel
    from fastemb.serve.backends import make_backend

    if arm.backend not in ("auto", "torch"):
        raise ValueError(f"backend: {arm.backend} does not apply to {path}, an image–text model (served with torch); "
                         "use auto or torch")
    model = ImageTextModel.load(path, max_length=arm.max_length).eval().to(device)
    backend = make_backend(arm, lambda texts: model.encode(texts, batch_size=64))
    return LoadedModel(version, path, model.text, backend, ImageTextForward(model, precision), device, images=model)


def production_version(root: str) -> str | None:
    """The registry's production version right now (``state.json``, replaced atomically by the registry)."""
    from fastemb.registry import Registry

    return Registry(root).state()["production"]


class RegistryWatcher:
    """Polls the registry's production version; on a change loads it (in this thread, beside the serving model)
    and hands it to ``swap`` only once fully loaded (its ONNX export included), so requests never wait on a load or
    see a half-loaded model. A version that fails to load is logged and retried at the next change (the old model
    keeps serving)."""

    def __init__(self, arm, current: Callable[[], str], swap: Callable[[LoadedModel], None], device: str = "cpu",
                 poll_s: float = 2.0, threads: int = 1, precision: str = "fp32"):
        self.arm, self.current, self.swap, self.device, self.poll_s = arm, current, swap, device, poll_s
        self.threads, self.precision = threads, precision
        self.failed: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fastemb-registry-watcher", daemon=True)

    def start(self) -> "RegistryWatcher":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def check_once(self) -> bool:
        """Load and swap in the production version if it changed; True when a swap happened."""
        wanted = production_version(self.arm.registry)
        if not wanted or wanted == self.current() or wanted == self.failed:
            return False
        try:
            version, path = resolve(self.arm.model_copy(update={"version": wanted}))
            model = load(self.arm, version, path, self.device, self.threads, self.precision)
        except Exception as err:  # noqa: BLE001 - keep serving the old version
            logger.error("could not load registry version %s: %r (still serving %s)", wanted, err, self.current())
            self.failed = wanted
            return False
        self.failed = None
        self.swap(model)
        logger.info("now serving registry version %s", version)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.check_once()
            except Exception as err:  # noqa: BLE001 - a registry briefly unreadable: try again next poll
                logger.warning("registry poll failed: %r", err)
