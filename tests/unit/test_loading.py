"""Loading resource files: documents, lines, and every problem as `file:line: ...`."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from eventflow.resources.describing import dotted, show
from eventflow.resources.loading import Located, load_documents
from eventflow.resources.models import Trigger, WorkflowTemplate

WORKFLOW = """\
apiVersion: eventflow.io/v1alpha1
kind: WorkflowTemplate
metadata: {name: etl}
spec:
  parameters: [{name: key}]
  steps:
    - name: extract
      command: [python, -m, extract]
    - name: load
      depends: [extract]
      command: [python]
      retries:
        limit: 3
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_of(*paths: Path) -> list[str]:
    _, problems = load_documents(list(paths))
    return [str(problem) for problem in problems]


def test_valid_document_loads_with_its_start_line(tmp_path: Path) -> None:
    """A valid document becomes its model, located at the file and line where it starts."""
    path = write(tmp_path, "etl.yaml", "# comment\n\n" + WORKFLOW)
    located, problems = load_documents([path])
    assert problems == []
    [document] = located
    assert isinstance(document.resource, WorkflowTemplate)
    assert document.resource.metadata.name == "etl"
    assert (document.file, document.line) == (str(path), 3)


def test_line_of_nested_list_items_and_keys(tmp_path: Path) -> None:
    """line_of gives the line of keys and sequence items at any depth."""
    located, _ = load_documents([write(tmp_path, "etl.yaml", WORKFLOW)])
    document = located[0]
    assert document.line_of(()) == 1
    assert document.line_of(("spec",)) == 4
    assert document.line_of(("spec", "steps")) == 6
    assert document.line_of(("spec", "steps", 0)) == 7
    assert document.line_of(("spec", "steps", 1)) == 9
    assert document.line_of(("spec", "steps", 1, "depends", 0)) == 10
    assert document.line_of(("spec", "steps", 1, "retries", "limit")) == 13
    assert document.line_of(("spec", "parameters", 0, "name")) == 5


def test_line_of_unknown_path_falls_back_to_nearest_parent(tmp_path: Path) -> None:
    """A path with no line of its own takes the line of its nearest parent."""
    located, _ = load_documents([write(tmp_path, "etl.yaml", WORKFLOW)])
    assert located[0].line_of(("spec", "steps", 1, "retries", "backoff")) == 12
    assert located[0].line_of(("spec", "steps", 7, "name")) == 6
    assert located[0].line_of(("nothing",)) == 1


def test_several_documents_in_one_file_each_start_at_their_line(tmp_path: Path) -> None:
    """Documents separated by --- load in order, each with its own start line."""
    trigger = """\
    apiVersion: eventflow.io/v1alpha1
    kind: Trigger
    metadata: {name: t}
    spec: {events: {e: {type: a}}, workflow: etl}
    """
    path = write(tmp_path, "all.yaml", WORKFLOW + "---\n" + textwrap.dedent(trigger))
    located, problems = load_documents([path])
    assert problems == []
    assert [(type(d.resource).__name__, d.line) for d in located] == [
        ("WorkflowTemplate", 1),
        ("Trigger", 15),
    ]
    assert isinstance(located[1].resource, Trigger)


def test_directory_is_walked_sorted_skipping_hidden_and_other_files(tmp_path: Path) -> None:
    """Directories are walked recursively in sorted order; hidden entries and non-YAML skip."""
    for name in ("b/two.yml", "a.yaml", ".hidden/x.yaml", "b/.h.yaml", "notes.txt"):
        write(tmp_path, name, WORKFLOW.replace("name: etl", f"name: n{len(name)}"))
    located, problems = load_documents([tmp_path])
    assert problems == []
    assert [Path(d.file).relative_to(tmp_path).as_posix() for d in located] == [
        "a.yaml",
        "b/two.yml",
    ]


def test_same_file_given_twice_loads_once(tmp_path: Path) -> None:
    """A file named directly and inside a given directory is read once."""
    path = write(tmp_path, "etl.yaml", WORKFLOW)
    located, _ = load_documents([tmp_path, path])
    assert len(located) == 1


def test_empty_documents_are_skipped(tmp_path: Path) -> None:
    """Empty documents and comment-only documents are not problems."""
    path = write(tmp_path, "e.yaml", "---\n# nothing\n---\n---\n" + WORKFLOW + "---\n")
    located, problems = load_documents([path])
    assert (len(located), problems) == (1, [])


def test_missing_path_is_a_problem(tmp_path: Path) -> None:
    """A path that does not exist is reported, not ignored."""
    missing = tmp_path / "nope.yaml"
    assert problems_of(missing) == [
        f"{missing}:1: -: no such file or directory; give a *.yaml file or a directory of them"
    ]


def test_file_that_is_not_utf8_is_a_problem(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 are reported with the decoding error."""
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"kind: \xff\n")
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}:1: -: cannot read the file: 'utf-8' codec can't decode")


def test_yaml_syntax_error_reports_its_line_and_other_files_still_load(tmp_path: Path) -> None:
    """A syntax error is reported at PyYAML's line; other files load."""
    bad = write(tmp_path, "a.yaml", "a: [\nb: 1\n")
    write(tmp_path, "b.yaml", WORKFLOW)
    located, problems = load_documents([tmp_path])
    assert [str(p) for p in problems] == [
        f"{bad}:3: -: invalid YAML: expected ',' or ']', but got '<stream end>' (column 1)"
    ]
    assert [d.resource.metadata.name for d in located] == ["etl"]


def test_documents_before_a_syntax_error_still_load(tmp_path: Path) -> None:
    """A syntax error in the third document keeps the documents before it."""
    path = write(tmp_path, "a.yaml", WORKFLOW + "---\nkey: value: other\n")
    located, problems = load_documents([path])
    assert len(located) == 1
    assert [str(p) for p in problems] == [
        f"{path}:15: -: invalid YAML: mapping values are not allowed here (column 11)"
    ]


def test_document_that_is_not_a_mapping(tmp_path: Path) -> None:
    """A list or scalar document is a problem naming what a resource is."""
    path = write(tmp_path, "a.yaml", "- a\n- b\n---\njust text\n")
    assert problems_of(path) == [
        f"{path}:1: -: a resource is a mapping with apiVersion, kind, metadata and spec;"
        ' got ["a", "b"]',
        f"{path}:4: -: a resource is a mapping with apiVersion, kind, metadata and spec;"
        " got 'just text'",
    ]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            "apiVersion: v1\nkind: Trigger\n",
            "1: Trigger/x: apiVersion: must be eventflow.io/v1alpha1; got 'v1'",
        ),
        (
            "kind: Trigger\n",
            "1: Trigger/x: apiVersion: must be eventflow.io/v1alpha1; it is missing",
        ),
        (
            "apiVersion: eventflow.io/v1alpha1\nkind: Job\n",
            "2: -: kind: must be one of Sensor, Trigger, WorkflowTemplate; got 'Job'",
        ),
        (
            "apiVersion: eventflow.io/v1alpha1\n",
            "1: -: kind: must be one of Sensor, Trigger, WorkflowTemplate; it is missing",
        ),
        (
            "apiVersion: eventflow.io/v1alpha1\nkind: [a]\n",
            '2: -: kind: must be one of Sensor, Trigger, WorkflowTemplate; got ["a"]',
        ),
    ],
)
def test_api_version_and_kind_are_checked(tmp_path: Path, header: str, expected: str) -> None:
    """A wrong or missing apiVersion or kind is reported at its line."""
    path = write(tmp_path, "a.yaml", header + "metadata: {name: x}\nspec: {}\n")
    assert problems_of(path) == [f"{path}:{expected}"]


def test_unknown_field_lists_known_fields_at_the_key_line(tmp_path: Path) -> None:
    """A typo in a field name names the field and lists the accepted ones."""
    path = write(tmp_path, "a.yaml", WORKFLOW.replace("limit: 3", "limit: 3\n      retrys: 2"))
    assert problems_of(path) == [
        f"{path}:14: WorkflowTemplate/etl: spec.steps[1].retrys: unknown field 'retrys';"
        " known fields: name, image, command, args, env, workingDir, depends, when, retries,"
        " timeout, kubernetes"
    ]


def test_unknown_top_level_field(tmp_path: Path) -> None:
    """An unknown top-level key lists apiVersion, kind, metadata and spec."""
    path = write(tmp_path, "a.yaml", WORKFLOW + "status: {}\n")
    assert problems_of(path) == [
        f"{path}:14: WorkflowTemplate/etl: status: unknown field 'status';"
        " known fields: apiVersion, kind, metadata, spec"
    ]


def test_missing_field_is_reported_at_its_parent(tmp_path: Path) -> None:
    """A missing required field is reported on the line of the mapping that lacks it."""
    path = write(tmp_path, "a.yaml", WORKFLOW.replace("      command: [python]\n", ""))
    assert problems_of(path) == [
        f"{path}:9: WorkflowTemplate/etl: spec.steps[1].command: required field missing"
    ]


def test_wrong_type_names_expected_type_and_value(tmp_path: Path) -> None:
    """A value of the wrong type says what was expected and what was given."""
    path = write(tmp_path, "a.yaml", WORKFLOW.replace("limit: 3", "limit: three"))
    assert problems_of(path) == [
        f"{path}:13: WorkflowTemplate/etl: spec.steps[1].retries.limit:"
        " expected an integer, got 'three'"
    ]


@pytest.mark.parametrize(
    ("replacement", "expected"),
    [
        ("limit: -1", "spec.steps[1].retries.limit: expected a number >= 0, got -1"),
        ("limit: 101", "spec.steps[1].retries.limit: expected a number <= 100, got 101"),
        ("limit: 1.5", "spec.steps[1].retries.limit: expected an integer, got 1.5"),
        ("limit: []", "spec.steps[1].retries.limit: expected an integer, got []"),
        (
            "backoff: soon",
            "spec.steps[1].retries.backoff: 'soon' is not a duration; write a number with a"
            " unit: 250ms, 10s, 5m, 1h30m, 1d",
        ),
        ("factor: 0.5", "spec.steps[1].retries.factor: expected a number >= 1.0, got 0.5"),
    ],
)
def test_constraint_messages_say_what_is_accepted(
    tmp_path: Path, replacement: str, expected: str
) -> None:
    """Bounds, integer and duration errors each name the accepted values."""
    path = write(tmp_path, "a.yaml", WORKFLOW.replace("limit: 3", replacement))
    assert problems_of(path) == [f"{path}:13: WorkflowTemplate/etl: {expected}"]


def test_bad_name_explains_the_pattern(tmp_path: Path) -> None:
    """A name that is not a DNS label says which characters are accepted."""
    path = write(tmp_path, "a.yaml", WORKFLOW.replace("name: etl", "name: My_ETL"))
    assert problems_of(path) == [
        f"{path}:3: WorkflowTemplate/My_ETL: metadata.name: expected lowercase letters,"
        " digits and '-', starting and ending with a letter or digit, got 'My_ETL'"
    ]


def test_empty_list_and_boolean_errors(tmp_path: Path) -> None:
    """An empty required list and a non-boolean flag are both reported."""
    text = WORKFLOW.replace("command: [python]", "command: []").replace(
        "spec:\n", "spec:\n  failFast: maybe\n"
    )
    path = write(tmp_path, "a.yaml", text)
    assert problems_of(path) == [
        f"{path}:5: WorkflowTemplate/etl: spec.failFast: expected a boolean (true or false),"
        " got 'maybe'",
        f"{path}:12: WorkflowTemplate/etl: spec.steps[1].command: expected at least 1 item, got 0",
    ]


def test_union_failure_is_one_message_listing_the_alternatives(tmp_path: Path) -> None:
    """A value that fits no alternative of a union is one problem listing them all."""
    text = """\
    apiVersion: eventflow.io/v1alpha1
    kind: Trigger
    metadata: {name: t}
    spec:
      events:
        up:
          data:
            a: {x: 1}
            b: [ok, {}]
      workflow: etl
    """
    path = write(tmp_path, "a.yaml", text)
    assert problems_of(path) == [
        f"{path}:8: Trigger/t: spec.events.up.data.a: expected a string, an integer, a number,"
        ' a boolean (true or false) or a list, got {"x": 1}',
        f"{path}:9: Trigger/t: spec.events.up.data.b[1]: expected a string, an integer,"
        " a number or a boolean (true or false), got {}",
    ]


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ("{up: {type: a}, down: {type: b}}", "spec.events: expected at most 1 item, got 2"),
        ("{}", "spec.events: expected at least 1 item, got 0"),
        (
            "{Up: {type: a}}",
            "spec.events.Up: expected lowercase letters, digits and '-', starting and ending"
            " with a letter or digit, got 'Up'",
        ),
    ],
)
def test_events_count_and_names_are_checked(tmp_path: Path, events: str, expected: str) -> None:
    """A trigger has one event selector, named as a DNS label."""
    text = "apiVersion: eventflow.io/v1alpha1\nkind: Trigger\nmetadata: {name: t}\nspec:\n"
    text += f"  events: {events}\n  workflow: etl\n"
    path = write(tmp_path, "a.yaml", text)
    assert problems_of(path) == [f"{path}:5: Trigger/t: {expected}"]


def test_unreadable_name_is_a_dash(tmp_path: Path) -> None:
    """A document whose metadata.name cannot be read is labelled Kind/-."""
    path = write(tmp_path, "a.yaml", WORKFLOW.replace("metadata: {name: etl}", "metadata: []"))
    assert problems_of(path) == [
        f"{path}:3: WorkflowTemplate/-: metadata: expected a mapping, got []"
    ]


def test_duplicate_key_is_a_problem(tmp_path: Path) -> None:
    """A key given twice in one mapping is reported at its second line."""
    path = write(tmp_path, "a.yaml", WORKFLOW.replace("limit: 3", "limit: 3\n        limit: 4"))
    located, problems = load_documents([path])
    assert [str(p) for p in problems] == [
        f"{path}:14: WorkflowTemplate/etl: spec.steps[1].retries.limit: duplicate key 'limit'"
        " (first on line 13); YAML keeps only the last, remove one"
    ]
    assert isinstance(located[0].resource, WorkflowTemplate)
    assert located[0].resource.spec.steps[1].retries.limit == 4


def test_merge_keys_and_anchors_follow_safe_loader(tmp_path: Path) -> None:
    """`<<` merges and aliases build the same data as SafeLoader, without duplicate noise."""
    text = WORKFLOW.replace(
        "    - name: load\n",
        "    - &base\n      name: other\n      command: [a]\n    - <<: *base\n      name: load\n",
    )
    path = write(tmp_path, "a.yaml", text)
    located, problems = load_documents([path])
    assert problems == []
    assert isinstance(located[0].resource, WorkflowTemplate)
    steps = located[0].resource.spec.steps
    assert [(s.name, s.command) for s in steps] == [
        ("extract", ["python", "-m", "extract"]),
        ("other", ["a"]),
        ("load", ["python"]),
    ]


def test_unsupported_tags_are_problems(tmp_path: Path) -> None:
    """Python object tags and custom tags are refused with their line."""
    path = write(tmp_path, "a.yaml", "a: 1\nb: !!python/name:os.system x\n---\n!custom {a: 1}\n")
    assert problems_of(path) == [
        f"{path}:2: -: YAML tag 'tag:yaml.org,2002:python/name:os.system' is not supported;"
        " write plain scalars, mappings and lists",
        f"{path}:4: -: YAML tag '!custom' is not supported; write plain scalars, mappings"
        " and lists",
    ]


def test_recursive_alias_is_a_problem(tmp_path: Path) -> None:
    """An alias inside its own anchor is refused instead of looping."""
    path = write(tmp_path, "a.yaml", "a: &x\n  - *x\n")
    assert problems_of(path) == [
        f"{path}:1: -: a YAML alias refers to the node that contains it; resources cannot be"
        " recursive"
    ]


def test_complex_key_is_a_problem(tmp_path: Path) -> None:
    """A list used as a mapping key is refused."""
    path = write(tmp_path, "a.yaml", "? [a, b]\n: 1\n")
    assert problems_of(path) == [
        f"{path}:1: -: a mapping key must be a plain scalar, not a list or mapping"
    ]


def test_dotted_and_show_format_paths_and_values() -> None:
    """Paths use dots and brackets; values are shown as YAML-ish text, long ones cut."""
    assert dotted(()) == ""
    assert dotted(("spec", "steps", 1, "retries", "limit")) == "spec.steps[1].retries.limit"
    assert [show(v) for v in ("a", 1, 1.5, True, None, [1], {"a": 1})] == [
        "'a'",
        "1",
        "1.5",
        "true",
        "null",
        "[1]",
        '{"a": 1}',
    ]
    assert show("x" * 100) == "'" + "x" * 56 + "..."


def test_located_is_generic_over_the_model(tmp_path: Path) -> None:
    """Located carries where the document was written."""
    located, _ = load_documents([write(tmp_path, "etl.yaml", WORKFLOW)])
    document: Located[WorkflowTemplate] = located[0]  # type: ignore[assignment]
    assert document.where == f"{tmp_path / 'etl.yaml'}:1"
