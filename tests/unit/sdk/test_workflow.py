"""The job script builder: what it writes is a job script the server accepts, with data flow as
dependencies, and a script read back is the same workflow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from perdure.jobscript import JobScriptError, parse_job_script
from perdure.sdk.workflow import Output, Remote, Task, Workflow


def squares() -> Workflow:
    flow = Workflow("sum-of-squares", project="examples", pipeline="squares", user="you")
    gen = flow.task(
        "generate", "sh", "-c", "seq 1 10 > numbers.txt", outputs=["numbers.txt"], nonzero=["numbers.txt"]
    )
    sq = flow.task(
        "square", "awk", "{ print $1 * $1 }", inputs=[gen.output("numbers.txt")], outputs=["sq.txt"], split=4
    )
    flow.task("sum", "sum.sh", inputs=[sq.output("sq.txt")], outputs=["total.txt"], env={"LC_ALL": "C"})
    return flow


def test_the_script_is_what_the_server_accepts_with_outputs_as_dependencies() -> None:
    spec = parse_job_script(squares().to_json().encode())
    by_id = {t.taskid: t for t in spec.tasks}
    assert by_id["square"].depends_on == ["generate"] and by_id["sum"].depends_on == ["square"]
    assert by_id["square"].totalwork == 4
    assert by_id["square"].partinfo == {"input": "numbers.txt", "index": "line", "output": ""}
    assert by_id["square"].inputs[0]["origin"] == "generate"
    assert by_id["generate"].outputs[0]["nonzero"] is True
    assert by_id["sum"].cmd["environ"] == {"public": {"LC_ALL": "C"}}
    assert spec.info["name"] == "sum-of-squares" and spec.info["project"] == "examples"


def test_a_saved_script_reads_back_as_the_same_workflow(tmp_path: Path) -> None:
    flow = squares()
    flow.tasks[0].private_env = {"SECRET": "x"}
    flow.task("fetch", "curl", inputs=[Remote("ref.db", "https://example.org/ref.db")], after=[flow.tasks[2]])
    path = flow.save(tmp_path / "job.json")
    again = Workflow.load(path)
    assert again.to_dict() == flow.to_dict()
    assert json.loads(path.read_text()) == flow.to_dict()
    assert again.tasks[3].depends_on == ["sum"] and again.tasks[3].inputs == [
        Remote("ref.db", "https://example.org/ref.db")
    ]


def test_mistakes_are_caught_before_submitting() -> None:
    flow = Workflow("bad")
    first = flow.task("a", "true", outputs=["x"])
    with pytest.raises(ValueError, match="already has a task 'a'"):
        flow.task("a", "true")
    with pytest.raises(ValueError, match="has no output 'y'"):
        first.output("y")
    flow.task("split", "true", inputs=[first.output("x"), Output("a", "x")], split=2)
    with pytest.raises(ValueError, match="no single input"):
        flow.to_dict()
    cyclic = Workflow("cycle")
    a, b = cyclic.task("a", "true"), cyclic.task("b", "true")
    a.after(b)
    b.after(a)
    with pytest.raises(JobScriptError, match="dependency cycle"):
        cyclic.validate()
    squares().validate()


def test_a_task_added_whole_keeps_its_options() -> None:
    flow = Workflow("whole", clientgroups="gpu", priority=5, userattr={"owner": "me"})
    flow.add(Task("t", "run", ["--fast"], userattr={"ckpt.enabled": "false"}, clientgroups="gpu"))
    document = flow.to_dict()
    assert document["info"] == {
        "name": "whole", "project": "", "pipeline": "", "clientgroups": "gpu", "priority": 5,
        "userattr": {"owner": "me"},
    }  # fmt: skip
    assert document["tasks"][0]["cmd"]["args_array"] == ["--fast"]
    assert document["tasks"][0]["clientgroups"] == "gpu"
    with pytest.raises(ValueError, match="already has a task"):
        flow.add(Task("t", "again"))
