"""Latency and throughput of POST /v1/analyze against the same analysis called in-process.

    python benchmarks/bench_serve.py --model RUN [--index INDEX] [--requests 100]

Starts `cxrfm serve` on 127.0.0.1 (free port) in a subprocess, sends a 320 px real CXR (from
$CXRFM_DATA/cxr/images, or a synthetic 320 px image when absent), and prints p50/p95 latency and
req/s at concurrency 1, 4 and 8, then the in-process baseline (Analyzer.analyze_bytes) measured in
the same run, and the HTTP overhead ratio (HTTP p50 at concurrency 1 / in-process p50).
Goal for tiny-cpu: p95 < 250 ms at concurrency 1.

    python benchmarks/bench_serve.py --model RUN --stalled 50 [--stall-mb 9]

instead opens 50 connections that each declare a 10 MB upload, send --stall-mb of it and stop, and
prints what each got back and the server's resident memory (VmRSS, and its peak VmHWM) at start, while
they stall, and after the server's body timeout (the case that held ~460 MB before the bounds).
"""
from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def _image_320() -> bytes:
    from PIL import Image

    from cxrfm import shared_data_dir

    d = shared_data_dir()
    if d is not None:
        for p in sorted((d / "cxr" / "images").glob("hmh_*.png")):
            im = Image.open(p)
            if max(im.size) == 320:
                return p.read_bytes()
    arr = (np.random.default_rng(0).random((320, 320)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stats(lat_s: list[float], wall: float) -> str:
    ms = np.array(lat_s) * 1000
    return f"p50 {np.percentile(ms, 50):6.1f} ms  p95 {np.percentile(ms, 95):6.1f} ms  {len(ms) / wall:6.1f} req/s"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--index", type=Path, default=None)
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--stalled", type=int, default=0, help="measure N stalled uploads instead of latency")
    ap.add_argument("--stall-mb", type=float, default=9.0, help="MB each stalled upload sends before stopping")
    args = ap.parse_args(argv)
    if args.stalled:
        return stalled_uploads(args.model, args.stalled, args.stall_mb)
    import httpx

    from cxrfm import Analyzer

    data = _image_320()
    port = _free_port()
    cmd = [sys.executable, "-m", "cxrfm", "serve", "--model", str(args.model), "--port", str(port)]
    if args.index:
        cmd += ["--index", str(args.index)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}/v1/analyze"
    try:
        for _ in range(240):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        first = httpx.post(url, files={"file": ("x.png", data)}, timeout=60)
        print(f"image: 320 px, status {first.status_code} ({'analysed' if first.status_code == 200 else 'refused'})")

        def one(_i):
            t0 = time.perf_counter()
            with httpx.Client(timeout=60) as c:
                r = c.post(url, files={"file": ("x.png", data)})
            assert r.status_code < 500, r.text
            return time.perf_counter() - t0

        http_p50 = None
        for conc in (1, 4, 8):
            with ThreadPoolExecutor(conc) as pool:
                list(pool.map(one, range(2 * conc)))  # warm-up
                t0 = time.perf_counter()
                lat = list(pool.map(one, range(args.requests)))
                wall = time.perf_counter() - t0
            print(f"HTTP      concurrency {conc}: {_stats(lat, wall)}")
            if conc == 1:
                http_p50 = float(np.percentile(lat, 50))
    finally:
        proc.terminate()
        proc.wait(timeout=15)

    import torch

    torch.set_num_threads(1)  # the same as `cxrfm serve` (its --torch-threads default)
    an = Analyzer(args.model, args.index)
    for _ in range(3):
        _call(an, data)
    lat = []
    t0 = time.perf_counter()
    for _ in range(args.requests):
        t1 = time.perf_counter()
        _call(an, data)
        lat.append(time.perf_counter() - t1)
    wall = time.perf_counter() - t0
    print(f"in-process concurrency 1: {_stats(lat, wall)}")
    print(f"HTTP overhead ratio (p50 HTTP / p50 in-process, concurrency 1): {http_p50 / np.percentile(lat, 50):.2f}")
    return 0


def _memory_mb(pid: int) -> dict[str, float]:
    with open(f"/proc/{pid}/status") as f:
        return {k: int(v.split()[0]) / 1024 for k, v in (line.split(":", 1) for line in f) if k in ("VmRSS", "VmHWM")}


def _start_server(model: Path, port: int) -> subprocess.Popen:
    import httpx

    proc = subprocess.Popen([sys.executable, "-m", "cxrfm", "serve", "--model", str(model), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    for _ in range(240):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.5)
    raise RuntimeError("the server did not start")


def stalled_uploads(model: Path, n: int, stall_mb: float, declared_mb: float = 10.0) -> int:
    """N clients declare a ``declared_mb`` upload, send ``stall_mb`` of it, then go silent."""
    import threading
    from collections import Counter

    port = _free_port()
    proc = _start_server(model, port)
    statuses: list[str] = []
    socks: list[socket.socket] = []
    payload = b"\0" * int(stall_mb * 1e6)

    def client():
        s = socket.create_connection(("127.0.0.1", port), timeout=60)
        socks.append(s)
        try:
            s.sendall(b"POST /v1/analyze HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=B\r\n"
                      b"Content-Length: " + str(int(declared_mb * 1e6)).encode() + b"\r\n\r\n" + payload)
            reply = s.recv(200)
        except OSError as e:  # refused early: the server closed while we were still sending
            reply = f"({type(e).__name__})".encode()
            try:
                reply = s.recv(200) or reply
            except OSError:
                pass
        statuses.append(reply.split(b"\r\n", 1)[0].decode(errors="replace") or "(closed)")

    try:
        start = _memory_mb(proc.pid)
        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, daemon=True) for _ in range(n)]
        for t in threads:
            t.start()
        time.sleep(3)  # every client has sent what it will send and is silent now
        during = _memory_mb(proc.pid)
        for t in threads:
            t.join(timeout=120)
        after = _memory_mb(proc.pid)
        print(f"{n} clients, each declaring {declared_mb:g} MB and sending {stall_mb:g} MB, then silent:")
        for status, count in sorted(Counter(statuses).items()):
            print(f"  {count:3d} x {status}")
        print(f"server RSS: start {start['VmRSS']:.0f} MB, while stalled {during['VmRSS']:.0f} MB, after "
              f"{time.perf_counter() - t0:.0f} s {after['VmRSS']:.0f} MB; peak (VmHWM) {after['VmHWM']:.0f} MB")
    finally:
        for s in socks:
            s.close()
        proc.terminate()
        proc.wait(timeout=15)
    return 0


def _call(an, data: bytes) -> None:
    from cxrfm import Refused

    try:
        an.analyze_bytes(data)
    except Refused:
        pass


if __name__ == "__main__":
    raise SystemExit(main())
