"""What ``cxrfm eval`` warns about the run it evaluates (issue 9 item 7, eval side).

Two things make an evaluation's numbers mean something other than they seem, and neither stops it:

- the run is unfinished (stopped by SIGTERM, ``max_steps``, a kill or a non-finite loss): the numbers
  are those of a partly trained model;
- patients of the evaluated data were in the run's training data: on them the model is scored on
  images it trained on, which measures memory, not generalisation (the reason splits are by patient).

The facts come from the run folder through :class:`cxrfm.run.RunDir` (``status()``,
``training_data()``, ``shared_patients()``); the warnings go into results.json ``warnings`` and the
console table.
"""
from __future__ import annotations

from pathlib import Path

from ..data.schema import Manifest
from ..run import RunDir

# Patient ids quoted in a warning; the full list would drown the console for a wholesale overlap.
N_EXAMPLES = 5


def run_warnings(run_dir: str | Path, manifest: Manifest, role: str = "evaluated data") -> list[str]:
    """Warnings about evaluating the run in ``run_dir`` on ``manifest`` (empty when there is nothing to say)."""
    run = RunDir(run_dir)
    out: list[str] = []
    status = run.status()
    if status["finished"] is False:
        where = f"step {status['step']}" + (f" of ~{status['total_steps']}" if status["total_steps"] else "")
        why = f" ({status['error']})" if status.get("error") else ""
        out.append(f"{run_dir}: the run is unfinished: training stopped at {where}{why}; these are the numbers of a "
                   f"partly trained model. Finish it with `cxrfm pretrain --resume --out {run_dir}` (same settings "
                   f"and data) and evaluate again")
    if "patient_id" not in manifest.table.columns:
        return out
    if run.training_data() is None:
        out.append(f"{run_dir}: the run does not record its training data (no training_data.json; trained before "
                   f"cxrfm recorded it), so patient overlap with the {role} was not checked")
        return out
    patients = manifest.table["patient_id"].astype(str)
    shared = run.shared_patients(patients)
    if shared:
        n_rows = int(patients.isin(set(shared)).sum())
        quoted = ", ".join(shared[:N_EXAMPLES]) + (", ..." if len(shared) > N_EXAMPLES else "")
        out.append(f"{len(shared)} of {patients.nunique()} patients ({n_rows} of {len(patients)} rows) of the {role} "
                   f"were in the run's training data ({quoted}); on them the model is scored on images it trained "
                   f"on, which measures memory, not generalisation. Evaluate on held-out patients (`cxrfm split`)")
    return out
