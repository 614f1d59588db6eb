"""Connecting to Temporal through `temporalio.envconfig`.

TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, TEMPORAL_TLS_*,
TEMPORAL_PROFILE and the TOML config file (TEMPORAL_CONFIG_FILE, default
`~/.config/temporalio/temporal.toml`) all work as in the `temporal` CLI, so the
same worker runs against a laptop, a cluster or Temporal Cloud.

Settings that cannot work (a certificate file that is not there, a profile the
file lacks, a file that is not TOML, a namespace the server does not have) and
servers that cannot be reached are `ConnectionFailed`, one line that names the
setting, never a gRPC stack trace. No message holds the API key.
"""

from __future__ import annotations

import os
import sys
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Any

import structlog
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client
from temporalio.envconfig import ClientConfigProfile, ClientConfigTLS
from temporalio.runtime import Runtime
from temporalio.service import RPCError, RPCStatusCode

from stepflow.runtime.encryption import EncryptionError
from stepflow.runtime.payload_storage import PayloadStoreError
from stepflow.runtime.plugin import StepflowPlugin
from stepflow.runtime.settings import Settings, get_settings
from stepflow.runtime.telemetry import TelemetryError

DEFAULT_ADDRESS = "localhost:7233"
CONFIG_FILE_ENV = "TEMPORAL_CONFIG_FILE"
PROFILE_ENV = "TEMPORAL_PROFILE"

log = structlog.get_logger("stepflow.connection")

# (ClientConfigTLS field, what it is, its variables, its key in a profile's [tls] table, PEM label)
_TLS_FILES = (
    ("client_cert", "client certificate", "TEMPORAL_TLS_CLIENT_CERT", "client_cert", "CERTIFICATE"),
    ("client_private_key", "client key", "TEMPORAL_TLS_CLIENT_KEY", "client_key", "PRIVATE KEY"),
    (
        "server_root_ca_cert",
        "server CA certificate",
        "TEMPORAL_TLS_SERVER_CA_CERT",
        "server_ca_cert",
        "CERTIFICATE",
    ),
)
_TRUE = {"1", "true", "yes", "on"}


class ConnectionFailed(RuntimeError):
    """Temporal could not be reached or the connection settings are wrong."""


def config_file() -> tuple[Path, bool]:
    """The TOML file profiles come from, and whether TEMPORAL_CONFIG_FILE named it.

    As the SDK finds it: TEMPORAL_CONFIG_FILE, else `temporalio/temporal.toml` in
    the user's configuration directory.
    """
    named = os.environ.get(CONFIG_FILE_ENV, "").strip()
    if named:
        return Path(named).expanduser(), True
    if sys.platform == "win32":
        base = Path(os.environ.get("APPDATA") or Path.home() / "AppData" / "Roaming")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "temporalio" / "temporal.toml", False


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _read_config_file(profile: str | None) -> tuple[dict[str, Any], str]:
    """The profiles of the TOML file (empty without one), checked; and how to name the file."""
    path, named = config_file()
    where = f"{CONFIG_FILE_ENV}={path}" if named else f"the Temporal config file {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if named:
            raise ConnectionFailed(f"{where}: no such file") from None
        text = ""
    except (OSError, UnicodeDecodeError) as err:
        raise ConnectionFailed(f"{where}: cannot read it: {_one_line(err)}") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConnectionFailed(f"{where} is not valid TOML: {_one_line(err)}") from None
    profiles = document.get("profile", {})
    if not isinstance(profiles, dict):
        raise ConnectionFailed(f"{where}: `profile` must be a table, as in [profile.default]")
    if profile is not None and profile not in profiles:
        asked = f"profile {profile!r} ({PROFILE_ENV} or --profile)"
        known = ", ".join(sorted(profiles)) or "none"
        raise ConnectionFailed(
            f"{asked}: {where} has no such profile (it has: {known})"
            if text
            else f"{asked}: there is no config file ({path}); "
            f"set {CONFIG_FILE_ENV} to the file that has the profile"
        )
    return profiles, where


def _check_tls_files(tls: ClientConfigTLS | None, profile: str, where: str) -> None:
    """Each certificate and key file exists and holds PEM of the right kind."""
    if tls is None:
        return
    for field, what, env, key, label in _TLS_FILES:
        source = getattr(tls, field)
        if source is None:
            continue
        if isinstance(source, Path):
            setting = (
                f"{env}_PATH"
                if os.environ.get(f"{env}_PATH")
                else f"tls.{key}_path of profile {profile!r} in {where}"
            )
            try:
                data = source.expanduser().read_bytes()
            except OSError as err:
                raise ConnectionFailed(
                    f"{setting}: cannot read the {what} {str(source)!r}: "
                    f"{err.strerror or _one_line(err)}"
                ) from None
        else:
            setting = (
                f"{env}_DATA"
                if os.environ.get(f"{env}_DATA")
                else f"tls.{key}_data of profile {profile!r} in {where}"
            )
            data = source if isinstance(source, bytes) else source.encode()
        if f"-----BEGIN {label}".encode() not in data and not (
            label == "PRIVATE KEY" and b"PRIVATE KEY-----" in data
        ):
            raise ConnectionFailed(
                f"{setting}: the {what} is not PEM (no -----BEGIN {label}----- line)"
            )
    if (tls.client_cert is None) != (tls.client_private_key is None):
        have, lacks = (
            ("client certificate", "TEMPORAL_TLS_CLIENT_KEY_PATH")
            if tls.client_private_key is None
            else ("client key", "TEMPORAL_TLS_CLIENT_CERT_PATH")
        )
        raise ConnectionFailed(
            f"a {have} without its pair: mTLS needs both a certificate and its key "
            f"(set {lacks}, or the profile's tls.{lacks.removeprefix('TEMPORAL_TLS_').lower()})"
        )


def _notes(profiles: dict[str, Any], profile: str, where: str) -> list[str]:
    """Settings the SDK ignores, to warn about (and to explain a failed connection)."""
    notes = []
    table = profiles.get(profile)
    tls_table = table.get("tls") if isinstance(table, dict) else None
    if os.environ.get("TEMPORAL_TLS_DISABLE_HOST_VERIFICATION", "").strip().lower() in _TRUE or (
        isinstance(tls_table, dict) and tls_table.get("disable_host_verification") is True
    ):
        notes.append(
            "TLS host verification stays on: the Temporal Python SDK ignores "
            "TEMPORAL_TLS_DISABLE_HOST_VERIFICATION (tls.disable_host_verification); set "
            "TEMPORAL_TLS_SERVER_NAME to a name the server's certificate carries instead"
        )
    if profile not in profiles:
        return notes
    try:
        ClientConfigProfile.load(profile=profile, config_file_strict=True)
    except Exception as err:  # an unknown key, likely a misspelt one the SDK skips
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        notes.append(f"{where}: {lines[-1] if lines else err} (ignored)")
    return notes


def _load(profile: str | None) -> tuple[dict[str, Any], list[str]]:
    profile = profile or os.environ.get(PROFILE_ENV, "").strip() or None
    profiles, where = _read_config_file(profile)
    name = profile or "default"
    try:
        loaded = ClientConfigProfile.load(profile=profile)
    except Exception as err:
        raise ConnectionFailed(f"bad Temporal connection settings: {_one_line(err)}") from None
    _check_tls_files(loaded.tls, name, where)
    try:
        config: dict[str, Any] = dict(loaded.to_client_connect_config())
    except Exception as err:
        raise ConnectionFailed(f"bad Temporal connection settings: {_one_line(err)}") from None
    if not config.get("target_host"):
        config["target_host"] = DEFAULT_ADDRESS
    return config, _notes(profiles, name, where)


def connect_config(profile: str | None = None) -> dict[str, Any]:
    """The keyword arguments for `Client.connect`, from the environment and config file.

    `profile` (default: TEMPORAL_PROFILE, else `default`) picks the file's
    profile; TEMPORAL_* variables override what it says. An API key turns TLS
    on unless TEMPORAL_TLS (tls.disabled) says otherwise.

    Raises:
        ConnectionFailed: settings that cannot work, in one line naming the setting.
    """
    return _load(profile)[0]


def _hint(text: str, config: dict[str, Any]) -> str:
    """What a failed connection most likely means, and which setting to look at."""
    tls = config.get("tls")
    if "InvalidContentType" in text or "InvalidMessage" in text:
        return (
            "it does not answer with TLS, but TLS is on (TEMPORAL_API_KEY or TEMPORAL_TLS*): "
            "use its TLS address, or set TEMPORAL_TLS=false for a server without TLS"
        )
    if "NotValidForName" in text:
        return (
            "its TLS certificate is not valid for that name: connect to a name the certificate "
            "carries, or set TEMPORAL_TLS_SERVER_NAME to one"
        )
    if "Expired" in text and "InvalidCertificate" in text:
        return "its TLS certificate has expired (or is not valid yet)"
    if "InvalidCertificate" in text or "UnknownIssuer" in text:
        return (
            "its TLS certificate is not signed by a CA this machine trusts: set "
            "TEMPORAL_TLS_SERVER_CA_CERT_PATH to the CA certificate that signed it"
        )
    if "code: Unauthenticated" in text or "code: PermissionDenied" in text:
        return (
            "it refused the credentials: check TEMPORAL_API_KEY (or the client certificate, "
            "TEMPORAL_TLS_CLIENT_CERT_PATH) and that they are for this namespace"
        )
    closed = ("broken pipe", "reset", "closed", "unexpectedeof", "transport error")
    if any(words in text.lower() for words in closed):
        if tls:
            return (
                "it closed the connection after the TLS handshake: it may want a client "
                "certificate it trusts (TEMPORAL_TLS_CLIENT_CERT_PATH and "
                "TEMPORAL_TLS_CLIENT_KEY_PATH)"
            )
        return (
            "it closed the connection: if it wants TLS, set TEMPORAL_TLS=true (Temporal Cloud: "
            "TEMPORAL_API_KEY, or the client certificate settings)"
        )
    if "Timeout expired" in text or "timed out" in text.lower():
        return "no answer in time: check TEMPORAL_ADDRESS, and that the network reaches it"
    return (
        "is the server running? Start one with `make demo` or `python worker.py --dev`, "
        "or point TEMPORAL_ADDRESS (or a profile, TEMPORAL_PROFILE) at yours"
    )


async def _check_namespace(client: Client, address: str) -> None:
    """A namespace the server lacks fails here, not as a worker's stack trace later."""
    try:
        await client.workflow_service.describe_namespace(
            DescribeNamespaceRequest(namespace=client.namespace), timeout=timedelta(seconds=10)
        )
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise ConnectionFailed(
                f"Temporal at {address} has no namespace {client.namespace!r} "
                "(TEMPORAL_NAMESPACE, or the profile's namespace): create it "
                f"(`temporal operator namespace create --namespace {client.namespace}`) "
                "or name one it has"
            ) from None
        if err.status == RPCStatusCode.UNAUTHENTICATED:
            raise ConnectionFailed(
                f"Temporal at {address} (namespace {client.namespace}) "
                f"{_hint('code: Unauthenticated', {})}: {_one_line(err.message)}"
            ) from None
        # Anything else (a role without DescribeNamespace, say) shows at the first real call.


async def connect(
    profile: str | None = None, *, settings: Settings | None = None, runtime: Runtime | None = None
) -> Client:
    """A client with Stepflow's plugin (`runtime.plugin`): its data converter and interceptors.

    Workers and clients connect through here, so they share the payload store
    that large results are kept in, encrypt and trace alike; a worker built
    from the client is a Stepflow worker. `runtime`: the worker's, when it
    serves metrics.

    Raises:
        ConnectionFailed: with the address, the setting to look at and a hint,
            instead of a gRPC stack trace; or unusable payload store settings.
    """
    config, notes = _load(profile)
    try:
        plugin = StepflowPlugin(settings or get_settings())
    except TelemetryError as err:
        raise ConnectionFailed(str(err)) from None
    try:
        plugin.converter  # noqa: B018 - made now, so that bad settings fail here, in one line
    except PayloadStoreError as err:
        raise ConnectionFailed(f"bad payload store settings: {err}") from err
    except EncryptionError as err:  # never with key material: the codec's messages hold ids only
        raise ConnectionFailed(str(err)) from None
    address = config["target_host"]
    try:
        client = await Client.connect(**config, plugins=[plugin], runtime=runtime)
    except Exception as err:
        text = _one_line(err)
        also = "".join(f"; note: {note}" for note in notes)
        raise ConnectionFailed(
            f"cannot connect to Temporal at {address} "
            f"(namespace {config.get('namespace', 'default')}): {_hint(text, config)} "
            f"(error: {text[:400]}){also}"
        ) from err
    await _check_namespace(client, address)
    for note in notes:
        log.warning(note)
    return client
