"""Loading and saving a todo list as JSON."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from todo.models import Todo, TodoList

DEFAULT_PATH = Path.home() / ".todo.json"


def data_path() -> Path:
    """Where the list lives: `TODO_FILE`, else `~/.todo.json`."""
    return Path(os.environ.get("TODO_FILE", DEFAULT_PATH))


def load(path: Path) -> TodoList:
    """The list saved at `path`; an empty list if there is no file yet."""
    if not path.exists():
        return TodoList()
    data = json.loads(path.read_text(encoding="utf-8"))
    items = [Todo.from_dict(raw) for raw in data.get("items", [])]
    next_id = int(data.get("next_id", max((i.id for i in items), default=0) + 1))
    return TodoList(items=items, next_id=next_id)


def save(todos: TodoList, path: Path) -> None:
    """Write the list atomically: a crash leaves the old file or the new one, never half."""
    payload = {"next_id": todos.next_id, "items": [item.to_dict() for item in todos.items]}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2)
    os.replace(tmp, path)
