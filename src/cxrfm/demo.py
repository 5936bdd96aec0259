"""The main job on the bundled sample (``make demo`` / ``cxrfm demo``).

ingest (validate the sample manifest) -> data summary -> training texts (pseudo-reports where a row has
no report), labeled back -> patient split -> pretrain ``tiny-cpu`` with the default curation of
``cxrfm pretrain`` (``balanced`` at a 20 % budget, its epochs from the default compute budget; the image
cache is built on the way) -> ``eval --tasks all`` on the held-out patients -> headline table and
report.html.
Every step writes under OUT, so a finished step's files stay even if a later one fails.

``latents=True`` (``cxrfm demo --latents``, docs/latents.md) swaps step 4 for latent compression: a small
autoencoder (:data:`DEMO_AE`) is trained on the training part (``OUT/ae``), tiny-cpu is pretrained on its
8-bit latents with the same curation (``OUT/run-latents``), and the evaluation (``OUT/eval-latents``) adds
the ``reconstruction`` task: PSNR / MS-SSIM and the best / median / worst reconstructions.
"""
from __future__ import annotations

import time
from pathlib import Path

from .paths import SAMPLE_DIR

# The demo's autoencoder: the smallest sensible one (8x per side, 4 channels: 16x less storage than the
# pixel cache; 8 channels wide; 150 steps of 8 images at the tiny-cpu size). Its lr is 10x the command's
# default: after 150 steps of the demo's training part, 2e-3 reached PSNR 19.7 dB / MS-SSIM 0.935 on 64
# training images where 2e-4 reached 14.8 dB / 0.883 (docs/latents.md, "In report.html and the demo").
DEMO_AE = {"factor": 8, "channels": 4, "width": 8, "size": 128, "steps": 150, "batch_size": 8, "lr": 2e-3}


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def run_demo(out: Path, epochs: int | None = None, tasks: str = "all", latents: bool = False) -> int:
    from .data.schema import Manifest
    from .data.sources import ingest
    from .data.summary import summarize

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()

    t = _step("1/5 ingest the bundled sample")
    res = ingest(SAMPLE_DIR / "manifest.csv", fmt="manifest", out_dir=out / "data", check_images=True)
    print(res.summary())
    manifest_path = out / "data" / "manifest.csv"

    t = _step("2/5 data summary")
    manifest = Manifest.load(manifest_path)
    print(summarize(manifest))

    _step("3/5 training texts: real reports where present, else pseudo-reports; labeled back (CheXpert-14)")
    import pandas as pd

    from .data.label_table import label_table_file
    from .data.pseudo_reports import training_texts
    from .data.schema import write_table

    texts = training_texts(manifest, style="template", seed=0, skip=True)
    texts_csv = write_table(pd.DataFrame({"image": manifest.ids, "report": texts}), out / "data" / "texts.csv")
    print(label_table_file(texts_csv, out / "data" / "texts_labeled.csv", progress=True))

    from .train.schedule import DEFAULT_COMPUTE_BUDGET

    what = ("on the latents of a small autoencoder" if latents
            else f"with the default curation (balanced, budget 0.2, compute budget {DEFAULT_COMPUTE_BUDGET:g})")
    t = _step(f"4/5 pretrain tiny-cpu {what} on a patient-disjoint 75% part")
    from .data.splits import train_eval_split
    from .run import RunDir
    from .train.loop import pretrain

    train_part, eval_part = train_eval_split(manifest, eval_fraction=0.25, seed=0)
    train_part.save(out / "data" / "train.csv")
    eval_part.save(out / "data" / "eval.csv")
    print(f"train: {len(train_part)} images / eval: {len(eval_part)} images (no patient in both)")
    run_dir = RunDir(out / ("run-latents" if latents else "run"))
    if latents:
        run = _pretrain_on_latents(train_part, out, run_dir, epochs)
    else:
        run = pretrain(train_part, run_dir.path, config="tiny-cpu", curate="balanced", budget=0.2,
                       epochs=epochs, seed=0, resume=run_dir.config.exists(), progress=True,
                       compute_budget=DEFAULT_COMPUTE_BUDGET)
    cur = run_dir.read_curation()
    full = cur.get("compute_fraction_of_full_preset")
    print(f"run: {run}  data_fraction={cur['data_fraction']:.3f}  epochs={cur['epochs']}  compute: "
          + (f"{full:.3f} of tiny-cpu on all pairs" if full is not None else f"{cur['compute_fraction']:.3f}")
          + f"  ({time.perf_counter() - t:.0f} s)")

    _step("5/5 evaluate on the held-out part")
    from .tasks.suite import evaluate, format_results_table

    eval_dir = out / ("eval-latents" if latents else "eval")
    if latents and tasks.strip() != "all" and "reconstruction" not in [t.strip() for t in tasks.split(",")]:
        tasks = f"{tasks},reconstruction"  # the latent demo always shows its reconstructions
    results = evaluate(run, eval_part, tasks=tasks, out=eval_dir, seed=0, progress=True, train_data=train_part)
    print(format_results_table(results))
    _show_one_image(run, eval_part)
    report = eval_dir / "report.html"
    if report.exists():
        print(f"report: {report.resolve()}")
    print(f"\ndemo finished in {time.perf_counter() - t_all:.0f} s; results: {(eval_dir / 'results.json').resolve()}")
    return 0


def _pretrain_on_latents(train_part, out: Path, run_dir, epochs: int | None) -> Path:
    """Step 4 of ``--latents``: the demo's autoencoder (:data:`DEMO_AE`) on the training part, then tiny-cpu
    pretrained on its 8-bit latents with the pixel demo's curation. Both resume when OUT already holds them."""
    from .models.autoencoder import read_ae_meta
    from .train.compress import pretrain_on_latents, train_autoencoder
    from .train.schedule import DEFAULT_COMPUTE_BUDGET

    t = time.perf_counter()
    s = DEMO_AE
    print(f"autoencoder: {s['factor']}x per side, {s['channels']} latent channels, width {s['width']}, "
          f"{s['steps']} steps of {s['batch_size']} images at {s['size']} px, lr {s['lr']:g}")
    ae = train_autoencoder(train_part, out / "ae", factor=s["factor"], channels=s["channels"], width=s["width"],
                           size=s["size"], steps=s["steps"], batch_size=s["batch_size"], lr=s["lr"], seed=0,
                           resume=(out / "ae").exists(), progress=True)
    meta = read_ae_meta(ae)
    sc = meta["training"]["train_sample_scores"]
    print(f"autoencoder: {ae}  hash {meta['weights_sha256'][:16]}; on {sc['n']} training images PSNR "
          f"{sc['psnr']:.2f} dB, MS-SSIM {sc['ms_ssim']:.4f}  ({time.perf_counter() - t:.0f} s)")
    return pretrain_on_latents(train_part, run_dir.path, ae, config="tiny-cpu", curate="balanced", budget=0.2,
                               epochs=epochs, seed=0, resume=run_dir.config.exists(), progress=True,
                               compute_budget=DEFAULT_COMPUTE_BUDGET)


def _show_one_image(run: Path, eval_part) -> None:
    """What `serve` would answer for one held-out image: the same Analyzer, its head, concepts and draft."""
    from .data.images import read_image
    from .errors import CxrfmError
    from .inference.analyze import Analyzer, Refused

    path = eval_part.image_paths()[0]
    try:
        out = Analyzer(run).analyze(read_image(path), source=path)
    except Refused as e:
        print(f"\none held-out image ({path.name}): refused by the OOD gate: {e}")
        return
    except CxrfmError as e:  # the demo goes on; the evaluation above is its result
        print(f"\none held-out image ({path.name}): not analysed: {e}")
        return
    top = sorted(out["findings"], key=lambda f: -f["probability"])[:3]
    print(f"\none held-out image, as `cxrfm serve` answers it ({path.name}):")
    print("  top findings: " + ", ".join(f"{f['finding']} {f['probability']:.2f} ({f['head']})" for f in top))
    for c in out["concepts"][:3]:
        print(f"  concept #{c['feature']} {c['name']!r} (activation {c['activation']:.2f})")
    anatomy = out.get("anatomy") or {}
    if anatomy.get("summary") or anatomy.get("note"):
        print(f"  anatomy: {anatomy.get('summary') or anatomy.get('note')} (heart and lung outlines on the page)")
