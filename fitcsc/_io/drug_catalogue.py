"""A user drug catalogue file: drugs (and their PK) that fitcsc's catalogue lacks.

Two formats, one meaning. A CSV (comma-separated, UTF-8), one row per drug and species::

    drug,class,species,pk_model,half_life_h,volume_L,tmax_h,aliases,source
    sacituzumab_govitecan,chemo,human,one_compartment,23.4,3.68,,trodelvy,Trodelvy label
    alpelisib,cytostatic,human,oral,8.9,114,3,piqray;byl719,Piqray label

or a TOML file, one table per drug with a sub-table per species::

    [drug.alpelisib]
    class = "cytostatic"
    aliases = ["piqray", "byl719"]
    source = "Piqray label: t1/2 8-9 h, V/F 114 L, Tmax 2-4 h"
    [drug.alpelisib.human]
    pk_model = "oral"
    half_life_h = 8.9
    volume_L = 114
    tmax_h = 3

Fields (units in the names): ``class`` one of `DRUG_CLASSES`; ``pk_model``
``one_compartment`` (``half_life_h`` or ``half_life_day``; ``volume_L`` or
``volume_L_per_kg``, per kg of the species' default body weight), ``oral`` (the same,
plus ``tmax_h`` and optional ``bioavailability``, default 1) or ``two_compartment``
(``clearance_L_per_day``, ``central_volume_L``, ``k12_per_day``, ``k21_per_day``);
optional ``aliases`` (CSV: separated by ``;``), ``payload`` and
``payload_mass_fraction`` (an antibody-drug conjugate's payload, a catalogue drug);
``source`` (required: where the values come from). A species without a row has no PK:
using the drug for it is refused. A drug of the built-in catalogue may be given again
to replace its entry (with a `DataWarning`).

`read_drug_catalogue` parses and validates (`CatalogueError`, one line naming file,
line or key, expectation and value); `load_drug_catalogue` also registers the drugs.
"""

from __future__ import annotations

import math
import pathlib
import re
import tomllib
import warnings

from .._errors import CatalogueError, DataWarning
from .._model.drugs import (
    BODY_WEIGHT_KG,
    CATALOGUE,
    DRUG_CLASSES,
    SPECIES,
    DrugInfo,
    canonical_drug,
    ka_for_tmax,
    register_drug,
)
from .._model.pk import OneCompartment, OneCompartmentOral, TwoCompartment
from .csvfile import read_csv_rows

PK_MODELS = {
    "one_compartment": (),
    "oral": ("tmax_h",),
    "two_compartment": ("clearance_L_per_day", "central_volume_L", "k12_per_day",
                        "k21_per_day"),
}
NUMBER_FIELDS = ("half_life_h", "half_life_day", "volume_L", "volume_L_per_kg", "tmax_h",
                 "bioavailability", "clearance_L_per_day", "central_volume_L", "k12_per_day",
                 "k21_per_day")
CSV_REQUIRED = ("drug", "class", "species", "pk_model", "source")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.+\-/ ()]*$")


class _Where:
    """Where a value sits, for errors: a CSV line and column, or a TOML key path."""

    def __init__(self, file, line=None, prefix=""):
        self.file, self.line, self.prefix = file, line, prefix

    def fail(self, message, key, expected, value):
        return CatalogueError(message, file=self.file, row=self.line,
                              column=f"{self.prefix}{key}", expected=expected, value=value)


def _number(where, key, value, *, positive=True, upper=None):
    """A finite number (> 0 when ``positive``; <= ``upper`` if given)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        try:
            x = float(str(value).strip())
        except ValueError:
            raise where.fail("not a number", key, "a number", value) from None
    else:
        x = float(value)
    if not math.isfinite(x) or (positive and x <= 0) or (upper is not None and x > upper):
        rng = "> 0" + ("" if upper is None else f" and <= {upper:g}")
        raise where.fail("bad value", key, f"a finite number {rng}", value)
    return x


def _one_of(where, fields, names, unit_note):
    given = [n for n in names if fields.get(n) not in (None, "")]
    if len(given) != 1:
        raise where.fail(f"give exactly one of {' or '.join(names)}", names[0],
                         f"one of {', '.join(names)} {unit_note}",
                         {n: fields.get(n) for n in given} or None)
    return given[0]


def _pk(where, species, fields):
    """The PK module of one species from its fields (numbers or text)."""
    model = str(fields.get("pk_model", "")).strip().lower()
    if model not in PK_MODELS:
        raise where.fail("unknown pk_model", "pk_model", "one of " + ", ".join(PK_MODELS),
                         fields.get("pk_model"))
    for key in PK_MODELS[model]:
        if fields.get(key) in (None, ""):
            raise where.fail(f"missing value for a {model} PK", key, "a number > 0", None)
    num = {k: _number(where, k, v, upper=1.0 if k == "bioavailability" else None)
           for k, v in fields.items() if k in NUMBER_FIELDS and v not in (None, "")}
    if model == "two_compartment":
        return TwoCompartment(num["clearance_L_per_day"], num["central_volume_L"],
                              num["k12_per_day"], num["k21_per_day"])
    t_key = _one_of(where, fields, ("half_life_h", "half_life_day"), "(elimination t1/2)")
    v_key = _one_of(where, fields, ("volume_L", "volume_L_per_kg"), "(V or V/F)")
    t_half_day = num[t_key] / (24.0 if t_key == "half_life_h" else 1.0)
    volume = num[v_key] * (BODY_WEIGHT_KG[species] if v_key == "volume_L_per_kg" else 1.0)
    if model == "one_compartment":
        return OneCompartment(t_half_day, volume)
    ka = ka_for_tmax(t_half_day, num["tmax_h"] / 24.0)
    return OneCompartmentOral(t_half_day, volume, ka, num.get("bioavailability", 1.0))


def _drug_info(where, name, common, per_species, known_payloads):
    """A `DrugInfo` from a drug's common fields and ``{species: (where, fields)}``."""
    name = str(name).strip().lower()
    if not _NAME.match(name) or name.startswith("arm:") or name == "none":
        raise where.fail("bad drug name", "drug", "a lower-case name of letters, digits and "
                         "_ . + - / ( ) (not 'none', not 'arm:...')", name)
    cls = str(common.get("class", "")).strip().lower()
    if cls not in DRUG_CLASSES:
        raise where.fail("unknown drug class", "class", "one of " + ", ".join(DRUG_CLASSES),
                         common.get("class"))
    source = str(common.get("source") or "").strip()
    if not source:
        raise where.fail("no source", "source", "where the class and PK come from (a label, "
                         "a paper, or 'assumption: ...')", source)
    aliases = common.get("aliases") or ()
    if isinstance(aliases, str):
        aliases = [a for a in aliases.split(";")]
    if not isinstance(aliases, list | tuple) or not all(isinstance(a, str) for a in aliases):
        raise where.fail("bad aliases", "aliases", "a list of names (CSV: separated by ;)",
                         aliases)
    aliases = tuple(dict.fromkeys(a.strip().lower() for a in aliases if a.strip()))
    for alias in aliases:
        other = canonical_drug(alias)
        if other is not None and other != name:
            raise where.fail(f"alias already names the catalogue drug {other!r}", "aliases",
                             "aliases no other drug uses", alias)
    payload, fraction = common.get("payload") or None, 0.0
    if payload is not None:
        payload = canonical_drug(str(payload)) or str(payload).strip().lower()
        if payload not in CATALOGUE and payload not in known_payloads:
            raise where.fail("unknown payload", "payload", "a catalogue drug (or one defined "
                             "earlier in this file)", common.get("payload"))
        fraction = _number(where, "payload_mass_fraction", common.get("payload_mass_fraction"),
                           upper=1.0)
    pks = {s: _pk(w, s, fields) for s, (w, fields) in per_species.items()}
    if not pks:
        raise where.fail("no PK for any species", "species", "PK for " + " and/or ".join(
            SPECIES), None)
    return DrugInfo(name, cls, pks.get("human"), pks.get("mouse"), aliases, source,
                    payload, fraction)


def _read_csv(path):
    c = read_csv_rows(path, CatalogueError)
    idx = c.columns(CSV_REQUIRED, fold_case=True)
    keys = {k: c.header[idx[k]] for k in CSV_REQUIRED}
    optional = {k: j for j, h in enumerate(c.header) for k in
                (*NUMBER_FIELDS, "aliases", "payload", "payload_mass_fraction")
                if h.lower() == k.lower()}
    drugs: dict[str, tuple[_Where, dict, dict]] = {}
    for line, f in c.rows:
        where = _Where(c.path, line)
        fields = {k: f[j].strip() for k, j in optional.items()}
        fields.update({k: f[idx[k]].strip() for k in CSV_REQUIRED})
        name = fields["drug"].lower()
        species = fields["species"].lower()
        if species not in SPECIES:
            raise where.fail("unknown species", keys["species"], "one of " + ", ".join(SPECIES),
                             fields["species"])
        common = {k: fields.get(k) for k in ("class", "source", "aliases", "payload",
                                              "payload_mass_fraction")}
        first_where, first_common, per_species = drugs.setdefault(name, (where, common, {}))
        for k in ("class", "payload"):
            if (common[k] or "").lower() != (first_common[k] or "").lower():
                raise where.fail(f"drug {name!r} has another {k} on line {first_where.line}",
                                 keys.get(k, k), f"the {k} of its other rows", common[k])
        if species in per_species:
            raise where.fail(f"second {species} row for drug {name!r} (line "
                             f"{per_species[species][0].line})", keys["species"],
                             "one row per drug and species", fields["species"])
        per_species[species] = (where, fields)
    return [(name, *v) for name, v in drugs.items()]


def _read_toml(path):
    file = str(path)
    try:
        doc = tomllib.loads(pathlib.Path(path).read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as e:
        raise CatalogueError("not UTF-8 text", file=file, expected="a UTF-8 TOML file",
                             value=e.object[e.start:e.end + 3]) from None
    except tomllib.TOMLDecodeError as e:
        found = re.search(r"line (\d+)", str(e))
        raise CatalogueError(f"not valid TOML ({e})", file=file,
                             row=int(found.group(1)) if found else None,
                             expected="a TOML file with [drug.<name>] tables") from None
    table = doc.get("drug")
    if not isinstance(table, dict) or not table or set(doc) - {"drug"}:
        raise CatalogueError("no [drug.<name>] tables", file=file, column="drug",
                             expected="only [drug.<name>] tables (and their [.human] / "
                             "[.mouse] sub-tables)", value=sorted(doc) or None)
    out = []
    for name, entry in table.items():
        where = _Where(file, prefix=f"drug.{name}.")
        if not isinstance(entry, dict):
            raise where.fail("not a table", "", "a [drug.<name>] table", entry)
        allowed = {"class", "aliases", "source", "payload", "payload_mass_fraction", *SPECIES}
        extra = set(entry) - allowed
        if extra:
            raise where.fail("unknown key", sorted(extra)[0], "one of " + ", ".join(
                sorted(allowed)), entry[sorted(extra)[0]])
        per_species = {}
        for species in SPECIES:
            if species in entry:
                fields = entry[species]
                w = _Where(file, prefix=f"drug.{name}.{species}.")
                if not isinstance(fields, dict):
                    raise w.fail("not a table", "", f"a [drug.{name}.{species}] table", fields)
                unknown = set(fields) - {"pk_model", *NUMBER_FIELDS}
                if unknown:
                    key = sorted(unknown)[0]
                    raise w.fail("unknown key", key, "pk_model or one of " + ", ".join(
                        NUMBER_FIELDS), fields[key])
                per_species[species] = (w, fields)
        out.append((name, where, entry, per_species))
    return out


def read_drug_catalogue(path) -> list[DrugInfo]:
    """Read and validate a user drug catalogue (``.toml``, else CSV); registers nothing.

    **Returns:** one `DrugInfo` per drug, in file order.

    **Raises:** `CatalogueError` (one line: file, line or key, expectation, value).
    """
    p = pathlib.Path(path)
    if not p.is_file():
        raise CatalogueError("file not found" if not p.exists() else "not a file",
                             file=str(path), expected="a drug catalogue file (CSV or TOML)")
    entries = _read_toml(p) if p.suffix.lower() == ".toml" else _read_csv(p)
    infos, names = [], set()
    for name, where, common, per_species in entries:
        info = _drug_info(where, name, common, per_species, names)
        if info.name in names:
            raise where.fail("drug given twice", "drug", "one entry per drug", info.name)
        names.add(info.name)
        infos.append(info)
    return infos


def load_drug_catalogue(path) -> tuple[str, ...]:
    """Read a user drug catalogue and register its drugs (`fitcsc.register_drug`);
    a drug of the built-in catalogue given again replaces it, with a `DataWarning`.

    **Returns:** the names registered. **Raises:** as `read_drug_catalogue`.
    """
    infos = read_drug_catalogue(path)
    replaced = [i.name for i in infos if i.name in CATALOGUE]
    for info in infos:
        register_drug(info)
    if replaced:
        warnings.warn(f"{path}: replaces the built-in catalogue entries of "
                      + ", ".join(map(repr, replaced)), DataWarning, stacklevel=2)
    return tuple(i.name for i in infos)
