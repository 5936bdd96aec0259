"""The serve command."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ..errors import CxrfmError


# ---------------------------------------------------------------- serve
def _add_serve(sub):
    from ..serve.server import TOKEN_ENV, parse_port

    p = sub.add_parser(
        "serve", help="HTTP API + page for one trained model",
        description="Serve a run dir over HTTP: POST /v1/analyze (image -> OOD verdict, findings, nearest reports, "
                    "draft report, heat map), POST /v1/embed, GET /v1/health, GET /v1/model, the page at /, the "
                    "API spec at /openapi.json. Binds 127.0.0.1 unless --host says otherwise; any other address "
                    f"needs a token (--token or ${TOKEN_ENV}) or --insecure. CORS is off unless --cors-origin is given.")
    p.add_argument("--model", required=True, type=Path, help="run dir (config.json + model.safetensors)")
    p.add_argument("--index", type=Path, default=None, help="retrieval index dir from `cxrfm index` (nearest reports)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=parse_port, default=8000, help="TCP port, 1-65535 (default 8000)")
    p.add_argument("--token", default=None,
                   help=f"bearer token every request but the page must send (default: ${TOKEN_ENV}; prefer the "
                        "variable: a flag shows in the process list)")
    p.add_argument("--insecure", action="store_true",
                   help="allow a --host beyond loopback without a token (anyone on the network can use it)")
    p.add_argument("--ood-reference", type=Path, default=None,
                   help="manifest of in-distribution CXRs to fit the OOD gate on (default: the bundled sample)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload in MiB (default 20)")
    p.add_argument("--max-megapixels", type=float, default=40.0, help="largest declared image size (default 40 Mpx)")
    p.add_argument("--concurrency", type=int, default=2, help="inference calls at once (default 2)")
    p.add_argument("--max-connections", type=int, default=64,
                   help="connections + requests at once; beyond it the server answers 503 (default 64)")
    p.add_argument("--max-inflight-mb", type=float, default=128.0,
                   help="upload MiB held by all requests together; beyond it 503 + Retry-After (default 128)")
    p.add_argument("--body-timeout", type=float, default=10.0,
                   help="seconds of silence allowed while an upload arrives; then 408 (default 10)")
    p.add_argument("--cors-origin", action="append", default=[], help="allow this browser origin (repeatable)")
    p.add_argument("--torch-threads", type=int, default=1,
                   help="intra-op threads per inference call (default 1: requests run side by side instead of "
                        "fighting over cores; measured 70 ms vs ~1 s per analysis on a busy 2-core box)")
    p.set_defaults(func=_run_serve)


def _run_serve(args) -> int:
    import torch

    from ..serve.app import ServeSettings, create_app
    from ..serve.server import TOKEN_ENV, bind_socket, check_exposure, run_server

    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV)
    if token is not None and not token.strip():
        raise CxrfmError(f"the token (--token or ${TOKEN_ENV}) is empty; set a long random string, e.g. "
                         "python -c 'import secrets; print(secrets.token_urlsafe(24))'")
    for flag, value in (("--concurrency", args.concurrency), ("--max-connections", args.max_connections),
                        ("--max-upload-mb", args.max_upload_mb), ("--max-inflight-mb", args.max_inflight_mb),
                        ("--body-timeout", args.body_timeout)):
        if not value > 0:
            raise CxrfmError(f"{flag} {value}: must be a positive number")
    if args.ood_reference is not None and not args.ood_reference.is_file():
        raise CxrfmError(f"--ood-reference {args.ood_reference}: no such manifest; give a manifest of chest "
                         "radiographs (csv/parquet) or leave it out to use the bundled sample")
    warning = check_exposure(args.host, token, args.insecure)
    sock = bind_socket(args.host, args.port)  # before the slow model load: a taken port fails at once
    if warning:
        print(warning, file=sys.stderr, flush=True)
    torch.set_num_threads(max(1, args.torch_threads))
    settings = ServeSettings(
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_pixels=int(args.max_megapixels * 1e6),
        max_concurrency=args.concurrency, cors_origins=tuple(args.cors_origin), token=token,
        max_inflight_bytes=int(args.max_inflight_mb * 1024 * 1024), body_idle_s=args.body_timeout,
        max_connections=args.max_connections,
        ood_reference=str(args.ood_reference) if args.ood_reference else None)
    try:
        app = create_app(args.model, args.index, settings)
    except BaseException:
        sock.close()
        raise
    url = f"http://{'[' + args.host + ']' if ':' in args.host else args.host}:{args.port}"
    print(f"cxrfm serve: {url}/  (the page; API spec: {url}/openapi.json"
          f"{'; requests need the token' if token else ''})", flush=True)
    run_server(app, sock, settings)
    return 0


COMMANDS = (_add_serve,)
