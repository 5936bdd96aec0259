"""Make the anatomy folder shipped in the package (``src/cxrfm/models/anatomy_weights``).

* the in-context segmenter: :func:`cxrfm.train.anatomy_pretext.pretrain_incontext` on the images of
  ``../shared/data/cxr`` (rows whose licence is not NC / ND) and the ``train`` part of
  ``../shared/data/anatomy`` (lung masks only: never a heart mask), 160 px, 2000 steps, seed 0;
* the supervised U-Net: the one ``cxrfm eval --tasks anatomy`` fitted on the anatomy ``train`` part and
  saved in ``EVAL_OUT/anatomy_model`` (``--unet-from``), so the shipped U-Net is the evaluated one.

    CXRFM_DATA=../shared/data python benchmarks/anatomy_shipped.py --unet-from runs/anatomy-eval/anatomy_model \
        --out src/cxrfm/models/anatomy_weights        # ~35 min on 2 CPU cores
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

import cxrfm  # noqa: F401 - the public package
from cxrfm.data.schema import Manifest
from cxrfm.models.anatomy_store import load_unet, read_meta, save_anatomy
from cxrfm.paths import shared_data_dir
from cxrfm.train.anatomy_pretext import PretextSettings, pretrain_incontext

SETTINGS = PretextSettings(size=160, steps=2000, exclude_licences=("NC", "ND"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--unet-from", type=Path, required=True, help="anatomy folder holding the evaluated U-Net")
    ap.add_argument("--out", type=Path, default=Path("src/cxrfm/models/anatomy_weights"))
    ap.add_argument("--incontext-from", type=Path, default=None,
                    help="reuse an in-context segmenter already pretrained with SETTINGS (a .pt state dict and its "
                         "record .json beside it) instead of pretraining again")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    data = shared_data_dir()
    if data is None:
        raise SystemExit("set CXRFM_DATA to the shared data folder (cxr/ and anatomy/)")
    manifests = [Manifest.load(data / "cxr" / "manifest.csv"), Manifest.load(data / "anatomy" / "manifest.csv")]
    t0 = time.perf_counter()
    if args.incontext_from is not None:
        import json

        from cxrfm.models.anatomy_nets import InContextConfig, InContextSegmenter

        net = InContextSegmenter(InContextConfig(widths=SETTINGS.widths, size=SETTINGS.size))
        net.load_state_dict(torch.load(args.incontext_from, map_location="cpu"))
        record = json.loads(args.incontext_from.with_suffix(".json").read_text())
    else:
        net, record = pretrain_incontext(manifests, SETTINGS, seed=args.seed, progress=True)
    unet = load_unet(args.unet_from)
    unet_record = read_meta(args.unet_from).get("training", {}).get("unet", {})
    save_anatomy(args.out, unet=unet, incontext=net.eval(), training={"unet": unet_record, "incontext": record})
    print(f"wrote {args.out} in {time.perf_counter() - t0:.0f} s; in-context pretext columns: "
          f"{record.get('mask_columns_read')}; images: {record.get('n_images')}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
