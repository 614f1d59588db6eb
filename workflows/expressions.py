"""`when:` and `until:` expressions: `steps.review.output.verdict == 'approve'`.

A step runs only if its `when:` is true; a loop step stops once its `until:` is.
They are Jinja2 expressions (what Ansible users write in `when:`), read and run
by Jinja's sandbox: comparisons, `and`/`or`/`not`, `in`, filters and tests over
the values in scope (`inputs`, `steps`, and `item`/`index` in a fan-out,
`loop` in a loop step). Nothing else is reachable: no attribute starting with
`_`, no method that changes a value, no import.

The expressions run in workflow code, so evaluating one must give the same value
on every replay: the environment below has nothing random or clock-based, and
the functions here do no I/O. Pure functions: imported in the workflow sandbox.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import jinja2
from jinja2 import nodes
from jinja2.environment import TemplateExpression
from jinja2.lexer import describe_token
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

_N = TypeVar("_N", bound=nodes.Node)


class ExpressionError(ValueError):
    """An expression that does not parse, or that fails when evaluated.

    The message says which expression and why, on one line: it reaches the
    author through `stepflow validate` or a failed step.
    """


@dataclass(frozen=True)
class ExpressionNames:
    """What an expression reads, for `stepflow validate` to check against the spec.

    Step ids and input names are those read with a constant name (`steps.plan`,
    `steps['plan']`); one read through a computed key (`steps[item]`) is not
    known before the run, and is in `roots` only.
    """

    roots: frozenset[str]  # top-level variables the expression reads: e.g. {"steps", "inputs"}
    steps: frozenset[str]  # step ids read through steps.X or steps['X']
    inputs: frozenset[str]  # input names read through inputs.X or inputs['X']


class _Environment(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, with two changes for conditions over data.

    Jinja's sandbox answers `inputs.__class__` or `inputs.tags.append` with an
    undefined value, which a condition reads as false: a `when:` that can never
    be true, silently. Here it raises instead (`unsafe_undefined`), so the
    author learns what went wrong. And a key wins over a dict method (`getattr`).
    """

    def getattr(self, obj: Any, attribute: str) -> Any:
        """`obj.name`, reading a mapping's key before its methods.

        Jinja prefers the attribute, so a step called `items` or an input called
        `keys` would read as the dict's method and `steps.items.output` as
        undefined. In Stepflow's data `steps.X` and `inputs.X` name a step or an
        input; methods of a dict stay reachable when no key has their name.
        """
        if isinstance(obj, Mapping) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        raise SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe"
        )


def _environment() -> _Environment:
    # ChainableUndefined: `steps.x.output.verdict` reads as undefined (false in a
    # condition) when x was skipped, its output is None or has no `verdict`,
    # instead of failing the run over a field a step did not produce.
    env = _Environment(undefined=jinja2.ChainableUndefined)
    # Everything non-deterministic goes: a replay must take the same branch.
    # Of Jinja's default filters, tests and globals, only these two are: `random`
    # picks an item with the `random` module, `lipsum` writes random text. No
    # filter, test or global reads the clock.
    del env.filters["random"]
    del env.globals["lipsum"]
    # Kept: `cycler`, `joiner` and `namespace` hold state, but only inside the
    # one object an expression makes and drops when it ends; the globals are
    # the classes, so no state is shared between evaluations or carried into
    # a replay. `range` stays too: the sandbox caps it at MAX_RANGE items.
    return env


_ENV = _environment()
"""The one environment every expression is parsed and run in; built once at import."""


def _walk(expr: nodes.Node, kinds: type[_N] | tuple[type[_N], ...]) -> Iterator[_N]:
    """The nodes of these kinds in the tree, `expr` itself included (`find_all` leaves it out)."""
    if isinstance(expr, kinds):
        yield expr
    yield from expr.find_all(kinds)


def _one_line(text: str) -> str:
    """`text` on one line, shortened: for quoting an expression in a message."""
    flat = " ".join(text.split())
    return flat if len(flat) <= 120 else flat[:117] + "..."


def _fail(text: str, reason: str) -> NoReturn:
    reason = " ".join(reason.split())  # an exception's message may span lines
    raise ExpressionError(f'expression "{_one_line(text)}": {reason}') from None


def _syntax_message(error: jinja2.TemplateSyntaxError) -> str:
    """Jinja's message, one line, speaking of the expression rather than a template."""
    message = (error.message or str(error)).splitlines()[0].rstrip(".")
    for jinja_words in ("'end of template'", "end of template", "'end of print statement'"):
        message = message.replace(jinja_words, "end of expression")
    return message


def _parse(text: str) -> nodes.Expr:
    """The expression's syntax tree; ExpressionError unless `text` is exactly one expression.

    Parsed the way `compile_expression` parses it (the lexer starts inside
    `{{ }}`), so whatever passes here is what `evaluate` runs. Text left over
    after the expression, as in `a }} {{ b` (an attempt to leave the `{{ }}`),
    `a b` or `a {# #}`, is an error rather than ignored.
    """
    if not text.strip():
        _fail(text, "empty expression")
    try:
        parser = Parser(_ENV, text, state="variable")
        expr = parser.parse_expression()
        if not parser.stream.eos:
            token = parser.stream.current
            shown = str(token.value) if token.value not in (None, "") else None
            what = repr(shown) if shown else describe_token(token)
            _fail(text, f"unexpected {what} after the expression")
    except jinja2.TemplateSyntaxError as error:
        _fail(text, _syntax_message(error))
    # Compiling finds most unknown filters and tests, but one under `if` only
    # fails when that branch runs: found here for every branch.
    for node in _walk(expr, (nodes.Filter, nodes.Test)):
        if isinstance(node, nodes.Filter) and node.name not in _ENV.filters:
            _fail(text, f"no filter named {node.name!r}")
        if isinstance(node, nodes.Test) and node.name not in _ENV.tests:
            _fail(text, f"no test named {node.name!r}")
    return expr


@functools.lru_cache(maxsize=1024)
def _compile(text: str) -> TemplateExpression:
    """`text` compiled once: a fan-out evaluates the same `when:` for every item."""
    _parse(text)
    try:
        return _ENV.compile_expression(text)
    except jinja2.TemplateSyntaxError as error:
        _fail(text, _syntax_message(error))


def _names_read(expr: nodes.Expr, root: str) -> Iterator[str]:
    """Names read off `root` with a constant name: `root.X` and `root['X']`.

    Not a method called on it: `inputs.items()` reads no input called `items`.
    """
    called = {id(call.node) for call in _walk(expr, nodes.Call)}
    for attr in _walk(expr, nodes.Getattr):
        if _is_name(attr.node, root) and id(attr) not in called:
            yield attr.attr
    for item in _walk(expr, nodes.Getitem):
        if _is_name(item.node, root) and isinstance(item.arg, nodes.Const):
            if isinstance(item.arg.value, str):
                yield item.arg.value


def _is_name(node: nodes.Node, name: str) -> bool:
    return isinstance(node, nodes.Name) and node.name == name


def check_expression(text: str) -> ExpressionNames:
    """Parse `text` and report the names it reads.

    An expression that does not parse raises ExpressionError with a short
    one-line message.

    For `stepflow validate`: an expression that cannot run, or that reads a
    step or an input the pipeline does not have, is refused before any run
    starts rather than found false (or failing) halfway through one.
    """
    _compile(text)
    expr = _parse(text)
    return ExpressionNames(
        # Jinja's globals (`range`, `dict`, ...) are not variables a run provides.
        roots=frozenset(
            node.name for node in _walk(expr, nodes.Name) if node.name not in _ENV.globals
        ),
        steps=frozenset(_names_read(expr, "steps")),
        inputs=frozenset(_names_read(expr, "inputs")),
    )


def evaluate(text: str, context: Mapping[str, Any]) -> Any:
    """The expression's value in `context`.

    `context` holds the variables in scope, e.g. `{"inputs": {...}, "steps":
    {"a": {"output": ...}}, "item": ..., "index": 3, "loop": {"iteration": 2,
    "previous": ...}}`.

    An undefined result (a name or field that is not there) is None, so callers
    get plain values only. Any error at evaluation (TypeError, ZeroDivisionError,
    a SecurityError from the sandbox, an UndefinedError from using an undefined
    value in arithmetic ...) becomes ExpressionError naming the expression and
    the cause: the step that owns the expression fails with a message its
    author can act on, not with a traceback from inside Jinja.
    """
    compiled = _compile(text)
    try:
        return compiled(dict(context))
    except Exception as error:
        _fail(text, f"{type(error).__name__}: {error}")


def is_true(text: str, context: Mapping[str, Any]) -> bool:
    """evaluate() as a condition: Python truthiness; an undefined value is false.

    What a `when:` or an `until:` is asked: run this step? stop this loop?
    """
    value = evaluate(text, context)
    try:
        return bool(value)
    except Exception as error:
        _fail(text, f"{type(error).__name__}: {error}")
