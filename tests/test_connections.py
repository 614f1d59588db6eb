"""Connections through `temporalio.envconfig`: TLS, mTLS, API keys, TOML profiles, and their errors.

The `temporal` dev server has no TLS flags, so the TLS tests put a TLS-terminating
proxy in front of it, as a load balancer or an ingress would in a cluster: the
worker and the client do a real (m)TLS handshake against certificates made
here, and the proxy passes the gRPC bytes on to the dev server.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import ssl
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from temporalio.service import TLSConfig
from temporalio.testing import WorkflowEnvironment

from stepflow.activities.registry import load_tool_modules
from stepflow.client.api import StepflowClient
from stepflow.runtime.connection import ConnectionFailed, connect, connect_config
from stepflow.runtime.settings import Settings
from stepflow.worker import build_worker
from stepflow.workflows.models import PipelineStatus
from tests.support.helpers import pipeline, step
from tests.support.processes import (
    ROOT,
    one_error_line,
    process_env,
    start_worker,
    stepflow_cli,
    wait_for_log,
)

SERVER_NAME = "temporal.internal"
"""The only name in the proxy's certificate: clients that dial 127.0.0.1 must name it."""
API_KEY = "sk-planted-temporal-api-key-8d1f"

PIPELINE = """
name: over-tls
steps:
  - {id: hello, kind: tool, tool: echo, args: {value: "hello over TLS"}}
"""


# --- certificates -----------------------------------------------------------------------------


@dataclass
class Pki:
    """A CA, a server certificate for SERVER_NAME and a client certificate, as PEM files."""

    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    """A CA that signed nothing here: trusting it instead of `ca` must fail."""
    other_client_cert: Path
    other_client_key: Path
    """A client certificate of `other_ca`, which the proxy does not accept."""


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    usage: x509.ObjectIdentifier | None = None,
    names: list[str] | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    else:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False
        )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, item: x509.Certificate | ec.EllipticCurvePrivateKey) -> Path:
    if isinstance(item, x509.Certificate):
        path.write_bytes(item.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(
            item.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca_key, server_key, client_key, other_ca_key, other_client_key = (
        ec.generate_private_key(ec.SECP256R1()) for _ in range(5)
    )
    ca = _certificate("Stepflow Test CA", ca_key, "Stepflow Test CA", ca_key, ca=True)
    other_ca = _certificate("Other CA", other_ca_key, "Other CA", other_ca_key, ca=True)
    server = _certificate(
        SERVER_NAME,
        server_key,
        "Stepflow Test CA",
        ca_key,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        names=[SERVER_NAME],
    )
    client = _certificate(
        "stepflow-worker",
        client_key,
        "Stepflow Test CA",
        ca_key,
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
    )
    stranger = _certificate(
        "stranger",
        other_client_key,
        "Other CA",
        other_ca_key,
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
    )
    return Pki(
        dir=d,
        ca=_write(d / "ca.pem", ca),
        server_cert=_write(d / "server.pem", server),
        server_key=_write(d / "server.key", server_key),
        client_cert=_write(d / "client.pem", client),
        client_key=_write(d / "client.key", client_key),
        other_ca=_write(d / "other-ca.pem", other_ca),
        other_client_cert=_write(d / "stranger.pem", stranger),
        other_client_key=_write(d / "stranger.key", other_client_key),
    )


# --- a TLS-terminating proxy in front of the dev server ----------------------------------------


@dataclass
class TlsProxy:
    """Terminates (m)TLS on 127.0.0.1 and forwards the plain bytes to the dev server."""

    upstream: str
    pki: Pki
    require_client_cert: bool = True
    port: int = 0
    clients: list[str] = field(default_factory=list)
    """The common name of each client certificate that completed a handshake."""
    handshakes: int = 0
    """Connections that completed a TLS handshake, with or without a client certificate."""
    _loop: asyncio.AbstractEventLoop | None = None
    _stop: asyncio.Event | None = None
    _thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> TlsProxy:
        ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(ready),))
        self._thread.start()
        if not ready.wait(30):
            raise AssertionError("the TLS proxy did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(30)

    async def _serve(self, ready: threading.Event) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.pki.server_cert, self.pki.server_key)
        context.set_alpn_protocols(["h2"])  # gRPC is HTTP/2
        if self.require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.pki.ca)
        self._loop = asyncio.get_running_loop()
        self._loop.set_exception_handler(lambda loop, context: None)  # refused handshakes
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=context)
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        async with server:
            await self._stop.wait()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.handshakes += 1
        peer = writer.get_extra_info("peercert") or {}
        for rdn in peer.get("subject", ()):
            self.clients += [value for key, value in rdn if key == "commonName"]
        host, _, port = self.upstream.rpartition(":")
        try:
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (OSError, ssl.SSLError):
        pass
    finally:
        writer.close()


@pytest.fixture
def upstream(temporal_env: WorkflowEnvironment) -> str:
    return temporal_env.client.service_client.config.target_host


@pytest.fixture
def mtls_proxy(upstream: str, pki: Pki) -> Iterator[TlsProxy]:
    with TlsProxy(upstream, pki) as proxy:
        yield proxy


@pytest.fixture
def tls_proxy(upstream: str, pki: Pki) -> Iterator[TlsProxy]:
    """Server TLS only, as with an API key (Temporal Cloud)."""
    with TlsProxy(upstream, pki, require_client_cert=False) as proxy:
        yield proxy


# --- the environment ---------------------------------------------------------------------------


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No TEMPORAL_* of the developer's shell, and no config file of theirs; returns a home."""
    for name in list(os.environ):
        if name.startswith("TEMPORAL_"):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    (home / ".config").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    return home


def mtls_env(pki: Pki, address: str) -> dict[str, str]:
    return {
        "TEMPORAL_ADDRESS": address,
        "TEMPORAL_TLS_CLIENT_CERT_PATH": str(pki.client_cert),
        "TEMPORAL_TLS_CLIENT_KEY_PATH": str(pki.client_key),
        "TEMPORAL_TLS_SERVER_CA_CERT_PATH": str(pki.ca),
        "TEMPORAL_TLS_SERVER_NAME": SERVER_NAME,
    }


def profile_file(path: Path, pki: Pki, address: str) -> Path:
    path.write_text(
        f"""
[profile.default]
address = "127.0.0.1:1"

[profile.mtls]
address = "{address}"
namespace = "default"

[profile.mtls.tls]
client_cert_path = "{pki.client_cert}"
client_key_path = "{pki.client_key}"
server_ca_cert_path = "{pki.ca}"
server_name = "{SERVER_NAME}"

[profile.cloud]
address = "my-namespace.a1b2c.tmprl.cloud:7233"
namespace = "my-namespace.a1b2c"
api_key = "{API_KEY}"
"""
    )
    return path


# --- what the settings turn into ---------------------------------------------------------------


def test_address_and_namespace_from_the_environment(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert connect_config() == {"target_host": "localhost:7233"}
    monkeypatch.setenv("TEMPORAL_ADDRESS", "temporal.example:7233")
    monkeypatch.setenv("TEMPORAL_NAMESPACE", "agents")
    assert connect_config() == {"target_host": "temporal.example:7233", "namespace": "agents"}


def test_an_api_key_turns_tls_on(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Temporal Cloud: TEMPORAL_API_KEY alone means TLS with the system's CAs."""
    monkeypatch.setenv("TEMPORAL_ADDRESS", "my-namespace.a1b2c.tmprl.cloud:7233")
    monkeypatch.setenv("TEMPORAL_API_KEY", API_KEY)
    config = connect_config()
    assert config["api_key"] == API_KEY
    assert config["tls"] is True
    monkeypatch.setenv("TEMPORAL_TLS", "false")  # a local server without TLS
    assert connect_config()["tls"] is False


def test_tls_files_and_server_name_from_the_environment(
    clean_env: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in mtls_env(pki, "127.0.0.1:7233").items():
        monkeypatch.setenv(name, value)
    tls = connect_config()["tls"]
    assert isinstance(tls, TLSConfig)
    assert tls.client_cert == pki.client_cert.read_bytes()
    assert tls.client_private_key == pki.client_key.read_bytes()
    assert tls.server_root_ca_cert == pki.ca.read_bytes()
    assert tls.domain == SERVER_NAME


def test_a_toml_profile_and_environment_overrides(
    clean_env: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = profile_file(clean_env / "temporal.toml", pki, "temporal.internal:7233")
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", str(path))
    assert connect_config()["target_host"] == "127.0.0.1:1"  # the default profile
    cloud = connect_config("cloud")
    assert (cloud["api_key"], cloud["tls"]) == (API_KEY, True)
    monkeypatch.setenv("TEMPORAL_PROFILE", "mtls")
    config = connect_config()
    assert config["target_host"] == "temporal.internal:7233"
    assert isinstance(config["tls"], TLSConfig)
    assert config["tls"].client_cert == pki.client_cert.read_bytes()
    monkeypatch.setenv("TEMPORAL_NAMESPACE", "staging")  # the environment wins over the file
    assert connect_config()["namespace"] == "staging"


def test_the_default_config_file_is_read(
    clean_env: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    (clean_env / ".config" / "temporalio").mkdir()
    profile_file(clean_env / ".config" / "temporalio" / "temporal.toml", pki, "a:1")
    assert connect_config("mtls")["target_host"] == "a:1"


BAD_SETTINGS = {
    "missing-cert": (
        {"TEMPORAL_TLS_CLIENT_CERT_PATH": "/nope/client.pem"},
        ["TEMPORAL_TLS_CLIENT_CERT_PATH", "/nope/client.pem", "No such file"],
    ),
    "missing-ca": (
        {"TEMPORAL_TLS_SERVER_CA_CERT_PATH": "/nope/ca.pem"},
        ["TEMPORAL_TLS_SERVER_CA_CERT_PATH", "/nope/ca.pem"],
    ),
    "not-pem": (
        {"TEMPORAL_TLS_SERVER_CA_CERT_DATA": "not a certificate"},
        ["TEMPORAL_TLS_SERVER_CA_CERT_DATA", "not PEM"],
    ),
    "unknown-profile": (
        {"TEMPORAL_PROFILE": "prod", "TEMPORAL_CONFIG_FILE": "{good}"},
        ["profile 'prod'", "TEMPORAL_CONFIG_FILE=", "no such profile", "cloud, default, mtls"],
    ),
    "profile-without-file": (
        {"TEMPORAL_PROFILE": "prod"},
        ["profile 'prod'", "there is no config file", "TEMPORAL_CONFIG_FILE"],
    ),
    "missing-config-file": (
        {"TEMPORAL_CONFIG_FILE": "/nope/temporal.toml"},
        ["TEMPORAL_CONFIG_FILE=/nope/temporal.toml", "no such file"],
    ),
    "malformed-toml": (
        {"TEMPORAL_CONFIG_FILE": "{bad}"},
        ["TEMPORAL_CONFIG_FILE=", "not valid TOML", "line 3"],
    ),
}


def _bad_env(case: str, pki: Pki, tmp_path: Path) -> tuple[dict[str, str], list[str]]:
    good = profile_file(tmp_path / "good.toml", pki, "127.0.0.1:1")
    bad = tmp_path / "bad.toml"
    bad.write_text('[profile.default]\naddress = "a:1"\nnamespace = \n')
    env, expected = BAD_SETTINGS[case]
    return {k: v.format(good=good, bad=bad) for k, v in env.items()}, expected


@pytest.mark.parametrize("case", sorted(BAD_SETTINGS))
def test_bad_settings_are_one_line_naming_the_setting(
    case: str, clean_env: Path, pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env, expected = _bad_env(case, pki, tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConnectionFailed) as err:
        connect_config()
    message = str(err.value)
    assert "\n" not in message
    for text in expected:
        assert text in message


def test_a_certificate_without_its_key_is_refused(
    clean_env: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEMPORAL_TLS_CLIENT_CERT_PATH", str(pki.client_cert))
    with pytest.raises(ConnectionFailed, match="TEMPORAL_TLS_CLIENT_KEY_PATH"):
        connect_config()


# --- real connections ---------------------------------------------------------------------------


async def _run_echo(client_settings: Settings) -> None:
    """Connect a worker and a client per the environment, and run a pipeline through them."""
    client = await connect(settings=client_settings)
    tools = load_tool_modules(client_settings.tool_modules)
    async with build_worker(client, client_settings, tools=tools):
        stepflow = StepflowClient(await connect(settings=client_settings), settings=client_settings)
        result = await stepflow.run_pipeline(
            pipeline(step("hello", "echo", args={"value": "hello over mTLS"}))
        )
    assert result.status is PipelineStatus.SUCCEEDED
    assert result.step("hello").output == "hello over mTLS"


async def test_worker_and_client_over_mtls_from_the_environment(
    clean_env: Path,
    pki: Pki,
    mtls_proxy: TlsProxy,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in mtls_env(pki, mtls_proxy.address).items():
        monkeypatch.setenv(name, value)
    await _run_echo(settings)
    assert mtls_proxy.clients and set(mtls_proxy.clients) == {"stepflow-worker"}


async def test_worker_and_client_over_mtls_from_a_toml_profile(
    clean_env: Path,
    pki: Pki,
    mtls_proxy: TlsProxy,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = profile_file(clean_env / "temporal.toml", pki, mtls_proxy.address)
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", str(path))
    monkeypatch.setenv("TEMPORAL_PROFILE", "mtls")
    await _run_echo(settings)
    assert set(mtls_proxy.clients) == {"stepflow-worker"}


async def test_worker_process_and_cli_over_mtls_with_a_profile(
    clean_env: Path, pki: Pki, mtls_proxy: TlsProxy, task_queue: str, tmp_path: Path
) -> None:
    """`python worker.py` honours TEMPORAL_PROFILE; `stepflow --profile` picks one too."""
    path = profile_file(tmp_path / "temporal.toml", pki, mtls_proxy.address)
    env = process_env("unused", STEPFLOW_TASK_QUEUE=task_queue, TEMPORAL_CONFIG_FILE=str(path))
    for name in ("TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE"):  # these would override the profile
        del env[name]
    env.update(HOME=str(clean_env), XDG_CONFIG_HOME=str(clean_env / ".config"))
    env["STEPFLOW_HOME"] = str(tmp_path / "home")
    spec = tmp_path / "p.yaml"
    spec.write_text(PIPELINE)
    log = tmp_path / "worker.log"
    worker = start_worker({**env, "TEMPORAL_PROFILE": "mtls"}, log)
    try:
        await wait_for_log(log, "stepflow worker started", worker, timeout=60)
        done = await stepflow_cli(env, "--profile", "mtls", "run", str(spec), "--json")
        assert done.code == 0, done.stderr
        assert json.loads(done.stdout)["steps"][0]["output"] == "hello over TLS"
        # The default profile points at a closed port: without --profile, nothing connects.
        failed = await stepflow_cli(env, "list")
        one_error_line(failed, "cannot connect to Temporal at 127.0.0.1:1")
    finally:
        worker.terminate()
        await asyncio.get_running_loop().run_in_executor(None, worker.wait, 30)
    assert set(mtls_proxy.clients) == {"stepflow-worker"}


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("no client certificate", "client certificate"),
        ("a certificate of another CA", "client certificate"),
        ("an untrusted server", "TEMPORAL_TLS_SERVER_CA_CERT_PATH"),
        ("the wrong server name", "TEMPORAL_TLS_SERVER_NAME"),
        ("no TLS at all", "TEMPORAL_TLS=true"),
    ],
)
async def test_failed_handshakes_say_which_setting_to_fix(
    case: str,
    expected: str,
    clean_env: Path,
    pki: Pki,
    mtls_proxy: TlsProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = mtls_env(pki, mtls_proxy.address)
    if case == "no client certificate":
        del env["TEMPORAL_TLS_CLIENT_CERT_PATH"], env["TEMPORAL_TLS_CLIENT_KEY_PATH"]
    elif case == "a certificate of another CA":
        env["TEMPORAL_TLS_CLIENT_CERT_PATH"] = str(pki.other_client_cert)
        env["TEMPORAL_TLS_CLIENT_KEY_PATH"] = str(pki.other_client_key)
    elif case == "an untrusted server":
        env["TEMPORAL_TLS_SERVER_CA_CERT_PATH"] = str(pki.other_ca)
    elif case == "the wrong server name":
        del env["TEMPORAL_TLS_SERVER_NAME"]  # 127.0.0.1 is not in the certificate
    else:
        env = {"TEMPORAL_ADDRESS": mtls_proxy.address}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConnectionFailed) as err:
        await connect()
    message = str(err.value)
    assert message.startswith(f"cannot connect to Temporal at {mtls_proxy.address}")
    assert expected in message and "\n" not in message
    # Refused during the handshake: no connection ever reached the server behind the proxy.
    assert mtls_proxy.handshakes == 0 and mtls_proxy.clients == []


async def test_an_api_key_over_tls_connects_and_is_never_shown(
    clean_env: Path,
    pki: Pki,
    tls_proxy: TlsProxy,
    upstream: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The dev server ignores the key; the point is TLS on, and the key in no message."""
    monkeypatch.setenv("TEMPORAL_ADDRESS", tls_proxy.address)
    monkeypatch.setenv("TEMPORAL_API_KEY", API_KEY)
    monkeypatch.setenv("TEMPORAL_TLS_SERVER_CA_CERT_PATH", str(pki.ca))
    monkeypatch.setenv("TEMPORAL_TLS_SERVER_NAME", SERVER_NAME)
    client = await connect()
    assert client.api_key == API_KEY  # read from TEMPORAL_API_KEY by envconfig
    # A real call, over TLS through the proxy: connected, not just configured.
    await client.count_workflows()
    assert tls_proxy.handshakes >= 1
    monkeypatch.setenv("TEMPORAL_ADDRESS", upstream)  # the plain port: TLS cannot work
    monkeypatch.delenv("TEMPORAL_TLS_SERVER_CA_CERT_PATH")
    monkeypatch.delenv("TEMPORAL_TLS_SERVER_NAME")
    with pytest.raises(ConnectionFailed) as err:
        await connect()
    assert "does not answer with TLS" in str(err.value)
    assert API_KEY not in str(err.value)


async def test_an_unknown_namespace_fails_at_connect(
    clean_env: Path, upstream: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEMPORAL_ADDRESS", upstream)
    monkeypatch.setenv("TEMPORAL_NAMESPACE", f"nosuch-{uuid.uuid4().hex[:6]}")
    with pytest.raises(ConnectionFailed, match=r"has no namespace 'nosuch-.*TEMPORAL_NAMESPACE"):
        await connect()


async def test_ignored_host_verification_is_said(
    clean_env: Path,
    pki: Pki,
    mtls_proxy: TlsProxy,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The SDK cannot turn host verification off; a connection that then fails says so."""
    env = mtls_env(pki, mtls_proxy.address)
    del env["TEMPORAL_TLS_SERVER_NAME"]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TEMPORAL_TLS_DISABLE_HOST_VERIFICATION", "true")
    with pytest.raises(ConnectionFailed) as err:
        await connect()
    assert "TEMPORAL_TLS_SERVER_NAME" in str(err.value)
    assert "ignores TEMPORAL_TLS_DISABLE_HOST_VERIFICATION" in str(err.value)


async def test_settings_the_sdk_would_skip_are_warned_about(
    clean_env: Path, upstream: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A misspelt key connects anyway (as the temporal CLI would), with a warning naming it."""
    path = clean_env / "temporal.toml"
    path.write_text(f'[profile.default]\naddress = "{upstream}"\nnamspace = "agents"\n')
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", str(path))
    with structlog.testing.capture_logs() as logs:
        client = await connect()
    assert client.namespace == "default"
    warnings = [e["event"] for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1
    assert "unknown field `namspace`" in warnings[0] and str(path) in warnings[0]


# --- what the stepflow command and the worker process print ----------------------------------


def _process_env(clean_env: Path, upstream: str, **extra: str) -> dict[str, str]:
    env = process_env(upstream, **extra)
    env.update(HOME=str(clean_env), XDG_CONFIG_HOME=str(clean_env / ".config"))
    return env


CLI_CASES = {
    "closed-port": ["cannot connect to Temporal at 127.0.0.1:1", "is the server running?"],
    "missing-cert": ["TEMPORAL_TLS_CLIENT_CERT_PATH"],
    "unknown-profile": ["profile 'prod'", "no such profile"],
    "malformed-toml": ["not valid TOML"],
    "missing-config-file": ["TEMPORAL_CONFIG_FILE=/nope/temporal.toml"],
    "api-key-on-a-plain-server": ["does not answer with TLS"],
    "unknown-namespace": ["has no namespace 'nosuch'"],
}


def _cli_case(
    case: str, clean_env: Path, upstream: str, pki: Pki, tmp_path: Path
) -> dict[str, str]:
    if case == "closed-port":
        return _process_env(clean_env, "127.0.0.1:1")
    if case == "api-key-on-a-plain-server":
        return _process_env(clean_env, upstream, TEMPORAL_API_KEY=API_KEY)
    if case == "unknown-namespace":
        return {**_process_env(clean_env, upstream), "TEMPORAL_NAMESPACE": "nosuch"}
    bad, _ = _bad_env(case, pki, tmp_path)
    return _process_env(clean_env, upstream, **bad)


@pytest.mark.parametrize("case", sorted(CLI_CASES))
async def test_the_cli_says_one_line_and_exits_2(
    case: str, clean_env: Path, upstream: str, pki: Pki, tmp_path: Path
) -> None:
    env = _cli_case(case, clean_env, upstream, pki, tmp_path)
    done = await stepflow_cli(env, "list")
    line = one_error_line(done, *CLI_CASES[case])
    assert API_KEY not in line


@pytest.mark.parametrize(
    "case",
    [
        "closed-port",
        "missing-cert",
        "unknown-profile",
        "api-key-on-a-plain-server",
        "unknown-namespace",
    ],
)
async def test_the_worker_says_one_line_and_exits_2(
    case: str, clean_env: Path, upstream: str, pki: Pki, tmp_path: Path
) -> None:
    env = _cli_case(case, clean_env, upstream, pki, tmp_path)
    env["STEPFLOW_HOME"] = str(tmp_path / "home")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "worker.py"),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    output = (stdout + stderr).decode().strip().splitlines()
    assert process.returncode == 2, output
    assert len(output) == 1, output
    event = json.loads(output[0])
    assert event["level"] == "error"
    for text in CLI_CASES[case]:
        assert text in event["event"]
    assert API_KEY not in output[0]
