"""Tools for the example pipelines: how a user's own tools look.

Load them with `STEPFLOW_TOOL_MODULES=examples.tools` (`make demo` does).
They work offline and deterministically, so the demo needs no network:

- `list_notes`, `search_notes`: a tiny search engine over the Markdown notes in
  `examples/notes/` (research_report.yaml).
- `copy_sample_project`, `read_files`, `read_source`, `check_python`: a sample
  project copied into the workspace, read, and a changed file checked without
  running it (code_task.yaml).
- `slugify`: a file-name-safe name for a title.
- `find_keywords`, `first_of`: which words a text mentions, to branch on, and the
  value of the branch that ran, to join them again (triage.yaml).
- `checksum_files`: the pattern for a long tool: it heartbeats its progress and a
  retry resumes from there.

File paths are relative to the workspace (`STEPFLOW_WORKSPACE`) and go through
the built-in file tools, so they cannot leave it. Only the notes and the sample
project are read from this package's folder, never from a path a model gives.
"""

from __future__ import annotations

import ast
import hashlib
import re
import warnings
from functools import cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field

from stepflow import ToolError, tool, tool_context
from stepflow.activities.builtin.files import read_file, resolve_in_workspace, write_file

EXAMPLES = Path(__file__).resolve().parent
NOTES = EXAMPLES / "notes"
SAMPLE_PROJECT = EXAMPLES / "code_task_project"

EXCERPT_CHARS = 600
"""Characters of a section in a search hit: enough to cite, small enough for a prompt."""
MAX_FILES = 50

_WORD = re.compile(r"[a-z0-9]+")
_STOPWORDS = frozenset(
    "a an and are as at be by can do does for from has have how in is it its of on or that the "
    "their them then there these this to was what when where which who why will with".split()
)


# ---------------------------------------------------------------------------
# Research notes


class NoteInfo(BaseModel):
    note: str = Field(description="File name of the note, to cite and to search in.")
    title: str
    sections: list[str] = Field(description="The note's section headings.")


class NoteHit(BaseModel):
    note: str = Field(description="File name of the note, to cite.")
    title: str
    section: str
    excerpt: str
    score: int = Field(description="How many query terms the section matched (higher is better).")


class _Section(BaseModel):
    note: str
    title: str
    heading: str
    text: str


def _terms(text: str) -> list[str]:
    """Lowercase words without stop words, crudely singularised ("retries" -> "retry")."""
    terms = []
    for word in _WORD.findall(text.lower()):
        if len(word) < 3 or word in _STOPWORDS:
            continue
        if word.endswith("ies") and len(word) > 4:
            word = word[:-3] + "y"
        elif word.endswith("s") and not word.endswith("ss") and len(word) > 3:
            word = word[:-1]
        terms.append(word)
    return terms


@cache
def _sections() -> tuple[_Section, ...]:
    """Every `## ` section of every note (the notes ship with the code and never change)."""
    found: list[_Section] = []
    for path in sorted(NOTES.glob("*.md")):
        title, heading = path.stem, ""
        lines: list[str] = []
        blocks: list[tuple[str, list[str]]] = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("# "):
                title = line[2:].strip()
            elif line.startswith("## "):
                if heading or lines:
                    blocks.append((heading, lines))
                heading, lines = line[3:].strip(), []
            else:
                lines.append(line)
        blocks.append((heading, lines))
        for head, body in blocks:
            text = " ".join(" ".join(body).split())
            if text:
                found.append(_Section(note=path.name, title=title, heading=head, text=text))
    return tuple(found)


def _excerpt(text: str) -> str:
    if len(text) <= EXCERPT_CHARS:
        return text
    return text[:EXCERPT_CHARS].rsplit(" ", 1)[0] + " ..."


@tool
def list_notes() -> list[NoteInfo]:
    """List the research notes available to search_notes: file name, title and section headings.

    Returns:
        One entry per note, sorted by file name.
    """
    notes: dict[str, NoteInfo] = {}
    for section in _sections():
        info = notes.setdefault(
            section.note, NoteInfo(note=section.note, title=section.title, sections=[])
        )
        if section.heading:
            info.sections.append(section.heading)
    return list(notes.values())


@tool
def search_notes(
    query: Annotated[str, Field(description="What to look for, in plain words.")],
    limit: Annotated[int, Field(ge=1, le=10, description="Most passages to return.")] = 3,
) -> list[NoteHit]:
    """Search the team's research notes and return the best-matching passages.

    Scores each note section by how many distinct query terms it contains (a
    match in the title or heading counts double). Use several short searches
    with different wording rather than one long one.

    Args:
        query: What to look for, e.g. "retry backoff for rate limits".
        limit: The most passages to return (1-10).

    Returns:
        Passages, best first, each with the note's file name to cite; empty if none matches.
    """
    wanted = set(_terms(query))
    if not wanted:
        raise ToolError(
            f"the query {query!r} has no searchable words; use a few content words",
            non_retryable=True,
        )
    hits: list[NoteHit] = []
    for section in _sections():
        body = set(_terms(section.text))
        heading = set(_terms(f"{section.title} {section.heading}"))
        score = sum(2 if term in heading else 1 for term in wanted if term in body | heading)
        if score:
            hits.append(
                NoteHit(
                    note=section.note,
                    title=section.title,
                    section=section.heading,
                    excerpt=_excerpt(section.text),
                    score=score,
                )
            )
    hits.sort(key=lambda hit: (-hit.score, hit.note, hit.section))
    return hits[:limit]


@tool
def slugify(text: str) -> str:
    """Turn a title into a file-name-safe slug."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "untitled"


# ---------------------------------------------------------------------------
# Triage: branch on a text, join the branches


@tool
def find_keywords(
    text: Annotated[str, Field(description="The text to look in.")],
    keywords: Annotated[
        list[str], Field(max_length=100, description="Words or phrases to look for.")
    ],
) -> list[str]:
    """The keywords that occur in a text, as whole words (any case), in the order given.

    Args:
        text: The text to look in.
        keywords: Words or phrases, e.g. `["outage", "data loss"]`.

    Returns:
        Those found; empty if none is.
    """
    words = " ".join(_WORD.findall(text.lower()))
    found = []
    for keyword in keywords:
        phrase = " ".join(_WORD.findall(keyword.lower()))
        if phrase and re.search(rf"(?<!\S){re.escape(phrase)}(?!\S)", words):
            found.append(keyword)
    return found


@tool
def first_of(
    values: Annotated[list[Any], Field(description="Candidates, in order of preference.")],
) -> Any:
    """The first value that is not null: joins the branches of an if/else.

    Give it the outputs of the branches, e.g. `["{{ steps.a.output }}", "{{ steps.b.output }}"]`
    in a step with `trigger: none_failed`: a branch that was skipped reads as null.

    Args:
        values: Candidates, in order of preference.

    Returns:
        The first of them that is not null.
    """
    for value in values:
        if value is not None:
            return value
    raise ToolError("every value is null: no branch gave an output", non_retryable=True)


# ---------------------------------------------------------------------------
# The code task


class ProjectCopy(BaseModel):
    root: str = Field(description="The project's folder, relative to the workspace.")
    paths: list[str] = Field(description="Every file copied, relative to the workspace.")


class SourceFile(BaseModel):
    path: str = Field(description="Relative to the workspace.")
    exists: bool
    lines: int
    content: str = Field(description="The file's text; empty if it does not exist yet.")


class PythonCheck(BaseModel):
    path: str
    compiles: bool = Field(description="Whether the file compiles to bytecode.")
    errors: list[str] = Field(description="Syntax errors, as `line N: message`.")
    warnings: list[str] = Field(description="Compiler warnings (e.g. invalid escape sequences).")
    lines: int
    definitions: list[str] = Field(description="Top-level classes and functions, in order.")


def _sample_files() -> list[Path]:
    return sorted(
        p
        for p in SAMPLE_PROJECT.rglob("*")
        if p.is_file()
        and "__pycache__" not in p.parts
        and not any(part.startswith(".") for part in p.relative_to(SAMPLE_PROJECT).parts)
    )


@tool
def copy_sample_project(
    dest: Annotated[
        str, Field(description="Folder in the workspace to copy the project into.")
    ] = "todo-app",
) -> ProjectCopy:
    """Copy the bundled sample project (a small todo-list app) into the workspace.

    Files already there are overwritten, so every run starts from the same code.

    Args:
        dest: Folder relative to the workspace, e.g. `todo-app`.

    Returns:
        The folder and the workspace paths of the copied files.
    """
    root = dest.strip().strip("/")
    if not root:
        raise ToolError(
            "dest is empty: give a folder relative to the workspace", non_retryable=True
        )
    paths = []
    for source in _sample_files():
        relative = f"{root}/{source.relative_to(SAMPLE_PROJECT).as_posix()}"
        written = write_file(relative, source.read_text(encoding="utf-8"))
        paths.append(str(written["path"]))
    return ProjectCopy(root=root, paths=paths)


@tool
def read_files(
    paths: Annotated[
        list[str],
        Field(min_length=1, max_length=MAX_FILES, description="File paths in the workspace."),
    ],
) -> dict[str, str]:
    """Read several text files from the workspace at once.

    A file that cannot be read gets `error: <why>` as its text instead of
    failing the whole call.

    Args:
        paths: File paths relative to the workspace.

    Returns:
        Each path's text, by path.
    """
    contents: dict[str, str] = {}
    for path in paths:
        try:
            contents[path] = read_file(path)
        except ToolError as err:
            contents[path] = f"error: {err}"
    return contents


@tool
def read_source(
    path: Annotated[str, Field(description="File path relative to the workspace.")],
) -> SourceFile:
    """Read a source file that is about to be changed; a file not written yet reads as empty.

    Args:
        path: File path relative to the workspace.

    Returns:
        The path, whether the file exists, its line count and its text.
    """
    target = resolve_in_workspace(path)  # refuses paths outside the workspace
    if not target.exists():
        return SourceFile(path=path, exists=False, lines=0, content="")
    content = read_file(path)
    return SourceFile(path=path, exists=True, lines=len(content.splitlines()), content=content)


@tool
def check_python(
    path: Annotated[str, Field(description="Python file path relative to the workspace.")],
) -> PythonCheck:
    """Check that a Python file compiles, without running it.

    The file is compiled to bytecode with `compile()` (syntax errors and
    compiler warnings are reported); nothing in it is imported or executed.

    Args:
        path: Python file path relative to the workspace.

    Returns:
        Whether it compiles, the errors and warnings, its line count and top-level definitions.
    """
    source = read_file(path)
    errors: list[str] = []
    definitions: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            tree = ast.parse(source, filename=path)
            compile(tree, path, "exec", dont_inherit=True)
        except SyntaxError as err:  # IndentationError and TabError too
            errors.append(f"line {err.lineno or 0}: {err.msg}")
        except ValueError as err:  # e.g. NUL bytes in the source
            errors.append(f"line 0: {err}")
        else:
            definitions = [
                node.name
                for node in tree.body
                if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            ]
    return PythonCheck(
        path=path,
        compiles=not errors,
        errors=errors,
        warnings=[f"line {w.lineno}: {w.message}" for w in caught],
        lines=len(source.splitlines()),
        definitions=definitions,
    )


# ---------------------------------------------------------------------------
# A long tool that resumes


@tool
def checksum_files(
    paths: Annotated[
        list[str],
        Field(max_length=1000, description="Files relative to the workspace, in order."),
    ],
) -> dict[str, str]:
    """SHA-256 of each file (hex), by path: a long tool that picks up where it was.

    After each file it heartbeats the digests so far. If the worker dies, or a
    read fails, the retry starts from the last heartbeat the server received,
    not from the first file; the result is the same either way. Give the step a
    `timeout: {heartbeat: 30s}` so a dead worker's attempt is retried after 30 s.

    Args:
        paths: Files relative to the workspace, in order.

    Returns:
        Each path's SHA-256 digest.
    """
    ctx = tool_context()
    done: dict[str, str] = dict(ctx.last_heartbeat({}))
    for path in paths:
        if path in done:
            continue  # an earlier attempt did it and said so
        target = resolve_in_workspace(path)  # refuses paths outside the workspace
        if not target.is_file():
            raise ToolError(f"no file {path!r} in the workspace", non_retryable=True)
        digest = hashlib.sha256()
        with target.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        done[path] = digest.hexdigest()
        ctx.heartbeat(dict(done))  # a copy: details are encoded after this returns
    return {path: done[path] for path in paths}
