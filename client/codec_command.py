"""`stepflow codec-server`: decrypt runs for the Web UI and the `temporal` CLI."""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

from stepflow.client.cli_common import EXIT_OK, UsageError, err
from stepflow.runtime.codec_server import DEFAULT_PORT, CodecServerError, build_codec_server
from stepflow.runtime.encryption import describe_encryption
from stepflow.runtime.payload_storage import describe_store
from stepflow.runtime.settings import get_settings


async def cmd_codec_server(args: argparse.Namespace) -> int:
    settings = get_settings()
    try:
        server = build_codec_server(settings, host=args.host, port=args.port, origins=args.origin)
        server.start()
    except CodecServerError as error:
        raise UsageError(str(error)) from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    origins = ", ".join(server.origins) or "none (only non-browser clients)"
    err.print(f"codec server on {server.url} (Ctrl-C stops it)", highlight=False)
    err.print(f"  encryption: {describe_encryption(settings)}", highlight=False)
    err.print(f"  stored payloads: {describe_store(settings)}", highlight=False)
    err.print(f"  browser origins: {origins}", highlight=False)
    try:
        await stop.wait()
    finally:
        await asyncio.to_thread(server.stop)
    err.print("codec server stopped")
    return EXIT_OK


def add_codec_server_command(sub: Any) -> None:
    p = sub.add_parser(
        "codec-server",
        help="decrypt runs for the Web UI and the temporal CLI (needs STEPFLOW_CODEC_SERVER_TOKEN)",
        description="Serve Temporal's codec server protocol (POST /decode, /encode) with the "
        "configured encryption keys and payload store. Every request needs the token "
        "STEPFLOW_CODEC_SERVER_TOKEN: as `Authorization: Bearer TOKEN`, or in the endpoint's "
        "path (http://HOST:PORT/TOKEN) for the Web UI.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    p.add_argument(
        "--origin",
        action="append",
        metavar="URL",
        help="a Web UI origin allowed to call it, e.g. https://temporal.example.com; repeat for "
        "more (default: STEPFLOW_CODEC_SERVER_ORIGINS, else the origin of STEPFLOW_UI_URL)",
    )
    p.set_defaults(handler=cmd_codec_server)
