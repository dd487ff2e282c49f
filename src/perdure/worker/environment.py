"""The environment a workunit's command runs with, built from scratch (issue 17).

Nothing of the worker's own environment reaches a command except the few variables in
:data:`PASSED_THROUGH` (none of which carries a credential): the worker's clientgroup token
(``PERDURE_WORKER_TOKEN``, ``PERDURE_TOKEN``), its settings and whatever its service manager put there
stay with the worker. On top of those come the job's public environment, its private environment and
Perdure's documented variables (``PERDURE_JOB_ID`` … ``PERDURE_WORKDIR``), which a job cannot
override. Bare runs (:mod:`perdure.worker.runner`) and container runs call the same function; a
container is then shown only what was not passed through (``container_environment``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: Variables taken from the worker's environment when set there: where programs are, whose home, the
#: locale and time zone, the temporary directory. Nothing else is inherited.
PASSED_THROUGH = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")
#: The PATH a command gets when the worker has none.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def perdure_variables(wu: Mapping[str, Any], workdir: Path) -> dict[str, str]:
    """Perdure's documented variables for workunit ``wu`` running in ``workdir``."""
    return {
        "PERDURE_JOB_ID": str(wu["jobid"]),
        "PERDURE_TASK_ID": str(wu["task_name"]),
        "PERDURE_WORKUNIT_ID": str(wu["id"]),
        "PERDURE_RANK": str(wu["rank"]),
        "PERDURE_TOTALWORK": str(wu["totalwork"]),
        "PERDURE_WORKDIR": str(workdir),
    }


def inherited_environment(source: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables of :data:`PASSED_THROUGH` that ``source`` (``os.environ`` by default) sets."""
    source = os.environ if source is None else source
    return {name: source[name] for name in PASSED_THROUGH if name in source}


def command_environment(
    wu: Mapping[str, Any],
    workdir: Path,
    private: Mapping[str, Any] | None = None,
    *,
    inherited: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The whole environment of ``wu``'s command: the pass-through variables of ``inherited`` (the
    worker's ``os.environ`` by default), then the job's public environment, then ``private`` (the
    job's private environment, already fetched), then Perdure's variables."""
    env = inherited_environment(inherited)
    env.setdefault("PATH", DEFAULT_PATH)
    cmd = wu.get("cmd") or {}
    public = (cmd.get("environ") or {}).get("public") or {}
    env.update({str(k): str(v) for k, v in public.items()})
    env.update({str(k): str(v) for k, v in (private or {}).items()})
    env.update(perdure_variables(wu, workdir))
    return env


def container_environment(
    env: Mapping[str, str], *, inherited: Mapping[str, str] | None = None
) -> dict[str, str]:
    """What a container sees of ``command_environment``'s answer: everything but what was passed
    through from the worker (``inherited``, ``os.environ`` by default) -- PATH and the like are the
    image's. A pass-through variable the job set to a value of its own is the job's, and kept."""
    source = os.environ if inherited is None else inherited
    worker = {name: source.get(name) for name in PASSED_THROUGH}
    worker["PATH"] = source.get("PATH", DEFAULT_PATH)
    return {key: value for key, value in env.items() if key not in worker or worker[key] != value}
