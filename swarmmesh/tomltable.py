"""Reading one TOML table strictly: every key checked for type and range, leftovers reported.

A table remembers every key asked for, so whatever is left over at the end (typos, mostly) is
an error instead of a silently ignored setting, and each message names the file and the key,
says what is wrong and shows the exact text to write. config.py builds node configurations on
it; `toml_value` also writes the files cluster.py generates, without a TOML-writing dependency.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from swarmmesh.errors import ConfigError

#: Node names become file names (logs, pid files, data dirs), so they stay in a safe alphabet.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")


# --- writing TOML values (for hints here, and for cluster.py's hand-written files) ---------


def toml_value(value: Any) -> str:
    """Spell a Python value as TOML, so hints show the exact text to write and generated
    files need no TOML-writing dependency."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | os.PathLike):
        # JSON escapes are a subset of TOML basic-string escapes; TOML also forbids a raw DEL.
        return json.dumps(os.fspath(value), ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{toml_value(str(k))} = {toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    raise ConfigError(f"cannot write {type(value).__name__} {value!r} as TOML; use a string, number or bool")


# --- reading and checking one table ------------------------------------------------------

MISSING: Any = object()

_KINDS: dict[str, Callable[[Any], bool]] = {
    "a string": lambda v: isinstance(v, str),
    "an integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "a number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "a boolean": lambda v: isinstance(v, bool),
    "a table": lambda v: isinstance(v, dict),
    "an array of tables": lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v),
    "an array of strings": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "a table of strings": lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
}


_CONTAINERS: dict[type, str] = {list: "an array", dict: "a table"}


def describe(value: Any) -> str:
    for noun, kind in (("a boolean", bool), ("an integer", int), ("a float", float), ("a string", str)):
        if isinstance(value, kind):
            return f"{noun} ({toml_value(value)})"
    return _CONTAINERS.get(type(value), "a date/time")


def _type_fix(key: str, kind: str, value: Any, example: str) -> str:
    if kind == "an array of tables":
        return f"write one [[{key}]] table (double brackets) per entry"
    if isinstance(value, str):
        try:
            unquoted = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            unquoted = None
        if unquoted is not None and _KINDS[kind](unquoted):
            return f"write {key} = {value} without quotes"
    return f"write it like {key} = {example}"


class Table:
    """One TOML table being read. It remembers every key asked for, so whatever is left
    over at the end — typos, mostly — is reported instead of silently ignored."""

    def __init__(self, source: str, label: str, data: dict[str, Any]):
        self.source, self.label, self.data = source, label, data
        self.known: list[str] = []

    def fail(self, key: str, problem: str, fix: str) -> NoReturn:
        where = f"{self.label} {key}" if self.label else f"[{key}]"
        raise ConfigError(f"{self.source}: {where}: {problem}; {fix}")

    def get(self, key: str, kind: str, default: Any = MISSING, example: Any = MISSING) -> Any:
        self.known.append(key)
        shown = toml_value(default if example is MISSING else example)
        if key not in self.data:
            if default is MISSING:
                self.missing(key, f"add {key} = {shown} under {self.label}")
            return default
        value = self.data[key]
        if not _KINDS[kind](value):
            self.fail(key, f"expected {kind}, got {describe(value)}", _type_fix(key, kind, value, shown))
        return value

    def missing(self, key: str, fix: str) -> NoReturn:
        """Report a missing key, pointing at a near-miss spelling if the file has one."""
        typo = difflib.get_close_matches(key, [k for k in self.data if k not in self.known], n=1)
        self.fail(key, "is missing" + (f" (is {typo[0]} a misspelling of it?)" if typo else ""), fix)

    def table(self, key: str, required: bool = False) -> Table:
        """A sub-table; an absent optional one reads as empty, so its defaults apply."""
        label = f"[{key}]" if not self.label else f"{self.label[:-1]}.{key}]"
        if required and key not in self.data:
            self.missing(key, f"add a {label} section (conf/*.toml has examples)")
        return Table(self.source, label, self.get(key, "a table", {}))

    def finish(self) -> None:
        for key in self.data:
            if key not in self.known:
                guess = difflib.get_close_matches(key, self.known, n=1)
                what = "section" if not self.label else "key"
                hint = f"did you mean {guess[0]}?" if guess else "remove it or fix its name;"
                self.fail(key, f"unknown {what}", f"{hint} known {what}s here: {', '.join(self.known)}")

    def string(self, key: str, default: Any = MISSING, example: Any = MISSING) -> str:
        value = self.get(key, "a string", default, example)
        if key in self.data and not value.strip():
            self.fail(key, "is empty", f"set {key} to a non-empty string")
        return value

    def name(self, key: str, example: str) -> str:
        value = self.string(key, example=example)
        if not NAME_RE.match(value):
            self.fail(key, f"{toml_value(value)} is not a valid node name",
                      "use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")
        return value

    def host(self, key: str, default: Any = MISSING, example: Any = MISSING) -> str:
        value = self.string(key, default, example)
        if any(ch.isspace() or ch in "/@" for ch in value):
            self.fail(key, f"{toml_value(value)} is not a host name or address",
                      'write a bare host such as "orch-1.lan" or "127.0.0.1"')
        return value

    def choice(self, key: str, options: tuple[str, ...], default: Any = MISSING) -> str:
        value = self.get(key, "a string", default, options[0])
        if value not in options:
            guess = (difflib.get_close_matches(value, options, n=1) or [options[0]])[0]
            self.fail(key, f"{value!r} is not one of {', '.join(options)}",
                      f"set {key} = {toml_value(guess)}")
        return value

    def integer(self, key: str, default: Any = MISSING, lo: int = 1, example: Any = MISSING) -> int:
        value = self.get(key, "an integer", default, example)
        if value < lo:
            self.fail(key, f"{value} is too small", f"set {key} to an integer >= {lo}")
        return value

    def port(self, key: str, default: Any = MISSING, example: Any = MISSING) -> int:
        value = self.get(key, "an integer", default, example)
        if not 1 <= value <= 65535:
            self.fail(key, f"{value} is out of range 1-65535",
                      f"set {key} to a free TCP port between 1 and 65535")
        return value

    def number(self, key: str, default: float, lo: float = 0.0, hi: float | None = None,
               zero_ok: bool = False) -> float:
        value = float(self.get(key, "a number", default))
        low_ok = value >= lo if zero_ok else value > lo
        if not low_ok or (hi is not None and value > hi):
            bounds = f"{'>=' if zero_ok else '>'} {lo}" + (f" and <= {hi}" if hi is not None else "")
            self.fail(key, f"{value} is out of range", f"set {key} to a number {bounds}")
        return value

    def path(self, key: str, base: Path, default: str) -> Path:
        """Relative paths count from the config file's directory, not from wherever the node
        happened to be started."""
        value = self.string(key, default, "/var/lib/swarmmesh/node")
        return (base / Path(value).expanduser()).absolute()
