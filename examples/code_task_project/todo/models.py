"""Todo items and the list that holds them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime


class TodoNotFound(KeyError):
    """No item with that number."""


@dataclass
class Todo:
    """One item of the list."""

    id: int
    title: str
    done: bool = False
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "title": self.title,
            "done": self.done,
            "created_at": self.created_at.isoformat(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Todo:
        return cls(
            id=int(str(data["id"])),
            title=str(data["title"]),
            done=bool(data.get("done", False)),
            created_at=datetime.fromisoformat(str(data["created_at"])),
        )


@dataclass
class TodoList:
    """Items in the order they were added; numbers are never reused."""

    items: list[Todo] = field(default_factory=list)
    next_id: int = 1

    def add(self, title: str) -> Todo:
        title = title.strip()
        if not title:
            raise ValueError("a todo needs a title")
        item = Todo(id=self.next_id, title=title)
        self.items.append(item)
        self.next_id += 1
        return item

    def get(self, item_id: int) -> Todo:
        for item in self.items:
            if item.id == item_id:
                return item
        raise TodoNotFound(item_id)

    def complete(self, item_id: int) -> Todo:
        item = self.get(item_id)
        item.done = True
        return item

    def remove(self, item_id: int) -> Todo:
        item = self.get(item_id)
        self.items.remove(item)
        return item

    def pending(self) -> list[Todo]:
        return [item for item in self.items if not item.done]

    def completed(self) -> list[Todo]:
        return [item for item in self.items if item.done]
