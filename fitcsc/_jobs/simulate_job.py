"""``fitcsc simulate``: the published regimens, simulated with illustrative parameters.

``fitcsc simulate`` simulates every regimen in
``data/clinical/regimens.csv`` (the arms of the published neoadjuvant and adjuvant
HER2+ trials) with one CSC model and *illustrative, not fitted* parameters, all arms
in one vmapped call, and sets the typical patient's residual invasive cells at the
assumed surgery day beside each trial's published pCR rate. It writes
``arms.csv``, ``trajectories.csv``, ``summary.json`` and ``regimens.png``.

Illustrative calibration (documented, not data): a 3-cm HER2+ tumour (14,000 mm3,
1% CSCs) with a volume doubling time of several months; trastuzumab/pertuzumab/
lapatinib block HER2 with EC50 10 mg/L; each chemotherapy drug's kill rate is set so
that one reference dose (``fitcsc._trial.model.CHEMO_REFERENCE_DOSE``, the trial model's
calibration) kills one natural log of cycling cells, with CSCs spared tenfold (sigma_S
= 0.1); so an arm's trajectory never depends on the other arms in the table.
"""

from __future__ import annotations

import csv
import json
import pathlib
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._io.files import csv_text, run_record, write_atomic
from .._model.family import ModelConfig
from .._model.params import default_params
from .._model.regimen import stack_schedules
from .._solve.simulate import simulate
from .._status import Status

REPO_DATA = pathlib.Path(__file__).resolve().parents[2] / "data"  # the repository's data/
SURGERY_WEEKS = 4.0  # assumed: surgery 4 weeks after the last preoperative dose

ILLUSTRATIVE = dict(
    initial_volume_mm3=14000.0,  # 3-cm sphere
    initial_csc_fraction=0.01,
    csc_division_rate=0.1,
    self_renewal=0.52,
    bulk_division_rate=0.05,
    bulk_death_rate=0.045,
    carrying_capacity_cells=1e12,
    her2_efficacy_csc=0.6,
    her2_efficacy_bulk=0.9,
    csc_sparing=0.1,
    ec50_mg_per_L=10.0,
)


def published_pcr(path: pathlib.Path) -> dict[str, dict]:
    """Primary-definition, all-patient pCR rows of ``pcr_arms.csv`` keyed by regimen."""
    out = {}
    if not path.exists():
        return out
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row["hr_subgroup"] == "all" and row["is_primary_definition"] == "yes":
                out.setdefault(row["regimen_id"], row)
    return out


def run_default(regimen_file=None, out_dir="runs/default", *, quick=False, n_times=120):
    """Simulate every regimen of ``regimen_file`` and write the outputs to ``out_dir``.

    **Returns:** the summary dictionary (also written as ``summary.json``).
    """
    from .._io.data import read_regimen_table
    from .._trial.model import reference_kill
    from .plot import plot_regimen_run

    t_start = time.perf_counter()
    regimen_file = pathlib.Path(regimen_file or REPO_DATA / "clinical" / "regimens.csv")
    out = pathlib.Path(out_dir)
    regimens = read_regimen_table(regimen_file)
    pcr = published_pcr(regimen_file.parent / "pcr_arms.csv")
    arms = sorted(regimens)
    if quick:
        arms = [a for a in arms if a in pcr][:4] or arms[:4]
        n_times = 30
    drugs = tuple(dict.fromkeys(d for a in arms for d in regimens[a].drugs))
    model = ModelConfig(crowding="logistic", drugs=drugs, species="human")
    params = default_params(model, **ILLUSTRATIVE)
    params = eqx.tree_at(lambda p: p.kill_rate, params,
                         jnp.asarray(reference_kill(model)))
    max_doses = max(1, max(regimens[a].n_doses for a in arms))
    schedules = [regimens[a].to_schedule(drugs, species="human", max_doses=max_doses)
                 for a in arms]
    last = [max([e[0] + e[3] for e in regimens[a].events()] or [0.0]) for a in arms]
    end = np.array(last) + 7.0 * SURGERY_WEEKS
    ts = np.stack([np.linspace(0.0, e, n_times) for e in end])
    sim = jax.jit(jax.vmap(lambda s, t: simulate(model, params, s, t, max_steps=16384)))
    sols = sim(stack_schedules(schedules), jnp.asarray(ts))
    jax.block_until_ready(sols.volume_mm3)
    living = [model.index(n) for n in model.cell_states if not n.startswith("X")]
    residual = np.asarray(jnp.sum(sols.states[:, -1, jnp.asarray(living)], axis=-1))
    status = np.asarray(sols.status)

    arm_rows = []
    for i, a in enumerate(arms):
        pub = pcr.get(a, {})
        arm_rows.append([
            a, pub.get("trial", ""), f"{end[i]:g}", f"{residual[i]:.6g}",
            f"{np.exp(-residual[i]):.6g}", f"{float(sols.csc_fraction[i, -1]):.6g}",
            pub.get("pcr_definition", ""), pub.get("pcr_pct", ""), pub.get("n_patients", ""),
            Status(int(status[i])).name,
        ])
    write_atomic(out / "arms.csv", csv_text(
        ["arm", "trial", "surgery_day", "residual_invasive_cells", "p_pcr_typical_patient",
         "csc_fraction_at_surgery", "published_pcr_definition", "published_pcr_pct",
         "n_patients", "status"], arm_rows))
    traj = [[a, f"{ts[i, k]:.6g}", f"{float(sols.volume_mm3[i, k]):.6g}",
             f"{float(sols.csc_fraction[i, k]):.6g}"]
            for i, a in enumerate(arms) for k in range(ts.shape[1])]
    write_atomic(out / "trajectories.csv",
                 csv_text(["arm", "day", "volume_mm3", "csc_fraction"], traj))
    plot_regimen_run(arms, ts, np.asarray(sols.volume_mm3), np.asarray(sols.csc_fraction),
                     residual, pcr, out / "regimens.png")
    summary = {
        "job": "simulation of the published regimens (illustrative parameters, not fitted)",
        "regimen_file": str(regimen_file),
        "n_arms": len(arms),
        "n_failed": int(np.sum(status != 0)),
        "model": {k: getattr(model, k) for k in ("crowding", "drugs", "species",
                                                 "chemo_mode", "cells_per_mm3")},
        "illustrative_parameters": ILLUSTRATIVE,
        "surgery_weeks_after_last_dose": SURGERY_WEEKS,
        "wall_s": round(time.perf_counter() - t_start, 3),
        **run_record(),  # deterministic: no random stream
        "outputs": ["arms.csv", "trajectories.csv", "regimens.png"],
    }
    write_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
