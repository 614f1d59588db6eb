"""The command line: `python -m todo.cli add|done|rm|list`."""

from __future__ import annotations

import argparse
import sys

from todo.models import Todo, TodoNotFound
from todo.storage import data_path, load, save


def format_item(item: Todo) -> str:
    mark = "x" if item.done else " "
    return f"[{mark}] #{item.id} {item.title}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="todo", description="A small todo list.")
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="add an item")
    add.add_argument("title")
    done = commands.add_parser("done", help="mark an item as done")
    done.add_argument("id", type=int)
    remove = commands.add_parser("rm", help="remove an item")
    remove.add_argument("id", type=int)
    listing = commands.add_parser("list", help="show the items")
    listing.add_argument("--all", action="store_true", help="include completed items")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    path = data_path()
    todos = load(path)
    try:
        if args.command == "add":
            item = todos.add(args.title)
            print(f"added #{item.id}: {item.title}")
        elif args.command == "done":
            print(f"completed #{todos.complete(args.id).id}")
        elif args.command == "rm":
            print(f"removed #{todos.remove(args.id).id}")
        else:
            for item in todos.items if args.all else todos.pending():
                print(format_item(item))
            return 0
    except TodoNotFound:
        print(f"no item #{args.id}", file=sys.stderr)
        return 1
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    save(todos, path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
