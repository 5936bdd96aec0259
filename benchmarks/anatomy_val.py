"""Choosing the anatomy settings on the **val** part (never on test): the figures docs/anatomy.md quotes
for the choice of the U-Net's side / steps and of the in-context pretraining.

    # U-Net: fit on train, Dice per structure on val (side 128, 1000 steps, full-resolution stem)
    python benchmarks/anatomy_val.py unet --size 128 --steps 1000 --stem 1
    # in-context: pretrain as the shipped model (or --model-dir DIR to score a trained folder), then
    # Dice on val at k = 1, 3, 5 (3 draws of supports from train) beside the atlas
    python benchmarks/anatomy_val.py incontext --size 160 --steps 2000

These are the calls the numbers in docs/anatomy.md ("Settings, chosen on val") came from; they ran as
scratch scripts with the same function calls before this file was written.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from cxrfm.data.anatomy import anatomy_split, load_structures, mask_to_input
from cxrfm.data.schema import Manifest
from cxrfm.paths import shared_data_dir
from cxrfm.tasks.segmentation import dice_score

STRUCTURES = ("left_lung", "right_lung", "heart")


def _parts():
    data = shared_data_dir()
    if data is None:
        raise SystemExit("set CXRFM_DATA to the shared data folder")
    m = Manifest.load(data / "anatomy" / "manifest.csv")
    sp = anatomy_split(m)
    tr, va = np.where(sp == "train")[0], np.where(sp == "val")[0]
    return data, m, load_structures(m, tr, STRUCTURES), load_structures(m, va, STRUCTURES)


def unet(args) -> None:
    from cxrfm.inference.anatomy import Anatomy
    from cxrfm.train.anatomy import SupervisedSettings, fit_supervised

    _, _, (ti, tm), (vi, vm) = _parts()
    t = time.perf_counter()
    net = fit_supervised(ti, tm, STRUCTURES, SupervisedSettings(size=args.size, steps=args.steps,
                                                                stem_stride=args.stem), progress=True)
    print(f"fit {time.perf_counter() - t:.0f} s")
    pred = [Anatomy(model=net).structures(im) for im in vi]
    for s in STRUCTURES:
        d = np.array([dice_score(p[s], vm[s][i]) for i, p in enumerate(pred)])
        print(f"val {s}: Dice mean {d.mean():.4f} median {np.median(d):.4f} min {d.min():.3f}")
    both = [dice_score(p["left_lung"] | p["right_lung"], vm["left_lung"][i] | vm["right_lung"][i])
            for i, p in enumerate(pred)]
    print(f"val both lungs: Dice mean {np.mean(both):.4f}")


def incontext(args) -> None:
    from cxrfm.inference.anatomy import FewShot
    from cxrfm.models.anatomy_store import load_incontext
    from cxrfm.train.anatomy_pretext import PretextSettings, pretrain_incontext

    data, m, (ti, tm), (vi, vm) = _parts()
    if args.model_dir:
        net = load_incontext(args.model_dir)
    else:
        st = PretextSettings(size=args.size, steps=args.steps, exclude_licences=("NC", "ND"))
        net, _ = pretrain_incontext([Manifest.load(data / "cxr" / "manifest.csv"), m], st, progress=True)
    rng = np.random.default_rng(0)
    for k in (1, 3, 5):
        for s in ("heart", "left_lung", "right_lung"):
            d, da = [], []
            for _ in range(3):
                pick = rng.choice(len(ti), k, replace=False)
                fs = FewShot([ti[i] for i in pick], [tm[s][i] for i in pick], model=net)
                atlas = (torch.stack([mask_to_input(tm[s][i], 320) for i in pick]).mean(0)[0] > 0.5).numpy()
                for i in range(len(vi)):
                    d.append(dice_score(fs(vi[i]), vm[s][i]))
                    da.append(dice_score(atlas, vm[s][i]))
            print(f"val k={k} {s}: in-context {np.mean(d):.3f}  atlas {np.mean(da):.3f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    u = sub.add_parser("unet")
    u.add_argument("--size", type=int, default=128)
    u.add_argument("--steps", type=int, default=1000)
    u.add_argument("--stem", type=int, default=1)
    c = sub.add_parser("incontext")
    c.add_argument("--size", type=int, default=160)
    c.add_argument("--steps", type=int, default=2000)
    c.add_argument("--model-dir", default=None)
    args = ap.parse_args(argv)
    (unet if args.what == "unet" else incontext)(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
