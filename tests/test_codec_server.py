"""`stepflow codec-server`: people with the token read encrypted runs, in the CLI and the Web UI.

The official `temporal` CLI and the Temporal Web UI (in headless chromium) read
an encrypted run through the codec server. Its HTTP side is tested on its own:
the token, CORS for the Web UI, payloads kept in the payload store, and what it
does with payloads it cannot read.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from pydantic import SecretStr
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from stepflow.activities.registry import load_tool_modules
from stepflow.client.api import StepflowClient
from stepflow.runtime.devserver import EPHEMERAL_STARTUP_TIMEOUT, temporal_binary, tuned_flags
from stepflow.runtime.encryption import ENCODING, EncryptionCodec, parse_keys
from stepflow.runtime.payload_storage import stepflow_data_converter
from stepflow.runtime.settings import Settings
from stepflow.worker import build_worker
from tests.support.encrypted import (
    DESCRIPTION,
    ERROR,
    LARGE,
    NEW_KEY,
    OLD_KEY,
    STEP_ARGUMENT,
    THRESHOLD,
    TOKEN,
    TOPIC,
    EncryptedWorker,
    client_for,
    codec_server,
    encrypted_worker,
    leaked,
    private_pipeline,
    raw_bytes,
    script_agent,
    shown,
)
from tests.support.helpers import pipeline, step
from tests.support.model_server import ScriptedModelServer
from tests.support.processes import free_port, one_error_line, process_env, stepflow_cli
from tests.test_web_ui import Browser, find_chromium


@pytest.fixture
def encrypted(
    temporal_client: Client, settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> EncryptedWorker:
    """Workers and clients with keys, on the test's queue (`settings` puts it in the environment)."""
    return encrypted_worker(temporal_client, monkeypatch, tmp_path)


async def test_the_temporal_cli_reads_the_run_through_the_codec_server(
    encrypted: EncryptedWorker,
    model_server: ScriptedModelServer,
    temporal_env: WorkflowEnvironment,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    script_agent(model_server)
    async with encrypted(OLD_KEY) as run:
        started = await run.stepflow.start_pipeline(private_pipeline(), {"topic": TOPIC})
        await run.stepflow.get_result(started.workflow_id)
        monkeypatch.setenv("STEPFLOW_CODEC_SERVER_TOKEN", TOKEN)
        with codec_server(Settings()) as server:
            address = temporal_env.client.service_client.config.target_host
            show = ["workflow", "show", "-w", started.workflow_id, "-o", "json"]
            clear = await temporal(
                address,
                *show,
                "--codec-endpoint",
                server.url,
                "--codec-auth",
                f"Bearer {TOKEN}",
            )
            raw = await temporal(address, *show)

    # Through the codec server: the run's content, the stored output and the error included.
    assert set(leaked(shown(clear))) >= {DESCRIPTION, TOPIC, STEP_ARGUMENT, LARGE, ERROR}
    assert shown(raw) and leaked(shown(raw)) == []


# -- the HTTP side -------------------------------------------------------------------------


@pytest.fixture
def server_settings(tmp_path: Path) -> Settings:
    return Settings(
        encryption_key=OLD_KEY,
        codec_server_token=TOKEN,
        payload_dir=tmp_path / "payloads",
        payload_threshold_bytes=THRESHOLD,
        ui_url="http://localhost:8233",
    )


async def test_the_codec_server_requires_the_token(server_settings: Settings) -> None:
    value = as_json(await pydantic_data_converter.encode(["hello"]))
    with codec_server(server_settings) as server:
        assert (await call(f"{server.url}/encode", body=value)).status == 401
        wrong = await call(
            f"{server.url}/encode", body=value, headers={"Authorization": "Bearer not-the-token"}
        )
        assert wrong.status == 401 and wrong.headers["WWW-Authenticate"] == "Bearer"
        assert (await call(f"{server.url}/wrong-token/decode", body=value)).status == 401
        # Without the token a large body is not even read: the answer comes at once.
        big = {"payloads": [{"data": "A" * 100_000}]}
        assert (await call(f"{server.url}/decode", body=big)).status == 401
        # The token in the header (the temporal CLI's --codec-auth), or in the endpoint's path
        # (the Web UI's codec endpoint setting, which cannot send a header of the user's own).
        sealed = await call(
            f"{server.url}/encode", body=value, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert sealed.status == 200, sealed.body
        assert from_json(sealed.json())[0].metadata["encoding"] == ENCODING
        opened = await call(f"{server.url}/{TOKEN}/decode", body=sealed.json())
        assert opened.status == 200 and opened.json() == value
        assert opened.headers["Cache-Control"] == "no-store"
        # Health checks need nothing, and learn nothing.
        health = await call(f"{server.url}/health", method="GET")
        assert (health.status, health.json()) == (200, {"status": "ok"})
        assert (await call(f"{server.url}/decode", method="GET")).status == 405
        assert (await call(f"{server.url}/{TOKEN}/nothing", body=value)).status == 404
        bad = await call(
            f"{server.url}/{TOKEN}/decode", body={"payloads": "no"}, headers={"X-Namespace": "x"}
        )
        assert bad.status == 400


async def test_the_codec_server_answers_the_web_ui_origin_only(server_settings: Settings) -> None:
    ui = {"Origin": "http://localhost:8233"}
    preflight = {**ui, "Access-Control-Request-Method": "POST"}
    with codec_server(server_settings) as server:
        allowed = await call(f"{server.url}/{TOKEN}/decode", method="OPTIONS", headers=preflight)
        assert allowed.status == 204
        assert allowed.headers["Access-Control-Allow-Origin"] == "http://localhost:8233"
        assert set(allowed.headers["Access-Control-Allow-Headers"].split(", ")) == {
            "Authorization",
            "Content-Type",
            "X-Namespace",
        }
        assert "POST" in allowed.headers["Access-Control-Allow-Methods"]
        assert "Access-Control-Allow-Credentials" not in allowed.headers
        # A public page (Temporal Cloud's UI) calling a codec server on localhost: Chrome asks.
        private = {**preflight, "Access-Control-Request-Private-Network": "true"}
        answer = await call(f"{server.url}/decode", method="OPTIONS", headers=private)
        assert answer.headers["Access-Control-Allow-Private-Network"] == "true"

        other = {"Origin": "https://elsewhere.example"}
        refused = await call(f"{server.url}/decode", method="OPTIONS", headers=other)
        assert refused.status == 403 and "Access-Control-Allow-Origin" not in refused.headers
        posted = await call(
            f"{server.url}/decode",
            body={"payloads": []},
            headers={**other, "Authorization": f"Bearer {TOKEN}"},
        )
        assert posted.status == 403

        answered = await call(
            f"{server.url}/decode",
            body={"payloads": []},
            headers={**ui, "Authorization": f"Bearer {TOKEN}", "X-Namespace": "default"},
        )
        assert answered.status == 200
        assert answered.headers["Access-Control-Allow-Origin"] == "http://localhost:8233"

    # --origin replaces the default (the origin of STEPFLOW_UI_URL).
    with codec_server(server_settings, origins=["https://temporal.example.com/"]) as server:
        assert server.origins == ["https://temporal.example.com"]
        headers = {
            "Origin": "https://temporal.example.com",
            "Access-Control-Request-Method": "POST",
        }
        assert (await call(f"{server.url}/decode", method="OPTIONS", headers=headers)).status == 204


async def test_the_codec_server_fetches_stored_payloads_and_leaves_unreadable_ones(
    server_settings: Settings,
) -> None:
    converter = stepflow_data_converter(server_settings)
    large = LARGE + "x" * (THRESHOLD + 1000)
    # The worker's path: encrypted, then kept in the store; history holds a reference.
    [reference] = await converter.encode([large])
    assert reference.metadata["encoding"] == b"json/protobuf" and LARGE.encode() not in (
        reference.SerializeToString()
    )
    [small] = await converter.encode(["small"])
    stranger = await EncryptionCodec(parse_keys(f"gone:{NEW_KEY}")).encode(
        await pydantic_data_converter.encode(["unreadable"])
    )
    with codec_server(server_settings) as server:
        answer = await call(
            f"{server.url}/{TOKEN}/decode", body=as_json([reference, small, *stranger])
        )
    assert answer.status == 200
    decoded = from_json(answer.json())
    assert pydantic_data_converter.payload_converter.from_payloads(decoded[:2]) == [large, "small"]
    assert decoded[2] == stranger[0]  # a key this server lacks: answered as it came


async def test_the_codec_server_will_not_start_without_a_token(tmp_path: Path) -> None:
    env = process_env("127.0.0.1:1", STEPFLOW_ENCRYPTION_KEY=OLD_KEY)
    done = await stepflow_cli(env, "codec-server", "--port", "0")
    one_error_line(done, "STEPFLOW_CODEC_SERVER_TOKEN is not set")
    env["STEPFLOW_CODEC_SERVER_TOKEN"] = "short"
    one_error_line(await stepflow_cli(env, "codec-server"), "STEPFLOW_CODEC_SERVER_TOKEN", "short")


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def call(
    url: str, method: str = "POST", body: Any = None, headers: dict[str, str] | None = None
) -> Answer:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})

    def send() -> Answer:
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return Answer(response.status, dict(response.headers), response.read())
        except urllib.error.HTTPError as err:
            return Answer(err.code, dict(err.headers), err.read())

    return await asyncio.to_thread(send)


def as_json(payloads: list[Payload]) -> dict[str, Any]:
    return {"payloads": [json_format.MessageToDict(p) for p in payloads]}


def from_json(body: dict[str, Any]) -> list[Payload]:
    return [json_format.ParseDict(p, Payload()) for p in body["payloads"]]


async def temporal(address: str, *args: str) -> str:
    """`temporal ARGS... --address ADDRESS`: its standard output (it must succeed)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_")}
    process = await asyncio.create_subprocess_exec(
        temporal_binary(),
        *args,
        "--address",
        address,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return out.decode()


# -- the Web UI ------------------------------------------------------------------------------


@pytest.fixture
def ui_browser(tmp_path: Path) -> Iterator[Browser]:
    """Headless chromium (tests/test_web_ui.py), or skip saying why there is none."""
    browser = Browser(find_chromium(), str(tmp_path / "chromium-profile"))
    try:
        yield browser
    finally:
        browser.close()


async def ui_ready(base: str) -> None:
    """Wait until the Web UI's server reaches Temporal: until then its API answers 503, and a
    page loaded meanwhile shows an error for good."""
    for _ in range(300):
        if (await call(f"{base}/api/v1/cluster-info", method="GET")).status == 200:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the Web UI at {base} never reached Temporal")


ENCRYPTED_IN_THE_PAGE = base64.b64encode(ENCODING).decode()
"""How the Web UI shows a payload it could not decode: its metadata, base64 as in the JSON."""


@pytest.mark.parametrize("with_token", [True, False], ids=["with-token", "without"])
async def test_the_web_ui_shows_the_run_decrypted_to_holders_of_the_token(
    ui_browser: Browser, settings: Settings, tmp_path: Path, with_token: bool
) -> None:
    ui_port = free_port()
    keyed = settings.model_copy(
        update={
            "encryption_key": SecretStr(OLD_KEY),
            "codec_server_token": SecretStr(TOKEN),
            "payload_dir": tmp_path / "payloads",
            "ui_url": f"http://127.0.0.1:{ui_port}",
        }
    )
    with codec_server(keyed) as server:
        # The UI's codec endpoint as a user sets it: the token in the path (or a wrong one).
        endpoint = f"{server.url}/{TOKEN if with_token else 'not-the-token'}"
        env = await WorkflowEnvironment.start_local(
            port=free_port(),
            ui=True,
            ui_port=ui_port,
            dev_server_existing_path=temporal_binary(),
            dev_server_startup_timeout=EPHEMERAL_STARTUP_TIMEOUT,
            dev_server_extra_args=[
                *tuned_flags(),
                "--ui-disable-news-fetch",
                "--ui-codec-endpoint",
                endpoint,
            ],
        )
        try:
            client = client_for(env.client, keyed)
            stepflow = StepflowClient(client, settings=keyed)
            spec = pipeline(
                step("note", "echo", args={"value": STEP_ARGUMENT}),
                name="ui-private",
                description=DESCRIPTION,
            )
            # The worker stays up while the pages load: the UI queries the run (its current
            # details), and without a worker to answer, the page fails.
            async with build_worker(client, keyed, tools=load_tool_modules(keyed.tool_modules)):
                run = await stepflow.start_pipeline(spec, workflow_id="ui-private-run")
                await stepflow.get_result(run.workflow_id)
                history = await env.client.get_workflow_handle(run.workflow_id).fetch_history()
                assert leaked(raw_bytes(history)) == []  # what the UI gets from the server

                await ui_ready(f"http://127.0.0.1:{ui_port}")
                page = f"http://127.0.0.1:{ui_port}/namespaces/default/workflows/{run.workflow_id}"
                memo_page = f"{page}/{run.run_id}/memo"
                if not with_token:
                    # The codec server refuses; the UI still works and shows the ciphertext.
                    memo = await asyncio.to_thread(
                        ui_browser.text_of, memo_page, ENCRYPTED_IN_THE_PAGE
                    )
                    assert ENCRYPTED_IN_THE_PAGE in memo, memo[-2000:]
                    assert DESCRIPTION not in memo
                    return
                memo = await asyncio.to_thread(ui_browser.text_of, memo_page, DESCRIPTION)
                assert DESCRIPTION in memo, memo[-2000:]
                events = await asyncio.to_thread(
                    ui_browser.text_of, f"{page}/{run.run_id}/history", "note · tool echo"
                )
                assert "note · tool echo" in events, events[-2000:]
        finally:
            await env.shutdown()
