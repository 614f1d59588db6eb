"""`when:` and `until:` expressions on their own: values, names read, errors, the sandbox. No server."""

from __future__ import annotations

from typing import Any

import pytest

from stepflow.workflows import expressions
from stepflow.workflows.expressions import (
    ExpressionError,
    ExpressionNames,
    check_expression,
    evaluate,
    is_true,
)

CONTEXT: dict[str, Any] = {
    "inputs": {"size": 300, "topic": "tides", "tags": ["a", "b"], "limits": {"max": 5}},
    "steps": {
        "review": {"output": {"verdict": "approve", "scores": [3, 9]}},
        "plan": {"output": {"skip": False}},
        "quiet": {"output": None},
        "note": {"output": "plain text"},
    },
    "item": {"kind": "a", "name": "first"},
    "index": 0,
    "loop": {"iteration": 2, "previous": {"done": False}},
}


def names(roots: set[str], steps: set[str] = set(), inputs: set[str] = set()) -> ExpressionNames:  # noqa: B006
    return ExpressionNames(frozenset(roots), frozenset(steps), frozenset(inputs))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("steps.review.output.verdict == 'approve'", True),
        ("steps.review.output.verdict != 'approve'", False),
        ("inputs.size < 1000", True),
        ("inputs.size >= 1000", False),
        ("loop.iteration >= 2", True),
        ("index == 0", True),
        ("1 < inputs.size <= 300", True),
        ("inputs.size < 1000 and not steps.plan.output.skip", True),
        ("inputs.size > 1000 or inputs.topic == 'tides'", True),
        ("not (inputs.size > 1000 or inputs.topic == 'tides')", False),
        ("item.kind in ['a', 'b']", True),
        ("item.kind not in ('a', 'b')", False),
        ("'b' in inputs.tags", True),
        ("'max' in inputs.limits", True),
        ("'tid' in inputs.topic", True),
        ("inputs.tags | length == 2", True),
        ("steps.review.output.scores | max > 5", True),
        ("inputs.topic is string and inputs.size is number", True),
        ("loop.previous.done is false", True),
    ],
)
def test_conditions(text: str, expected: bool) -> None:
    assert evaluate(text, CONTEXT) is expected
    assert is_true(text, CONTEXT) is expected


def test_attribute_and_item_access_on_dicts_and_lists() -> None:
    assert evaluate("inputs.limits.max", CONTEXT) == 5
    assert evaluate("inputs['limits']['max']", CONTEXT) == 5
    assert evaluate("steps['review'].output['verdict']", CONTEXT) == "approve"
    assert evaluate("inputs.tags[1]", CONTEXT) == "b"
    assert evaluate("inputs.tags.0", CONTEXT) == "a"
    assert evaluate("inputs.tags[-1]", CONTEXT) == "b"
    assert evaluate("steps.review.output.scores[0] + 1", CONTEXT) == 4
    assert evaluate("item.name ~ '-' ~ index", CONTEXT) == "first-0"
    assert evaluate("steps.review.output", CONTEXT) == {"verdict": "approve", "scores": [3, 9]}


def test_a_key_is_read_before_a_dict_method_of_the_same_name() -> None:
    context = {"steps": {"items": {"output": 7}}, "inputs": {"keys": "k"}}
    assert evaluate("steps.items.output", context) == 7
    assert evaluate("inputs.keys", context) == "k"
    assert evaluate("inputs.items() | list", {"inputs": {"a": 1}}) == [("a", 1)]


@pytest.mark.parametrize(
    "text",
    [
        "steps.quiet.output.verdict",  # output is None
        "steps.plan.output.verdict",  # output lacks the field
        "steps.note.output.verdict",  # output is a string
        "steps.missing.output.verdict.deeper[0]",  # no such step (skipped, or not run yet)
        "nothing",
        "inputs.absent",
        "inputs.tags[7]",
    ],
)
def test_missing_values_chain_to_undefined_which_is_none_and_false(text: str) -> None:
    assert evaluate(text, CONTEXT) is None
    assert is_true(text, CONTEXT) is False
    assert is_true(f"not {text}", CONTEXT) is True
    assert is_true(f"{text} == 'approve'", CONTEXT) is False
    assert is_true(f"{text} is defined", CONTEXT) is False
    assert evaluate(f"{text} | default('fallback')", CONTEXT) == "fallback"


def test_truthiness_is_pythons() -> None:
    assert is_true("inputs.tags", CONTEXT) is True
    assert is_true("[]", CONTEXT) is False
    assert is_true("''", CONTEXT) is False
    assert is_true("0", CONTEXT) is False
    assert is_true("none", CONTEXT) is False
    assert is_true("steps.review.output", CONTEXT) is True
    assert is_true("steps.quiet.output", CONTEXT) is False


def test_check_expression_reports_roots_step_ids_and_input_names() -> None:
    assert check_expression("steps.review.output.verdict == 'approve'") == names(
        {"steps"}, steps={"review"}
    )
    assert check_expression(
        "inputs.size < 1000 and not steps.plan.output.skip and loop.iteration >= 2"
    ) == names({"inputs", "steps", "loop"}, steps={"plan"}, inputs={"size"})
    assert check_expression("steps['fetch'].output and inputs['topic'] in item.tags") == names(
        {"steps", "inputs", "item"}, steps={"fetch"}, inputs={"topic"}
    )
    assert check_expression("index == 0") == names({"index"})
    # The whole expression one read.
    assert check_expression("item") == names({"item"})
    assert check_expression("steps['fetch']") == names({"steps"}, steps={"fetch"})
    assert check_expression("inputs.flag") == names({"inputs"}, inputs={"flag"})
    assert check_expression("1 + 2 == 3") == names(set())


def test_check_expression_leaves_out_computed_keys_globals_and_methods() -> None:
    # Which step `steps[item]` reads is only known during the run.
    assert check_expression("steps[item].output") == names({"steps", "item"})
    assert check_expression("steps['a' ~ 'b'].output") == names({"steps"})
    assert check_expression("steps[0]") == names({"steps"})
    # Jinja's globals are not variables a run provides.
    assert check_expression("index in range(3)") == names({"index"})
    # A method called on inputs reads no input of that name.
    assert check_expression("inputs.items() | list") == names({"inputs"})
    # Names inside filter arguments and conditional branches count too.
    assert check_expression("steps.a.output | default(inputs.b) if item else steps.c") == names(
        {"steps", "inputs", "item"}, steps={"a", "c"}, inputs={"b"}
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("steps.a.output ==", 'expression "steps.a.output ==": unexpected end of expression'),
        ("(inputs.size", "expression \"(inputs.size\": unexpected end of expression, expected ')'"),
        ("inputs.", 'expression "inputs.": expected name or number'),
        ("1 +* 2", "expression \"1 +* 2\": unexpected '*'"),
        ("inputs.size 3", "expression \"inputs.size 3\": unexpected '3' after the expression"),
        ("'unclosed", 'expression "\'unclosed": unexpected char "\'" at 0'),
        ("", 'expression "": empty expression'),
        ("  \n ", 'expression "": empty expression'),
        ("x | nosuch", "expression \"x | nosuch\": no filter named 'nosuch'"),
        ("x is nosuch", "expression \"x is nosuch\": no test named 'nosuch'"),
        # Under `if`, Jinja itself would only notice when the branch runs.
        ("x | nosuch if y", "expression \"x | nosuch if y\": no filter named 'nosuch'"),
    ],
)
def test_syntax_errors_are_one_line_and_name_the_expression(text: str, message: str) -> None:
    with pytest.raises(ExpressionError) as raised:
        check_expression(text)
    assert str(raised.value) == message
    assert "\n" not in str(raised.value) and "template" not in str(raised.value)
    with pytest.raises(ExpressionError, match=r"^expression "):
        evaluate(text, CONTEXT)


def test_a_multiline_expression_is_quoted_on_one_line() -> None:
    with pytest.raises(ExpressionError) as raised:
        check_expression("inputs.size >\n  ==\n  x")
    assert str(raised.value) == "expression \"inputs.size > == x\": unexpected '=='"


@pytest.mark.parametrize(
    "text",
    [
        "a }} {{ b",
        "a }}",
        "a }}{% for x in range(9) %}{{ x",
        "{% if true %}",
        "{% if %}",
        "a %}",
        "a {# comment #}",
        "{{ a }}",
        "{% raw %}a",
    ],
)
def test_text_that_breaks_out_of_one_expression_is_refused(text: str) -> None:
    with pytest.raises(ExpressionError, match=r"^expression "):
        check_expression(text)
    with pytest.raises(ExpressionError, match=r"^expression "):
        evaluate(text, CONTEXT)


def test_braces_inside_a_string_are_just_text() -> None:
    assert check_expression("x == '}} {% if %}'") == names({"x"})
    assert evaluate("x == '}} {% if %}'", {"x": "}} {% if %}"}) is True


@pytest.mark.parametrize(
    ("text", "cause"),
    [
        ("1 / 0", "ZeroDivisionError: division by zero"),
        ("inputs.size // 0", "ZeroDivisionError: integer division or modulo by zero"),
        ("'a' + 1", 'TypeError: can only concatenate str (not "int") to str'),
        ("inputs.size > 'a'", "TypeError: '>' not supported between instances of 'int' and 'str'"),
        ("inputs.absent + 1", "UndefinedError: 'dict object' has no attribute 'absent'"),
        ("inputs.absent > 3", "UndefinedError: 'dict object' has no attribute 'absent'"),
        ("inputs.topic()", "TypeError: 'str' object is not callable"),
        ("range(10 ** 9) | list", "OverflowError: Range too big."),
    ],
)
def test_evaluation_errors_become_expression_errors_naming_expression_and_cause(
    text: str, cause: str
) -> None:
    check_expression(text)  # it parses; it fails only when run
    with pytest.raises(ExpressionError) as raised:
        evaluate(text, CONTEXT)
    assert str(raised.value).startswith(f'expression "{text}": {cause}')
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    with pytest.raises(ExpressionError):
        is_true(text, CONTEXT)


def test_nothing_random_is_left_in_the_environment() -> None:
    with pytest.raises(ExpressionError, match="no filter named 'random'"):
        check_expression("inputs.tags | random")
    with pytest.raises(ExpressionError, match="no filter named 'random'"):
        evaluate("inputs.tags | random", CONTEXT)
    with pytest.raises(ExpressionError, match="UndefinedError: 'lipsum' is undefined"):
        evaluate("lipsum(1)", CONTEXT)
    env = expressions._ENV
    assert "random" not in env.filters and "lipsum" not in env.globals
    assert {"range", "dict", "cycler", "joiner", "namespace"} <= set(env.globals)
    assert evaluate("range(3) | list", CONTEXT) == [0, 1, 2]
    assert evaluate("dict(a=1)", CONTEXT) == {"a": 1}


@pytest.mark.parametrize(
    "text",
    [
        "().__class__.__bases__",
        "().__class__.__bases__[0].__subclasses__()",
        "inputs.__class__",
        "inputs.topic.__class__.__mro__",
        "inputs['__class__']",
        "inputs.tags.__len__()",
        "inputs.topic.upper.__globals__",
        "'{0.__class__}'.format(inputs)",
        "inputs.topic | attr('__class__')",
        "range.__init__.__globals__",
        "cycler.__init__.__globals__",
        "inputs.tags.append(1)",
        "inputs.limits.update(max=1)",
        "inputs.limits.pop('max')",
        "inputs.tags.clear()",
    ],
)
def test_nothing_outside_the_values_is_reachable_and_nothing_changes(text: str) -> None:
    context: dict[str, Any] = {"inputs": {"topic": "tides", "tags": ["a"], "limits": {"max": 5}}}
    try:
        value = evaluate(text, context)
    except ExpressionError:
        pass
    else:  # what cannot be reached reads as undefined: never the object itself
        assert value is None
    assert context == {"inputs": {"topic": "tides", "tags": ["a"], "limits": {"max": 5}}}


def test_unsafe_access_is_an_error_not_a_silently_false_condition() -> None:
    with pytest.raises(ExpressionError) as raised:
        is_true("inputs.__class__", CONTEXT)
    assert str(raised.value) == (
        "expression \"inputs.__class__\": SecurityError: access to attribute '__class__' of 'dict' object is unsafe"
    )
    with pytest.raises(ExpressionError, match="SecurityError: access to attribute 'append'"):
        is_true("inputs.tags.append('c')", CONTEXT)
    assert CONTEXT["inputs"]["tags"] == ["a", "b"]


def test_compiled_expressions_are_cached() -> None:
    expressions._compile.cache_clear()
    text = "item.kind == 'a' and index < 10"
    first = expressions._compile(text)
    for i in range(50):  # a fan-out: the same `when:` for every item
        is_true(text, {"item": {"kind": "a"}, "index": i})
    assert expressions._compile(text) is first
    info = expressions._compile.cache_info()
    assert info.misses == 1 and info.hits >= 50
    assert info.maxsize == 1024


def test_the_same_expression_in_the_same_context_gives_the_same_value() -> None:
    text = "inputs.tags | map('upper') | join(',') ~ (inputs.limits | dictsort | string)"
    first = evaluate(text, CONTEXT)
    assert first == "A,B[('max', 5)]"
    expressions._compile.cache_clear()
    assert [evaluate(text, CONTEXT) for _ in range(3)] == [first] * 3
    assert evaluate("inputs.limits | tojson", CONTEXT) == '{"max": 5}'


def test_evaluate_does_not_keep_or_change_the_context() -> None:
    context: dict[str, Any] = {"index": 1}
    assert evaluate("index + 1", context) == 2
    assert context == {"index": 1}
    assert evaluate("index", {"index": 5}) == 5  # nothing left over from the last call
    assert evaluate("index", {}) is None
