"""A workunit's command line (awe.md §1.3, §5.3): AWE's argument splitting, then ``@file`` and ``${VAR}``.

Kept apart from running the command so the rules can be read (and tested) as AWE states them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

_AT_FILE = re.compile(r"@([\w\-.]+)")
_ENV_VAR = re.compile(r"\$\{(\w+)\}")


def split_args(args: str) -> list[str]:
    """AWE's rule: split on spaces; single quotes group words and a closing quote ends the word."""
    words: list[str] = []
    current: list[str] = []
    quoted = False
    for char in args:
        if char == "'":
            if quoted:
                words.append("".join(current))
                current = []
            quoted = not quoted
        elif char == " " and not quoted:
            if current:
                words.append("".join(current))
            current = []
        else:
            current.append(char)
    if current:
        words.append("".join(current))
    return words


def expand(word: str, inputs: dict[str, Path], env: dict[str, str]) -> str:
    """``@file`` becomes the absolute path of that input; ``${VAR}`` the variable's value."""
    word = _AT_FILE.sub(lambda m: str(inputs[m.group(1)]) if m.group(1) in inputs else m.group(0), word)
    return _ENV_VAR.sub(lambda m: env.get(m.group(1), ""), word)


def command_argv(wu: dict[str, Any], inputs: dict[str, Path], env: dict[str, str]) -> list[str]:
    """The workunit's program and its expanded arguments (``args_array`` as given, else ``args`` split)."""
    cmd = wu["cmd"]
    words = list(cmd.get("args_array") or []) or split_args(cmd.get("args") or "")
    return [cmd["name"], *(expand(w, inputs, env) for w in words)]
