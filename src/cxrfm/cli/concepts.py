"""`cxrfm concepts train | search`: sparse-autoencoder concepts of a run (docs/concepts.md).

One module of the CLI package like the others; each action is a few lines calling :mod:`cxrfm.inference.concepts`.
"""
from __future__ import annotations

from pathlib import Path


def add_concepts_command(sub):
    """Register `cxrfm concepts train|search` on the CLI's subparsers."""
    p = sub.add_parser("concepts", help="sparse-autoencoder concepts of a run: train, search",
                       description="Concepts: a Matryoshka batch-top-k sparse autoencoder over a run's image "
                                   "embeddings, each feature named from the data (docs/concepts.md).")
    csub = p.add_subparsers(dest="concepts_command", metavar="ACTION", required=True)
    t = csub.add_parser("train", help="train and name concepts over a manifest's image embeddings",
                        description="Train the SAE on the manifest's training rows (its split column's `train` rows, "
                                    "else a seeded 90/10 patient split) and report R² and dead features on the other "
                                    "rows; name every feature; save sae.safetensors, sae.json and names.json in --out "
                                    "(default: the run's concepts/ folder). Re-running resumes an interrupted training.")
    t.add_argument("--model", required=True, type=Path, help="run folder of `cxrfm pretrain`")
    t.add_argument("--data", required=True, type=Path, help="manifest whose images the concepts are learned from")
    t.add_argument("--out", type=Path, default=None, help="concepts folder (default RUN/concepts)")
    t.add_argument("--sizes", default=None, help="nested dictionary sizes, e.g. 16,64 (default: see docs/concepts.md)")
    t.add_argument("--k", type=int, default=None, help="active features per image, on average")
    t.add_argument("--epochs", type=int, default=None, help="training epochs over the embeddings")
    t.add_argument("--embeddings", choices=("image", "text"), default="image",
                   help="what the SAE learns from: the images (default) or the rows' report texts through the text "
                        "tower (rows without a report are left out)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--cache-dir", type=Path, default=None, help="decoded-image cache folder (default $CXRFM_CACHE)")
    t.set_defaults(func=_run_concepts_train)
    s = csub.add_parser("search", help="features nearest to a text, with their top images")
    s.add_argument("query", help='a phrase, e.g. "pleural effusion"')
    s.add_argument("--model", required=True, type=Path, help="run folder the concepts were trained on")
    s.add_argument("--concepts", type=Path, default=None, help="concepts folder (default RUN/concepts)")
    s.add_argument("--top", type=int, default=5)
    s.set_defaults(func=_run_concepts_search)


def _run_concepts_train(args) -> int:
    import dataclasses

    import numpy as np

    from ..data.schema import Manifest
    from ..inference.concepts import train_concepts
    from ..models.dual import load_model
    from ..tasks.concepts import task_sae_config
    from ..tasks.embed import embed_manifest
    from ..tasks.split import patient_train_eval_rows

    model, manifest = load_model(args.model), Manifest.load(args.data)
    if args.embeddings == "text":
        manifest, emb = _report_embeddings(model, manifest, args.data)
    if "split" in manifest.table.columns:
        parts = manifest.table["split"].astype(str).str.lower().to_numpy()
        tr, ho, how = np.flatnonzero(parts == "train"), np.flatnonzero(parts != "train"), "the split column"
    else:
        tr, ho = patient_train_eval_rows(manifest, 0.1, args.seed)
        how = f"a seeded 90/10 patient split (seed {args.seed})"
    if args.embeddings == "image":
        emb = embed_manifest(model, manifest, cache_dir=args.cache_dir)
    cfg = task_sae_config(len(tr), args.seed)
    over = {k: v for k, v in (("sizes", tuple(int(x) for x in args.sizes.split(",")) if args.sizes else None),
                              ("k", args.k), ("epochs", args.epochs)) if v is not None}
    cfg = dataclasses.replace(cfg, **over) if over else cfg
    concepts = train_concepts(model, args.model, manifest.subset(tr), emb[tr], out=args.out, config=cfg,
                              held_out=emb[ho] if len(ho) else None, embedding=args.embeddings)
    m = concepts.info["metrics"]
    print(f"concepts: {args.out or args.model / 'concepts'}  {cfg.n_features} features (k={cfg.k}), trained on "
          f"{len(tr)} rows ({how}); {m['measured_on']}: R² {m['r2']:.3f}, dead {m['dead_fraction']:.1%}")
    if concepts.info.get("fallback"):
        print(f"naming: {concepts.info['fallback']}")
    return 0


def _report_embeddings(model, manifest, path):
    """(the rows with report text, their text embeddings)."""
    import numpy as np

    from ..inference.embed import embed_texts
    from ..inference.sae import ConceptsError
    from ..tasks.embed import report_texts

    texts = report_texts(manifest)
    rows = np.flatnonzero([t is not None for t in texts])
    if len(rows) < 64:
        raise ConceptsError(f"{path}: {len(rows)} rows have report text; concepts over text embeddings need >= 64 "
                            f"(use --embeddings image)")
    return manifest.subset(rows), embed_texts(model, [texts[i] for i in rows])


def _run_concepts_search(args) -> int:
    from ..inference.concepts import load_concepts, search_concepts
    from ..models.dual import load_model

    concepts = load_concepts(args.concepts or args.model / "concepts", args.model)
    for hit in search_concepts(args.query, load_model(args.model), concepts, k=args.top):
        print(f"feature {hit['feature']:>5}  cos {hit['cosine']:+.3f}  {hit['name']}  top images: "
              f"{', '.join(hit['top_ids'][:5])}")
    return 0
