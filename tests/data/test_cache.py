"""ImageCache: decode once into a memory-mapped uint8 array; masks; `cxrfm prepare`."""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from cxrfm.cli import main
from cxrfm.data import cache as cache_module
from cxrfm.data.cache import ImageCache
from cxrfm.data.images import letterbox, letterbox_geometry, read_image
from cxrfm.data.schema import Manifest
from cxrfm.errors import CxrfmError, ImageReadError

SIZE = 32


@pytest.fixture(scope="module")
def manifest(cxr_manifest_path):
    """20 real rows from all four sources, about half of them with a lung mask."""
    full = Manifest.load(cxr_manifest_path)
    rows = []
    for src in full.table["source"].unique():
        rows += list(np.flatnonzero((full.table["source"] == src).to_numpy())[:5])
    return full.subset(sorted(rows))


@pytest.fixture(scope="module")
def built(manifest, tmp_path_factory):
    d = tmp_path_factory.mktemp("cache")
    return ImageCache.build(manifest, SIZE, cache_dir=d, workers=1), d


def expected_row(path) -> np.ndarray:
    return (letterbox(read_image(path), SIZE)[0] * 255).round().to(torch.uint8).numpy()


def test_build_stores_letterboxed_uint8(manifest, built):
    cache, d = built
    assert len(cache) == len(manifest) == 20 and cache.size == SIZE
    assert cache.array.dtype == np.uint8 and cache.array.shape == (20, SIZE, SIZE)
    assert cache.path.parent == d
    assert manifest.content_hash() in cache.path.name and f"-{SIZE}." in cache.path.name
    for i in (0, 7, 19):
        np.testing.assert_array_equal(cache[i], expected_row(manifest.image_paths()[i]))
    with pytest.raises(ValueError):
        cache.array[0, 0, 0] = 1  # read-only memory map


def test_sidecar_records_ids_size_hash(manifest, built):
    cache, _ = built
    meta = json.loads(cache.path.with_suffix(".json").read_text())
    assert meta["ids"] == manifest.ids and meta["size"] == SIZE
    assert meta["manifest_hash"] == manifest.content_hash() and meta["created"]
    assert not [p for p in cache.path.parent.iterdir() if p.name.startswith(".")]  # no temp files left


def test_batch_is_float_in_unit_range(built):
    cache, _ = built
    idx = [3, 0, 3, 11]
    b = cache.batch(idx)
    assert b.dtype == torch.float32 and tuple(b.shape) == (4, 1, SIZE, SIZE)
    assert float(b.min()) >= 0.0 and float(b.max()) <= 1.0
    for k, i in enumerate(idx):
        assert torch.equal(b[k, 0], torch.from_numpy(cache[i]).float() / 255)


def test_rebuild_is_a_noop_and_open_reuses(manifest, built, monkeypatch):
    cache, d = built
    mtime = cache.path.stat().st_mtime_ns

    def no_decoding(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(cache_module, "read_image", no_decoding)
    again = ImageCache.build(manifest, SIZE, cache_dir=d, workers=1)
    assert again.path == cache.path and cache.path.stat().st_mtime_ns == mtime
    opened = ImageCache.open(manifest, SIZE, cache_dir=d)
    np.testing.assert_array_equal(opened.array, cache.array)


def test_parallel_build_equals_serial(manifest, built, tmp_path):
    serial, _ = built
    parallel = ImageCache.build(manifest, SIZE, cache_dir=tmp_path, workers=2)
    np.testing.assert_array_equal(parallel.array, serial.array)


def test_open_missing_or_stale_cache_says_run_prepare(manifest, built, tmp_path):
    with pytest.raises(CxrfmError, match=r"no image cache .* size 48; run `cxrfm prepare .*--size 48"):
        ImageCache.open(manifest, 48, cache_dir=tmp_path)
    _, d = built
    changed = manifest.subset(range(10))  # another content hash: the 20-row cache must not be used
    with pytest.raises(CxrfmError, match="cxrfm prepare"):
        ImageCache.open(changed, SIZE, cache_dir=d)


@pytest.mark.parametrize("workers", [1, 2])
def test_bad_row_raises_naming_file_and_row(manifest, tmp_path, workers):
    bad = tmp_path / "scan.png"
    bad.write_text("not an image")
    df = manifest.table.copy()
    df.loc[13, "image"] = str(bad)  # absolute path: root / abs == abs
    m = Manifest.from_table(df, manifest.root)
    out = tmp_path / "c"
    with pytest.raises(ImageReadError, match=r"scan.png: not a PNG file.*row 15, image column\].*cxrfm prepare"):
        ImageCache.build(m, SIZE, cache_dir=out, workers=workers)
    assert not list(out.iterdir())  # nothing half-written, not even a temp file


def test_mask_cache_aligns_with_images(manifest, built, tmp_path):
    images, _ = built
    masks = ImageCache.build(manifest, SIZE, cache_dir=tmp_path, column="mask", workers=1)
    has = np.array([isinstance(m, str) for m in manifest.table["mask"]])
    assert 0 < has.sum() < len(manifest)
    np.testing.assert_array_equal(masks.has, has)
    assert set(np.unique(masks.array)) <= {0, 255}
    assert (masks.array[~has] == 0).all()
    for i in np.flatnonzero(has):
        m = masks[i] > 0
        h, w = read_image(manifest.image_paths()[i]).shape[1:]
        new_h, new_w, top, left = letterbox_geometry(h, w, SIZE)
        inside = np.zeros_like(m)
        inside[top:top + new_h, left:left + new_w] = True
        assert 0.1 < m.mean() < 0.7 and not (m & ~inside).any()  # lungs, never in the padding
    assert torch.equal(masks.batch(np.flatnonzero(has)).unique(), torch.tensor([0.0, 1.0]))
    assert ImageCache.open(manifest, SIZE, cache_dir=tmp_path, column="mask").has.tolist() == has.tolist()


def test_mask_with_other_aspect_ratio_is_refused(manifest, tmp_path):
    from PIL import Image

    i = int(np.flatnonzero([isinstance(m, str) for m in manifest.table["mask"]])[0])
    Image.new("L", (50, 10), 255).save(tmp_path / "wide_mask.png")
    df = manifest.table.copy()
    df.loc[i, "mask"] = str(tmp_path / "wide_mask.png")
    m = Manifest.from_table(df, manifest.root)
    with pytest.raises(ImageReadError, match=r"wide_mask.png: mask is 50x10 but its image .*another aspect ratio"):
        ImageCache.build(m, SIZE, cache_dir=tmp_path / "c", column="mask", workers=1)


def test_cli_prepare(manifest, tmp_path, capsys, monkeypatch):
    small = manifest.subset(range(12))
    # Manifest.save cannot yet rebase the blank (NaN) cells of 'mask'; images are all this test needs.
    small = Manifest(small.table.drop(columns=["mask"]), small.root, small.path)
    path = small.save(tmp_path / "manifest.csv")  # image paths rebased onto tmp_path
    monkeypatch.setenv("CXRFM_CACHE", str(tmp_path / "env-cache"))
    assert main(["prepare", str(path), "--size", str(SIZE), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "12 images" in out and str(tmp_path / "env-cache") in out
    m = Manifest.load(path)
    cache = ImageCache.open(m, SIZE)  # found through $CXRFM_CACHE
    np.testing.assert_array_equal(cache[5], expected_row(manifest.image_paths()[5]))
    assert main(["prepare", str(path), "--size", str(SIZE), "--cache-dir", str(tmp_path / "c")]) == 0
    assert ImageCache.open(m, SIZE, cache_dir=tmp_path / "c").path.exists()


def test_cli_prepare_bad_image_exits_2(tmp_path, capsys):
    (tmp_path / "a.png").write_text("text")
    (tmp_path / "m.csv").write_text("image,patient_id,source\na.png,p1,local\n")
    assert main(["prepare", str(tmp_path / "m.csv"), "--cache-dir", str(tmp_path / "c"), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "ImageReadError" in err and "a.png: not a PNG file" in err and "row 2" in err


def test_cli_prepare_masks(manifest, tmp_path, capsys):
    df = manifest.table[["image", "patient_id", "source", "mask"]].copy()
    df["image"] = [str(p) for p in manifest.image_paths()]  # absolute paths: no rebasing needed
    df["mask"] = [str(manifest.root / m) if isinstance(m, str) else None for m in df["mask"]]
    df.to_csv(tmp_path / "m.csv", index=False)
    n_masks = int(df["mask"].notna().sum())
    assert main(["prepare", str(tmp_path / "m.csv"), "--size", str(SIZE), "--cache-dir", str(tmp_path / "c"),
                 "--workers", "1", "--masks"]) == 0
    assert f"({n_masks} of 20 rows have a mask)" in capsys.readouterr().out
    masks = ImageCache.open(Manifest.load(tmp_path / "m.csv"), SIZE, cache_dir=tmp_path / "c", column="mask")
    assert int(masks.has.sum()) == n_masks


# ---------------------------------------------------------------- stale images, temp files, modes
def _local_manifest(tmp_path, n: int = 3) -> Manifest:
    """n random 64x48 grey PNGs written uncompressed, so that every file has the same size on disk."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (48, 64), dtype=np.uint8)).save(tmp_path / f"{i}.png", compress_level=0)
    (tmp_path / "m.csv").write_text("image,patient_id,source\n" + "".join(f"{i}.png,p{i},local\n" for i in range(n)))
    return Manifest.load(tmp_path / "m.csv")


def _replace_keeping_mtime(src, dst) -> None:
    """Overwrite ``dst`` in place with ``src``'s bytes and put its old modification time back (``cp -p``)."""
    before = dst.stat()
    dst.write_bytes(src.read_bytes())
    os.utime(dst, ns=(before.st_atime_ns, before.st_mtime_ns))
    for _ in range(100):  # the kernel's file clock ticks every few ms: wait for one tick if need be
        if dst.stat().st_ctime_ns != before.st_ctime_ns:
            break
        time.sleep(0.01)
        os.utime(dst, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert dst.stat().st_size == before.st_size and dst.stat().st_mtime_ns == before.st_mtime_ns


def test_image_replaced_in_place_is_decoded_again(tmp_path):
    m = _local_manifest(tmp_path)
    first = ImageCache.build(m, SIZE, cache_dir=tmp_path / "c", workers=1)
    old_row = first[1].copy()
    target = tmp_path / "1.png"
    _replace_keeping_mtime(tmp_path / "2.png", target)  # same size, same mtime: only the inode change time moved
    with pytest.raises(CxrfmError, match=r"image files of this manifest changed .* stale; run `cxrfm prepare"):
        ImageCache.open(m, SIZE, cache_dir=tmp_path / "c")
    again = ImageCache.build(m, SIZE, cache_dir=tmp_path / "c", workers=1)
    assert again.path == first.path  # rebuilt in place, not a second 330 MB file beside the old one
    np.testing.assert_array_equal(again[1], expected_row(target))
    assert not np.array_equal(again[1], old_row)
    np.testing.assert_array_equal(ImageCache.open(m, SIZE, cache_dir=tmp_path / "c")[1], again[1])
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == sorted([again.path.name, again.path.with_suffix(".json").name])


def test_unchanged_images_reuse_the_cache(tmp_path, monkeypatch):
    m = _local_manifest(tmp_path)
    ImageCache.build(m, SIZE, cache_dir=tmp_path / "c", workers=1)
    monkeypatch.setattr(cache_module, "_decode_all", lambda *a, **k: pytest.fail("decoded again"))
    ImageCache.build(m, SIZE, cache_dir=tmp_path / "c", workers=1)


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_failure_mid_write_leaves_no_temp_file(tmp_path, monkeypatch, exc):
    m = _local_manifest(tmp_path)

    def one_block_then_fail(jobs, size, column, where, workers):
        yield 0, np.zeros((1, size, size), np.uint8), np.ones(1, bool)
        raise exc("killed mid-write")

    monkeypatch.setattr(cache_module, "_decode_all", one_block_then_fail)
    with pytest.raises(exc):
        ImageCache.build(m, SIZE, cache_dir=tmp_path / "c", workers=1)
    assert list((tmp_path / "c").iterdir()) == []


def test_temp_file_of_a_killed_prepare_is_removed_by_the_next(tmp_path):
    m = _local_manifest(tmp_path)
    path = ImageCache.file_path(m, SIZE, tmp_path / "c")
    path.parent.mkdir()
    left = path.parent / f".{path.name}.q8w_3zx1.tmp"  # what `kill -9` during prepare left behind
    left.write_bytes(b"\0" * 100_000)
    cache = ImageCache.build(m, SIZE, cache_dir=tmp_path / "c", workers=1)
    assert not left.exists()
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([path.name, path.with_suffix(".json").name])
    assert len(cache) == 3


def test_sigterm_during_prepare_leaves_no_temp_file(tmp_path):
    m = _local_manifest(tmp_path)
    script = textwrap.dedent(f"""
        import time
        import numpy as np
        from cxrfm.cli import main
        from cxrfm.data import cache
        def slow(jobs, size, column, where, workers):
            yield 0, np.zeros((1, size, size), np.uint8), np.ones(1, bool)
            print("writing", flush=True)
            time.sleep(60)
        cache._decode_all = slow
        raise SystemExit(main(["prepare", {str(m.path)!r}, "--size", "{SIZE}", "--cache-dir", {str(tmp_path / "c")!r}]))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        assert [p for p in (tmp_path / "c").iterdir() if p.name.endswith(".tmp")]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "interrupted" in proc.stderr.read()
    assert list((tmp_path / "c").iterdir()) == []


def test_cache_files_follow_the_umask(tmp_path):
    m = _local_manifest(tmp_path)
    old = os.umask(0o022)
    try:
        cache = ImageCache.build(m, SIZE, cache_dir=tmp_path / "c", workers=1)
    finally:
        os.umask(old)
    for p in (cache.path, cache.path.with_suffix(".json")):
        assert stat.S_IMODE(p.stat().st_mode) == 0o644
