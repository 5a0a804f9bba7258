"""Write COMPARE.md from clinical_validation.py runs of the same folds with different
``--posterior`` (each a subfolder; every number is read from its files). The runs here:

    python experiments/clinical_validation.py --quick --out .../psis
    python experiments/clinical_validation.py --quick --posterior chees --chains 4 \\
        --warmup 50 --out .../chees

Usage: ``python make_compare.py [FOLDER RUN...]`` (default: this folder, psis chees).
"""

import csv
import json
import pathlib
import sys

HEAD = ("| posterior | settings | arms inside 95% PI | mean signed error (points) | "
        "mean width (points) | diagnostics | wall (s) |")


def diagnostics(pc) -> str:
    if "rhat_max" in pc:
        return (f"R-hat max {pc['rhat_max']:.3f}, bulk ESS min {pc['ess_bulk_min']:.0f}, "
                f"{pc['n_divergent']} divergences, {pc['n_folds_flagged']} folds flagged")
    if "k_hat_max" in pc:
        return f"PSIS k_hat {pc['k_hat_min']:.2f}-{pc['k_hat_max']:.2f}"
    return "-"


def main(root, runs):
    lines = ["# Quick leave-one-trial-out validation: posterior methods compared", "",
             "Same folds (`--quick`: NeoSphere and MDACC left out in turn; 9 + 5 quadrature "
             "nodes, 1 start, 10 LM steps), same seed; only `--posterior` differs. Each folder "
             "holds the run's `arms.csv`, `summary.json`, `RESULT.md` and `calibration.png`. "
             "A quick run is a smoke-scale comparison, not the validation result (see "
             "../RESULT.md).", "", HEAD, "|---|---|---|---|---|---|---|"]
    arms, notes = {}, []
    for name in runs:
        s = json.loads((root / name / "summary.json").read_text())
        pc = s.get("posterior_check", {})
        if pc.get("n_folds_flagged"):
            notes.append(f"{name}: {pc['n_folds_flagged']} folds flagged (R-hat > 1.01 or a "
                         "divergence): these chains have not converged, so their intervals "
                         "are no reference for the others.")
        if pc.get("k_hat_max", 0) > 0.7:
            notes.append(f"{name}: PSIS k_hat up to {pc['k_hat_max']:.2f} > 0.7: its weights "
                         "rest on few draws.")
        m, st = s["pcr"], s["settings"]
        sett = f"{st['draws']} draws" + (f", {st['chains']} chains, {st['warmup']} warm-up"
                                         if "chains" in st else "")
        lines.append(f"| {st['posterior']} | {sett} | {m['n_inside_95']}/{m['n_arms']} | "
                     f"{m['mean_signed_error_points']:+.1f} | "
                     f"{m['mean_width_95_points']:.1f} | "
                     f"{diagnostics(s.get('posterior_check', {}))} | {s['wall_s']} |")
        with open(root / name / "arms.csv", newline="") as fh:
            for r in csv.DictReader(fh):
                arms.setdefault(r["arm"], {"obs": r["observed_pct"],
                                           "held": r["held_out"]})[name] = r
    lines += ["", "Per arm: published pCR %, and each method's predicted mean % with its 95% "
              "predictive interval.", "",
              "| left out | arm | published % | " + " | ".join(runs) + " |",
              "|---|---|---|" + "---|" * len(runs)]
    for a, d in arms.items():
        cells = []
        for n in runs:
            r = d.get(n)
            cells.append("-" if r is None else
                         f"{float(r['mean_pct']):.1f} ({float(r['pred_lo_pct']):.1f}-"
                         f"{float(r['pred_hi_pct']):.1f})"
                         + ("" if r["inside"] == "True" else " outside"))
        lines.append(f"| {d['held']} | {a} | {float(d['obs']):.1f} | " + " | ".join(cells)
                     + " |")
    lines += ["", *[f"- {n}" for n in notes]] if notes else []
    (root / "COMPARE.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else pathlib.Path(__file__).parent,
         sys.argv[2:] or ["psis", "chees"])
