"""The workunit's command line (awe.md §1.3, §5.3): AWE's argument splitting and expansion."""

from __future__ import annotations

from pathlib import Path

import pytest

from perdure.worker.command import expand, split_args

# ---- split_args: spaces separate, single quotes group, no escapes ----------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ("", []),
        ("   ", []),
        ("a", ["a"]),
        ("a b c", ["a", "b", "c"]),
        ("  a   b  ", ["a", "b"]),
        ("-i @in.fna -o out.fna", ["-i", "@in.fna", "-o", "out.fna"]),
        ("'a b' c", ["a b", "c"]),
        ("-c 'echo $$ > pid; sleep 1'", ["-c", "echo $$ > pid; sleep 1"]),
        ("'  spaces  kept  '", ["  spaces  kept  "]),
        ("-input='my file.fna'", ["-input=my file.fna"]),
        # Empty quotes are an (empty) argument of their own.
        ("''", [""]),
        ("a '' b", ["a", "", "b"]),
        ("a ''", ["a", ""]),
        # Only single quotes group; double quotes, backslashes and tabs are ordinary characters.
        ('"a b"', ['"a', 'b"']),
        ("a\\ b", ["a\\", "b"]),
        ("a\tb", ["a\tb"]),
        ("it's", ["its"]),
        # An unterminated quote runs to the end.
        ("'a b", ["a b"]),
        ("x 'a  b", ["x", "a  b"]),
    ],
)
def test_split_args(args: str, words: list[str]) -> None:
    assert split_args(args) == words


def test_split_args_closing_quote_ends_the_word_as_in_awe() -> None:
    assert split_args("'a'b") == ["a", "b"]


# ---- expand: @file for known inputs, ${VAR} from the environment ------------------------------------

INPUTS = {
    "x.fna": Path("/work/wu/x.fna"),
    "reads-1.fq": Path("/work/wu/reads-1.fq"),
    "ref.db": Path("/work/wu/ref.db"),
}
ENV = {"HOME": "/home/me", "N": "4", "TRICK": "@x.fna"}


@pytest.mark.parametrize(
    ("word", "expanded"),
    [
        ("@x.fna", "/work/wu/x.fna"),
        ("-input=@x.fna", "-input=/work/wu/x.fna"),
        ("--reads=@reads-1.fq", "--reads=/work/wu/reads-1.fq"),
        ("@x.fna,@ref.db", "/work/wu/x.fna,/work/wu/ref.db"),
        # Not an input: left as it is.
        ("@y.fna", "@y.fna"),
        ("user@example.com", "user@example.com"),
        ("@", "@"),
        ("x.fna", "x.fna"),
        # ${VAR}: the variable's value, or empty when it is not set; $VAR is left to the command.
        ("${HOME}/data", "/home/me/data"),
        ("-t${N}", "-t4"),
        ("${N}${N}", "44"),
        ("${MISSING}", ""),
        ("a${MISSING}b", "ab"),
        ("$HOME", "$HOME"),
        ("${HOME", "${HOME"),
        # Both in one word; a value is not expanded again.
        ("@x.fna:${N}", "/work/wu/x.fna:4"),
        ("${TRICK}", "@x.fna"),
    ],
)
def test_expand(word: str, expanded: str) -> None:
    assert expand(word, INPUTS, ENV) == expanded


def test_expand_prefers_the_longest_input_name() -> None:
    inputs = {"a.fna": Path("/w/a.fna"), "a.fna.gz": Path("/w/a.fna.gz")}
    assert expand("@a.fna.gz", inputs, {}) == "/w/a.fna.gz"
    assert expand("@a.fna", inputs, {}) == "/w/a.fna"
