"""Shared fixtures: the real data in ../shared/data (or $CXRFM_DATA), the tiny trained run, the uvicorn server.

Plain helper functions and classes live in tests/helpers.py."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from cxrfm.paths import shared_data_dir  # noqa: E402


@pytest.fixture(scope="session")
def shared_data():
    """Path of the real-data folder; tests that need it skip with the reason when it is absent."""
    d = shared_data_dir()
    if d is None:
        pytest.skip("real data folder not found: set CXRFM_DATA or put shared/data beside the repo")
    return d


@pytest.fixture(scope="session")
def cxr_manifest_path(shared_data):
    return shared_data / "cxr" / "manifest.csv"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """A decoded-image cache folder of the test module's own."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for the module: where several jobs share the 2 cores, two OpenMP threads each
    spin and slow torch down many times over."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory, shared_data):
    """One tiny trained run dir for the whole session (tests/helpers.py's ``tiny_run``)."""
    from tests.helpers import tiny_run

    return tiny_run(tmp_path_factory, shared_data)


@pytest.fixture(scope="module")
def server(run_dir):
    """`cxrfm serve` on the tiny run and its index in a subprocess on 127.0.0.1; yields (url, process)."""
    import sys

    pytest.importorskip("httpx")
    from tests.helpers import free_port, start_server, stop_server, tiny_index

    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    url = f"http://127.0.0.1:{port}"
    proc = start_server([sys.executable, "-m", "cxrfm", "serve", "--model", str(run_dir), "--index",
                         str(tiny_index(run_dir)), "--host", "127.0.0.1", "--port", str(port)], env, url + "/v1/health")
    try:
        yield url, proc
    finally:
        stop_server(proc)
