"""PDXE breast: HER2-targeted response through CSCs or bulk, and paclitaxel's CSC sparing.

Question: in the Novartis PDX Encyclopedia breast set (Gao et al. 2015; 43 lines, one
mouse per line and arm), which lines respond to trastuzumab (and the other HER2-class
arms present: LJM716 + trastuzumab, and the anti-HER3 LJM716 arms, which the catalogue
files as HER2 class) through the CSC term (``her2_efficacy_csc``: fewer symmetric CSC
self-renewals) rather than the bulk term (``her2_efficacy_bulk``: slower bulk
division), and does either follow ERBB2 copy number or RNA? And how large are
paclitaxel's bulk kill (``kill_rate``) and CSC sparing (``csc_sparing``) across lines?

Method: `fitcsc fit --share-growth-by pdx_line` (`fitcsc._jobs.fit_job.GroupUnits`): per line, one
joint maximum-likelihood fit of all its curves, CSC growth (v_S, p) shared and pinned by
the untreated curve, each arm's own constant effect from day 0 (no doses in the data),
initial volume per curve, one sigma per line; multi-start Levenberg-Marquardt. Standard
errors from the Gauss-Newton Hessian by the delta method; an effect is *flagged* when its
95% interval spans more than half its range or it sits at a bound (its delta-method SE
then means nothing). Spearman correlations (scipy.stats) over lines against the marker
file's ERBB2 values.

Run: ``python experiments/pdxe_response.py [--quick] [--out DIR]``. Writes
``line_arm.csv`` (one row per line x arm), ``correlations.csv``, ``summary.json``,
``her2_vs_erbb2.png``, ``paclitaxel.png``, ``RESULT.md`` and the fit job's own outputs in
``fit/`` to ``--out`` (default experiments/results/pdxe_response).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import pathlib
import sys
import time

import numpy as np
from scipy import stats

import fitcsc
from fitcsc.files import csv_text, pyplot, save_figure, write_atomic

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATASET = "pdxe_brca"
GROUP = "pdx_line"
HER2_ARMS = ("trastuzumab", "LJM716 + trastuzumab", "LJM716", "BYL719 + LJM716")
TRASTUZUMAB_ARMS = ("trastuzumab", "LJM716 + trastuzumab")
CHEMO_ARM = "paclitaxel"
QUICK_LINES = ("X-3873", "X-4567", "X-1004")  # the two ERBB2-amplified lines and one not
QUICK_ARMS = ("untreated", "trastuzumab", "LJM716 + trastuzumab", "paclitaxel")
INTERVAL = {"self_renewal": (0.5, 1.0), "her2_efficacy_csc": (0.0, 1.0),
            "her2_efficacy_bulk": (0.0, 1.0), "csc_sparing": (0.0, 1.0),
            "cytostatic_efficacy": (0.0, 1.0)}
EFFECTS = ("her2_efficacy_csc", "her2_efficacy_bulk", "kill_rate", "csc_sparing",
           "cytostatic_efficacy")
BOUND_TOL = 1e-3  # an Interval estimate this close to a bound is "at the bound"
DETECT = 0.05  # an efficacy counts as present when its 95% lower limit exceeds this
KILL_FLOOR = 1e-3  # paclitaxel figure: kill rates below this are drawn at it [1/day]


def subset(table, lines=None, arms=None):
    """The table restricted to ``lines`` and ``arms`` (None: all)."""
    keep = np.ones(table.n_rows, bool)
    if lines is not None:
        keep &= np.isin(table.extra[GROUP], list(lines))
    if arms is not None:
        keep &= np.isin(table.arm, list(arms))
    return table.select(keep)


def read_markers(path):
    out = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            out[row["pdx_line"]] = {k: float(v) if v not in ("", "NA") else math.nan
                                    for k, v in row.items() if k != "pdx_line"}
    return out


def _num(x):
    return math.nan if x in ("", None) else float(x)


def flag(name, value, se):
    """``""`` (fine), ``"at_bound"`` or ``"wide"`` (95% interval over half the range, or a
    relative SE above 1 for a rate), ``"no_se"``."""
    if not math.isfinite(value):
        return ""
    if name in INTERVAL or name.startswith("cytostatic_efficacy"):
        lo, hi = INTERVAL.get(name, (0.0, 1.0))
        if min(value - lo, hi - value) < BOUND_TOL * (hi - lo):
            return "at_bound"
        if not math.isfinite(se):
            return "no_se"
        return "wide" if 2 * 1.96 * se > 0.5 * (hi - lo) else ""
    if not math.isfinite(se):
        return "no_se"
    return "wide" if se > abs(value) else ""


def her2_route(row):
    """Which term carries a HER2-class arm's effect in this line."""
    if row["status"] not in ("converged", "max_steps"):
        return "fit_failed"
    out = []
    for term, name in (("CSC", "her2_efficacy_csc"), ("bulk", "her2_efficacy_bulk")):
        v, se, fl = row[name], row[f"{name}_se"], row[f"{name}_flag"]
        if fl == "at_bound":
            present = v > 0.5  # at the upper bound: full effect; at 0: none
        elif fl in ("wide", "no_se"):
            present = None
        else:
            present = v - 1.96 * se > DETECT
        out.append((term, present))
    if any(p is None for _, p in out):
        return "not_identified"
    hits = [t for t, p in out if p]
    return {0: "none", 1: hits[0] if hits else "none", 2: "both"}[len(hits)]


def line_arm_rows(fits_csv, markers):
    rows = []
    with open(fits_csv, newline="") as fh:
        for r in csv.DictReader(fh):
            m = markers.get(r[GROUP], {})
            row = {"line": r[GROUP], "arm": r["arm"], "subject": r["subject"],
                   "status": r["status"], "n_obs": int(r["n_obs"]),
                   "rmse_log_volume": _num(r["rmse_log_volume"]),
                   "group_identifiable": r["identifiable"],
                   "condition_number": _num(r["condition_number"]),
                   "ERBB2_cnv": m.get("ERBB2_cnv", math.nan),
                   "ERBB2_rnaseq": m.get("ERBB2_rnaseq_fpkm", math.nan)}
            for name in ("csc_division_rate", "self_renewal", *EFFECTS):
                v, se = _num(r.get(name)), _num(r.get(f"{name}_se"))
                row[name], row[f"{name}_se"] = v, se
                row[f"{name}_flag"] = flag(name, v, se)
            row["her2_route"] = her2_route(row) if r["arm"] in HER2_ARMS else ""
            rows.append(row)
    return rows


def _spearman(rows, x, y):
    """Spearman rho and two-sided p over ``rows`` (NaN below 4 rows or without ties
    broken: a constant variable)."""
    a, b = [r[x] for r in rows], [r[y] for r in rows]
    if len(rows) < 4 or len(set(a)) < 2 or len(set(b)) < 2:
        return math.nan, math.nan
    res = stats.spearmanr(a, b)
    return float(res.statistic), float(res.pvalue)


def correlations(rows):
    out = []
    usable = [r for r in rows if r["status"] in ("converged", "max_steps")]
    for arm in [a for a in (*HER2_ARMS, CHEMO_ARM) if any(r["arm"] == a for r in usable)]:
        params = (("her2_efficacy_csc", "her2_efficacy_bulk") if arm != CHEMO_ARM
                  else ("kill_rate", "csc_sparing"))
        for param in params:
            for marker in ("ERBB2_cnv", "ERBB2_rnaseq"):
                sel = [r for r in usable if r["arm"] == arm and math.isfinite(r[marker])
                       and math.isfinite(r[param])]
                clean = [r for r in sel if r[f"{param}_flag"] == ""]
                rho, p = _spearman(sel, marker, param)
                rho_c, p_c = _spearman(clean, marker, param)
                out.append(dict(arm=arm, parameter=param, marker=marker, n=len(sel),
                                spearman_rho=rho, p_value=p, n_unflagged=len(clean),
                                rho_unflagged=rho_c, p_unflagged=p_c))
    return out


def _fmt(x):
    if isinstance(x, float):
        return "" if math.isnan(x) else f"{x:.6g}"
    return str(x)


def _table_text(rows):
    header = list(rows[0])
    return csv_text(header, [[_fmt(r[h]) for h in header] for r in rows])


def figures(rows, out):
    plt = pyplot()
    usable = [r for r in rows if r["status"] in ("converged", "max_steps")]
    arms = [a for a in TRASTUZUMAB_ARMS if any(r["arm"] == a for r in usable)]
    fig, axes = plt.subplots(len(arms) or 1, 2, figsize=(10, 4 * max(len(arms), 1)),
                             squeeze=False, constrained_layout=True)
    for i, arm in enumerate(arms):
        for j, name in enumerate(("her2_efficacy_csc", "her2_efficacy_bulk")):
            ax = axes[i, j]
            for r in usable:
                if r["arm"] != arm or not math.isfinite(r["ERBB2_cnv"]):
                    continue
                col = "C3" if r[f"{name}_flag"] else "C0"
                se = r[f"{name}_se"] if r[f"{name}_flag"] == "" else 0.0
                ax.errorbar(r["ERBB2_cnv"], r[name], yerr=1.96 * se, fmt="o", ms=4,
                            color=col, capsize=2, lw=0.8)
                if r["ERBB2_cnv"] > 3:
                    ax.annotate(r["line"], (r["ERBB2_cnv"], r[name]), fontsize=7,
                                xytext=(3, 3), textcoords="offset points")
            ax.set(xscale="log", ylim=(-0.05, 1.05), xlabel="ERBB2 copy number (PDXE)",
                   ylabel=name, title=f"{arm}: {name.split('_')[-1]} term")
    fig.suptitle("HER2-class efficacy per line vs ERBB2 (blue: 95% interval; red: flagged, "
                 "at a bound or interval over half the range)", fontsize=10)
    save_figure(fig, out / "her2_vs_erbb2.png")

    pac = [r for r in usable if r["arm"] == CHEMO_ARM]
    fig, ax = plt.subplots(figsize=(6.5, 5), constrained_layout=True)
    for r in pac:
        ok = r["kill_rate_flag"] == "" and r["csc_sparing_flag"] == ""
        ax.errorbar(max(r["kill_rate"], KILL_FLOOR), r["csc_sparing"],
                    xerr=1.96 * r["kill_rate_se"] if ok else 0,
                    yerr=1.96 * r["csc_sparing_se"] if ok else 0, fmt="o", ms=4,
                    color="C0" if ok else "C3", capsize=2, lw=0.8)
    ax.set(xscale="log", ylim=(-0.05, 1.05), xlabel="paclitaxel bulk kill rate [1/day]",
           ylabel="CSC sparing (k_S / k_D)",
           title=f"paclitaxel per line (red: an estimate flagged; kill < {KILL_FLOOR:g} "
           "drawn at it)")
    save_figure(fig, out / "paclitaxel.png")


def _median_iqr(values):
    v = np.asarray([x for x in values if math.isfinite(x)])
    if v.size == 0:
        return None
    q = np.percentile(v, [25, 50, 75])
    return {"n": int(v.size), "median": float(q[1]), "q25": float(q[0]), "q75": float(q[2])}


def main(args) -> dict:
    t_start = time.perf_counter()
    out = pathlib.Path(args.out)
    base = fitcsc.data_dir(args.data_dir) / DATASET
    table = fitcsc.read_tidy_csv(base / "pdxe_brca_tumor_volume.csv")
    lines = QUICK_LINES if args.quick else None
    arms = QUICK_ARMS if args.quick else None
    table = subset(table, lines, arms)
    if args.report_only:  # tables, figures and RESULT.md again from an existing fit/
        job = json.loads((out / "fit" / "summary.json").read_text())
        earlier_wall_s = json.loads((out / "summary.json").read_text())["wall_s"]
    else:
        job = fitcsc.fit_job(table, out / "fit", share_growth_by=GROUP, starts=args.starts,
                      chunk_size=args.chunk_size, quick=args.quick,
                      max_subjects=table.n_rows, progress=not args.no_progress)
    markers = read_markers(base / "pdxe_brca_line_markers.csv")
    rows = line_arm_rows(out / "fit" / "fits.csv", markers)
    write_atomic(out / "line_arm.csv", _table_text(rows))
    corr = correlations(rows)
    if corr:
        write_atomic(out / "correlations.csv", _table_text(corr))
    figures(rows, out)

    her2 = [r for r in rows if r["arm"] in HER2_ARMS]
    routes = {}
    for r in her2:
        routes.setdefault(r["arm"], {}).setdefault(r["her2_route"], []).append(r["line"])
    pac = [r for r in rows if r["arm"] == CHEMO_ARM and r["status"] in ("converged",
                                                                          "max_steps")]
    flags = {}
    for r in rows:
        for name in EFFECTS:
            f = r[f"{name}_flag"]
            if math.isfinite(r[name]):
                flags.setdefault(name, {"n": 0, "at_bound": 0, "wide": 0, "no_se": 0})
                flags[name]["n"] += 1
                if f:
                    flags[name][f] += 1
    summary = {
        "question": "HER2-class response via CSC or bulk term vs ERBB2; paclitaxel kill and "
                    "CSC sparing across PDXE breast lines",
        "quick": bool(args.quick),
        "n_curves": job["n_subjects"], "n_lines": job["n_groups"],
        "n_failed": job["n_failed"], "n_groups_failed": job["n_groups_failed"],
        "status_counts": job["status_counts"],
        "group_status_counts": job["group_status_counts"],
        "starts": job["starts"], "optimiser": job["optimiser"],
        "n_z_per_line": job["n_z"], "fit_s": job["fit_s"],
        "wall_s": (earlier_wall_s if args.report_only
                   else round(time.perf_counter() - t_start, 2)),
        "device": job["device"], "precision": job["precision"],
        "versions": job["versions"],
        "her2_routes": {a: {k: sorted(v) for k, v in d.items()} for a, d in routes.items()},
        "paclitaxel": {
            "kill_rate_per_day": _median_iqr([r["kill_rate"] for r in pac]),
            "csc_sparing": _median_iqr([r["csc_sparing"] for r in pac]),
            "n_lines": len(pac),
            "n_sparing_below_0.5_unflagged": sum(
                r["csc_sparing"] < 0.5 and r["csc_sparing_flag"] == "" for r in pac),
            "n_sparing_flagged": sum(r["csc_sparing_flag"] != "" for r in pac),
        },
        "flags": flags,
        "correlations": corr,
        "job_warnings": job["warnings"], "job_errors": job["errors"],
    }
    write_atomic(out / "summary.json", json.dumps(summary, indent=2, allow_nan=True) + "\n")
    _result_md(summary, rows, out / "RESULT.md")
    return summary


def _result_md(s, rows, path):
    n, f = s["n_curves"], s["n_failed"]
    lines = [
        "# PDXE breast: HER2-class response via CSC or bulk term; paclitaxel CSC sparing",
        "",
        ("Quick run (3 lines, 4 arms): a smoke test, not a result." if s["quick"] else
         "Full run: every line and arm of the PDXE breast set."),
        "",
        f"- Curves fitted: {n} in {s['n_lines']} lines (growth shared per line); failed "
        f"fits: {f} ({100 * f / max(n, 1):.1f}%); status counts {s['status_counts']} "
        f"(max_steps = the optimiser's step cap was reached; the estimate is kept).",
        f"- Wall time {s['wall_s']:.0f} s (fit {s['fit_s']:.0f} s, JAX compilation "
        f"included), {s['device']}, {s['precision']}, {s['starts']} starts per line.",
        "",
        "## Which term carries the HER2-class effect",
        "",
        "Per line and arm: `CSC` / `bulk` / `both` when the term's 95% lower limit exceeds "
        f"{DETECT} (or it sits at its upper bound), `none` when neither does, "
        "`not_identified` when a term's interval spans more than half its range.",
        "",
        "| arm | route: lines |",
        "|---|---|",
    ]
    for arm, d in s["her2_routes"].items():
        parts = "; ".join(f"{k} ({len(v)}): {', '.join(v)}" for k, v in sorted(d.items()))
        lines.append(f"| {arm} | {parts} |")
    rmse = np.asarray([r["rmse_log_volume"] for r in rows])
    no_ctrl = sorted({r["line"] for r in rows} - {r["line"] for r in rows
                                                  if r["arm"] == "untreated"})
    lines[6:6] = [
        f"- Fit quality: rmse of log volume per curve median {np.nanmedian(rmse):.3g} "
        f"(IQR {np.nanpercentile(rmse, 25):.3g}-{np.nanpercentile(rmse, 75):.3g}); "
        f"{int(np.sum(rmse > 0.5))} curves above 0.5.",
        f"- Lines without an untreated curve (self-renewal not estimated, fixed at the "
        f"reference 0.6): {', '.join(no_ctrl) or 'none'}.",
        f"- Line fits by status: {s['group_status_counts']}. A line at the optimiser's "
        f"cap of {s['optimiser']['max_steps']} Levenberg-Marquardt steps (max_steps) "
        "was still drifting along a flat direction (an efficacy running to a bound); its "
        "estimates are the last accepted iterate.",
    ]
    lines += ["", "## Against ERBB2 (Spearman over lines)", "",
              f"{len(s['correlations'])} tests on the same lines: at a Bonferroni level "
              f"of 0.05/{len(s['correlations'])} = "
              f"{0.05 / max(len(s['correlations']), 1):.2g}, "
              + ("none is significant" if all(not (c["p_value"] < 0.05 / len(
                  s["correlations"])) for c in s["correlations"]) else
                 "see the p column") + ". `n unflagged` drops line x arm estimates that sit "
              "at a bound or have an interval over half the range.", "",
              "| arm | parameter | marker | n | rho | p | n unflagged | rho unflagged | p |",
              "|---|---|---|---|---|---|---|---|---|"]
    for c in s["correlations"]:
        lines.append(f"| {c['arm']} | {c['parameter']} | {c['marker']} | {c['n']} | "
                     f"{_fmt(c['spearman_rho'])} | {_fmt(c['p_value'])} | {c['n_unflagged']} | "
                     f"{_fmt(c['rho_unflagged'])} | {_fmt(c['p_unflagged'])} |")
    amp = [r for r in rows if r["arm"] in TRASTUZUMAB_ARMS and r["ERBB2_cnv"] > 3]
    if amp:
        lines += ["", "ERBB2-high lines (copy number > 3) under trastuzumab arms:", ""]
        for r in amp:
            lines.append(
                f"- {r['line']} (CN {r['ERBB2_cnv']:.3g}), {r['arm']}: CSC term "
                f"{r['her2_efficacy_csc']:.3g} ± {r['her2_efficacy_csc_se']:.2g} "
                f"{r['her2_efficacy_csc_flag']}, bulk term {r['her2_efficacy_bulk']:.3g} ± "
                f"{r['her2_efficacy_bulk_se']:.2g} {r['her2_efficacy_bulk_flag']}; "
                f"route {r['her2_route']}, status {r['status']}")
    p = s["paclitaxel"]
    lines += ["", "## Paclitaxel across lines", ""]
    if p["kill_rate_per_day"]:
        k, sp = p["kill_rate_per_day"], p["csc_sparing"]
        lines += [f"- bulk kill rate: median {k['median']:.3g}/day (IQR {k['q25']:.3g}-"
                  f"{k['q75']:.3g}), {k['n']} lines.",
                  f"- CSC sparing k_S/k_D: median {sp['median']:.3g} (IQR {sp['q25']:.3g}-"
                  f"{sp['q75']:.3g}); below 0.5 with an unflagged estimate in "
                  f"{p['n_sparing_below_0.5_unflagged']} lines; flagged (at a bound or "
                  f"interval over half the range) in {p['n_sparing_flagged']} of "
                  f"{p['n_lines']}."]
    lines += ["", "## Identifiability", "",
              "Effects flagged per parameter (of the line x arm estimates): "
              + "; ".join(f"{k}: {v['at_bound']} at a bound, {v['wide']} wide, "
                          f"{v['no_se']} without SE, of {v['n']}"
                          for k, v in s["flags"].items()) + ".",
              "",
              "Reading: one mouse per line and arm, a constant effect from day 0 and two "
              "HER2 terms acting on one volume curve: the CSC and bulk terms are separated "
              "only by the curve's shape (a bulk effect shows at once, a CSC effect as a "
              "later change of slope), so many lines do not identify the split; flagged "
              "values are not evidence either way. Estimates at a bound have no usable "
              "delta-method SE. See line_arm.csv for every estimate, SE and flag."]
    write_atomic(path, "\n".join(lines) + "\n")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="3 lines x 4 arms, 2 starts, 100 optimiser steps")
    p.add_argument("--starts", type=int, default=4, help="starts per line")
    p.add_argument("--chunk-size", type=int, default=64, help="curves per compiled call")
    p.add_argument("--data-dir", default=None, help="data directory (default: fitcsc's)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--report-only", action="store_true",
                   help="no fit: rebuild tables, figures and RESULT.md from OUT/fit/ (the "
                   "wall time kept is the earlier run's)")
    p.add_argument("--out", default=str(ROOT / "experiments" / "results" / "pdxe_response"))
    return p.parse_args(argv)


if __name__ == "__main__":
    summary = main(parse_args(sys.argv[1:]))
    print(json.dumps({k: summary[k] for k in ("n_curves", "n_lines", "n_failed",
                                               "status_counts", "wall_s", "device",
                                               "precision")}, indent=1))
