"""Latent compression: the autoencoder's setting, PSNR / MS-SSIM of the evaluated images, best / median / worst."""
from __future__ import annotations

from typing import Mapping

from ..assets import Assets
from ..markup import cell, esc, fmt, metric, table


def _m(v, digits: int = 3) -> str:
    x, ci = metric(v)
    med = v.get("median") if isinstance(v, Mapping) else None
    return f"#{fmt(x, digits)} <small>{ci}</small>", "#" + fmt(med, digits)


def _name(image_id: object) -> str:
    """A manifest id's file name (ids are paths relative to the manifest; the whole id is in results.json)."""
    return str(image_id).replace("\\", "/").rsplit("/", 1)[-1]


def html(r: Mapping, assets: Assets) -> str:
    shape = r.get("latent_shape") or []
    size = r.get("image_size")
    setting = [
        ["autoencoder", f"{esc(r.get('ae', ''))} <small>(hash {esc(r.get('ae_hash', ''))})</small>"],
        ["factor / channels", f"{esc(r.get('factor'))}x per side, {esc(r.get('channels'))} latent channel(s)"],
        ["latents per image", f"{' x '.join(esc(v) for v in shape)} uint8 (from {esc(size)} x {esc(size)} px)"],
        ["storage ratio", f"{fmt(r.get('storage_ratio'), 1)}x smaller than the 8-bit pixel cache"],
        ["images scored", f"{esc(r.get('n'))} of {esc(r.get('n_rows'))} rows (cap "
                          f"{esc((r.get('settings') or {}).get('max_images', '?'))})"],
        ["latents clamped to the 8-bit range", f"{fmt(100 * float(r.get('clipped_fraction') or 0), 3)} %"],
    ]
    psnr_mean, psnr_med = _m(r.get("psnr"), 2)
    ms_mean, ms_med = _m(r.get("ms_ssim"), 4)
    out = ["<p>The run's autoencoder encodes each evaluated image, its latents are stored in 8 bits as in the "
           "latent cache pretraining read, and the decoder rebuilds the image; PSNR and MS-SSIM compare it with the "
           "original (higher is better; 95 % CI by resampling patients).</p>",
           table(None, setting),
           table(["measure", "mean [95% CI]", "median"],
                 [["PSNR (dB)", psnr_mean, psnr_med], ["MS-SSIM", ms_mean, ms_med]])]
    ex = r.get("examples") or {}
    caption = "; ".join(f"{esc(k)}: {esc(_name(v.get('image', '')))} (PSNR {fmt(v.get('psnr'), 2)} dB, MS-SSIM "
                        f"{fmt(v.get('ms_ssim'), 4)})" for k, v in ex.items() if isinstance(v, Mapping))
    fig = r.get("figure")
    img = (assets.img(fig, "best, median and worst reconstruction") if isinstance(fig, str)
           else '<p class="note">figure not saved (the suite ran without an output folder)</p>')
    out.append(f"<h3>Best, median and worst image by PSNR (rows); columns: {esc(r.get('layout', ''))}</h3>"
               f"<figure>{img}<figcaption>{caption}</figcaption></figure>")
    return "".join(out)


def console(r: Mapping) -> list[str]:
    p, s = metric(r.get("psnr")), metric(r.get("ms_ssim"))
    return [f"reconstruction: PSNR {cell(p[0], 6).strip()} dB {p[1]}, MS-SSIM {cell(s[0], 5).strip()} {s[1]} on "
            f"{r.get('n')} eval images (autoencoder {r.get('factor')}x, {r.get('channels')} ch: storage "
            f"{fmt(r.get('storage_ratio'), 1)}x smaller)",
            *([f"  figure: {r['figure']}"] if isinstance(r.get("figure"), str) else [])]
