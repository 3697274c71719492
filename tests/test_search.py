"""Photo search (issue #27): `tinyvit index` / `tinyvit search` and `tinyvit.Index` — exact against a
brute-force cosine search over tinyvit.embed, incremental, crash-safe, one-line refusals."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli, small_vit_file
from PIL import Image

import tinyvit
import tinyvit.run.runtime as runtime
import tinyvit.run.search.index as search_index
from tinyvit.run.runner import Runner
from tinyvit.run.search import Index
from tinyvit.run.search.query import Term, parse_query
from tinyvit.run.search.vectors import Photo

TIE = 1e-6


def _photo(path: Path, seed: int, size: tuple[int, int] = (48, 40)) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return small_vit_file(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def other_model_file(tmp_path_factory) -> Path:
    return small_vit_file(tmp_path_factory.mktemp("other"), seed=1)


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i in range(10):
        _photo(folder / ("sub" if i % 3 == 0 else "") / f"p{i:02d}.png", seed=i, size=(40 + 3 * i, 36 + i))
    return folder


def _files(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*.png"))


def _brute_force(files: list[str], model: Path, q: torch.Tensor, k: int) -> list[tuple[str, float]]:
    vectors = tinyvit.embed(files, str(model), normalize=True)
    scores = vectors @ torch.nn.functional.normalize(q, dim=0)
    top = torch.topk(scores, k)
    return [(files[i], float(s)) for s, i in zip(top.values, top.indices.tolist(), strict=True)]


def _same_ranking(hits, expected) -> None:
    """Equal scores (1e-6), and equal paths where the scores are not tied."""
    assert len(hits) == len(expected)
    for h, (path, score) in zip(hits, expected, strict=True):
        assert abs(h.score - score) <= TIE, (h, path, score)
        if h.path != path:
            assert any(abs(e - h.score) <= TIE for p, e in expected if p == h.path), (h, path)


def _one_line_error(ran) -> str:
    lines = ran.stderr.strip().splitlines()
    assert ran.returncode == 1 and len(lines) == 1 and lines[0].startswith("tinyvit: error: "), ran
    return lines[0]


# ---------------------------------------------------------------------------------------------
# Exact search


def test_image_queries_equal_a_brute_force_search_over_embed(tmp_path, photos, model_file):
    index = Index.open(tmp_path / "photos.tvi", model_file, create=True)
    summary = index.update([photos])
    assert summary.to_dict() == {"added": 10, "updated": 0, "removed": 0, "unchanged": 0, "failed": 0}
    files = _files(photos)
    for query in (files[3], files[7]):
        q = tinyvit.embed(query, str(model_file))
        _same_ranking(index.search(query, top_k=5), _brute_force(files, model_file, q, 5))
    # a weighted sum of image terms, as rclip takes it: unit embeddings times weights, summed
    unit = tinyvit.embed([files[1], files[2], files[5]], str(model_file), normalize=True)
    q = unit[0] + 2 * unit[1] - 0.5 * unit[2]
    hits = index.search(f"{files[1]} + 2:{files[2]} - 0.5:{files[5]}", top_k=10)
    _same_ranking(hits, _brute_force(files, model_file, q, 10))
    assert [h.rank for h in hits] == list(range(1, 11))


def test_the_cli_prints_rank_score_path_and_json_hits(tmp_path, photos, model_file):
    out = tmp_path / "photos.tvi"
    ran = cli("index", photos, "--model", model_file, "-o", out, "--json")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == '{"added": 10, "updated": 0, "removed": 0, "unchanged": 0, "failed": 0}'
    files = _files(photos)
    expected = _brute_force(files, model_file, tinyvit.embed(files[4], str(model_file)), 3)
    text = cli("search", out, files[4], "--top-k", "3")
    assert text.returncode == 0, text.stderr
    rows = [re.fullmatch(r"\s*(\d+)\s+(\S+)\s+(.+)", line).groups() for line in text.stdout.strip().splitlines()]
    assert [int(r[0]) for r in rows] == [1, 2, 3] and rows[0][2] == files[4]
    assert all(abs(float(r[1]) - s) < 1e-4 for r, (_, s) in zip(rows, expected, strict=True))
    ran = cli("search", out, files[4], "--top-k", "3", "--json")
    import json

    hits = [json.loads(line) for line in ran.stdout.strip().splitlines()]
    assert [sorted(h) for h in hits] == [["path", "rank", "score"]] * 3
    assert hits[0]["path"] == files[4] and abs(hits[0]["score"] - 1) < 1e-5


def test_a_progress_bar_on_a_terminal_only(tmp_path, photos, model_file):
    ran = cli("index", photos, "--model", model_file, "-o", tmp_path / "a.tvi", terminal=True)
    assert ran.returncode == 0 and "index: 100%" in ran.stderr and "10/10" in ran.stderr, ran.stderr
    _photo(photos / "one more.png", seed=99)
    ran = cli("index", photos, "-o", tmp_path / "a.tvi")  # into a pipe: no bar
    assert ran.returncode == 0 and ran.stderr == "", ran.stderr


def test_query_parsing_as_rclip_takes_it(tmp_path):
    photo = _photo(tmp_path / "a b + c.png", 0)  # a file is one term, whatever its name holds
    assert parse_query("sunset + 2:beach - people") == [Term(1, "sunset"), Term(2, "beach"), Term(-1, "people")]
    assert parse_query("t-shirt - 0.5:dog") == [Term(1, "t-shirt"), Term(-0.5, "dog")]
    assert parse_query(["cat", f"{photo}"]) == [Term(1, "cat"), Term(1, image=str(photo))]
    plain = _photo(tmp_path / "b.png", 1)
    assert parse_query(f"night - 2:{plain}") == [Term(1, "night"), Term(-2, image=str(plain))]
    with pytest.raises(tinyvit.TinyViTError, match="empty term"):
        parse_query("sunset + ")


def test_float16_vectors_score_within_1e_3_of_float32(tmp_path, photos, model_file):
    ran = cli("index", photos, "--model", model_file, "-o", tmp_path / "half.tvi", "--vectors", "float16")
    assert ran.returncode == 0, ran.stderr
    index = Index.open(tmp_path / "half.tvi")
    assert index._store.vectors().dtype == np.float16
    files = _files(photos)
    expected = dict(_brute_force(files, model_file, tinyvit.embed(files[2], str(model_file)), 10))
    hits = index.search(files[2], top_k=10)
    assert hits[0].path == files[2] and all(abs(h.score - expected[h.path]) < 1e-3 for h in hits)


# ---------------------------------------------------------------------------------------------
# Incremental updates


def test_photos_read_once_give_the_pixels_and_vectors_of_embed(tmp_path, model_file):
    """The index reads each file once, hashes those bytes and decodes the same bytes: the pixels are
    those of the model's own pipeline (decoded from the file: full size, bicubic resize, center crop),
    bit for bit, on real photos (scikit-image's, as JPEG; one 12 MP, one stored rotated by EXIF)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in sorted((Path(__file__).parent / "fixtures" / "photos").glob("*.jpg")):
        shutil.copy(p, folder / p.name)
    with Image.open(folder / "astronaut.jpg") as im:
        big = im.resize((4000, 3000), Image.Resampling.BICUBIC)
    big.save(folder / "big.jpg", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: shown after a 90° turn
    big.resize((800, 600)).save(folder / "turned.jpg", quality=90, exif=exif)
    files = sorted(str(p) for p in folder.glob("*.jpg"))
    index = Index.open(tmp_path / "p.tvi", model_file, create=True)
    assert index.update([folder]).added == len(files)
    runner = index.runner()
    for f in files:
        photo = Photo(f)
        assert torch.equal(runner.decode(photo, f), tinyvit.preprocess(f, runner.spec))  # the same pixels
        assert photo.sha256 == hashlib.sha256(Path(f).read_bytes()).hexdigest()
    gone = str(folder / "gone.jpg")  # a file removed between listing and reading: the error a path gives
    assert runner.decode(Photo(gone), gone) == runner.decode(gone, gone)
    paths, rows, vectors = index._live()
    expected = tinyvit.embed(paths, str(model_file), normalize=True, batch_size=8)
    assert torch.allclose(torch.from_numpy(np.asarray(vectors)[rows]), expected, atol=TIE, rtol=0)
    assert {p: r.sha256 for p, r in index._store.files().items()} == {
        f: hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in files
    }


def _record_embedded(monkeypatch) -> list[str]:
    seen: list[str] = []
    real = Runner.decode

    def decode(self, image, name=None):
        seen.append(image.name if isinstance(image, Photo) else os.fspath(image))
        return real(self, image, name)

    monkeypatch.setattr(Runner, "decode", decode)
    return seen


def test_updates_count_added_changed_removed_and_leave_unchanged_files_unread(tmp_path, photos, model_file,
                                                                                monkeypatch):  # fmt: skip
    out = tmp_path / "photos.tvi"
    assert Index.open(out, model_file, create=True).update([photos]).added == 10
    files = _files(photos)
    _photo(Path(files[0]), seed=100)  # changed content (and size)
    same = Path(files[1])
    os.utime(same, ns=(time.time_ns(), time.time_ns() + 10**9))  # a new time, the same content
    Path(files[2]).unlink()  # removed
    new = _photo(photos / "sub" / "new.png", seed=200)
    embedded = _record_embedded(monkeypatch)
    hashed: list[str] = []
    real_sha = search_index.sha256_file
    monkeypatch.setattr(search_index, "sha256_file", lambda p: hashed.append(os.fspath(p)) or real_sha(p))
    summary = Index.open(out).update([photos])
    assert summary.to_dict() == {"added": 1, "updated": 1, "removed": 1, "unchanged": 8, "failed": 0}
    assert sorted(embedded) == sorted([files[0], str(new)])  # only what changed went through the model
    assert sorted(set(hashed)) == sorted([files[0], files[1]])  # unchanged size and time: never read
    # what was embedded was read once: hashed from the bytes it was decoded from, not read again to hash
    stored = Index.open(out)._store.files()
    assert stored[str(new)].sha256 == hashlib.sha256(new.read_bytes()).hexdigest()
    assert stored[files[0]].sha256 == hashlib.sha256(Path(files[0]).read_bytes()).hexdigest()
    index = Index.open(out)
    now = _files(photos)
    assert sorted(index.paths) == now
    _same_ranking(index.search(files[0], top_k=9), _brute_force(now, model_file, tinyvit.embed(files[0],
                  str(model_file)), 9))  # fmt: skip

    # nothing changed: nothing read, and the model is not even loaded
    embedded.clear()
    monkeypatch.setattr(runtime, "model_for", lambda *a, **k: pytest.fail("the model was loaded"))
    ran = cli("index", photos, "-o", out, "--json")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == '{"added": 0, "updated": 0, "removed": 0, "unchanged": 10, "failed": 0}'
    assert embedded == []
    # … nor torch imported (an unchanged library of 10,000 photos re-indexes in well under 2 s)
    code = ("import sys\nfrom tinyvit.deploy.cli import main\n"
            f"assert main(['index', {str(photos)!r}, '-o', {str(out)!r}, '--model', {str(model_file)!r}]) == 0\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_a_folder_emptied_of_photos_has_them_removed(tmp_path, photos, model_file):
    out = tmp_path / "photos.tvi"
    Index.open(out, model_file, create=True).update([photos])
    for f in (photos / "sub").glob("*.png"):
        f.unlink()
    assert Index.open(out).update([photos / "sub", photos]).to_dict()["removed"] == 4
    for f in photos.glob("*.png"):
        f.unlink()
    ran = cli("index", photos, "-o", out, "--json")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == '{"added": 0, "updated": 0, "removed": 6, "unchanged": 0, "failed": 0}'
    assert Index.open(out).search(np.ones(64, np.float32)) == []


def test_unreadable_images_are_one_line_each_and_counted(tmp_path, photos, model_file):
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    (photos / "sub" / "empty.png").write_bytes(b"")
    ran = cli("index", photos, "--model", model_file, "-o", tmp_path / "p.tvi", "--json")
    assert ran.returncode == 1
    assert ran.stdout.strip() == '{"added": 10, "updated": 0, "removed": 0, "unchanged": 0, "failed": 2}'
    errors = ran.stderr.strip().splitlines()
    assert len(errors) == 2 and all(e.startswith("tinyvit: error: '") for e in errors), errors
    assert any("broken.jpg" in e for e in errors) and any("empty.png" in e for e in errors)


def test_replaced_rows_are_compacted_and_search_stays_exact(tmp_path, photos, model_file, monkeypatch):
    monkeypatch.setattr(search_index, "COMPACT_MIN", 0)
    out = tmp_path / "photos.tvi"
    index = Index.open(out, model_file, create=True)
    index.update([photos])
    files = _files(photos)
    for f in files[:6]:
        _photo(Path(f), seed=hash(f) % 1000 + 50)
    assert index.update([photos]).updated == 6  # 6 dead rows of 16: not yet
    for f in files[:6]:
        _photo(Path(f), seed=hash(f) % 1000 + 60, size=(33, 33))
    assert index.update([photos]).updated == 6  # 12 dead of 22 > 10 live: rewritten
    assert sorted(p.name for p in out.glob("vectors-*.bin")) == ["vectors-1.bin"]
    assert Index.open(out)._store.meta["rows"] == 10
    q = tinyvit.embed(files[0], str(model_file))
    _same_ranking(Index.open(out).search(files[0], top_k=10), _brute_force(files, model_file, q, 10))


# ---------------------------------------------------------------------------------------------
# Crash safety

KILLED_UPDATE = """
import sys, time
import tinyvit.run.runtime as runtime
import tinyvit.run.search.index as search_index
import tinyvit.run.search.store as store
from tinyvit.run.search import Index

search_index.COMMIT_EVERY = 3
real = store._append
calls = []

def append(path, offset, vectors):
    real(path, offset, vectors)
    calls.append(1)
    if len(calls) == 3:  # the third batch's vectors are on disk, its transaction not yet committed
        print("appended", flush=True)
        time.sleep(600)

store._append = append
Index.open(sys.argv[1], sys.argv[2], create=True).update([sys.argv[3]])
"""


def test_a_kill_9_in_the_middle_of_an_update_leaves_the_previous_index_usable(tmp_path, photos, model_file):
    out = tmp_path / "photos.tvi"
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(KILLED_UPDATE), out, model_file, photos],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        line = proc.stdout.readline()
        assert line.strip() == "appended", proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    index = Index.open(out)
    committed = index.paths
    assert len(committed) == 6  # two whole transactions; the third, killed before its commit, is not there
    assert (out / "vectors-0.bin").stat().st_size > 6 * 64 * 4  # its vectors were written, and are ignored
    q = tinyvit.embed(committed[0], str(model_file))
    _same_ranking(index.search(committed[0], top_k=6), _brute_force(sorted(committed), model_file, q, 6))
    summary = Index.open(out).update([photos])  # going on: the rest, once each
    assert summary.to_dict() == {"added": 4, "updated": 0, "removed": 0, "unchanged": 6, "failed": 0}
    files = _files(photos)
    _same_ranking(Index.open(out).search(files[5], top_k=10),
                  _brute_force(files, model_file, tinyvit.embed(files[5], str(model_file)), 10))  # fmt: skip


INTERRUPTED_INDEX = KILLED_UPDATE.replace(
    "Index.open(sys.argv[1], sys.argv[2], create=True).update([sys.argv[3]])",
    "from tinyvit.deploy.cli import main\n"
    "sys.exit(main(['index', sys.argv[3], '--model', sys.argv[2], '-o', sys.argv[1]]))",
)


def test_ctrl_c_in_tinyvit_index_keeps_what_was_committed(tmp_path, photos, model_file):
    out = tmp_path / "photos.tvi"
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(INTERRUPTED_INDEX), out, model_file, photos],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "appended"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "keeps what was committed" in err, err
    assert len(Index.open(out)) == 6
    assert Index.open(out).update([photos]).to_dict()["added"] == 4


# ---------------------------------------------------------------------------------------------
# One-line refusals


def test_another_model_a_missing_index_and_words_for_an_image_model_are_one_line_each(
    tmp_path, photos, model_file, other_model_file
):
    out = tmp_path / "photos.tvi"
    assert cli("index", photos, "--model", model_file, "-o", out).returncode == 0
    query = _files(photos)[0]
    line = _one_line_error(cli("search", out, query, "--model", other_model_file))
    assert "photos.tvi" in line and "differs in its weights" in line
    line = _one_line_error(cli("index", photos, "--model", other_model_file, "-o", out))
    assert "differs in its weights" in line
    line = _one_line_error(cli("search", tmp_path / "nope.tvi", query))
    assert "'" + str(tmp_path / "nope.tvi") + "': no such index" in line
    line = _one_line_error(cli("search", out, "a red car"))
    assert "text tower" in line
    with pytest.raises(tinyvit.TinyViTError, match="differs in its weights"):
        Index.open(out, other_model_file).search(query)


# ---------------------------------------------------------------------------------------------
# Near-duplicates, the page, Ray's rows


def test_duplicates_group_copies_and_nothing_else(tmp_path, photos, model_file):
    files = _files(photos)
    shutil.copy(files[3], photos / "copy of p03.png")
    Image.open(files[3]).resize((41, 37)).save(photos / "p03 smaller.png")
    out = tmp_path / "photos.tvi"
    Index.open(out, model_file, create=True).update([photos])
    vectors = tinyvit.embed(_files(photos), str(model_file), normalize=True)
    sims = vectors @ vectors.T
    threshold = 0.999
    index = Index.open(out)
    groups = index.duplicates(threshold)
    group = [p for p, _ in groups[0]]
    assert str(photos / "copy of p03.png") in group and files[3] in group
    linked = {(a, b) for a in range(len(vectors)) for b in range(len(vectors)) if a != b and sims[a, b] >= threshold}
    assert {p for g in groups for p, _ in g} == {_files(photos)[a] for a, _ in linked}
    ran = cli("search", out, "--duplicates", "--threshold", str(threshold), "--json")
    assert ran.returncode == 0 and '"group": 1' in ran.stdout


def test_the_html_page_holds_every_hits_thumbnail_and_score(tmp_path, photos, model_file):
    out = tmp_path / "photos.tvi"
    Index.open(out, model_file, create=True).update([photos])
    page = tmp_path / "hits.html"
    files = _files(photos)
    ran = cli("search", out, files[2], "--top-k", "7", "--json", "--html", page)
    assert ran.returncode == 0, ran.stderr
    import base64
    import io
    import json

    hits = [json.loads(line) for line in ran.stdout.splitlines()]
    text = page.read_text()
    thumbs = re.findall(r'<img src="data:image/jpeg;base64,([^"]+)"', text)
    assert len(thumbs) == 7 and "http" not in text.split("<body>")[1].replace("file://", "")
    for b64 in thumbs:
        assert max(Image.open(io.BytesIO(base64.b64decode(b64))).size) <= 256
    for hit in hits:
        assert f"{hit['score']:.4f}" in text and hit["path"] in text


def test_index_ray_reads_the_parquet_rows_embed_ray_writes(tmp_path, photos, model_file):
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = _files(photos)
    vectors = tinyvit.embed(files, str(model_file))  # embed --ray without --normalize: the index normalizes
    folder = tmp_path / "embeddings.parquet"
    folder.mkdir()
    emb = [v.tolist() for v in vectors] + [None]
    table = pa.table({"path": [*files, "/gone/bad.jpg"], "embedding": pa.array(emb, pa.list_(pa.float32())),
                      "error": [None] * len(files) + ["not an image"]})  # fmt: skip
    pq.write_table(table.slice(0, 6), folder / "part-0.parquet")
    pq.write_table(table.slice(6), folder / "part-1.parquet")
    out = tmp_path / "photos.tvi"
    ran = cli("index", "--ray", folder, "--model", model_file, "-o", out, "--json")
    assert ran.returncode == 1 and "/gone/bad.jpg" in ran.stderr
    assert ran.stdout.strip() == '{"added": 10, "updated": 0, "removed": 0, "unchanged": 0, "failed": 1}'
    q = tinyvit.embed(files[6], str(model_file))
    _same_ranking(Index.open(out).search(files[6], top_k=10), _brute_force(files, model_file, q, 10))
    ran = cli("index", photos, "-o", out, "--json")  # the same files, seen locally: their size and time match
    assert ran.stdout.strip() == '{"added": 0, "updated": 0, "removed": 0, "unchanged": 10, "failed": 0}'


# ---------------------------------------------------------------------------------------------
# Words: the text tower of a CLIP checkpoint (tests/test_zeroshot.py's open_clip folder)


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory) -> str:
    from test_zeroshot import build

    return build("open_clip_clip", tmp_path_factory.mktemp("clip") / "open_clip_clip")


def test_word_and_mixed_queries_equal_a_brute_force_search_over_embed_and_embed_text(tmp_path, photos, clip_folder):
    out = tmp_path / "photos.tvi"
    ran = cli("index", photos, "--model", clip_folder, "-o", out, "--json")
    assert ran.returncode == 0, ran.stderr
    files = _files(photos)
    images = tinyvit.embed(files, clip_folder, normalize=True)
    index = Index.open(out)
    for words in ("a photo of a cat", "sunset over the sea"):
        q = tinyvit.embed_text(words, clip_folder)
        _same_ranking(index.search(words, top_k=10), _brute_force(files, clip_folder, q, 10))
    cat, dog = tinyvit.embed_text(["cat", "dog"], clip_folder, normalize=True)
    q = cat + 2 * images[3] - 0.5 * dog
    _same_ranking(index.search(f"cat + 2:{files[3]} - 0.5:dog", top_k=10), _brute_force(files, clip_folder, q, 10))
    ran = cli("search", out, "cat", "--top-k", "3", "--json")
    assert ran.returncode == 0 and len(ran.stdout.splitlines()) == 3, ran.stderr


def test_past_the_ann_size_an_ann_file_serves_queries_scored_exactly(tmp_path, model_file, monkeypatch):
    pytest.importorskip("faiss")
    from tinyvit.run.search import ann

    monkeypatch.setattr(ann, "ANN_MIN_ROWS", 1000)
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((40, 64)).astype(np.float32)
    vectors = centers[rng.integers(0, 40, 3000)] + 0.5 * rng.standard_normal((3000, 64)).astype(np.float32)
    index = Index.open(tmp_path / "big.tvi", model_file, create=True)
    index.ingest((f"s3://bucket/{i:05d}.jpg", v, None) for i, v in enumerate(vectors))
    assert [p.name for p in (tmp_path / "big.tvi").glob("ann-*.faiss")] == ["ann-vectors-0.faiss"]
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    found = 0
    for q in centers[:20] + 0.5 * rng.standard_normal((20, 64)).astype(np.float32):
        approximate, exact = index.search(q, top_k=10), index.search(q, top_k=10, exact=True)
        truth = unit @ (q / np.linalg.norm(q))
        for h in approximate:  # the scores shown are exact cosines
            assert abs(h.score - truth[int(h.path[-9:-4])]) < 1e-5
        found += len({h.path for h in approximate} & {h.path for h in exact})
    assert found / 200 >= 0.98
