"""Loading resource files: multi-document YAML -> validated models, each located by file:line.

Reads `*.yaml` / `*.yml` files (a directory is walked recursively, hidden entries skipped),
composes YAML nodes so every mapping key and sequence item keeps its line, builds plain
data with SafeLoader semantics, and validates each document with its model. Every problem
found becomes a `Problem`; one bad file or document never hides the others.

It does not check what spans documents (names that refer to each other, DAG cycles,
expressions): that is `validation.py`. Apart from reading the files it does no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from eventflow.errors import Problem
from eventflow.resources.describing import FieldPath, describe_errors, dotted, show
from eventflow.resources.models import API_VERSION, KINDS, Resource

R = TypeVar("R", bound=BaseModel)

SUFFIXES = (".yaml", ".yml")  # also what the file watcher (watching.py) looks at
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass(frozen=True, slots=True)
class _Lines:
    """The line of one node, and of the nodes under it by key or index."""

    line: int
    children: dict[Any, _Lines] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Located(Generic[R]):
    """A validated resource and where it was written."""

    resource: R
    file: str
    line: int
    _lines: _Lines = field(repr=False, compare=False)

    def line_of(self, path: FieldPath) -> int:
        """Line of the field at `path`, or of its nearest parent that has one."""
        return _line_of(self._lines, path)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def _line_of(lines: _Lines, path: FieldPath) -> int:
    for part in path:
        child = lines.children.get(part)
        if child is None:
            break
        lines = child
    return lines.line


def resource_label(data: Any) -> str:
    """'Kind/name' of a document as far as it can be read; '-' for an unknown kind."""
    if not isinstance(data, dict) or not isinstance(data.get("kind"), str):
        return "-"
    if data["kind"] not in KINDS:
        return "-"
    metadata = data.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return f"{data['kind']}/{name if isinstance(name, str) and name else '-'}"


def load_documents(paths: Sequence[Path]) -> tuple[list[Located[Resource]], list[Problem]]:
    """Read every resource file under `paths`; return the valid documents and all problems."""
    located: list[Located[Resource]] = []
    problems: list[Problem] = []
    for file in _files(paths, problems):
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            problems.append(Problem(str(file), 1, "-", "", f"cannot read the file: {error}"))
            continue
        for data, lines in _parse(text, str(file), problems):
            document = _validate(data, lines, str(file), problems)
            if document is not None:
                located.append(document)
    return located, problems


def _files(paths: Sequence[Path], problems: list[Problem]) -> Iterator[Path]:
    seen: set[Path] = set()
    for path in paths:
        if path.is_dir():
            found = sorted(
                candidate
                for candidate in path.rglob("*")
                if candidate.suffix in SUFFIXES
                and candidate.is_file()
                and not any(part.startswith(".") for part in candidate.relative_to(path).parts)
            )
        elif path.exists():
            found = [path]
        else:
            problems.append(
                Problem(
                    str(path),
                    1,
                    "-",
                    "",
                    "no such file or directory; give a *.yaml file or a directory of them",
                )
            )
            continue
        for file in found:
            if file.resolve() not in seen:
                seen.add(file.resolve())
                yield file


class _NodeError(Exception):
    """A node that cannot become plain data; carries its line."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def _parse(text: str, file: str, problems: list[Problem]) -> Iterator[tuple[Any, _Lines]]:
    """Yield (data, lines) per non-empty document; a syntax error ends the file."""
    # The constructor of a separate loader turns scalar nodes into values with SafeLoader
    # semantics; mappings and sequences are built here so each key keeps its line.
    builder = _Builder(yaml.SafeLoader(""))
    try:
        for node in yaml.compose_all(text, Loader=yaml.SafeLoader):
            if node is None:
                continue
            try:
                data, lines = builder.document(node)
            except _NodeError as error:
                problems.append(Problem(file, error.line, "-", "", error.message))
                continue
            label = resource_label(data)
            problems.extend(
                Problem(file, line, label, path, message)
                for line, path, message in builder.duplicates
            )
            if data is not None:
                yield data, lines
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark is not None else 1
        column = f" (column {mark.column + 1})" if mark is not None else ""
        problems.append(Problem(file, line, "-", "", f"invalid YAML: {error.problem}{column}"))
    except yaml.YAMLError as error:
        problems.append(Problem(file, 1, "-", "", f"invalid YAML: {error}"))


class _Builder:
    """Plain data and line trees from composed nodes of one file."""

    def __init__(self, constructor: yaml.SafeLoader) -> None:
        self._constructor = constructor
        self.duplicates: list[tuple[int, str, str]] = []  # (line, path, message) in a document
        self._done: dict[int, tuple[Any, _Lines]] = {}  # aliases share one build
        self._active: set[int] = set()

    def document(self, root: yaml.Node) -> tuple[Any, _Lines]:
        # Anchors do not cross documents, and node ids may be reused once a document is freed.
        self._done.clear()
        self.duplicates.clear()
        return self.build(root, ())

    def build(self, node: yaml.Node, path: FieldPath) -> tuple[Any, _Lines]:
        key = id(node)
        if key in self._done:
            return self._done[key]
        line = node.start_mark.line + 1
        if key in self._active:
            raise _NodeError(
                line,
                "a YAML alias refers to the node that contains it; resources cannot be recursive",
            )
        self._active.add(key)
        try:
            if isinstance(node, yaml.MappingNode):
                built = self._mapping(node, line, path)
            elif isinstance(node, yaml.SequenceNode):
                built = self._sequence(node, line, path)
            else:
                built = (self._scalar(node, line), _Lines(line))
        finally:
            self._active.discard(key)
        self._done[key] = built
        return built

    def _scalar(self, node: yaml.Node, line: int) -> Any:
        try:
            return self._constructor.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as error:
            raise _NodeError(
                line,
                f"YAML tag {node.tag!r} is not supported; write plain scalars, mappings and lists",
            ) from error

    def _sequence(self, node: yaml.SequenceNode, line: int, path: FieldPath) -> tuple[Any, _Lines]:
        self._plain(node, _SEQ_TAG, line)
        items, lines = [], _Lines(line)
        for index, child in enumerate(node.value):
            value, child_lines = self.build(child, (*path, index))
            items.append(value)
            lines.children[index] = child_lines
        return items, lines

    def _mapping(self, node: yaml.MappingNode, line: int, path: FieldPath) -> tuple[Any, _Lines]:
        self._plain(node, _MAP_TAG, line)
        first_lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self._key(key_node)
            key_line = key_node.start_mark.line + 1
            if key in first_lines:
                self.duplicates.append(
                    (
                        key_line,
                        dotted((*path, key)),
                        f"duplicate key {show(key)} (first on line {first_lines[key]});"
                        " YAML keeps only the last, remove one",
                    )
                )
            else:
                first_lines[key] = key_line
        # flatten_mapping applies `<<` merge keys as SafeLoader does; own keys come last.
        try:
            self._constructor.flatten_mapping(node)
        except yaml.constructor.ConstructorError as error:
            raise _NodeError(
                line, "a YAML merge key '<<' must name a mapping or a list of mappings"
            ) from error
        result: dict[Any, Any] = {}
        lines = _Lines(line)
        for key_node, value_node in node.value:
            key = self._key(key_node)
            value, value_lines = self.build(value_node, (*path, key))
            result[key] = value
            lines.children[key] = _Lines(key_node.start_mark.line + 1, value_lines.children)
        return result, lines

    def _key(self, node: yaml.Node) -> Any:
        line = node.start_mark.line + 1
        if not isinstance(node, yaml.ScalarNode):
            raise _NodeError(line, "a mapping key must be a plain scalar, not a list or mapping")
        return self._scalar(node, line)

    @staticmethod
    def _plain(node: yaml.Node, tag: str, line: int) -> None:
        if node.tag != tag:
            raise _NodeError(
                line,
                f"YAML tag {node.tag!r} is not supported; write plain scalars, mappings and lists",
            )


def _validate(
    data: Any, lines: _Lines, file: str, problems: list[Problem]
) -> Located[Resource] | None:
    label = resource_label(data)
    if not isinstance(data, dict):
        problems.append(
            Problem(
                file,
                lines.line,
                "-",
                "",
                "a resource is a mapping with"
                f" apiVersion, kind, metadata and spec; got {show(data)}",
            )
        )
        return None
    fatal = False
    if data.get("apiVersion") != API_VERSION:
        fatal = True
        got = f"got {show(data['apiVersion'])}" if "apiVersion" in data else "it is missing"
        problems.append(
            Problem(
                file,
                _line_of(lines, ("apiVersion",)),
                label,
                "apiVersion",
                f"must be {API_VERSION}; {got}",
            )
        )
    kind = data.get("kind")
    model = KINDS.get(kind) if isinstance(kind, str) else None
    if model is None:
        fatal = True
        got = f"got {show(kind)}" if "kind" in data else "it is missing"
        problems.append(
            Problem(
                file,
                _line_of(lines, ("kind",)),
                label,
                "kind",
                f"must be one of {', '.join(KINDS)}; {got}",
            )
        )
    if fatal or model is None:
        return None
    try:
        resource = model.model_validate(data)
    except ValidationError as error:
        for path, message in describe_errors(error, model, data):
            problems.append(Problem(file, _line_of(lines, path), label, dotted(path), message))
        return None
    return Located(resource, file, lines.line, lines)
