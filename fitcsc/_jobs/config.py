"""Run configurations in TOML, and the device and precision of a run.

``fitcsc fit|sample|simulate|predict|run`` accept ``--config FILE.toml``. The file holds
the global options as top-level keys (``data_dir``, ``drug_catalogue``, ``quiet``,
``debug``) and the command's options in a table named after the command; every key is
the option's argparse ``dest`` (``--detection-limit-mm3`` is ``detection_limit_mm3``), so
every option has a key and none is listed by hand here::

    data_dir = "/data/public"

    [fit]
    data = "pdxe_brca/pdxe_brca_tumor_volume.csv"
    out = "runs/pdxe"
    starts = 8
    x64 = true

Precedence: an option on the command line, then the file, then the default. A value
behaves as on the command line (a relative path is relative to the current directory;
an input missing there is looked up in the data directory). The file is checked
before anything runs: malformed TOML, an unknown key, a value of the wrong type or not
among the choices, or a table of another command are refused with one line naming the
file, line, key, expectation and value (`fitcsc.FitcscInputError`, exit 2).

After a run, `write_config` stores ``config.toml`` in the result folder: every option
after resolution (defaults included, paths absolute, device and precision), so that
``fitcsc fit --config OUT/config.toml --out OUT2`` repeats the run.

``--device cpu|gpu`` and ``--x64/--no-x64`` (`runtime`) take effect before the job
makes any JAX array: ``jax_enable_x64`` and ``jax_default_device``.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import os
import pathlib
import re
import tomllib

CONFIG_COMMANDS = ("fit", "sample", "simulate", "predict", "run")
CONFIG_NAME = "config.toml"
PATH_METAVARS = ("FILE", "DIR", "RUN_DIR")  # options whose values are paths


def _epilog(command: str) -> str:
    return (f"configuration: --config FILE.toml reads the options from a TOML file: a "
            f"[{command}] table whose keys are this command's options with dashes as "
            "underscores (e.g. quick = true, detection_limit_mm3 = 1.0, x64 = false, "
            "device = \"cpu\"), and top-level keys for the global options (data_dir, "
            "drug_catalogue, quiet, debug). The command line overrides the file, the file "
            f"the defaults. Every result folder gets {CONFIG_NAME}, the resolved "
            f"configuration: fitcsc {command} --config OUT/{CONFIG_NAME} --out OUT2 repeats "
            "the run.")


def add_run_options(parser: argparse.ArgumentParser, command: str) -> None:
    """Add ``--config``, ``--device`` and ``--x64/--no-x64`` to a command's parser, and
    the configuration paragraph to its ``--help``."""
    g = parser.add_argument_group("configuration, device and precision")
    g.add_argument("--config", metavar="FILE.toml", default=None,
                   help="read options from a TOML run configuration (see below)")
    g.add_argument("--device", choices=("cpu", "gpu"), default=None,
                   help="device of the computation (default: JAX's default device); "
                   "gpu is refused where JAX sees none")
    g.add_argument("--x64", action=argparse.BooleanOptionalAction, default=None,
                   help="float64 (default, the precision fitcsc is tested in) or, with "
                   "--no-x64, float32")
    parser.epilog = "\n".join(filter(None, [parser.epilog, _epilog(command)]))


def _subparsers(parser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _global_actions(parser) -> dict[str, argparse.Action]:
    """The top-level options of ``parser`` by dest (help and the subcommand excluded)."""
    return {a.dest: a for a in parser._actions if a.option_strings
            and not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))}


def _command_actions(parser, command) -> dict[str, argparse.Action]:
    """The options of ``command`` by dest: everything but help, --config and the global
    options (which are top-level keys)."""
    glob = _global_actions(parser)
    return {a.dest: a for a in _subparsers(parser)[command]._actions
            if not isinstance(a, argparse._HelpAction) and a.dest not in glob
            and a.dest != "config"}


def _is_append(action) -> bool:
    return isinstance(action, argparse._AppendAction)


def _describe(action) -> str:
    if action.nargs == 0:
        return "true or false"
    if action.choices is not None:
        what = "one of " + ", ".join(map(repr, action.choices))
    elif action.type is int:
        what = "an integer"
    elif action.type is float:
        what = "a number"
    elif action.metavar in PATH_METAVARS:
        what = "a path (string)"
    else:
        what = "a string" + (f" {action.metavar}" if action.metavar else "")
    if not _is_append(action):
        return what
    for one, many in (("one of", "values among"), ("an integer", "integers"),
                      ("a number", "numbers"), ("a path (string)", "paths (strings)"),
                      ("a string", "strings")):
        what = what.replace(one, many)
    return f"a list of {what}"


class _Bad(Exception):
    """A value that does not fit its option (``expected`` says what would)."""


def _one(action, value):
    t = action.type
    if t is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif t is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, str)
        if ok and t is not None and t is not str:
            try:
                value = t(value)
            except (argparse.ArgumentTypeError, TypeError, ValueError) as err:
                raise _Bad(str(err)) from None
    if not ok or (action.choices is not None and value not in action.choices):
        raise _Bad(None)
    return value


def _convert(action, value):
    """``value`` (from TOML) as argparse would have stored it for ``action``."""
    if action.nargs == 0:
        if not isinstance(value, bool):
            raise _Bad(None)
        return value
    if _is_append(action):
        if not isinstance(value, list):
            raise _Bad(None)
        return [_one(action, v) for v in value]
    return _one(action, value)


def _line_of(text: str, table: str | None, key: str) -> int | None:
    """The line where ``key`` (of ``table``, None: top level) is set, best effort."""
    current = None
    head = re.compile(r"^\s*\[\s*([^\]\s]+)\s*\]")
    for n, line in enumerate(text.splitlines(), 1):
        m = head.match(line)
        if m:
            current = m.group(1).strip('"')
            if current == (key if table is None else f"{table}.{key}"):
                return n
            continue
        if current == table and re.match(rf"^\s*\"?{re.escape(key)}\"?\s*=", line):
            return n
    return None


def _read_toml(path: pathlib.Path) -> tuple[str, dict]:
    from .._errors import FitcscInputError

    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FitcscInputError("file not found", file=str(path),
                               expected="a TOML run configuration") from None
    except OSError as err:
        raise FitcscInputError(f"cannot read the file ({err.strerror})", file=str(path),
                               expected="a readable TOML run configuration") from None
    if b"\x00" in raw:
        raise FitcscInputError("not a text file", file=str(path), row=1,
                               expected="a TOML file (UTF-8 text)", value=raw[:8])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise FitcscInputError("not UTF-8 text", file=str(path),
                               row=raw[:err.start].count(b"\n") + 1,
                               expected="a TOML file (UTF-8 text)",
                               value=raw[max(0, err.start - 4):err.start + 4]) from None
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        msg = str(err)
        at = re.search(r"\s*\(at line (\d+), column (\d+)\)$", msg)
        if at is None:
            at = re.search(r"\s*\(at (end of document)\)$", msg)
            row, where = len(text.splitlines()) or 1, "at the end"
        else:
            row, where = int(at.group(1)), f"at column {at.group(2)}"
        reason = msg[:at.start()] if at else msg
        raise FitcscInputError(f"not valid TOML {where}: {reason}", file=str(path),
                               row=row, expected="TOML (https://toml.io)") from None


def load_config(path, parser, command) -> tuple[dict, dict]:
    """Read and check the run configuration ``path`` for ``fitcsc command``:
    ``(global_options, command_options)`` by dest, values as argparse stores them.

    **Raises:** `FitcscInputError` (one line: file, line, key, expectation, value).
    """
    from .._errors import FitcscInputError

    path = pathlib.Path(path)
    text, doc = _read_toml(path)
    glob, opts = _global_actions(parser), _command_actions(parser, command)
    commands = _subparsers(parser)

    def refuse(message, table, key, expected, value=None):
        name = key if re.fullmatch(r"[\w-]+", key) else json.dumps(key)  # as TOML quotes it
        return FitcscInputError(message, file=str(path), row=_line_of(text, table, key),
                                key=name if table is None else f"{table}.{name}",
                                expected=expected, value=value)

    def check(actions, table, key, value):
        try:
            return _convert(actions[key], value)
        except _Bad as bad:
            flag = (actions[key].option_strings or [key])[-1]
            why = f"not a value of {flag}" + (f" ({bad.args[0]})" if bad.args[0] else "")
            raise refuse(why, table, key, _describe(actions[key]), value) from None

    def unknown(actions, table, key, value, where):
        close = difflib.get_close_matches(key, list(actions), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return refuse(f"unknown key {where}{hint}", table, key,
                      "one of " + ", ".join(actions), value)

    got_glob, got_opts = {}, {}
    for key, value in doc.items():
        if isinstance(value, dict) and key == command:
            continue
        if isinstance(value, dict) and key in commands:
            raise refuse(f"a configuration of `fitcsc {key}`, not of `fitcsc {command}`",
                         None, key, f"a [{command}] table", f"[{key}]")
        if key in glob:
            got_glob[key] = check(glob, None, key, value)
        elif key in opts:
            raise refuse(f"an option of `fitcsc {command}` outside its table", None, key,
                         f"it under [{command}]", value)
        else:
            raise unknown({**glob, command: None}, None, key,
                          value if not isinstance(value, dict) else f"[{key}]",
                          "at the top level")
    for key, value in doc.get(command, {}).items():
        if key not in opts:
            raise unknown(opts, command, key, f"[{command}.{key}]" if isinstance(
                value, dict) else value, f"of `fitcsc {command}`")
        got_opts[key] = check(opts, command, key, value)
    return got_glob, got_opts


def _pre_parse(parser, argv) -> tuple[str, str] | None:
    """``(command, config file)`` when ``argv`` runs a command with ``--config``."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    for action in _global_actions(parser).values():
        pre._add_action(action)
    pre.add_argument("--config", default=None)
    pre.add_argument("command", nargs="?")
    try:
        # a fresh namespace: the global actions' defaults must not leak into the parse
        ns, _ = pre.parse_known_args(argv, argparse.Namespace(**{
            a.dest: None for a in _global_actions(parser).values()}))
    except (argparse.ArgumentError, SystemExit):
        return None  # the real parse reports it
    if ns.config is None or ns.command not in CONFIG_COMMANDS:
        return None
    return ns.command, ns.config


def apply_config(parser, argv):
    """Make the ``--config`` file of ``argv`` (if any) the defaults of ``parser``.

    Options the file sets are no longer required on the command line; an option given
    there still wins. **Returns:** a function ``finish(args)`` to call on the parsed
    arguments (it fills the repeatable options the command line left unset).
    """
    found = _pre_parse(parser, argv)
    if found is None:
        return _check_loaded
    command, path = found
    got_glob, got_opts = load_config(path, parser, command)
    later = {}
    for target, actions, got in ((parser, _global_actions(parser), got_glob),
                                 (_subparsers(parser)[command],
                                  _command_actions(parser, command), got_opts)):
        for dest, value in got.items():
            actions[dest].required = False
            if _is_append(actions[dest]):  # argparse would append the command line's
                later[dest] = value
            else:
                target.set_defaults(**{dest: value})

    def finish(args):
        _check_loaded(args, path)
        for dest, value in later.items():
            if getattr(args, dest, None) is None:
                setattr(args, dest, value)

    return finish


def _check_loaded(args, path=None) -> None:
    """Refuse a ``--config`` that argparse took from an abbreviation (``--conf``) and so
    was never read."""
    from .._errors import FitcscInputError

    if getattr(args, "config", None) not in (None, path):
        raise FitcscInputError("--config: the option was abbreviated", expected="--config "
                               "written in full", value=args.config)


@contextlib.contextmanager
def runtime(args):
    """Set ``--x64/--no-x64`` and ``--device`` for the run (JAX's global configuration,
    restored afterwards) and record their resolved values in ``args``.

    **Raises:** `FitcscInputError` for a device JAX does not have.
    """
    import jax

    from .._errors import FitcscInputError

    if "x64" not in vars(args):  # a command without --x64/--device
        yield
        return
    saved = jax.config.jax_enable_x64, jax.config.jax_default_device
    try:
        if args.x64 is not None:
            jax.config.update("jax_enable_x64", bool(args.x64))
        if args.device is not None:
            try:
                device = jax.devices(args.device)[0]
            except RuntimeError:
                have = sorted({d.platform for d in jax.devices()})
                raise FitcscInputError(
                    f"--device {args.device}: JAX sees no {args.device.upper()} on this "
                    "machine", expected="--device " + " or ".join(have),
                    value=args.device) from None
            jax.config.update("jax_default_device", device)
        args.x64 = bool(jax.config.jax_enable_x64)
        args.device = args.device or jax.default_backend()
        yield
    finally:
        jax.config.update("jax_enable_x64", saved[0])
        jax.config.update("jax_default_device", saved[1])


def _path(value: str) -> str:
    from .._errors import FitcscInputError
    from .._io.data import resolve_input

    try:
        found = resolve_input(value)
    except FitcscInputError:
        found = pathlib.Path(value)
    return os.path.abspath(found)


def _value(action, value):
    if value is None:
        return None
    if action.metavar in PATH_METAVARS:
        return [_path(v) for v in value] if isinstance(value, list) else _path(value)
    to_text = getattr(action.type, "to_text", None)  # a parser's inverse, if it has one
    if to_text is not None:
        return [to_text(v) for v in value] if isinstance(value, list) else to_text(value)
    return list(value) if isinstance(value, tuple) else value


def resolved_config(parser, args) -> tuple[dict, list[str]]:
    """Every option of ``args.command`` after resolution, in the layout `load_config`
    reads: ``(document, unset)``, ``unset`` the options left at a default of None (TOML
    has no null: they are left out)."""
    from .._errors import FitcscInputError
    from .._io.data import data_dir

    glob, opts = _global_actions(parser), _command_actions(parser, args.command)
    doc, table, unset = {}, {}, []
    if getattr(args, "data_dir", None) is None:
        with contextlib.suppress(FitcscInputError):
            args.data_dir = str(data_dir())
    for actions, out, prefix in ((glob, doc, ""), (opts, table, f"{args.command}.")):
        for dest, action in actions.items():
            value = _value(action, getattr(args, dest, None))
            if value is None:
                unset.append(prefix + dest)
            else:
                out[dest] = value
    doc[args.command] = table
    return doc, unset


def write_config(parser, args) -> pathlib.Path | None:
    """Write the resolved configuration of the run to ``args.out``/config.toml
    (atomically); None when the command has no output folder or it does not exist."""
    import tomli_w

    from .._io.files import write_atomic

    out = getattr(args, "out", None)
    if out is None or not pathlib.Path(out).is_dir():
        return None
    doc, unset = resolved_config(parser, args)
    path = pathlib.Path(os.path.abspath(out)) / CONFIG_NAME
    head = [f"# fitcsc {args.command}: the resolved configuration of this run (command line,",
            "# --config file and defaults; paths absolute). Repeat the run with",
            f"#   fitcsc {args.command} --config {path} --out NEW_DIR"]
    if unset:
        head.append("# left at their default (none): " + ", ".join(unset))
    write_atomic(path, "\n".join(head) + "\n\n" + tomli_w.dumps(doc))
    return path
