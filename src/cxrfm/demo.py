"""The main job on the bundled sample (``make demo`` / ``cxrfm demo``).

ingest (validate the sample manifest) -> data summary -> training texts (pseudo-reports where a row has
no report), labeled back -> patient split -> pretrain ``tiny-cpu`` with prototype curation (the image
cache is built on the way) -> ``eval --tasks all`` on the held-out patients -> headline table and
report.html.
Every step writes under OUT, so a finished step's files stay even if a later one fails.
"""
from __future__ import annotations

import time
from pathlib import Path

from .paths import SAMPLE_DIR


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def run_demo(out: Path, epochs: int | None = None, tasks: str = "all") -> int:
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

    t = _step("4/5 pretrain tiny-cpu with prototype curation (budget 0.2) on a patient-disjoint 75% part")
    from .data.splits import train_eval_split
    from .run import RunDir
    from .train.loop import pretrain

    train_part, eval_part = train_eval_split(manifest, eval_fraction=0.25, seed=0)
    train_part.save(out / "data" / "train.csv")
    eval_part.save(out / "data" / "eval.csv")
    print(f"train: {len(train_part)} images / eval: {len(eval_part)} images (no patient in both)")
    run_dir = RunDir(out / "run")
    run = pretrain(train_part, run_dir.path, config="tiny-cpu", curate="prototype", budget=0.2,
                   epochs=epochs, seed=0, resume=run_dir.config.exists(), progress=True)
    cur = run_dir.read_curation()
    print(f"run: {run}  data_fraction={cur['data_fraction']:.3f}  compute_fraction={cur['compute_fraction']:.3f}"
          f"  ({time.perf_counter() - t:.0f} s)")

    _step("5/5 evaluate on the held-out part")
    from .tasks.suite import evaluate, format_results_table

    results = evaluate(run, eval_part, tasks=tasks, out=out / "eval", seed=0, progress=True, train_data=train_part)
    print(format_results_table(results))
    _show_one_image(run, eval_part)
    report = out / "eval" / "report.html"
    if report.exists():
        print(f"report: {report.resolve()}")
    print(f"\ndemo finished in {time.perf_counter() - t_all:.0f} s; results: {(out / 'eval' / 'results.json').resolve()}")
    return 0


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
