"""How commands declare options, and how defaults, a YAML config and flags combine.

Each command declares its options once, as ``{name: Opt(default, help)}``. The value used is the first of:
a command-line flag, the ``--config`` YAML file, the declared default. The resolved options are saved as
``config.yaml`` in the run directory, so ``--config runs/<stage>/<run>/config.yaml`` repeats a run.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fashionkit.errors import UserError


@dataclass(frozen=True)
class Opt:
    default: Any
    help: str
    type: Callable[[str], Any] | None = None  # inferred from the default when None
    choices: Sequence[Any] | None = None
    least: float | None = None  # the smallest value taken (said in one line, before any work)

    def convert(self, name: str, value: Any) -> Any:
        if value is None:
            return None
        kind = self.type or (type(self.default) if self.default is not None else None)
        if kind is str and isinstance(value, bool) and self.choices and ("on" if value else "off") in self.choices:
            value = "on" if value else "off"  # YAML 1.1 (a --config file, `--set`) reads off / on as booleans
        if kind is bool and not isinstance(value, bool):
            text = str(value).lower()
            if text not in ("true", "false", "1", "0", "yes", "no"):
                raise UserError(f"option '{name}' expects true or false, got {value!r}")
            value = text in ("true", "1", "yes")
        elif kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif kind is not None and kind is not bool and not isinstance(value, kind if isinstance(kind, type) else ()):
            try:
                value = kind(value)
            except (TypeError, ValueError) as e:
                raise UserError(f"option '{name}': {value!r} is not a valid value ({e})") from None
        if self.choices is not None and value not in self.choices:
            raise UserError(f"option '{name}': {value!r} is not one of {', '.join(map(str, self.choices))}")
        if (name == "seed" or name.endswith("_seed")) and isinstance(value, int) and not 0 <= value < 2**32:
            # numpy, scikit-learn and torch each take a seed in [0, 2^32) and raise mid-run otherwise
            raise UserError(f"{flag(name)} must be a whole number from 0 to {2**32 - 1}, got {value}")
        if self.least is not None and isinstance(value, int | float) and not isinstance(value, bool) \
                and not value >= self.least:
            raise UserError(f"{flag(name)} must be at least {self.least}, got {value}")
        return value


# every command's --data-dir (data/fashion_mnist.py find_root tries the roots in this order)
DATA_DIR_HELP = ("directory holding the Fashion-MNIST idx files; none: $FASHIONKIT_DATA, else "
                 "/usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist), else the user cache, "
                 "downloaded there if missing")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_range(cfg: dict, key: str, low: float, high: float | None, what: str, low_open: bool = False,
                high_closed: bool = False) -> None:
    """One line naming the flag when ``cfg[key]`` is not finite or lies outside ``[low, high)`` (``low_open``:
    ``(low, ...``; ``high_closed``: ``..., high]``; ``high`` None: no upper bound). ``what`` says what it must be."""
    value = cfg[key]
    above = value > low if low_open else value >= low
    below = high is None or (value <= high if high_closed else value < high)
    if not (math.isfinite(value) and above and below):
        raise UserError(f"{flag(key)} must be {what}, got {value}")


_SAYS_UNSET = re.compile(r"\bdefault\b|\bnone\b|not given|when unset|empty =")


def add_options(parser: argparse.ArgumentParser, options: dict[str, Opt]) -> None:
    """Add one flag per option. Defaults are SUPPRESSed so we can tell which flags were given."""
    for name, opt in options.items():
        if opt.default not in (None, ""):
            shown = f" (default: {opt.default})"
        else:
            # an unset option whose help already says what leaving it out does ("(default: searched)", "none: the
            # bundled detector", "not given: ..."); a "(default: none)" after that repeats it, and where "none"
            # is itself a value (metric train --from none: from scratch) it says the opposite of what happens
            shown = "" if _SAYS_UNSET.search(opt.help) else " (default: none)"
        kwargs: dict[str, Any] = dict(dest=name, default=argparse.SUPPRESS, help=f"{opt.help}{shown}")
        if isinstance(opt.default, bool) and opt.type is None:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["metavar"] = name.upper()
            if opt.choices is not None:
                kwargs["metavar"] = "{" + ",".join(map(str, opt.choices)) + "}"
        parser.add_argument(flag(name), **kwargs)
    parser.add_argument("--config", dest="config", default=None, metavar="YAML",
                        help="YAML file of option values; flags given on the command line override it")


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must be a mapping of option: value")
    return data


def resolve(options: dict[str, Opt], args: argparse.Namespace | dict | None = None,
            config: str | Path | dict | None = None) -> dict[str, Any]:
    """Combine defaults < config file < explicit flags into one validated dict."""
    given = dict(vars(args)) if isinstance(args, argparse.Namespace) else dict(args or {})
    config = given.pop("config", None) if config is None else config
    values = {name: opt.default for name, opt in options.items()}
    if config is not None:
        from_file = config if isinstance(config, dict) else load_yaml(config)
        source = "config" if isinstance(config, dict) else str(config)
        for key, value in from_file.items():
            key = str(key).replace("-", "_")
            if key not in options:
                raise UserError(f"{source}: unknown option '{key}'; valid options: {', '.join(options)}")
            values[key] = options[key].convert(key, value)
    for key, value in given.items():
        if key in options:
            values[key] = options[key].convert(key, value)
    return values


def refuse_flags_with_resume(options: dict[str, Any], config: str | None) -> None:
    """``--resume`` continues a run with its saved config.yaml: other flags or a --config would be ignored
    silently, so they are refused."""
    flags = [flag(k) for k in options] + (["--config"] if config else [])
    if flags:
        raise UserError(f"--resume continues a run with its saved config; drop the other flags ({', '.join(flags)})")


def save_yaml(data: dict[str, Any], path: str | Path) -> None:
    from fashionkit.runs import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
