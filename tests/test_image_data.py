"""Image data (issue 17): the image–caption set built from Debian packages (fastemb/data/build_images.py: format,
split by concept, held-out seen images, counts) and image decoding with limits (fastemb/data/images.py: a corpus of
bad images and captions whose skips equal what was injected, by reason). The packages are installed by .ci/run;
without them these tests fail, they do not skip."""
from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from fastemb.data.build_images import SPLITS, SourceReport, emoji_items, emoji_keys, stamp_items
from fastemb.data.images import ImageError, check_image, decode_image, load_image_text
from fastemb.data.pairs import DataError

COLUMNS = {"id": pa.string(), "image": pa.binary(), "captions": pa.list_(pa.string()), "translations": pa.string(),
           "concept": pa.string(), "source": pa.string(), "license": pa.string()}
MAX_SIDE = 64


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("images")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "fastemb.data.build_images", "--out", str(out), "--limit", "30",
                    "--max-side", str(MAX_SIDE)], check=True, env=env, timeout=120)
    return out


def _split(built: Path, split: str) -> list[dict]:
    table = pq.read_table(built / f"{split}.parquet")
    assert {f.name: f.type for f in table.schema} == COLUMNS
    return table.to_pylist()


def test_built_set_splits_by_concept_and_holds_out_seen_images(built):
    rows = {s: _split(built, s) for s in SPLITS}
    concepts = {s: {r["concept"] for r in rs} for s, rs in rows.items()}
    ids = [r["id"] for rs in rows.values() for r in rs]
    assert len(ids) == len(set(ids))
    for a, b in (("train", "dev"), ("train", "test"), ("dev", "test")):
        assert not concepts[a] & concepts[b], (a, b)
    assert rows["test_seen"] and concepts["test_seen"] <= concepts["train"]
    assert not {r["id"] for r in rows["test_seen"]} & {r["id"] for r in rows["train"]}
    assert {r["source"] for r in rows["train"]} == {"tuxpaint", "emoji", "flags"}
    for r in (r for rs in rows.values() for r in rs):
        im = decode_image(r["image"])
        assert im.mode == "RGB" and max(im.size) <= MAX_SIDE and Image.open(io.BytesIO(r["image"])).format == "PNG"
        assert r["captions"] and all(c.strip() for c in r["captions"]) and r["license"]
        assert isinstance(json.loads(r["translations"]), dict)
    stamp = next(r for rs in rows.values() for r in rs if r["source"] == "tuxpaint")
    assert len(json.loads(stamp["translations"])) > 20  # the .txt's languages are kept
    assert (built / "LICENSE-images.txt").read_text().count("/copyright ====") == 5


def test_stats_add_up(built):
    stats = json.loads((built / "stats.json").read_text())
    rows = {s: _split(built, s) for s in SPLITS}
    for split, rs in rows.items():
        assert stats["splits"][split]["images"] == len(rs)
        assert stats["splits"][split]["concepts"] == len({r["concept"] for r in rs})
        for source, n in Counter(r["source"] for r in rs).items():
            assert stats["splits"][split]["by_source"][source]["images"] == n
    for source, s in stats["sources"].items():
        assert s["candidates"] == s["images"] + sum(s["dropped"].values()), source
        assert s["images"] == sum(r["source"] == source for rs in rows.values() for r in rs)
        assert 20 <= s["images"] <= 30  # --limit 30: whole concepts while they fit
    assert stats["seen"]["concepts"] == stats["seen"]["concepts_in_train"] > 0
    assert stats["unseen"]["concepts_in_train"] == 0
    assert stats["unseen"]["images"] == len(rows["dev"]) + len(rows["test"])


def test_concept_rules_on_the_real_packages():
    by_id = {it.id: it.concept for it in emoji_items(SourceReport())}

    def concept(text: str) -> str:
        return by_id["emoji:" + "-".join(f"{ord(c):04x}" for c in text)]

    running = concept("\U0001F3C3")  # person running
    assert running == concept("\U0001F3C3\U0001F3FD") == concept("\U0001F3C3\u200D\u2640") == "emoji:running"
    assert concept("\U0001F9DC") == concept("\U0001F9DC\u200D\u2642") == concept("\U0001F9DC\u200D\u2640")  # merfolk
    assert concept("\U0001F1E9\U0001F1EA") == "flag:de" != concept("\U0001F1EB\U0001F1F7")
    assert concept("\U0001F34E") != concept("\U0001F34F")  # red and green apple
    assert emoji_keys("\U0001F46B", "woman and man holding hands") == ("holding hands", "cp:\U0001F46B")
    stamps = {it.id: it.concept for it in stamp_items(SourceReport(), 128)}
    frog = "tuxpaint:animals/amphibians/frog"
    assert stamps[frog + ".png"] == stamps[frog + "-1.png"]
    letters = "tuxpaint:symbols/alphabets/english/"
    assert stamps[letters + "filled/lowercase/k_filled.png"] == stamps[letters + "outlined/lowercase/k_outline.png"]
    assert stamps[letters + "filled/lowercase/k_filled.png"] != stamps[letters + "filled/lowercase/w_filled.png"]


# ---------------------------------------------------------------------------------------------------- bad input

def _png(size=(24, 16), color=(200, 30, 30, 255), mode="RGBA") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, "PNG")
    return buf.getvalue()


def _claimed_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` 1-bit pixels (no pixel data)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def _real_bomb() -> bytes:
    """A real 1-bit PNG of 8000 x 6000 pixels (48 M > the 40 M limit) in a few kilobytes."""
    buf = io.BytesIO()
    Image.new("1", (8000, 6000)).save(buf, "PNG")
    return buf.getvalue()


def _bad_corpus(folder: Path) -> tuple[set[str], Counter, int]:
    """Parquet files of good and bad rows: (good ids, injected skips by reason, bad captions inside kept lists)."""
    folder.mkdir()
    big = _png((300, 200))
    good = [{"id": "g1", "image": _png(), "captions": ["a red square", "red"]},
            {"id": "g2", "image": big, "captions": ["a red rectangle", None, "  "]}]  # 2 bad captions removed
    bad = [("empty", {"image": b"", "captions": ["x"]}),
           ("truncated", {"image": big[:len(big) // 2], "captions": ["x"]}),
           ("corrupt", {"image": os.urandom(2000), "captions": ["x"]}),
           ("unsupported_format", {"image": b'<svg xmlns="http://www.w3.org/2000/svg"/>', "captions": ["x"]}),
           ("too_many_pixels", {"image": _claimed_png(20000, 20000), "captions": ["x"]}),
           ("too_many_pixels", {"image": _real_bomb(), "captions": ["x"]}),
           ("missing_caption", {"image": _png(), "captions": None}),
           ("missing_caption", {"image": _png(), "captions": [""]}),
           ("missing_image", {"image": None, "captions": ["x"]})]
    rows = [dict(r, id=f"bad{i}") for i, (_, r) in enumerate(bad)] + good
    pq.write_table(pa.Table.from_pylist(rows[::2] + rows[1::2]), folder / "a_bytes.parquet")
    (folder / "img").mkdir()
    (folder / "img" / "ok.png").write_bytes(_png(color=(0, 200, 0, 255)))
    pq.write_table(pa.table({"id": ["p1", "p2", "p3"], "path": ["img/ok.png", "img/missing.png", None],
                             "captions": [["a green square"], ["x"], ["x"]]}), folder / "b_paths.parquet")
    pq.write_table(pa.table({"id": ["n1", "g3"], "image": [_png(), _png(mode="RGB", color=(0, 0, 255))],
                             "captions": ["x", "a blue square"]}), folder / "c_strings.parquet")  # one caption each
    pq.write_table(pa.table({"id": ["n1"], "image": [_png()], "captions": [7]}), folder / "d_ints.parquet")
    skipped = Counter(reason for reason, _ in bad) + Counter(["unreadable_path", "missing_image", "caption_type"])
    return {"g1", "g2", "g3", "p1", "n1"}, skipped, 2


def test_bad_images_and_captions_are_skipped_and_counted_by_reason(tmp_path):
    good, skipped, removed = _bad_corpus(tmp_path / "corpus")
    rows, report = load_image_text(tmp_path / "corpus")
    assert {r["id"] for r in rows} == good
    assert report.skipped == skipped
    assert report.captions_removed == removed and report.read == len(good) + sum(skipped.values())
    by_id = {r["id"]: r for r in rows}
    assert by_id["g2"]["captions"] == ["a red rectangle"] and by_id["g3"]["captions"] == ["a blue square"]
    assert by_id["p1"]["concept"] == "p1" and decode_image(by_id["p1"]["image"]).getpixel((0, 0)) == (0, 200, 0)


def test_a_built_folder_loads_without_its_stats(built):
    rows, report = load_image_text(built)  # stats.json beside the parquet files is not data
    stats = json.loads((built / "stats.json").read_text())
    assert report.read == len(rows) == sum(s["images"] for s in stats["splits"].values()) and not report.skipped
    test = {r["id"]: r for r in load_image_text(built / "test.parquet")[0]}
    assert all(r["concept"].startswith(("tuxpaint:", "emoji:", "flag")) for r in test.values())


def test_decode_limits_and_transparency():
    assert decode_image(_png(color=(0, 0, 0, 0))).getpixel((3, 3)) == (255, 255, 255)  # alpha on white
    assert check_image(_png((100, 100)), max_bytes=50) == "too_many_bytes"
    assert check_image(_png((100, 100)), max_pixels=9_999) == "too_many_pixels"
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (9, 9, 9)).save(buf, "TIFF")
    assert check_image(buf.getvalue()) == "unsupported_format"
    assert check_image(buf.getvalue(), formats=("TIFF",)) is None
    buf = io.BytesIO()
    Image.effect_noise((200, 200), 60).convert("RGB").save(buf, "JPEG")
    jpeg = buf.getvalue()
    assert check_image(jpeg) is None and check_image(jpeg[:len(jpeg) // 2]) == "truncated"
    png = _png((64, 64))
    assert check_image(png[:-12]) == "truncated"  # pixels complete, end chunk cut off
    with pytest.raises(ImageError) as err:
        decode_image(b"")
    assert err.value.reason == "empty"


def test_missing_columns_name_what_is_needed(tmp_path):
    pq.write_table(pa.table({"id": ["a"], "text": ["x"]}), tmp_path / "x.parquet")
    with pytest.raises(DataError, match=r"missing column\(s\) \['captions', 'image or path'\]"):
        load_image_text(tmp_path / "x.parquet")
