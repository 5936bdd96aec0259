"""Load: `cxrfm serve` in a subprocess on 127.0.0.1, 400 /v1/analyze requests at concurrency 8.

Asserts zero errors and no material RSS growth of the server across the run; prints p50/p95 and req/s
(figures only, never asserted: the machine is shared)."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.helpers import HELD_OUT, rss_mb

httpx = pytest.importorskip("httpx")
N_REQUESTS, CONCURRENCY, WARMUP = 400, 8, 40


def test_400_requests_at_concurrency_8(server, shared_data):
    url, proc = server
    images = [(shared_data / "cxr" / "images" / n).read_bytes() for n in HELD_OUT]

    def one(i: int) -> tuple[int, float]:
        t0 = time.perf_counter()
        with httpx.Client(timeout=60) as c:
            r = c.post(url + "/v1/analyze", files={"file": ("x.png", images[i % len(images)], "image/png")})
        return r.status_code, time.perf_counter() - t0

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        warm = list(pool.map(one, range(WARMUP)))
        rss_warm = rss_mb(proc.pid)
        t0 = time.perf_counter()
        results = list(pool.map(one, range(N_REQUESTS)))
        wall = time.perf_counter() - t0
    rss_end = rss_mb(proc.pid)
    codes = [c for c, _ in warm + results]
    lat = np.array([t for _, t in results]) * 1000
    print(f"\nload: {N_REQUESTS} requests, concurrency {CONCURRENCY}: p50 {np.percentile(lat, 50):.0f} ms, "
          f"p95 {np.percentile(lat, 95):.0f} ms, {N_REQUESTS / wall:.1f} req/s; "
          f"server RSS {rss_warm:.0f} -> {rss_end:.0f} MB")
    errors = [c for c in codes if c >= 500 or c not in (200, 422)]
    assert not errors, f"{len(errors)} errors: {sorted(set(errors))}"
    assert codes.count(200) >= 0.75 * len(codes)  # 4-5 of the 5 held-out CXRs pass the gate
    assert rss_end - rss_warm < max(100.0, 0.25 * rss_warm), (rss_warm, rss_end)
