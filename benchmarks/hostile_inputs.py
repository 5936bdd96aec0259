"""Feed cxrfm the inputs a hostile or careless user would, and classify what happens.

Every case runs the real entry point (``cxrfm.cli.main`` in-process, the HTTP app through Starlette's
test client, or the library call a user would make) on a fresh workspace, then checks the outcome:

* ``clear error``  the command refused with a CxrfmError (exit 2) whose message names the problem;
* ``handled``      it went on and did the right thing (checked: rows kept, pixels right, refused upload...);
* ``crash``        an uncaught exception (a traceback reached the user);
* ``silent wrong`` it exited 0 but the output is wrong;
* ``lost``         an input or a row was destroyed or dropped without a trace.

The last three must be 0. Prints the table (markdown, for docs/robustness.md) and the counts::

    CXRFM_DATA=../shared/data .venv/bin/python benchmarks/hostile_inputs.py [--only NAME ...] [--out FILE]
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

VERDICTS = ("clear error", "handled", "crash", "silent wrong", "lost")


@dataclass
class Outcome:
    verdict: str
    what: str


class Workspace:
    """A temp folder with a small manifest of bundled-sample images and, on demand, a tiny trained run."""

    def __init__(self, root: Path):
        from cxrfm.paths import SAMPLE_DIR

        self.root = root
        self.sample = SAMPLE_DIR
        self._run: Path | None = None

    def manifest(self, n: int = 40, name: str = "m") -> Path:
        """n sample rows (images copied, so cases may damage them) -> folder/manifest.csv."""
        d = self.root / name
        (d / "images").mkdir(parents=True, exist_ok=True)
        df = pd.read_csv(self.sample / "manifest.csv").groupby("source", group_keys=False).head(max(1, n // 4)).head(n)
        for p in df["image"]:
            shutil.copy(self.sample / p, d / "images" / Path(p).name)
        df["image"] = ["images/" + Path(p).name for p in df["image"]]
        df["mask"] = ""
        df.to_csv(d / "manifest.csv", index=False)
        return d / "manifest.csv"

    def run(self) -> Path:
        """A tiny-cpu run, 1 epoch on 120 sample rows (trained once per workspace)."""
        if self._run is None:
            m = self.manifest(120, "train")
            out = self.root / "run"
            rc, _, err, exc = cli(["pretrain", "--data", str(m), "--out", str(out), "--config", "tiny-cpu",
                                   "--curate", "none", "--budget", "1", "--epochs", "1", "--no-progress",
                                   "--cache-dir", str(self.root / "cache")])
            if rc != 0 or exc:
                raise RuntimeError(f"could not train the workspace run: rc={rc} {err[-500:]} {exc}")
            self._run = out
        return self._run


def cli(argv: list[str]) -> tuple[int, str, str, str | None]:
    """(exit code, stdout, stderr, traceback or None) of ``cxrfm ARGV`` run in-process."""
    from cxrfm.cli import main

    out, err = io.StringIO(), io.StringIO()
    tb = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse errors exit 2 with usage: a clear error
            rc = int(e.code or 0) if not isinstance(e.code, str) else 2
        except BaseException:  # noqa: BLE001 - what a user would see as a traceback
            rc, tb = 1, traceback.format_exc()
    return rc, out.getvalue(), err.getvalue(), tb


def refused(rc: int, err: str, tb: str | None, *words: str) -> Outcome | None:
    """The outcome of a call expected to refuse: clear error when it did so with a message."""
    if tb:
        return Outcome("crash", tb.strip().splitlines()[-1][:160])
    if rc == 2 and err.strip() and all(w.lower() in err.lower() for w in words):
        return Outcome("clear error", err.strip().splitlines()[-1][:160])
    return None


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------- the cases
CASES: list[tuple[str, str, Callable[[Workspace], Outcome]]] = []


def case(name: str, what: str):
    def deco(fn):
        CASES.append((name, what, fn))
        return fn
    return deco


@case("ingest-over-own-input", "`cxrfm ingest D/manifest.csv --format manifest --out D/`")
def _ingest_over_input(ws: Workspace) -> Outcome:
    m = ws.manifest(12, "own")
    before = sha(m)
    rc, out, err, tb = cli(["ingest", str(m), "--format", "manifest", "--out", str(m.parent)])
    if sha(m) != before:
        return Outcome("lost", "the input manifest was overwritten")
    return refused(rc, err, tb) or Outcome("handled" if rc == 0 else "crash", (out + err).strip()[-160:])


@case("ingest-missing-images", "a manifest whose 3 rows point to images that are gone")
def _ingest_missing(ws: Workspace) -> Outcome:
    m = ws.manifest(12, "missing")
    df = pd.read_csv(m)
    for p in df["image"][:3]:
        (m.parent / p).unlink()
    out_dir = ws.root / "missing_out"
    rc, out, err, tb = cli(["ingest", str(m), "--format", "manifest", "--out", str(out_dir)])
    if tb:
        return Outcome("crash", tb.strip().splitlines()[-1])
    skipped = out_dir / "skipped_rows.csv"
    if not skipped.exists():
        return Outcome("lost", "no skipped-rows file")
    s = pd.read_csv(skipped)
    kept_cols = set(df.columns) <= set(s.columns)
    ok = len(s) == 3 and kept_cols and (s["labels"].astype(str).tolist() == df["labels"][:3].astype(str).tolist())
    return Outcome("handled" if ok else "lost", f"{len(s)} rows in skipped_rows.csv, every column kept: {kept_cols}")


@case("ingest-truncated-png", "a PNG cut in half")
def _ingest_truncated(ws: Workspace) -> Outcome:
    m = ws.manifest(12, "trunc")
    p = m.parent / pd.read_csv(m)["image"][0]
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    out_dir = ws.root / "trunc_out"
    rc, out, err, tb = cli(["ingest", str(m), "--format", "manifest", "--out", str(out_dir)])
    if tb:
        return Outcome("crash", tb.strip().splitlines()[-1])
    kept = pd.read_csv(out_dir / "manifest.csv")
    skipped = out_dir / "skipped_rows.csv"
    if len(kept) == 12:
        return Outcome("silent wrong", "the truncated image passed ingest")
    why = pd.read_csv(skipped).iloc[0].to_dict() if skipped.exists() else {}
    return Outcome("handled" if skipped.exists() else "lost", f"skipped with reason: {str(why.get('skip_reason', '?'))[:90]}")


@case("ingest-unknown-labels", "covid-chestxray leaf `Bacterial` and an unknown `Zebra` label")
def _ingest_labels(ws: Workspace) -> Outcome:
    m = ws.manifest(12, "labels")
    df = pd.read_csv(m)
    src = "covid-chestxray-dataset"
    df.loc[0, ["source", "labels"]] = [src, "Bacterial"]
    df.loc[1, ["source", "labels"]] = [src, "Zebra"]
    df.to_csv(m, index=False)
    out_dir = ws.root / "labels_out"
    rc, out, err, tb = cli(["ingest", str(m), "--format", "manifest", "--out", str(out_dir)])
    if tb:
        return Outcome("crash", tb.strip().splitlines()[-1])
    if rc != 0:
        return Outcome("lost", f"the load stopped: {err.strip()[-120:]}")
    from cxrfm import FINDINGS, Manifest

    got = Manifest.load(out_dir / "manifest.csv")
    y = got.labels()
    row0 = y[0, FINDINGS.index("Bacterial pneumonia")] == 1
    unmapped = (out_dir / "unmapped_labels.csv").exists()
    rc2, _, err2, tb2 = cli(["ingest", str(m), "--format", "manifest", "--out", str(ws.root / "labels_strict"),
                             "--strict"])
    strict = refused(rc2, err2, tb2, "Zebra")
    ok = len(got) == 12 and row0 and unmapped and strict is not None and strict.verdict == "clear error"
    return Outcome("handled" if ok else "silent wrong",
                   f"12 rows kept: {len(got) == 12}; Bacterial -> Bacterial pneumonia: {row0}; Zebra listed: "
                   f"{unmapped}; --strict: {strict.verdict if strict else 'no error'}")


@case("label-whitespace-report", "`cxrfm label` on a table with a whitespace-only report")
def _label_blank(ws: Workspace) -> Outcome:
    t = ws.root / "blank.csv"
    pd.DataFrame({"id": ["a", "b", "c"], "report": ["No pneumothorax.", "   \n ", "Right pleural effusion."]}).to_csv(t, index=False)
    out = ws.root / "blank_labels.csv"
    rc, o, err, tb = cli(["label", str(t), "--out", str(out)])
    if tb:
        return Outcome("crash", tb.strip().splitlines()[-1])
    got = pd.read_csv(out)
    return Outcome("handled" if len(got) == 3 else "lost", f"{len(got)} of 3 rows in the output")


@case("label-1mb-report", "`cxrfm label` on a table with a 1 MB report")
def _label_huge(ws: Workspace) -> Outcome:
    t = ws.root / "huge.csv"
    pd.DataFrame({"id": ["a", "b"], "report": ["There is a small left pleural effusion. " * 26000,
                                               "Heart size is normal. No pneumothorax."]}).to_csv(t, index=False)
    out = ws.root / "huge_labels.csv"
    rc, o, err, tb = cli(["label", str(t), "--out", str(out)])
    if tb:
        return Outcome("crash", tb.strip().splitlines()[-1])
    if rc != 0:
        return Outcome("lost", f"the whole file failed: {err.strip()[-120:]}")
    got = pd.read_csv(out)
    return Outcome("handled" if len(got) == 2 else "lost", f"{len(got)} of 2 rows; {o.strip()[-120:]}")


@case("label-merge", "`cxrfm label` output used as a manifest (source labels must stay)")
def _label_merge(ws: Workspace) -> Outcome:
    from cxrfm import Manifest

    m = ws.manifest(40, "merge")
    df = pd.read_csv(m)
    df["report"] = "Findings: no pleural effusion. Impression: no acute disease."
    df.to_csv(m, index=False)
    before = Manifest.load(m).labels()
    out = m.parent / "labelled.csv"
    rc, o, err, tb = cli(["label", str(m), "--out", str(out)])
    if tb:
        return Outcome("crash", tb.strip().splitlines()[-1])
    after = Manifest.load(out).labels()
    kept = np.array_equal(np.isnan(before) | (before == after), np.ones_like(before, bool))
    known_b, known_a = int((~np.isnan(before)).sum()), int((~np.isnan(after)).sum())
    return Outcome("handled" if kept and known_a >= known_b else "silent wrong",
                   f"known cells {known_b} -> {known_a}; every source cell unchanged: {kept}")


@case("no-finding-scope", "a `No Finding` row of a source that never labels Support Devices")
def _no_finding(ws: Workspace) -> Outcome:
    from cxrfm import FINDINGS, Manifest

    m = ws.manifest(12, "nf")
    df = pd.read_csv(m)
    row = int(np.flatnonzero(df["source"] == "kermany-pediatric-cxr")[0])
    df.loc[row, "labels"] = "No Finding"
    df.to_csv(m, index=False)
    y = Manifest.load(m).labels()[row]
    sd, fx = y[FINDINGS.index("Support Devices")], y[FINDINGS.index("Fracture")]
    ok = np.isnan(sd) and np.isnan(fx)
    return Outcome("handled" if ok else "silent wrong", f"Support Devices {sd}, Fracture {fx} (unknown expected)")


@case("dicom-hospital-codecs", "pydicom-data JPEG Lossless, 12-bit JPEG, JPEG-LS DICOMs")
def _dicoms(ws: Workspace) -> Outcome:
    from cxrfm import CxrfmError, read_image
    from cxrfm.tasks.ood import pydicom_data_dir

    from pydicom.data import get_testdata_file

    d = pydicom_data_dir()
    bad = []
    for name in ("JPEG-LL.dcm", "JPEG-lossy.dcm", "JPEGLSNearLossless_16.dcm"):
        path = d / name if d is not None and (d / name).exists() else get_testdata_file(name)  # pydicom's own files
        try:
            img = read_image(path)
            if not (img.ndim == 3 and float(img.std()) > 0.01):
                bad.append(f"{name}: flat image")
        except CxrfmError as e:
            bad.append(f"{name}: {str(e)[:60]}")
    return Outcome("handled" if not bad else "clear error", "; ".join(bad) or "all three decode")


@case("cache-image-replaced", "an image replaced in place after `cxrfm prepare`")
def _cache_stale(ws: Workspace) -> Outcome:
    from cxrfm import ImageCache, Manifest

    m = ws.manifest(8, "stale")
    man = Manifest.load(m)
    cache_dir = ws.root / "stale_cache"
    first = ImageCache.build(man, 64, cache_dir=cache_dir, workers=1).batch([0]).clone()
    p = m.parent / pd.read_csv(m)["image"][0]
    from PIL import Image

    Image.fromarray(np.full((200, 200), 255, np.uint8)).save(p)
    second = ImageCache.build(Manifest.load(m), 64, cache_dir=cache_dir, workers=1).batch([0])
    fresh = float(second.max()) > 0.99 and not np.allclose(first.numpy(), second.numpy())
    return Outcome("handled" if fresh else "silent wrong", "new pixels served" if fresh else "stale pixels served")


@case("umask", "output files under umask 022")
def _umask(ws: Workspace) -> Outcome:
    m = ws.manifest(8, "umask")
    old = os.umask(0o022)
    try:
        out_dir = ws.root / "umask_out"
        rc, o, err, tb = cli(["ingest", str(m), "--format", "manifest", "--out", str(out_dir)])
    finally:
        os.umask(old)
    if tb:
        return Outcome("crash", tb.strip().splitlines()[-1])
    mode = (out_dir / "manifest.csv").stat().st_mode & 0o777
    return Outcome("handled" if mode == 0o644 else "silent wrong", f"manifest.csv mode {oct(mode)}")


@case("pretrain-lr-1e9", "`cxrfm pretrain --set train.lr=1e9` (3 epochs on 120 rows, past the warm-up)")
def _lr_huge(ws: Workspace) -> Outcome:
    import torch
    from safetensors.torch import load_file

    from cxrfm import RunDir

    m = ws.manifest(120, "lr")
    out = ws.root / "lr_run"
    rc, o, err, tb = cli(["pretrain", "--data", str(m), "--out", str(out), "--curate", "none",
                          "--budget", "1", "--epochs", "3", "--no-progress", "--set", "train.lr=1e9",
                          "--cache-dir", str(ws.root / "cache")])
    stopped = refused(rc, err, tb, "lr")
    if stopped or tb:
        return stopped or Outcome("crash", tb.strip().splitlines()[-1])
    weights = RunDir(out).weights
    finite = weights.is_file() and all(torch.isfinite(t).all() for t in load_file(str(weights)).values())
    return Outcome("handled" if finite else "silent wrong",
                   f"exit {rc}; saved weights {'all finite' if finite else 'hold NaN/inf'}")


@case("pretrain-lr-nan", "`cxrfm pretrain --set train.lr=nan` (and =abc)")
def _lr_nan(ws: Workspace) -> Outcome:
    m = ws.manifest(8, "lrnan")
    outs = []
    for v in ("nan", "abc", "-1"):
        rc, o, err, tb = cli(["pretrain", "--data", str(m), "--out", str(ws.root / f"lr_{v}"), "--no-progress",
                              "--set", f"train.lr={v}"])
        outs.append(refused(rc, err, tb, "lr") or Outcome("silent wrong", f"lr={v}: exit {rc}"))
    worst = max(outs, key=lambda x: VERDICTS.index(x.verdict))
    return Outcome(worst.verdict, "; ".join(x.what[:50] for x in outs))


@case("weights-truncated", "`cxrfm eval` on a run whose model.safetensors is truncated")
def _weights_truncated(ws: Workspace) -> Outcome:
    run = ws.run()
    bad = ws.root / "bad_run"
    shutil.copytree(run, bad, dirs_exist_ok=True)
    from cxrfm import RunDir

    w = RunDir(bad).weights
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 3])
    rc, o, err, tb = cli(["eval", "--model", str(bad), "--data", str(ws.manifest(8, "ev")), "--out",
                          str(ws.root / "ev_out"), "--tasks", "zeroshot", "--n-boot", "10"])
    return refused(rc, err, tb, "safetensors") or Outcome("silent wrong", f"exit {rc}")


@case("weights-wrong-shape", "`cxrfm eval` on weights of another architecture")
def _weights_shape(ws: Workspace) -> Outcome:
    from safetensors.torch import load_file, save_file

    run = ws.run()
    bad = ws.root / "shape_run"
    shutil.copytree(run, bad, dirs_exist_ok=True)
    from cxrfm import RunDir

    t = load_file(str(RunDir(bad).weights))
    k = next(k for k, v in t.items() if v.ndim == 2)
    t[k] = t[k][:, :-1].contiguous()
    save_file(t, str(RunDir(bad).weights))
    rc, o, err, tb = cli(["eval", "--model", str(bad), "--data", str(ws.manifest(8, "ev2")), "--out",
                          str(ws.root / "ev2_out"), "--tasks", "zeroshot", "--n-boot", "10"])
    return refused(rc, err, tb) or Outcome("silent wrong", f"exit {rc}")


@case("eval-on-training-patients", "`cxrfm eval` on the run's own training data")
def _eval_overlap(ws: Workspace) -> Outcome:
    run = ws.run()
    out = ws.root / "overlap_out"
    rc, o, err, tb = cli(["eval", "--model", str(run), "--data", str(ws.root / "train" / "manifest.csv"),
                          "--out", str(out), "--tasks", "zeroshot", "--n-boot", "10"])
    if tb:
        return Outcome("crash", tb.strip().splitlines()[-1])
    res = json.loads((out / "results.json").read_text())
    warned = any("patient" in w.lower() for w in res.get("warnings", []))
    return Outcome("handled" if warned else "silent wrong", "warns on shared patients" if warned else "no warning")


@case("report-path-escape", "`cxrfm report` on a results.json naming /etc/passwd and ../ as figures")
def _report_escape(ws: Workspace) -> Outcome:
    d = ws.root / "evil"
    d.mkdir()
    secret = ws.root / "secret.png"
    secret.write_bytes(b"\x89PNG\r\n\x1a\nSECRET-BYTES")
    res = {"tasks": {"segmentation": {"overlays": {"best": "/etc/passwd", "median": "../secret.png",
                                                   "worst": str(secret)}}}}
    (d / "results.json").write_text(json.dumps(res))
    rc, o, err, tb = cli(["report", str(d / "results.json")])
    if tb:
        return Outcome("crash", tb.strip().splitlines()[-1])
    html = (d / "report.html").read_text() if (d / "report.html").exists() else ""
    import base64

    leaked = any(s in html for s in ("root:x:", base64.b64encode(b"SECRET-BYTES").decode()[:12], "U0VDUkVU"))
    return Outcome("silent wrong" if leaked else "handled", "a file outside the results folder was embedded"
                   if leaked else "outside paths refused")


def _client(ws: Workspace, **settings):
    from starlette.testclient import TestClient

    from cxrfm.serve.app import ServeSettings, create_app

    return TestClient(create_app(ws.run(), settings=ServeSettings(**settings)))


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@case("serve-non-cxr", "/v1/analyze with skimage cat, clock, colorwheel, rocket, noise, a colour gradient")
def _serve_non_cxr(ws: Workspace) -> Outcome:
    import skimage.data

    client = _client(ws)
    rng = np.random.default_rng(0)
    grad = np.zeros((256, 256, 3), np.uint8)
    grad[..., 0] = np.linspace(0, 255, 256)[None, :]
    grad[..., 2] = np.linspace(255, 0, 256)[:, None]
    inputs = {n: _png(np.asarray(getattr(skimage.data, n)())) for n in ("cat", "clock", "colorwheel", "rocket")}
    inputs["noise"] = _png(rng.integers(0, 256, (300, 400), dtype=np.uint8))
    inputs["gradient"] = _png(grad)
    passed = [n for n, b in inputs.items()
              if client.post("/v1/analyze", files={"file": (f"{n}.png", b, "image/png")}).status_code == 200]
    return Outcome("silent wrong" if passed else "handled",
                   f"scored (not refused): {', '.join(passed)}" if passed else f"all {len(inputs)} refused (422)")


@case("serve-bad-uploads", "/v1/analyze with an empty file, text bytes, a decompression-bomb PNG header")
def _serve_bad(ws: Workspace) -> Outcome:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 60000, 60000, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 60001 * 4)) + chunk(b"IEND", b""))
    client = _client(ws)
    codes = {n: client.post("/v1/analyze", files={"file": ("x", b, "application/octet-stream")}).status_code
             for n, b in (("empty", b""), ("text", b"hello, this is not an image"), ("bomb", bomb))}
    ok = all(400 <= c < 500 for c in codes.values())
    return Outcome("clear error" if ok else "crash", ", ".join(f"{n} {c}" for n, c in codes.items()))


@case("serve-bad-port", "`cxrfm serve --port 99999` / `--port abc`")
def _serve_port(ws: Workspace) -> Outcome:
    outs = []
    for port in ("99999", "abc"):
        rc, o, err, tb = cli(["serve", "--model", str(ws.run()), "--port", port])
        outs.append(refused(rc, err, tb, "port") or Outcome("crash", f"--port {port}: exit {rc}"))
    worst = max(outs, key=lambda x: VERDICTS.index(x.verdict))
    return Outcome(worst.verdict, "; ".join(x.what[:60] for x in outs))


@case("weights-nan", "`cxrfm eval` on a run whose weights hold a NaN")
def _weights_nan(ws: Workspace) -> Outcome:
    from safetensors.torch import load_file, save_file

    from cxrfm import RunDir

    bad = ws.root / "nan_run"
    shutil.copytree(ws.run(), bad, dirs_exist_ok=True)
    t = load_file(str(RunDir(bad).weights))
    k = next(k for k, v in t.items() if v.is_floating_point() and v.numel() > 1)
    t[k] = t[k].clone()
    t[k].view(-1)[0] = float("nan")
    save_file(t, str(RunDir(bad).weights))
    rc, o, err, tb = cli(["eval", "--model", str(bad), "--data", str(ws.manifest(8, "ev3")), "--out",
                          str(ws.root / "ev3_out"), "--tasks", "zeroshot", "--n-boot", "10"])
    return refused(rc, err, tb, "nan") or Outcome("silent wrong", f"exit {rc}")


@case("index-corrupt", "`serve --index` on an index folder whose index.faiss is garbage")
def _index_corrupt(ws: Workspace) -> Outcome:
    from cxrfm import Analyzer, CxrfmError, build_index, save_index

    idx = save_index(build_index(np.eye(4, dtype=np.float32), list("abcd")), ws.root / "bad_index")
    (idx / "index.faiss").write_bytes(b"garbage")
    try:
        Analyzer(ws.run(), idx)
    except CxrfmError as e:
        return Outcome("clear error", str(e)[:160])
    except Exception as e:  # noqa: BLE001
        return Outcome("crash", f"{type(e).__name__}: {str(e)[:120]}")
    return Outcome("silent wrong", "the server started with a corrupt index")


@case("serve-no-token", "/v1 routes of a server started with a bearer token, called without / with a wrong one")
def _serve_token(ws: Workspace) -> Outcome:
    client = _client(ws, token="s3cret-token")
    codes = [client.get("/v1/health").status_code,
             client.get("/v1/model", headers={"Authorization": "Bearer wrong"}).status_code,
             client.post("/v1/analyze", files={"file": ("x.png", b"x", "image/png")}).status_code,
             client.get("/v1/health", headers={"Authorization": "Bearer s3cret-token"}).status_code]
    ok = codes[:3] == [401, 401, 401] and codes[3] == 200
    return Outcome("clear error" if ok else "silent wrong", f"no/wrong token: {codes[:3]}; right token: {codes[3]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", default=None, help="run only these case names")
    ap.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    ap.add_argument("--keep", action="store_true", help="keep the workspace folder (its path is printed)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    root = Path(tempfile.mkdtemp(prefix="cxrfm-hostile-"))
    ws = Workspace(root)
    rows, counts = [], {v: 0 for v in VERDICTS}
    for name, what, fn in CASES:
        if args.only and name not in args.only:
            continue
        try:
            res = fn(ws)
        except Exception as e:  # noqa: BLE001 - a case that cannot run is reported, not hidden
            res = Outcome("crash", f"{type(e).__name__}: {str(e)[:140]}")
        counts[res.verdict] += 1
        rows.append(f"| `{name}` | {what} | {res.what.replace('|', '/')} | {res.verdict} |")
        print(f"{res.verdict:>12}  {name}: {res.what}", file=sys.stderr, flush=True)
    table = "\n".join(["| case | input | what happens | verdict |", "|---|---|---|---|", *rows])
    tried = sum(counts.values())
    summary = f"tried {tried}: " + ", ".join(f"{v} {counts[v]}" for v in VERDICTS)
    print(table)
    print()
    print(summary)
    if args.out:
        args.out.write_text(table + "\n\n" + summary + "\n", encoding="utf-8")
    if args.keep:
        print(f"workspace: {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if counts["crash"] + counts["silent wrong"] + counts["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
