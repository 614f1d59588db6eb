"""A small todo list: items, a list of them, and JSON storage."""

from todo.models import Todo, TodoList

__all__ = ["Todo", "TodoList"]
