"""Text summaries of data files: the one-line summary of ``fitcsc data validate`` and the
per-study / arm / subject overview of ``fitcsc data show``. Pure functions of what the
readers returned; nothing is re-read or recomputed."""

from __future__ import annotations

import numpy as np


def plural(count: int, noun: str) -> str:
    """``"1 subject"``, ``"2 subjects"``, ``"2 studies"``."""
    if count == 1:
        return f"{count} {noun}"
    if noun.endswith("y") and noun[-2:-1] not in "aeiou":
        return f"{count} {noun[:-1]}ies"
    return f"{count} {noun}s"


def describe_table(table, limit_mm3: float) -> str:
    """One line: subjects, arms, observations (censored below ``limit_mm3``), days."""
    return (
        f"{plural(len(table.subjects), 'subject')}, {plural(len(table.arms), 'arm')}, "
        f"{plural(table.n_rows, 'observation')} "
        f"({int(table.censored(limit_mm3).sum())} censored), "
        f"days {table.day.min():g}..{table.day.max():g}"
    )


def describe_regimens(regimens) -> str:
    """One line: dose lines, doses and drugs of ``{key: Regimen}``."""
    drugs = tuple(dict.fromkeys(d for reg in regimens.values() for d in reg.drugs))
    n_lines = sum(len(reg.lines) for reg in regimens.values())
    n_doses = sum(reg.n_doses for reg in regimens.values())
    return (f"{plural(n_lines, 'dose line')}, {plural(n_doses, 'dose')} of "
            f"{plural(len(drugs), 'drug')}" + (f" ({', '.join(drugs)})" if drugs else ""))


def describe_regimen(regimen) -> str:
    """A regimen in words: ``trastuzumab 10 mg/kg x3 every 7 d from day 0``; ``untreated``."""
    if not regimen.lines:
        return "untreated"
    parts = []
    for ln in regimen.lines:
        when = (f"x{ln.n_doses} every {ln.interval_day:g} d from day {ln.start_day:g}"
                if ln.n_doses > 1 else f"on day {ln.start_day:g}")
        how = f", {ln.infusion_hours:g} h infusion" if ln.infusion_hours > 0 else ""
        parts.append(f"{ln.drug} {ln.dose:g} {ln.dose_unit} {when}{how}")
    return "; ".join(parts)


def _arm_text(arm, regimens, kind):
    """How an arm is treated: its regimen, or what the fit assumes without one."""
    from .arms import arm_drug_class, arm_drugs, is_control_arm

    if kind == "nonmem":
        return "doses per subject (NONMEM records)"
    if regimens is not None:
        return describe_regimen(regimens[arm]) if arm in regimens else "NO REGIMEN"
    if is_control_arm(arm):
        return "untreated (control name; no regimen table)"
    known = "" if arm_drugs(arm) else ", names no catalogue drug: class assumed"
    return f"constant {arm_drug_class(arm)} effect from day 0 (no regimen table{known})"


def overview(data, *, limit_mm3: float = 1.0, max_subjects: int | None = 20) -> list[str]:
    """Lines of ``fitcsc data show`` for a `VolumeData`: a header, then per study its
    arms (regimen or assumed effect) and per arm its subjects (observations, censored,
    days, volume range; NONMEM: the subject's doses). At most ``max_subjects`` subjects
    per arm (None: all)."""
    t = data.table
    cens = t.censored(limit_mm3)
    out = [f"{t.path}: {data.kind}, {plural(len(set(t.study.tolist())), 'study')}, "
           f"{describe_table(t, limit_mm3)}"
           + (f"; regimens from {data.regimen_source}" if data.regimen_source else "")]
    for study in dict.fromkeys(t.study.tolist()):
        in_study = t.study == study
        arms = tuple(dict.fromkeys(t.arm[in_study].tolist()))
        n_sub = len(set(t.subject[in_study].tolist()))
        out.append(f"study {study}: {plural(len(arms), 'arm')}, {plural(n_sub, 'subject')}")
        for arm in arms:
            rows = in_study & (t.arm == arm)
            subjects = tuple(dict.fromkeys(t.subject[rows].tolist()))
            out.append(f"  arm {arm}: {plural(len(subjects), 'subject')}; "
                       f"{_arm_text(arm, data.regimens, data.kind)}")
            shown = subjects if max_subjects is None else subjects[:max_subjects]
            for s in shown:
                r = rows & (t.subject == s)
                v = t.volume_mm3[r]
                line = (f"    {s}: {plural(int(r.sum()), 'observation')} "
                        f"({int(cens[r].sum())} censored), days {t.day[r].min():g}.."
                        f"{t.day[r].max():g}, volume {np.min(v):g}..{np.max(v):g} mm3")
                if data.kind == "nonmem":
                    line += f"; {describe_regimen(data.regimens[s])}"
                out.append(line)
            if len(shown) < len(subjects):
                out.append(f"    ... and {len(subjects) - len(shown)} more (--all to list)")
    return out


def regimen_overview(path, regimens) -> list[str]:
    """Lines of ``fitcsc data show`` for a regimen table: each arm and its dose lines."""
    out = [f"{path}: regimen, {plural(len(regimens), 'arm')}, {describe_regimens(regimens)}"]
    for arm, reg in regimens.items():
        out.append(f"  arm {arm}: {describe_regimen(reg)}")
    return out
