"""Images end to end (issue 17, parts 4 and 5): ``fastemb index`` over an image corpus with injected bad rows (counted by
reason), ``fastemb search`` with text and image queries, and the Serve app's image inputs over real HTTP: vectors
equal to the model's, every bad image a JSON 4xx, a text-only arm refusing images, text → image ``/v1/search``, and a
replica under concurrent image load.

One index job and one Serve app (an image–text production arm over that index, a text-only candidate arm) serve the
whole module. The model is a tiny untrained two-tower (the one-layer MiniLM and a small ConvNeXt): these tests check
the mechanism, not retrieval quality."""
from __future__ import annotations

import base64
import concurrent.futures as cf
import io
import os

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw

from fastemb.data.images import decode_image
from fastemb.data.pairs import DataError
from fastemb.index.embed_images import MISSING_IMAGE, UNREADABLE_PATH, decode_row
from serve_helpers import free_port, start_service, stop_service

N_GOOD = 10
MAX_PIXELS = 100_000  # the service's limits.max_image_pixels
MAX_IMAGE_BYTES = 200_000  # its limits.max_image_bytes
KEY = os.environ["FASTEMB_TEST_API_KEY"]  # set by tests/conftest.py before the session's Ray starts
H = {"Authorization": f"Bearer {KEY}"}


def picture(i: int, size: int = 32) -> Image.Image:
    """A distinct small picture: background colour, a shape and its colour all depend on ``i``."""
    rng = np.random.default_rng(i)
    im = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 256, 3)))
    box = sorted(rng.integers(0, size, 2).tolist()) + sorted(rng.integers(0, size, 2).tolist())
    draw = ImageDraw.Draw(im)
    (draw.ellipse if i % 2 else draw.rectangle)([box[0], box[2], box[1] + 1, box[3] + 1],
                                                fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return im


def encoded(im: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def data_url(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


def bomb() -> bytes:
    """A 7000 x 7000 one-bit PNG: a few kilobytes, 49 M pixels (over the default 40 M limit)."""
    return encoded(Image.new("1", (7000, 7000)))


SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>'
# the bad rows of the image corpus, and the reason each must be counted under
BAD_ROWS = [("empty", b""), ("truncated", None), ("corrupt", bytes(np.random.default_rng(7).integers(0, 256, 3000,
                                                                                                    dtype=np.uint8))),
            ("unsupported_format", SVG), ("too_many_pixels", None), (MISSING_IMAGE, None)]


@pytest.fixture(scope="module")
def image_model(tiny_model, tmp_path_factory):
    """A tiny untrained image–text model folder, and the model loaded from it."""
    from fastemb.model.image_text import ImageTextModel

    folder = tmp_path_factory.mktemp("image_model") / "two-tower"
    ImageTextModel.build(tiny_model, "builtin", 32, [8, 16], [1, 1], None, 64, seed=0).save(folder)
    return str(folder), ImageTextModel.load(folder)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """Two parquet files of (id, image bytes): ``N_GOOD`` good pictures, and one bad row of each kind."""
    root = tmp_path_factory.mktemp("image_corpus")
    good = {f"img-{i}": encoded(picture(i), "PNG" if i % 3 else "JPEG") for i in range(N_GOOD)}
    values = {"truncated": encoded(picture(99))[:-40], "too_many_pixels": bomb()}
    bad = [(f"bad-{reason}", values.get(reason, data)) for reason, data in BAD_ROWS]
    rows = list(good.items())
    pq.write_table(pa.table({"id": [r[0] for r in rows[:6]], "image": [r[1] for r in rows[:6]]}),
                   root / "part-0.parquet")
    rest = rows[6:] + bad + [(None, encoded(picture(50)))]  # and a null id
    pq.write_table(pa.table({"id": pa.array([r[0] for r in rest], pa.string()),
                             "image": pa.array([r[1] for r in rest], pa.binary())}), root / "part-1.parquet")
    expected = {reason: 1 for reason, _ in BAD_ROWS} | {"null id": 1}
    return {"path": str(root), "good": good, "skipped": expected}


@pytest.fixture(scope="module")
def index(ray_local, image_model, corpus, tmp_path_factory) -> dict:
    from fastemb.index.job import run_index
    from fastemb.spec import parse_spec

    spec = parse_spec({"job": "index", "name": "images", "storage_path": str(tmp_path_factory.mktemp("runs")),
                       "model": {"base": image_model[0]}, "ray": {"num_cpus": 2},
                       "corpus": {"path": corpus["path"], "image_column": "image"},
                       "embed": {"num_actors": 1, "batch_rows": 8}, "index": {"type": "flat", "add_tasks": 1}})
    return {"manifest": run_index(spec), "dir": spec.run_dir}


@pytest.fixture(scope="module")
def service(index, image_model, tiny_model, tmp_path_factory):
    spec, url = start_service({
        "port": free_port(),
        "production": {"model": image_model[0], "index_dir": str(index["dir"])},
        "candidate": {"model": tiny_model, "served_name": "text-only"},
        "autoscaling": {"min_replicas": 1, "max_replicas": 1},
        "replica": {"num_cpus": 0.5},
        "limits": {"max_image_pixels": MAX_PIXELS, "max_image_bytes": MAX_IMAGE_BYTES, "max_body_bytes": 1_000_000},
        "api_key_env": "FASTEMB_TEST_API_KEY",
        "feedback_dir": str(tmp_path_factory.mktemp("feedback")),
    })
    yield url
    stop_service()


def _post(url: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(url + path, json=body, headers=H, timeout=120)


def _vectors(resp: httpx.Response) -> np.ndarray:
    assert resp.status_code == 200, resp.text
    return np.array([d["embedding"] for d in resp.json()["data"]], dtype=np.float32)


def test_decode_row_reads_paths_and_names_what_is_missing(tmp_path):
    (tmp_path / "a.png").write_bytes(encoded(picture(1)))
    image, digest = decode_row("a", "a.png", "path", tmp_path, {})
    assert image.size == (32, 32) and len(digest) == 40
    assert decode_row("b", "missing.png", "path", tmp_path, {}) == UNREADABLE_PATH
    assert decode_row("c", "  ", "path", tmp_path, {}) == MISSING_IMAGE
    assert decode_row("d", None, "bytes", None, {}) == MISSING_IMAGE
    assert decode_row("e", b"", "bytes", None, {}) == "empty"
    assert decode_row(None, encoded(picture(1)), "bytes", None, {}) == "null id"


def test_image_corpus_settings_and_spec_rules(image_model, tiny_model, tmp_path):
    from fastemb.index.stages import image_options
    from fastemb.spec import SpecError, parse_spec

    def index_spec(base: str, **corpus) -> object:
        return parse_spec({"job": "index", "model": {"base": base}, "corpus": corpus})

    corpus_file = tmp_path / "corpus.parquet"
    assert image_options(index_spec(image_model[0], path=str(corpus_file), path_column="file")) == {
        "source": "path", "root": str(tmp_path.resolve())}  # relative image paths: from the corpus file's folder
    assert image_options(index_spec(image_model[0], path=str(corpus_file), image_column="png")) == {
        "source": "bytes", "root": None}
    assert image_options(index_spec(tiny_model, path=str(corpus_file))) is None
    with pytest.raises(DataError, match="not an image–text model folder"):
        image_options(index_spec(tiny_model, path=str(corpus_file), image_column="png"))
    for extra, match in (({"corpus": {"image_column": "a", "path_column": "b"}}, "not both"),
                         ({"corpus": {"image_column": "a"}, "chunking": {"enabled": True}}, "no tokens to chunk"),
                         ({"corpus": {"path_column": "b"}, "evaluate": {"enabled": True}}, "text sets")):
        with pytest.raises(SpecError, match=match):
            parse_spec({"job": "index", **extra})
    with pytest.raises(SpecError, match="at least one query"):
        parse_spec({"job": "search", "index_dir": str(tmp_path)})


@pytest.mark.faults
def test_index_counts_bad_images_by_reason_and_keeps_the_good_ones(index, corpus):
    m = index["manifest"]
    assert m["counts"]["skipped"] == corpus["skipped"]
    assert m["modality"] == "image" and m["counts"]["index_entries"] == N_GOOD
    assert sorted(pq.read_table(index["dir"] / "ids.parquet").column("id").to_pylist()) == sorted(corpus["good"])


def test_fastemb_search_text_and_image_queries(index, corpus, tmp_path):
    from fastemb.search.job import run_search
    from fastemb.spec import parse_spec

    query = tmp_path / "query.png"
    query.write_bytes(corpus["good"]["img-4"])
    results = run_search(parse_spec({"job": "search", "index_dir": str(index["dir"]), "k": 3,
                                     "queries": ["a red circle"], "query_images": [str(query)]}))
    assert results[0]["query"] == "a red circle" and results[1]["query_image"] == str(query)
    assert all(len(r["hits"]) == 3 and {h["id"] for h in r["hits"]} <= set(corpus["good"]) for r in results)
    assert results[1]["hits"][0]["id"] == "img-4" and results[1]["hits"][0]["score"] == pytest.approx(1, abs=1e-4)
    (tmp_path / "drawing.svg").write_bytes(SVG)
    with pytest.raises(DataError, match="drawing.svg: unsupported_format"):
        run_search(parse_spec({"job": "search", "index_dir": str(index["dir"]),
                               "query_images": str(tmp_path / "drawing.svg")}))


def test_image_and_text_embeddings_equal_the_model(service, image_model, corpus):
    _, model = image_model
    images = [corpus["good"]["img-1"], corpus["good"]["img-3"]]  # a PNG and a JPEG
    got = _vectors(_post(service, "/v1/embeddings", {
        "model": "fastemb", "modality": "image",
        "input": [data_url(images[0]), data_url(images[1], "image/jpeg")]}))
    want = model.encode_images([decode_image(b) for b in images])
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    texts = ["a red apple", "a blue square"]
    np.testing.assert_allclose(_vectors(_post(service, "/v1/embeddings", {"model": "fastemb", "input": texts})),
                               model.encode(texts), atol=1e-5, rtol=0)
    models = {m["id"]: m for m in httpx.get(service + "/v1/models", headers=H, timeout=30).json()["data"]}
    assert models["fastemb-production"]["modalities"] == ["text", "image"]
    assert models["text-only"]["modalities"] == ["text"]


def test_each_bad_image_answers_its_json_4xx(service):
    noise = Image.fromarray(np.random.default_rng(3).integers(0, 256, (300, 300, 3), dtype=np.uint8))
    cases = {
        "zero bytes": (data_url(b""), 422, "invalid_image"),
        "truncated PNG": (data_url(encoded(picture(5))[:-40]), 422, "invalid_image"),
        "random bytes": (data_url(bytes(range(256)) * 8), 422, "invalid_image"),
        "SVG text": (data_url(SVG, "image/svg+xml"), 415, "unsupported_image_format"),
        "text media type": (data_url(encoded(picture(5)), "text/plain"), 415, "unsupported_image_format"),
        "too many pixels": (data_url(encoded(Image.new("RGB", (400, 400)))), 413, "image_too_large"),
        "too many bytes": (data_url(encoded(noise)), 413, "image_too_large"),
        "not base64": ("data:image/png;base64,%%%not-base64%%%", 422, "invalid_base64"),
        "http URL": ("https://example.com/apple.png", 400, "image_url_not_supported"),
        "not a data URL": ("an apple", 400, "invalid_image_input"),
    }
    for name, (item, status, code) in cases.items():
        r = _post(service, "/v1/embeddings", {"model": "fastemb", "modality": "image",
                                              "input": [data_url(encoded(picture(1))), item]})
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), f"{name}: {r.text}"
        assert r.json()["error"]["param"] == "input.1", name
    for body, status in (({"modality": "image", "input": [3, 4]}, 422), ({"modality": "audio", "input": "x"}, 422)):
        r = _post(service, "/v1/embeddings", {"model": "fastemb", **body})
        assert r.status_code == status and "error" in r.json(), r.text
    r = _post(service, "/v1/embeddings", {"model": "text-only", "modality": "image",
                                          "input": data_url(encoded(picture(1)))})
    assert r.status_code == 400 and r.json()["error"]["code"] == "text_only_model", r.text
    assert "text-only" in r.json()["error"]["message"]


def test_search_over_the_image_index_with_text_and_image_queries(service, corpus):
    r = _post(service, "/v1/search", {"query": ["a red circle", "a green square"], "k": 4})
    assert r.status_code == 200, r.text
    for row in r.json()["data"]:
        assert len(row["hits"]) == 4 and {h["id"] for h in row["hits"]} <= set(corpus["good"])
    r = _post(service, "/v1/search", {"query": data_url(corpus["good"]["img-7"]), "modality": "image", "k": 2})
    assert r.status_code == 200, r.text
    row = r.json()["data"][0]
    assert row["hits"][0]["id"] == "img-7" and row["query"] is None
    r = _post(service, "/v1/search", {"query": data_url(SVG, "image/svg+xml"), "modality": "image"})
    assert r.status_code == 415 and r.json()["error"]["param"] == "query", r.text


def test_a_replica_under_concurrent_image_load_answers_every_request(service, image_model):
    _, model = image_model
    pictures = [picture(200 + i, 40) for i in range(12)]
    want = model.encode_images(pictures)

    def request(i: int) -> tuple[int, np.ndarray | None]:
        batch = [(i + j) % len(pictures) for j in range(3)]
        r = _post(service, "/v1/embeddings", {"model": "fastemb", "modality": "image",
                                              "input": [data_url(encoded(pictures[b])) for b in batch]})
        ok = r.status_code == 200
        return r.status_code, (np.abs(_vectors(r) - want[batch]).max() if ok else None)

    with cf.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(request, range(24)))
    assert [s for s, _ in answers] == [200] * 24
    assert max(d for _, d in answers) <= 1e-5
