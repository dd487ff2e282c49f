"""Job script parsing: the AWE examples, both IO encodings, every rejection and every normalisation."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from perdure.jobmodel import MAX_TOTALWORK
from perdure.jobscript import JobScriptError, JobSpec, parse_job_script

EXAMPLES = Path(__file__).resolve().parents[3] / "shared" / "reference" / "awe-examples"


# --- helpers ---------------------------------------------------------------------------------------


def task(taskid: str = "a", **extra: Any) -> dict[str, Any]:
    return {"taskid": taskid, "cmd": {"name": "run.sh"}, **extra}


def script(*tasks: dict[str, Any], **info: Any) -> dict[str, Any]:
    return {"info": {"name": "job", **info}, "tasks": list(tasks) or [task()]}


def parse(document: dict[str, Any] | list[Any]) -> JobSpec:
    return parse_job_script(json.dumps(document).encode())


def rejection(document: dict[str, Any] | list[Any] | bytes) -> str:
    raw = document if isinstance(document, bytes) else json.dumps(document).encode()
    with pytest.raises(JobScriptError) as caught:
        parse_job_script(raw)
    return str(caught.value)


def example(name: str) -> bytes:
    path = EXAMPLES / name
    if not path.exists():
        pytest.skip(f"AWE example {path} is not available")
    return path.read_bytes()


def producer(taskid: str, *filenames: str, **extra: Any) -> dict[str, Any]:
    return task(taskid, outputs=[{"filename": f} for f in filenames], **extra)


def consumer(taskid: str, filename: str, origin: str, **extra: Any) -> dict[str, Any]:
    return task(taskid, inputs=[{"filename": filename, "origin": origin}], **extra)


# --- the AWE example templates (legacy IO map form) ------------------------------------------------


def test_simple_example_template_parses_into_three_tasks_in_script_order() -> None:
    spec = parse_job_script(example("simple_example.template.json"))
    assert [t.taskid for t in spec.tasks] == ["0", "1", "2"]
    assert [t.ordinal for t in spec.tasks] == [0, 1, 2]
    assert [t.app for t in spec.tasks] == ["awe_preprocess.pl", "awe_dereplicate.pl", "awe_genecalling.pl"]
    assert [t.depends_on for t in spec.tasks] == [[], ["0"], ["1"]]
    assert spec.info["pipeline"] == "awe-example"
    assert spec.info["noretry"] is True
    assert spec.priority == 1
    assert spec.clientgroups == "#clientgroups"
    assert spec.start_at_us == 0


def test_simple_example_legacy_io_map_becomes_list_form_with_filename_from_the_key() -> None:
    spec = parse_job_script(example("simple_example.template.json"))
    first, _, last = spec.tasks
    assert len(first.inputs) == 1
    assert first.inputs[0]["filename"] == "#inputfile"
    assert first.inputs[0]["host"] == "http://#shockurl"
    assert first.inputs[0]["node"] == "#shocknode"
    assert first.outputs[0]["filename"] == "#jobname.prep.fna"
    assert first.outputs[0]["attrfile"] == "prep.fna.attr"
    assert first.outputs[0]["node"] == "-"  # AWE's "not known yet"
    assert first.partinfo == {"input": "#inputfile", "index": "", "output": "#jobname.prep.fna"}
    assert [o["filename"] for o in last.outputs] == ["#jobname.genecalled.faa", "#jobname.genecalled.fna"]
    assert last.outputs[0]["shockindex"] == "record"
    assert last.maxworksize == 5
    assert last.partinfo is not None and last.partinfo["input"] == "#jobname.derep.fna"


def test_simple_example_private_environment_is_kept_apart_from_the_shown_command() -> None:
    spec = parse_job_script(example("simple_example.template.json"))
    first = spec.tasks[0]
    assert first.private_env == {"KB_AUTH_TOKEN": "a_long_string_of_token"}
    assert first.cmd["has_private_env"] is True
    assert first.cmd["environ"] == {"public": {"ENVVAL": "abc"}}
    assert "a_long_string_of_token" not in json.dumps(first.spec_document())
    assert "KB_AUTH_TOKEN" not in json.dumps(first.spec_document())
    assert spec.tasks[1].private_env == {}
    assert spec.tasks[1].cmd["has_private_env"] is False


def test_origin_adds_an_implicit_dependency_even_without_depends_on() -> None:
    document = json.loads(example("simple_example.template.json"))
    for item in document["tasks"]:
        del item["dependsOn"]
    spec = parse(document)
    assert [t.depends_on for t in spec.tasks] == [[], ["0"], ["1"]]


def test_origin_already_listed_in_depends_on_is_not_repeated() -> None:
    spec = parse(script(producer("p", "x"), consumer("c", "x", "p", dependsOn=["p", "p"])))
    assert spec.tasks[1].depends_on == ["p"]


def test_drisee_template_keeps_the_scripts_output_key_order_as_filenames() -> None:
    raw = example("drisee.template.json")
    in_script = list(json.loads(raw)["tasks"][0]["outputs"])
    assert in_script != sorted(in_script)  # the check below would be meaningless for a sorted map
    spec = parse_job_script(raw)
    (only,) = spec.tasks
    assert [o["filename"] for o in only.outputs] == in_script
    assert len(only.outputs) == 7
    assert only.app == "process_DRISEE2_from_seq_file.pl"
    assert spec.info["pipeline"] == "drisee"


# --- the list IO form ------------------------------------------------------------------------------


def test_tasks_from_the_real_job_document_parse_in_list_form_unchanged() -> None:
    document = json.loads(example("real_job_document_GET_v0.9.7x.redacted.json"))
    spec = parse({"info": document["info"], "tasks": document["tasks"]})
    (only,) = spec.tasks
    original = document["tasks"][0]
    assert only.taskid == original["taskid"]
    assert only.app == "mgrast_seq_length_stats.pl"
    assert only.cmd["Dockerimage"] == "mgrast/pipeline:latest"
    assert only.inputs == original["inputs"]
    assert only.outputs == original["outputs"]
    assert only.outputs[0]["type"] == "update"
    assert only.predata == []
    assert only.userattr == {"data_type": "sequence", "stage_name": "sequence_stats"}
    assert spec.clientgroups == "mgrast_inbox"
    assert spec.start_at_us == 0  # Go's zero time means "not set"


def test_the_whole_real_job_document_parses_ignoring_server_fields() -> None:
    spec = parse_job_script(example("real_job_document_GET_v0.9.7x.redacted.json"))
    assert len(spec.tasks) == 1
    assert spec.info["user"] == "mgu00000"
    assert "submittime" not in spec.info


# --- rejections: the document as a whole -----------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"", "not valid JSON"),
        (b"{not json", "not valid JSON"),
        (b'{"tasks": [}', "not valid JSON"),
        (b'{"tasks":[{"taskid":"a","cmd":{"name":"\xff"}}]}', "utf-8"),
        (b"[]", "must be a JSON object"),
        (b'[{"taskid": "a"}]', "must be a JSON object"),
        (b'"job"', "must be a JSON object"),
        (b"null", "must be a JSON object"),
        (b"42", "must be a JSON object"),
        (b"{}", "no tasks"),
        (b'{"info": {"name": "x"}}', "no tasks"),
        (b'{"tasks": []}', "no tasks"),
        (b'{"tasks": null}', "no tasks"),
    ],
    ids=[
        "empty",
        "garbage",
        "truncated",
        "not-utf8",
        "empty-list",
        "list",
        "string",
        "null",
        "number",
        "empty-object",
        "info-only",
        "empty-tasks",
        "null-tasks",
    ],
)
def test_a_script_that_is_not_a_json_object_with_tasks_is_rejected_saying_why(
    raw: bytes, fragment: str
) -> None:
    assert fragment.lower() in rejection(raw).lower()


def test_invalid_utf8_is_reported_as_a_decoding_problem() -> None:
    message = rejection(b'{"tasks":[{"taskid":"a","cmd":{"name":"\xc3\x28"}}]}')
    assert "utf-8" in message.lower()
    assert "decode" in message


def test_utf16_script_is_rejected_as_not_utf8() -> None:
    raw = json.dumps(script()).encode("utf-16")
    assert "utf-8" in rejection(raw).lower()


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_json_number_constants_are_rejected(constant: str) -> None:
    raw = b'{"tasks":[{"taskid":"a","cmd":{"name":"x"},"userattr":{"v":' + constant.encode() + b"}}]}"
    assert "JSON" in rejection(raw)


def test_lone_surrogate_escape_is_rejected() -> None:
    message = rejection(b'{"tasks":[{"taskid":"a","cmd":{"name":"x\\ud800"}}]}')
    assert message == "tasks[0].cmd.name: contains a lone surrogate escape, which is not valid UTF-8"


def test_absurdly_nested_json_is_rejected_as_a_job_script_error() -> None:
    assert rejection(b"[" * 100_000) == "job script is nested too deeply"


# --- rejections: tasks and their graph -------------------------------------------------------------


def test_duplicate_taskid_is_rejected_naming_the_id() -> None:
    assert rejection(script(task("x"), task("y"), task("x"))) == "duplicate taskid 'x'"


def test_depends_on_an_unknown_task_is_rejected_naming_both_tasks() -> None:
    message = rejection(script(task("a"), task("b", dependsOn=["a", "ghost"])))
    assert message == "task 'b' dependsOn unknown task 'ghost'"


@pytest.mark.parametrize(
    ("tasks", "caught"),
    [
        ([task("a", dependsOn=["a"])], ["a"]),
        ([task("a", dependsOn=["b"]), task("b", dependsOn=["a"])], ["a", "b"]),
        (
            [
                task("root"),
                task("a", dependsOn=["c", "root"]),
                task("b", dependsOn=["a"]),
                task("c", dependsOn=["b"]),
            ],
            ["a", "b", "c"],
        ),
        (
            [
                task("a", inputs=[{"filename": "y", "origin": "b"}], outputs=[{"filename": "x"}]),
                task("b", inputs=[{"filename": "x", "origin": "a"}], outputs=[{"filename": "y"}]),
            ],
            ["a", "b"],
        ),
        (
            [task("a", inputs=[{"filename": "x", "origin": "a"}], outputs=[{"filename": "x"}])],
            ["a"],
        ),
    ],
    ids=["self", "two-cycle", "three-cycle", "origin-only-cycle", "origin-on-itself"],
)
def test_dependency_cycle_is_rejected_naming_the_tasks_in_it(
    tasks: list[dict[str, Any]], caught: list[str]
) -> None:
    assert rejection(script(*tasks)) == f"dependency cycle among tasks {caught}"


def test_cycle_message_does_not_name_tasks_that_merely_precede_it() -> None:
    message = rejection(
        script(task("first"), task("a", dependsOn=["first", "b"]), task("b", dependsOn=["a"]))
    )
    assert "first" not in message


def test_input_origin_naming_a_missing_task_is_rejected() -> None:
    message = rejection(script(consumer("c", "x.fna", "nobody")))
    assert message == "task 'c' input 'x.fna' has origin 'nobody', which is no task"


def test_input_origin_naming_a_task_that_does_not_output_that_file_is_rejected() -> None:
    message = rejection(script(producer("p", "other.fna"), consumer("c", "x.fna", "p")))
    assert message == "task 'c' input 'x.fna' has origin 'p', which outputs no such file"


def test_partinfo_input_that_is_not_an_input_is_rejected() -> None:
    document = script(task("a", inputs=[{"filename": "in.fna"}], partinfo={"input": "missing.fna"}))
    assert rejection(document) == "task 'a' partinfo.input 'missing.fna' is not one of its inputs"


def test_partinfo_without_input_is_accepted() -> None:
    spec = parse(script(task("a", partinfo={"index": "chunkrecord"})))
    assert spec.tasks[0].partinfo == {"input": "", "index": "chunkrecord", "output": ""}


# --- rejections: IO lists --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["inputs", "outputs", "predata"])
def test_duplicate_filename_in_list_form_is_rejected_naming_task_list_and_file(kind: str) -> None:
    document = script(task("a", **{kind: [{"filename": "x"}, {"filename": "y"}, {"filename": "x"}]}))
    assert rejection(document) == f"task 'a' {kind}: duplicate filename 'x'"


def test_legacy_map_key_wins_over_a_filename_inside_the_entry_so_map_form_cannot_duplicate() -> None:
    (only,) = parse(script(task("a", inputs={"x": {}, "y": {"filename": "x"}}))).tasks
    assert [i["filename"] for i in only.inputs] == ["x", "y"]


def test_repeated_key_in_legacy_map_keeps_the_last_entry_as_go_does() -> None:
    raw = b'{"tasks":[{"taskid":"a","cmd":{"name":"x"},"inputs":{"f":{"node":"1"},"f":{"node":"2"}}}]}'
    (only,) = parse_job_script(raw).tasks
    assert [(i["filename"], i["node"]) for i in only.inputs] == [("f", "2")]


@pytest.mark.parametrize("kind", ["inputs", "outputs", "predata"])
def test_list_entry_without_filename_is_rejected(kind: str) -> None:
    document = script(task("a", **{kind: [{"host": "http://shock"}]}))
    assert rejection(document) == f"task 'a' {kind}: every entry needs a filename"


def test_legacy_map_entry_that_is_not_an_object_is_rejected_naming_the_key() -> None:
    message = rejection(script(task("a", inputs={"reads.fna": "http://shock/node/1"})))
    assert "tasks[0].inputs" in message
    assert "'reads.fna' must be an object" in message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("filename", "../x"),
        ("filename", ".."),
        ("filename", "/etc/passwd"),
        ("filename", "a/../../b"),
        ("filename", "sub/.."),
        ("directory", "../elsewhere"),
        ("directory", "/tmp"),
        ("attrfile", "../attr.json"),
        ("shockfilename", "/root/x"),
    ],
)
def test_paths_escaping_the_work_directory_are_rejected(field: str, value: str) -> None:
    entry = {"filename": "ok.txt", field: value}
    message = rejection(script(task("a", outputs=[entry])))
    assert f"tasks[0].outputs[0].{field}" in message
    assert "must be a relative path without '..'" in message


@pytest.mark.parametrize("filename", ["../x", "/etc/passwd", "a/../../b"])
def test_legacy_map_key_escaping_the_work_directory_is_rejected(filename: str) -> None:
    message = rejection(script(task("a", inputs={filename: {"host": "http://shock"}})))
    assert "tasks[0].inputs[0].filename" in message
    assert "must be a relative path without '..'" in message


@pytest.mark.parametrize("filename", ["sub/dir/x.fna", "./x", "a..b", "..hidden", "x.."])
def test_relative_paths_that_stay_inside_the_work_directory_are_accepted(filename: str) -> None:
    (only,) = parse(script(task("a", outputs=[{"filename": filename}]))).tasks
    assert only.outputs[0]["filename"] == filename


def test_negative_io_size_is_rejected() -> None:
    message = rejection(script(task("a", inputs=[{"filename": "x", "size": -1}])))
    assert message == "invalid job script: tasks[0].inputs[0].size: Value error, must not be negative"


# --- rejections: fields ----------------------------------------------------------------------------


def test_missing_cmd_is_rejected_as_required() -> None:
    assert rejection({"tasks": [{"taskid": "a"}]}) == "invalid job script: tasks[0].cmd: is required"


def test_missing_cmd_name_is_rejected_as_required() -> None:
    message = rejection({"tasks": [{"taskid": "a", "cmd": {"args": "-x"}}]})
    assert message == "invalid job script: tasks[0].cmd.name: is required"


def test_missing_taskid_is_rejected_as_required() -> None:
    message = rejection({"tasks": [task("a"), {"cmd": {"name": "x"}}]})
    assert message == "invalid job script: tasks[1].taskid: is required"


@pytest.mark.parametrize("name", ["", "   ", "\t"])
def test_empty_cmd_name_is_rejected(name: str) -> None:
    message = rejection({"tasks": [{"taskid": "a", "cmd": {"name": name}}]})
    assert message == "invalid job script: tasks[0].cmd.name: Value error, must not be empty"


@pytest.mark.parametrize("taskid", ["a/b", "", " x", "x ", "-a", ".a", "_a", "a b", "a?b", "é", "a" * 129])
def test_taskid_with_bad_characters_is_rejected_explaining_the_rule(taskid: str) -> None:
    message = rejection(script(task(taskid)))
    assert "tasks[0].taskid" in message
    assert "must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit" in message


@pytest.mark.parametrize("taskid", ["0", "a", "A.b_c-9", "f21f0804-baf5-47bb-b5ee-835a5a1c7105_0", "a" * 128])
def test_taskid_of_url_safe_characters_is_accepted(taskid: str) -> None:
    assert parse(script(task(taskid))).tasks[0].taskid == taskid


def test_taskid_with_a_trailing_newline_is_rejected() -> None:
    assert "tasks[0].taskid" in rejection(script(task("a\n")))


def test_several_problems_are_reported_together() -> None:
    message = rejection({"tasks": [{"taskid": "a/b", "cmd": {"name": 5}}]})
    assert "tasks[0].taskid" in message
    assert "tasks[0].cmd.name" in message


def _set(path: str, value: Any) -> dict[str, Any]:
    """A valid one-task script with ``path`` (``info.x``, ``task.x`` or ``cmd.x``) set to ``value``."""
    document = copy.deepcopy(script(task("a")))
    scope, key = path.split(".", 1)
    target = {"info": document["info"], "task": document["tasks"][0], "cmd": document["tasks"][0]["cmd"]}[
        scope
    ]
    target[key] = value
    return document


@pytest.mark.parametrize(
    ("document", "location", "problem"),
    [
        (_set("cmd.name", 5), "tasks[0].cmd.name", "valid string"),
        (_set("cmd.args", ["-x"]), "tasks[0].cmd.args", "valid string"),
        (_set("cmd.environ", {"public": {"N": 5}}), "tasks[0].cmd.environ.public.N", "valid string"),
        (_set("info.priority", "5"), "info.priority", "valid integer"),
        (_set("info.priority", 5.5), "info.priority", "valid integer"),
        (_set("info.noretry", "yes"), "info.noretry", "valid boolean"),
        (_set("info.noretry", 1), "info.noretry", "valid boolean"),
        (_set("info.userattr", []), "info.userattr", "valid dictionary"),
        (_set("info.start_at", 5), "info.start_at", "valid string"),
        (_set("info.clientgroups", 3), "info.clientgroups", "valid string"),
        ({"info": [], "tasks": [task()]}, "info", "valid dictionary"),
        ({"tasks": {"a": task()}}, "tasks", "valid list"),
        ({"tasks": "a"}, "tasks", "valid list"),
        ({"tasks": [None]}, "tasks[0]", "valid dictionary"),
        (_set("task.inputs", "reads.fna"), "tasks[0].inputs", "valid list"),
        (_set("task.outputs", 7), "tasks[0].outputs", "valid list"),
        (_set("task.dependsOn", "b"), "tasks[0].dependsOn", "valid list"),
        (_set("task.totalwork", 2.0), "tasks[0].totalwork", "valid integer"),
        (_set("task.totalwork", "2"), "tasks[0].totalwork", "valid integer"),
        (_set("task.totalwork", True), "tasks[0].totalwork", "valid integer"),
        (_set("task.userattr", ["x"]), "tasks[0].userattr", "valid dictionary"),
        (_set("task.partinfo", "in.fna"), "tasks[0].partinfo", "valid dictionary"),
        (_set("task.taskid", 0), "tasks[0].taskid", "valid string"),
    ],
    ids=lambda value: None if isinstance(value, dict) else str(value),
)
def test_field_of_the_wrong_type_is_rejected_naming_where(
    document: dict[str, Any], location: str, problem: str
) -> None:
    message = rejection(document)
    assert message.startswith(f"invalid job script: {location}")
    assert problem in message


def test_negative_maxworksize_is_rejected() -> None:
    message = rejection(_set("task.maxworksize", -1))
    assert message == "invalid job script: tasks[0].maxworksize: Value error, must not be negative"


def test_totalwork_above_the_maximum_is_rejected_naming_the_limit() -> None:
    message = rejection(_set("task.totalwork", MAX_TOTALWORK + 1))
    assert message == f"invalid job script: tasks[0].totalwork: Value error, must be at most {MAX_TOTALWORK}"


def test_totalwork_at_the_maximum_is_accepted() -> None:
    assert parse(_set("task.totalwork", MAX_TOTALWORK)).tasks[0].totalwork == MAX_TOTALWORK


@pytest.mark.parametrize("path", ["info.priority", "task.maxworksize"])
def test_integers_too_large_to_store_are_rejected(path: str) -> None:
    message = rejection(_set(path, 2**70))
    assert path.split(".")[1] in message


@pytest.mark.parametrize(
    "start_at",
    ["tomorrow", "2019-02-28T21:06:13", "28/02/2019", "2019-02-30T00:00:00Z", "2019-02-28T21:06:13+0200"],
)
def test_bad_start_at_is_rejected_naming_the_field(start_at: str) -> None:
    message = rejection(_set("info.start_at", start_at))
    assert message.startswith("info.start_at: ")


def test_start_at_without_a_zone_is_rejected_as_not_rfc3339() -> None:
    message = rejection(_set("info.start_at", "2019-02-28T21:06:13"))
    assert message == "info.start_at: not an RFC 3339 time: '2019-02-28T21:06:13'"


def test_start_at_is_converted_to_microseconds() -> None:
    assert parse(_set("info.start_at", "2019-02-28T23:06:13.088+02:00")).start_at_us == 1_551_387_973_088_000


# --- normalisations --------------------------------------------------------------------------------


@pytest.mark.parametrize(("given", "kept"), [(0, 1), (-5, 1), (1, 1), (7, 7)])
def test_priority_below_one_is_raised_to_the_base_priority(given: int, kept: int) -> None:
    spec = parse(_set("info.priority", given))
    assert spec.priority == kept
    assert spec.info["priority"] == kept


def test_priority_defaults_to_one() -> None:
    assert parse({"tasks": [task()]}).priority == 1


@pytest.mark.parametrize(("given", "kept"), [(0, 1), (1, 1), (4, 4)])
def test_totalwork_zero_means_one_workunit(given: int, kept: int) -> None:
    assert parse(_set("task.totalwork", given)).tasks[0].totalwork == kept


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        (" a, b ,,", "a,b"),
        ("mgrast_inbox,docker", "mgrast_inbox,docker"),
        (["a", "b"], "a,b"),
        ([" a ", "", "b"], "a,b"),
        ("", ""),
        ([], ""),
        (" , ", ""),
    ],
)
def test_clientgroups_become_one_tidy_comma_string(given: str | list[str], kept: str) -> None:
    spec = parse(_set("info.clientgroups", given))
    assert spec.clientgroups == kept
    assert spec.info["clientgroups"] == kept


@pytest.mark.parametrize(
    "path",
    [
        "task.dependsOn",
        "task.inputs",
        "task.outputs",
        "task.predata",
        "task.partinfo",
        "task.totalwork",
        "task.userattr",
        "cmd.environ",
        "cmd.args",
        "info.priority",
        "info.clientgroups",
        "info.start_at",
        "info.noretry",
    ],
)
def test_null_is_treated_as_absent(path: str) -> None:
    with_null = parse(_set(path, None))
    without = parse(script(task("a")))
    assert with_null == without


def test_null_info_is_treated_as_absent() -> None:
    spec = parse({"info": None, "tasks": [task()]})
    assert spec.priority == 1
    assert spec.info["name"] == ""


def test_null_inside_an_io_entry_is_treated_as_absent() -> None:
    (only,) = parse(script(task("a", outputs=[{"filename": "x", "node": None, "size": None}]))).tasks
    assert only.outputs[0]["node"] == "-"
    assert only.outputs[0]["size"] == 0


def test_keys_the_server_fills_in_a_job_document_are_accepted_and_dropped() -> None:
    document = {
        "info": {"name": "j", "submittime": "2019-02-27T20:40:49.378Z"},
        "tasks": [
            {
                "taskid": "a",
                "cmd": {"name": "x", "Local": True, "has_private_env": True},
                "state": "completed",
                "remainwork": 0,
                "inputs": [{"filename": "f"}],
            }
        ],
        "id": "not-a-job-id",
        "IsCWL": False,
    }
    spec = parse(document)
    (only,) = spec.tasks
    assert "submittime" not in spec.info
    assert "Local" not in only.cmd
    assert only.cmd["has_private_env"] is False  # computed, never taken from the script


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (_set("task.dependson", ["b"]), "tasks[0].dependson: unknown key; did you mean 'dependsOn'?"),
        (_set("task.ouputs", []), "tasks[0].ouputs: unknown key; did you mean 'outputs'?"),
        (_set("task.totalWork", 4), "tasks[0].totalWork: unknown key; did you mean 'totalwork'?"),
        (_set("task.clientgroup", "gpu"), "tasks[0].clientgroup: unknown key; did you mean 'clientgroups'?"),
        (_set("info.projet", "p"), "info.projet: unknown key; did you mean 'project'?"),
        (_set("cmd.arg", "-x"), "tasks[0].cmd.arg: unknown key; did you mean 'args'?"),
        ({"tasks": [task()], "infos": {}}, "infos: unknown key; did you mean 'info'?"),
        (
            script(task("a", outputs={"o.txt": {"nonzeor": True}})),
            "tasks[0].outputs[0].nonzeor: unknown key; did you mean 'nonzero'?",
        ),
    ],
    ids=["dependson", "ouputs", "totalWork", "clientgroup", "projet", "arg", "infos", "io-map"],
)
def test_an_unknown_key_is_refused_with_its_path_and_the_closest_known_key(
    document: dict[str, Any], expected: str
) -> None:
    assert rejection(document) == f"invalid job script: {expected}"


def test_an_unknown_key_with_nothing_close_lists_the_known_keys() -> None:
    message = rejection(_set("task.frobnicate", 1))
    assert message.startswith("invalid job script: tasks[0].frobnicate: unknown key (known keys: ")
    assert "dependsOn" in message


@pytest.mark.parametrize(
    ("document", "where", "reason"),
    [
        (_set("info.datatoken", "secret"), "info.datatoken", "Datatoken header"),
        (script(task("a", inputs=[{"filename": "f", "md5": "abc"}])), "tasks[0].inputs[0].md5", "md5"),
        (
            script(task("a", outputs=[{"filename": "f", "optional": True}])),
            "tasks[0].outputs[0].optional",
            "every declared output must be written",
        ),
        (_set("task.skip", 1), "tasks[0].skip", "Perdure does not do it"),
        (
            script(task("a", inputs=[{"filename": "f", "url": "http://x/f", "uncompress": "bzip2"}])),
            "tasks[0].inputs[0].uncompress",
            "only 'gzip'",
        ),
    ],
    ids=["datatoken", "md5", "optional", "skip", "uncompress"],
)
def test_a_key_perdure_cannot_act_on_is_refused_with_a_reason(
    document: dict[str, Any], where: str, reason: str
) -> None:
    message = rejection(document)
    assert message.startswith(f"invalid job script: {where}: ")
    assert reason in message
    assert "secret" not in message


def test_skip_zero_as_in_awe_templates_is_accepted() -> None:
    assert parse(_set("task.skip", 0)).tasks[0].taskid == "a"


@pytest.mark.parametrize(
    ("document", "where", "problem"),
    [
        (_set("info.name", "n" * 256), "info.name", "at most 255 characters"),
        (_set("info.project", "p" * 256), "info.project", "at most 255 characters"),
        (_set("info.pipeline", "p" * 256), "info.pipeline", "at most 255 characters"),
        (_set("info.user", "u" * 256), "info.user", "at most 255 characters"),
        (_set("cmd.name", "c" * 256), "tasks[0].cmd.name", "at most 255 characters"),
        (_set("info.name", "a\x1b[31mred"), "info.name", "control characters"),
        (_set("info.project", "two\nlines"), "info.project", "control characters"),
        (_set("info.priority", 2**31), "info.priority", "less than or equal to 2147483647"),
        (_set("info.priority", -(2**31) - 1), "info.priority", "greater than or equal to"),
        (_set("task.maxworksize", 2**31), "tasks[0].maxworksize", "less than or equal to 2147483647"),
        (_set("task.totalwork", -5), "tasks[0].totalwork", "at least 1"),
        (_set("info.clientgroups", "../etc"), "info.clientgroups", "must not contain '/'"),
        (_set("info.clientgroups", ["a", "b/c"]), "info.clientgroups", "must not contain '/'"),
        (_set("task.clientgroups", "x..y"), "tasks[0].clientgroups", "must not contain '/'"),
        (_set("info.clientgroups", "g," * 600), "info.clientgroups", "at most 1024 characters"),
        (
            script(task("a", outputs=[{"filename": "out\n.txt"}])),
            "tasks[0].outputs[0].filename",
            "control characters",
        ),
        (
            script(task("a", outputs=[{"filename": "out\x1b.txt"}])),
            "tasks[0].outputs[0].filename",
            "control characters",
        ),
    ],
)
def test_values_beyond_what_storage_holds_or_unsafe_as_names_are_refused(
    document: dict[str, Any], where: str, problem: str
) -> None:
    message = rejection(document)
    assert message.startswith(f"invalid job script: {where}: ")
    assert problem in message


@pytest.mark.parametrize(
    "document",
    [
        _set("info.name", "a\x00b"),
        _set("cmd.args", "x\x00"),
        _set("info.userattr", {"k": "v\x00"}),
        _set("info.userattr", {"k\x00": "v"}),
        script(task("a", outputs=[{"filename": "nul\x00byte"}])),
    ],
    ids=["name", "args", "userattr-value", "userattr-key", "filename"],
)
def test_a_nul_anywhere_is_refused_naming_where_although_json_escapes_it(document: dict[str, Any]) -> None:
    raw = json.dumps(document).encode()
    assert b"\\u0000" in raw  # what a client sends: the escape, never a raw NUL byte
    message = rejection(raw)
    assert "must not contain NUL characters" in message
    assert message.split(":")[0] in {
        "info.name",
        "tasks[0].cmd.args",
        "info.userattr.k",
        "info.userattr.k\x00",
        "tasks[0].outputs[0].filename",
    }


def test_defaults_fill_a_minimal_task() -> None:
    (only,) = parse({"tasks": [task("a")]}).tasks
    assert only.depends_on == []
    assert only.inputs == only.outputs == only.predata == []
    assert only.partinfo is None
    assert only.totalwork == 1
    assert only.maxworksize == 0
    assert only.userattr == {}
    assert only.clientgroups == ""
    assert only.private_env == {}
    assert only.cmd == {
        "name": "run.sh",
        "args": "",
        "args_array": [],
        "Dockerimage": "",
        "dockerPull": "",
        "cmd_script": [],
        "environ": {"public": {}},
        "has_private_env": False,
        "description": "",
    }


def test_io_entries_are_filled_to_the_full_list_form() -> None:
    (only,) = parse(script(task("a", inputs={"reads.fna": {"host": "http://shock"}}))).tasks
    assert only.inputs == [
        {
            "filename": "reads.fna",
            "name": "",
            "directory": "",
            "host": "http://shock",
            "node": "-",
            "url": "",
            "size": 0,
            "cache": False,
            "origin": "",
            "nonzero": False,
            "temporary": False,
            "shockfilename": "",
            "shockindex": "",
            "attrfile": "",
            "nofile": False,
            "delete": False,
            "type": "",
            "nodeattr": {},
            "formoptions": {},
            "uncompress": "",
        }
    ]


def test_spec_document_never_contains_the_private_environment() -> None:
    cmd = {"name": "x", "environ": {"public": {"A": "1"}, "private": {"TOKEN": "s3cr3t"}}}
    (only,) = parse({"tasks": [{"taskid": "a", "cmd": cmd}]}).tasks
    assert only.private_env == {"TOKEN": "s3cr3t"}
    assert only.cmd["has_private_env"] is True
    assert only.cmd["environ"] == {"public": {"A": "1"}}
    assert "s3cr3t" not in json.dumps(only.spec_document())


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ({"outputs": [{"filename": "r", "deliverto": "s3://ab/r"}]}, "not a valid S3 bucket name"),
        ({"outputs": [{"filename": "r", "deliverto": "s3://my..bucket/r"}]}, "not a valid S3 bucket name"),
        ({"outputs": [{"filename": "r", "deliverto": "s3://192.168.1.1/r"}]}, "not a valid S3 bucket name"),
        ({"outputs": [{"filename": "r", "deliverto": "s3://bucket"}]}, "names no key"),
        ({"outputs": [{"filename": "r", "deliverto": "s3://bucket/dir/"}]}, "ends with '/'"),
        ({"outputs": [{"filename": "r", "deliverto": "s3://bucket/a\nb"}]}, "control characters"),
        ({"outputs": [{"filename": "r", "deliverto": "s3://bucket/" + "k" * 1025}]}, "at most 1024 bytes"),
        ({"inputs": [{"filename": "r", "url": "s3://b1/r", "deliverto": "s3://bucket/r"}]}, "outputs only"),
        ({"outputs": [{"filename": "r", "deliverto": "s3://bucket/r"}], "totalwork": 4}, "split task"),
        ({"outputs": [{"filename": "r", "deliverto": "s3://bucket/r"}], "maxworksize": 10}, "split task"),
        ({"outputs": [{"filename": "r", "nofile": True, "deliverto": "s3://bucket/r"}]}, "needs a file"),
    ],
)
def test_a_delivery_location_is_checked_at_submit(extra: dict[str, Any], says: str) -> None:
    with pytest.raises(JobScriptError, match="deliverto") as raised:
        parse(script(task("a", **extra)))
    assert says in str(raised.value)


def test_a_delivery_location_is_kept_only_where_named() -> None:
    outputs = [{"filename": "r.txt", "deliverto": "s3://user-bucket/runs/r.txt"}, {"filename": "s.txt"}]
    (only,) = parse(script(task("a", outputs=outputs))).tasks
    assert only.outputs[0]["deliverto"] == "s3://user-bucket/runs/r.txt"
    assert "deliverto" not in only.outputs[1]  # the AWE list form is unchanged without it
