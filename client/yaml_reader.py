"""Reading a pipeline file's YAML strictly and within bounds.

PyYAML's safe loader accepts things a pipeline file should never contain, and
some of them cost far more than a file's size suggests:

- a key written twice keeps the last value silently (a typo that hides a step's setting);
- nesting a few thousand levels deep ends in a `RecursionError` traceback;
- aliases ("billion laughs") expand a few hundred bytes into billions of nodes, which
  validation then walks for minutes;
- bytes that are not UTF-8 end in a `UnicodeDecodeError` traceback.

Each of these is refused here with one line naming the place, before anything is
built from the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_FILE_BYTES = 10 * 1024 * 1024
"""A pipeline file is a few KB; a 10 MB one is a mistake (a data file passed by accident)."""

MAX_DEPTH = 100
"""Nesting levels of mappings and lists; pipelines use about 10."""

MAX_NODES = 200_000
"""Scalars, lists and mappings after every alias is expanded; a 5,000-step file has about 50,000."""


class YamlProblem(ValueError):
    """The file cannot be read as a pipeline's YAML; the message says where and why."""


def read_yaml_file(path: Path) -> Any:
    """The parsed content of a YAML (or JSON) file, refused with one line when it is unsafe.

    Raises:
        OSError: the file cannot be read.
        YamlProblem: not UTF-8, not YAML, a duplicate key, too deep, or too large once expanded.
    """
    with path.open("rb") as file:
        data = file.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise YamlProblem(f"is over {MAX_FILE_BYTES // (1024 * 1024)} MB: not a pipeline file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise YamlProblem(
            f"is not UTF-8 text (byte 0x{data[err.start]:02x} on line {line}): save it as UTF-8"
        ) from None
    return parse_yaml(text)


def parse_yaml(text: str) -> Any:
    """Parse YAML text with the checks of `read_yaml_file`.

    Raises:
        YamlProblem: not YAML, a duplicate key, too deep, or too large once expanded.
    """
    try:
        loader = _StrictLoader(text)  # its reader refuses control characters already
    except yaml.YAMLError as err:
        raise YamlProblem(_describe(err)) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expanded_size(node)
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        raise YamlProblem(_describe(err)) from None
    finally:
        loader.dispose()


class _StrictLoader(yaml.SafeLoader):
    """The safe loader, refusing duplicate keys and deep nesting while it composes."""

    _depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.MarkedYAMLError(
                    problem=f"nested more than {MAX_DEPTH} levels deep", problem_mark=mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults` merges on purpose
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader says so below
                continue
            if first is not None:
                raise yaml.MarkedYAMLError(
                    problem=f"the key {key!r} is written twice (first at line "
                    f"{first.start_mark.line + 1}); the second would silently win",
                    problem_mark=key_node.start_mark,
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def _check_expanded_size(root: Node) -> None:
    """Refuse a document whose aliases expand it past `MAX_NODES`, before it is built.

    Aliases share one node in the composed graph, so sizes are counted once per
    node and added up per reference: linear in the file, whatever it expands to.
    """
    sizes: dict[int, int] = {}
    entered: set[int] = set()
    pending: list[tuple[Node, bool]] = [(root, False)]
    while pending:
        node, children_done = pending.pop()
        if id(node) in sizes:
            continue
        if not children_done:
            if id(node) in entered:  # an alias inside its own anchor
                raise yaml.MarkedYAMLError(
                    problem="an alias refers to the value that contains it",
                    problem_mark=node.start_mark,
                )
            entered.add(id(node))
        if isinstance(node, ScalarNode):
            sizes[id(node)] = 1
            continue
        children: list[Node] = (
            [part for pair in node.value for part in pair]
            if isinstance(node, MappingNode)
            else list(node.value)
            if isinstance(node, SequenceNode)
            else []
        )
        if children_done:
            size = 1 + sum(sizes.get(id(child), 0) for child in children)
            if size > MAX_NODES:
                raise yaml.MarkedYAMLError(
                    problem=f"expands to more than {MAX_NODES:,} values through its aliases "
                    "(&anchor / *alias)",
                    problem_mark=node.start_mark,
                )
            sizes[id(node)] = size
            continue
        pending.append((node, True))
        pending.extend((child, False) for child in children if id(child) not in sizes)


def _describe(err: yaml.YAMLError) -> str:
    """One line: PyYAML's messages span several, with the offending text quoted."""
    if isinstance(err, yaml.reader.ReaderError):
        character = err.character if isinstance(err.character, int) else 0
        return (
            f"holds a character YAML does not allow (#x{character:04x}) at position "
            f"{err.position}: {err.reason}"
        )
    where = ""
    mark = getattr(err, "problem_mark", None)
    if mark is not None:
        where = f" at line {mark.line + 1}, column {mark.column + 1}"
    problem = getattr(err, "problem", None) or str(err)
    return f"is not valid YAML{where}: {' '.join(str(problem).split())}"
