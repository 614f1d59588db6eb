"""Control flow on the client's side: sub-pipeline files read (and refused) before a run starts,
nested steps checked like top-level ones, and outputs, for_each progress, loop iterations
and child runs shown by `run`, `status`, `watch` and the Web UI's details."""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from rich.console import Console
from temporalio.testing import WorkflowEnvironment

from stepflow.client.api import StepflowClient, load_pipeline
from stepflow.client.cli import main
from stepflow.client.loading import limit_issues, load_spec_file, model_warnings
from stepflow.client.render import print_result, status_text, steps_table
from stepflow.client.runs import RunSummary
from stepflow.client.watch import ChangeLines, Seen
from stepflow.workflows.control import PipelineState, RunStatus
from stepflow.workflows.models import (
    LoopStep,
    PipelineResult,
    PipelineSpec,
    PipelineStatus,
    PipelineStep,
    StepRecord,
    StepStatus,
    TokenUsage,
)
from stepflow.workflows.run_view import details_markdown, step_state
from stepflow.workflows.validation import SpecError
from tests.support.helpers import pipeline, step
from tests.support.processes import ok, stepflow_cli, tool_worker_env

MAIN = """
name: main
inputs:
  topic: {type: string, default: tides}
steps:
  - {id: write, kind: tool, tool: echo, args: {value: "about {{ inputs.topic }}"}}
  - id: translate
    kind: pipeline
    pipeline: lib/translate.yaml
    depends_on: [write]
    inputs: {text: "{{ steps.write.output }}"}
  - id: revise
    kind: loop
    max_iterations: 2
    steps:
      - id: again
        kind: pipeline
        pipeline: lib/translate.yaml
        inputs: {text: "round {{ loop.iteration }}", lang: de}
outputs:
  french: "{{ steps.translate.output.text }}"
  last: "{{ steps.revise.output.again.text }}"
"""

TRANSLATE = """
name: translate
inputs:
  text: {type: string}
  lang: {type: string, default: fr}
steps:
  - id: tag
    kind: pipeline
    pipeline: tag.yaml
    inputs: {value: "{{ inputs.lang }}"}
  - {id: tr, kind: tool, tool: echo, depends_on: [tag], args: {value: "{{ steps.tag.output.tag }}: {{ inputs.text }}"}}
outputs: {text: "{{ steps.tr.output }}"}
"""

TAG = """
name: tag
inputs:
  value: {type: string}
steps:
  - {id: t, kind: tool, tool: echo, args: {value: "[{{ inputs.value }}]"}}
outputs: {tag: "{{ steps.t.output }}"}
"""


def write(directory: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """main.yaml names lib/translate.yaml, which names tag.yaml next to it (in lib/)."""
    write(tmp_path, {"main.yaml": MAIN, "lib/translate.yaml": TRANSLATE, "lib/tag.yaml": TAG})
    return tmp_path / "main.yaml"


@pytest.fixture
def cli_env(temporal_env: WorkflowEnvironment, task_queue: str) -> dict[str, str]:
    target = temporal_env.client.service_client.config.target_host
    return tool_worker_env(target, task_queue)


def validate(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = main(["validate", str(path)])
    captured = capsys.readouterr()
    return code, (captured.err + captured.out).strip().splitlines()


# -- reading sub-pipeline files ----------------------------------------------------------------


def test_sub_pipeline_files_are_read_relative_to_the_file_that_names_them(project: Path) -> None:
    spec = load_spec_file(project)

    translate = spec.step("translate")
    assert isinstance(translate, PipelineStep) and isinstance(translate.pipeline, PipelineSpec)
    assert translate.pipeline.name == "translate"
    tag = translate.pipeline.step("tag")
    assert isinstance(tag, PipelineStep) and isinstance(tag.pipeline, PipelineSpec)
    assert tag.pipeline.name == "tag"  # lib/tag.yaml: relative to lib/translate.yaml
    revise = spec.step("revise")
    assert isinstance(revise, LoopStep)
    again = revise.steps[0]
    assert isinstance(again, PipelineStep) and isinstance(again.pipeline, PipelineSpec)
    assert again.pipeline.name == "translate"
    # What starts is plain data: it survives the trip through history.
    assert PipelineSpec.model_validate_json(spec.model_dump_json()) == spec


def test_a_spec_built_in_python_reads_its_files_from_the_current_directory(
    project: Path, monkeypatch: pytest.MonkeyPatch, settings: object
) -> None:
    spec = pipeline(
        {"id": "sub", "kind": "pipeline", "pipeline": "lib/tag.yaml", "inputs": {"value": "x"}}
    )
    monkeypatch.chdir(project.parent)
    loaded = load_pipeline(spec)

    sub = loaded.step("sub")
    assert isinstance(sub, PipelineStep) and isinstance(sub.pipeline, PipelineSpec)
    assert sub.pipeline.name == "tag"
    assert spec.step("sub").pipeline == "lib/tag.yaml"  # type: ignore[union-attr]  # unchanged


def test_a_missing_sub_pipeline_file_names_the_step_and_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(
        tmp_path,
        {
            "main.yaml": """
                name: main
                steps:
                  - {id: translate, kind: pipeline, pipeline: translate.yaml}
                  - id: revise
                    kind: loop
                    max_iterations: 2
                    steps: [{id: inner, kind: pipeline, pipeline: parts/gone.yaml}]
            """
        },
    )
    code, lines = validate(tmp_path / "main.yaml", capsys)

    assert code == 2
    assert lines == [
        f"{tmp_path}/main.yaml: step 'translate': pipeline: {tmp_path}/translate.yaml: "
        "no such file",
        f"{tmp_path}/main.yaml: step 'revise.inner': pipeline: {tmp_path}/parts/gone.yaml: "
        "no such file",
    ]


def test_an_invalid_sub_pipeline_file_gives_its_own_errors_prefixed_with_its_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(
        tmp_path,
        {
            "main.yaml": "name: main\nsteps: [{id: sub, kind: pipeline, pipeline: child.yaml}]\n",
            "child.yaml": """
                name: child
                steps:
                  - {id: a, kind: tool, tool: echo, colour: red}
                  - {id: l, kind: loop, max_iterations: 1, steps: [{id: b, kind: tool}]}
            """,
            "broken.yaml": "name: [unclosed\n",
        },
    )
    code, lines = validate(tmp_path / "main.yaml", capsys)

    assert code == 2
    child = f"{tmp_path}/child.yaml"
    assert lines == [
        f"{tmp_path}/main.yaml: step 'sub': pipeline: {child}: step 'a': colour: "
        "unknown key (a typo?)",
        f"{tmp_path}/main.yaml: step 'sub': pipeline: {child}: step 'l.b': tool: Field required",
    ]

    (tmp_path / "main.yaml").write_text(
        "name: main\nsteps: [{id: sub, kind: pipeline, pipeline: broken.yaml}]\n"
    )
    code, lines = validate(tmp_path / "main.yaml", capsys)
    assert code == 2 and len(lines) == 1
    assert f"step 'sub': pipeline: {tmp_path}/broken.yaml is not valid YAML" in lines[0]


def test_files_that_name_each_other_in_a_cycle_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(
        tmp_path,
        {
            "a.yaml": "name: a\nsteps: [{id: to_b, kind: pipeline, pipeline: b.yaml}]\n",
            "b.yaml": "name: b\nsteps: [{id: to_a, kind: pipeline, pipeline: ./a.yaml}]\n",
            "self.yaml": "name: s\nsteps: [{id: me, kind: pipeline, pipeline: self.yaml}]\n",
        },
    )
    code, lines = validate(tmp_path / "a.yaml", capsys)

    assert code == 2
    a, b = f"{tmp_path}/a.yaml", f"{tmp_path}/b.yaml"
    assert lines == [
        f"{a}: step 'to_b': pipeline: {b}: step 'to_a': pipeline: "
        f"a cycle of pipeline files: {a} -> {b} -> {a}"
    ]
    code, lines = validate(tmp_path / "self.yaml", capsys)
    assert code == 2
    assert lines[0].endswith(
        f"a cycle of pipeline files: {tmp_path}/self.yaml -> {tmp_path}/self.yaml"
    )


def test_a_file_named_twice_is_read_once_and_is_no_cycle(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "main.yaml": """
                name: main
                steps:
                  - {id: one, kind: pipeline, pipeline: leaf.yaml}
                  - {id: two, kind: pipeline, pipeline: ./leaf.yaml}
            """,
            "leaf.yaml": "name: leaf\nsteps: [{id: x, kind: tool, tool: echo}]\n",
        },
    )
    spec = load_spec_file(tmp_path / "main.yaml")
    assert spec.step("one").pipeline == spec.step("two").pipeline  # type: ignore[union-attr]


def test_validate_json_lists_sub_pipeline_issues_by_step_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path, {"main.yaml": "name: m\nsteps: [{id: sub, kind: pipeline, pipeline: x.yaml}]"})
    code = main(["validate", "--json", str(tmp_path / "main.yaml")])

    assert code == 2
    report = json.loads(capsys.readouterr().out)
    assert report["issues"] == [
        {"step": "sub", "field": "pipeline", "message": f"{tmp_path}/x.yaml: no such file"}
    ]


async def test_run_of_a_file_with_a_missing_sub_pipeline_exits_2_before_starting(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    write(tmp_path, {"main.yaml": "name: m\nsteps: [{id: sub, kind: pipeline, pipeline: x.yaml}]"})
    done = await stepflow_cli(cli_env, "run", "main.yaml", cwd=tmp_path)

    assert done.code == 2
    assert done.stderr.strip() == "main.yaml: step 'sub': pipeline: x.yaml: no such file"
    assert "started" not in done.stderr


# -- nested steps in the client's checks -------------------------------------------------------


def test_an_unknown_tool_in_a_loop_body_is_named_by_its_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], settings: object
) -> None:
    write(
        tmp_path,
        {
            "main.yaml": """
                name: main
                steps:
                  - id: revise
                    kind: loop
                    max_iterations: 3
                    steps:
                      - {id: write, kind: tool, tool: ecoh}
                      - {id: typo, kind: tool, tool: echo, args: {value: "{{ loop.iteration }"}}
                  - id: inline
                    kind: pipeline
                    steps: [{id: deep, kind: agent, instructions: hi, tools: [nope]}]
            """
        },
    )
    code, lines = validate(tmp_path / "main.yaml", capsys)

    assert code == 2
    file = tmp_path / "main.yaml"
    assert f"{file}: step 'revise.write': tool: unknown tool 'ecoh' (did you mean 'echo'?)" in (
        "\n".join(lines)
    )
    assert any("step 'revise.typo': args.value: an unclosed template" in line for line in lines)
    assert any("step 'inline.deep': tools[0]: unknown tool 'nope'" in line for line in lines)
    with pytest.raises(SpecError) as caught:
        load_pipeline(file)
    assert {i.step for i in caught.value.issues} == {"revise.write", "revise.typo", "inline.deep"}


def test_limits_and_model_warnings_reach_nested_steps_with_their_own_defaults() -> None:
    child = {
        "name": "child",
        "defaults": {"retry": {"initial_interval": "10s"}},
        "inputs": {"n": {"type": "integer", "default": "many"}},
        "steps": [step("slow", "echo", retry={"max_interval": "5s"})],
    }
    spec = pipeline(
        {"id": "sub", "kind": "pipeline", "pipeline": child, "inputs": {"n": 1}},
        {
            "id": "revise",
            "kind": "loop",
            "max_iterations": 2,
            "steps": [
                step("fine", "echo", retry={"max_interval": "5s"}),
                {"id": "ask", "kind": "agent", "instructions": "hi", "model": "gpt-9"},
            ],
        },
    )
    issues = [str(i) for i in limit_issues(spec)]

    assert issues == [
        "step 'sub': pipeline.inputs.n: default: expected integer: "
        "Input should be a valid integer, unable to parse string as an integer",
        "step 'sub.slow': retry: max_interval (5s) is shorter than initial_interval (10s)",
    ]  # revise.fine has the run's defaults: 1s initially
    assert model_warnings(spec) == [
        "step 'revise.ask': model 'gpt-9': no model is configured here "
        "(OPENAI_API_KEY, OPENAI_BASE_URL, STEPFLOW_MODELS): it will answer offline"
    ]


def test_steps_nested_too_deep_for_a_workflow_id_are_refused() -> None:
    body: dict[str, object] = step("x" * 150, "echo")
    for level in range(6):
        body = {"id": f"{'l' * 150}{level}", "kind": "loop", "max_iterations": 1, "steps": [body]}
    issues = limit_issues(pipeline(body))
    assert issues and all("nested too deep" in i.message for i in issues)


# -- running: outputs, progress, child runs ----------------------------------------------------


async def test_a_pipeline_with_sub_pipeline_files_runs_through_the_client(
    worker: None, stepflow: StepflowClient, project: Path
) -> None:
    result = await stepflow.run_pipeline(project)  # from the repository root, not tmp_path

    assert result.status is PipelineStatus.SUCCEEDED, result.error
    assert result.outputs == {"french": "[fr]: about tides", "last": "[de]: round 2"}
    translate = result.step("translate")
    assert translate.child and translate.child.endswith("/translate")
    revise = result.step("revise")
    assert (revise.iteration, revise.max_iterations) == (2, 2)
    assert revise.child and revise.child.endswith("/revise/2")

    # A child is a pipeline run of its own: `stepflow status <child id>` works.
    child = await stepflow.status(translate.child)
    assert child.pipeline == "translate"
    assert [r.id for r in child.steps] == ["tag", "tr"]

    console = Console(record=True, width=250)
    print_result(console, result)
    shown = console.export_text()
    assert "SUCCEEDED (iteration 2/2)" in shown
    assert f"child {revise.child}" in shown
    assert "french: [fr]: about tides" in shown


async def test_stepflow_run_prints_the_outputs_and_json_has_them(
    worker: None, cli_env: dict[str, str], project: Path
) -> None:
    done = ok(await stepflow_cli(cli_env, "run", str(project), "--input", "topic=moons"))
    assert "outputs" in done.stdout
    assert "french: [fr]: about moons" in done.stdout
    assert "last: [de]: round 2" in done.stdout

    done = ok(await stepflow_cli(cli_env, "run", "main.yaml", "--json", cwd=project.parent))
    result = json.loads(done.stdout)
    assert result["outputs"] == {"french": "[fr]: about tides", "last": "[de]: round 2"}


# -- how progress looks ------------------------------------------------------------------------

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def record(step_id: str, kind: str, status: StepStatus, **fields: object) -> StepRecord:
    return StepRecord.model_validate({"id": step_id, "kind": kind, "status": status, **fields})


RECORDS = [
    record("research", "tool", StepStatus.RUNNING, items=12, items_done=7, items_failed=1),
    record("each", "tool", StepStatus.SUCCEEDED, items=3, items_done=3, items_failed=0, output=[]),
    record(
        "revise",
        "loop",
        StepStatus.RUNNING,
        iteration=2,
        max_iterations=3,
        child="run-1/revise/2",
        started_at=T0,
    ),
    record("sub", "pipeline", StepStatus.FAILED, child="run-1/sub", error="tr: boom"),
    record("later", "tool", StepStatus.PENDING, items=4, items_done=0),
]


def test_status_text_shows_for_each_progress_and_loop_iterations() -> None:
    assert [status_text(r) for r in RECORDS] == [
        "RUNNING (7/12 done, 1 failed)",
        "SUCCEEDED (3/3 done)",
        "RUNNING (iteration 2/3)",
        "FAILED",
        "PENDING",
    ]
    assert [step_state(r) for r in RECORDS] == [status_text(r) for r in RECORDS]


def test_the_steps_table_names_the_child_runs() -> None:
    console = Console(record=True, width=250)
    console.print(steps_table("demo", RECORDS, now=T0 + timedelta(seconds=3)))
    text = console.export_text()

    assert "RUNNING (7/12 done, 1 failed)" in text
    assert "RUNNING (iteration 2/3)" in text and "child run-1/revise/2" in text
    assert "tr: boom child run-1/sub" in text


def test_the_web_ui_details_show_progress_and_child_ids() -> None:
    text = details_markdown("demo", RunStatus.RUNNING, RECORDS, T0 + timedelta(seconds=3))

    assert "| research | RUNNING (7/12 done, 1 failed) |  |  |" in text
    assert "| revise | RUNNING (iteration 2/3) · child `run-1/revise/2` |  | 3.0s |" in text
    assert "| sub | FAILED · child `run-1/sub` |  |  |" in text
    odd = record("sub", "pipeline", StepStatus.RUNNING, child="my|run`/sub")
    assert "child `my\\|run'/sub`" in details_markdown("d", RunStatus.RUNNING, [odd], T0)


def test_watch_prints_a_line_per_progress_and_per_iteration() -> None:
    console = Console(record=True, width=200)
    show = ChangeLines(console)
    summary = RunSummary("run-1", "r", "demo", status="RUNNING", execution_status="RUNNING")

    def poll(*records: StepRecord) -> None:
        state = PipelineState(
            workflow_id="run-1",
            pipeline="demo",
            status=RunStatus.RUNNING,
            steps=list(records),
            counts={},
            usage=TokenUsage(),
            started_at=T0,
            as_of=T0 + timedelta(seconds=2),
        )
        show(Seen(state, summary))

    loop = {"iteration": 1, "max_iterations": 3, "child": "run-1/revise/1"}
    poll(record("revise", "loop", StepStatus.RUNNING, started_at=T0, **loop))
    poll(record("revise", "loop", StepStatus.RUNNING, started_at=T0, **loop))  # no change
    loop |= {"iteration": 2, "child": "run-1/revise/2"}
    poll(record("revise", "loop", StepStatus.RUNNING, started_at=T0, **loop))
    lines = [line.strip() for line in console.export_text().splitlines()]

    assert lines == [
        "+0.00s  revise  RUNNING (iteration 1/3)  child run-1/revise/1",
        "+0.00s  revise  RUNNING (iteration 2/3)  child run-1/revise/2",
    ]


def test_a_result_without_outputs_prints_no_outputs_and_long_ones_are_cut() -> None:
    result = PipelineResult(
        pipeline="p",
        status=PipelineStatus.SUCCEEDED,
        steps=[record("a", "tool", StepStatus.SUCCEEDED, output=1)],
        started_at=T0,
        ended_at=T0,
    )
    console = Console(record=True, width=120)
    print_result(console, result)
    assert "outputs" not in console.export_text()

    long = result.model_copy(update={"outputs": {"text": "x" * 5000, "n": {"k": [1, 2]}}})
    print_result(console, long)
    text = console.export_text()
    assert '"k": [1, 2]' in text.replace("\n", "")
    assert "(1,000 more characters; --json shows all)" in text


def test_files_that_multiply_each_other_are_refused_quickly(tmp_path: Path) -> None:
    files = {"f0.yaml": "name: f\nsteps: [{id: x, kind: tool, tool: echo}]\n"}
    for level in range(1, 40):
        named = f"f{level - 1}.yaml"
        files[f"f{level}.yaml"] = (
            f"name: f\nsteps: [{{id: a, kind: pipeline, pipeline: {named}}}, "
            f"{{id: b, kind: pipeline, pipeline: {named}}}]\n"
        )
    write(tmp_path, files)
    with pytest.raises(SpecError, match=r"inlined the pipeline has [0-9,]+ steps, over 20,000"):
        load_spec_file(tmp_path / "f39.yaml")
