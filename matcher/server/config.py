"""The operator's config file (TOML): `matcher serve` settings kept beside the database.

The file holds top-level keys named like the flags of `matcher serve`, with dashes or
underscores (``listen = "0.0.0.0:50051"``, ``stream-slots = 2``, ``db = "platform.db"``). Every
operator command reads ``db`` from it; the other keys are for `matcher serve`. A key that names no
flag is refused (a typo would otherwise silently leave a setting at its default).

Which keys exist is not listed here: the CLI passes the names of serve's parameters, so a flag
added to `matcher serve` can be set from the file without touching this module.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterable

from matcher.errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, before it joined the standard library
    import tomli as tomllib

# Where a command looks when neither --config nor MATCHER_CONFIG names a file: nowhere. A config
# file read without being asked for would change what a bare command does from one directory to
# the next.
ENV_VAR = "MATCHER_CONFIG"


def key_name(key: str) -> str:
    """``stream-slots`` and ``stream_slots`` are the same key: click's parameter name."""
    return key.replace("-", "_")


def dashed(name: str) -> str:
    """How a key is shown: as its flag is spelled, without the dashes in front."""
    return name.replace("_", "-")


def load(path: str | Path, valid: Iterable[str], *, paths: Iterable[str] = ()) -> dict[str, Any]:
    """The file's settings by parameter name; ``valid`` are the parameter names it may set, and
    those in ``paths`` name files, taken relative to the config file's directory.

    A missing file, a TOML syntax error, a table where a value belongs or an unknown key raises
    :class:`InputError` naming the file and, for a key, the keys that exist."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"no config file at {path}", hint="check --config (or MATCHER_CONFIG)") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read config file {path}: {err}") from None
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"{path} is not valid TOML: {err}") from None
    valid = sorted(set(valid))
    paths = set(paths)
    settings: dict[str, Any] = {}
    for key, value in data.items():
        name = key_name(key)
        if name not in valid:
            raise InputError(f"{path}: unknown key {key!r}",
                             hint=f"valid keys (the flags of `matcher serve`): {', '.join(map(dashed, valid))}")
        if isinstance(value, (dict, list)):
            raise InputError(f"{path}: key {key!r} holds a {'table' if isinstance(value, dict) else 'list'}; "
                             "it takes one value", hint="settings are top-level keys, e.g. listen = \"0.0.0.0:50051\"")
        if name in settings:
            raise InputError(f"{path}: key {key!r} is set twice (with a dash and with an underscore)")
        # Relative paths in the file are relative to the file, not to wherever the command runs.
        if name in paths and isinstance(value, str):
            value = str(path.parent / Path(value).expanduser())
        settings[name] = value
    return settings
