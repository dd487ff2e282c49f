"""The job error's ``servernotes`` when a workunit has failed out: how often, the last exit code, and
what to do next. One wording, shared by the failure limit (``report.py``) and stranded work
(``stranded.py``)."""

from __future__ import annotations

import re

#: The worker's account of a failed command ("command exited with 3"), in its worknotes.
_EXITED = re.compile(r"exited with (-?\d+)")


def last_exit_code(worknotes: str) -> int | None:
    """The exit code the worker's notes give for the last failure, if they give one."""
    codes = _EXITED.findall(worknotes or "")
    return int(codes[-1]) if codes else None


def failed_out_notes(wu_id: str, job_id: str, failed: int, worknotes: str, why: str = "") -> str:
    """``workunit W failed N time(s) (last exit code C)<why>. Fix the cause, then: perdure job resume J``."""
    code = last_exit_code(worknotes)
    exit_text = f" (last exit code {code})" if code is not None else ""
    return (
        f"workunit {wu_id} failed {failed} time(s){exit_text}{why}."
        f" Fix the cause, then: perdure job resume {job_id}"
    )
