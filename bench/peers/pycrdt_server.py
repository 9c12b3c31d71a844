"""pycrdt-websocket's WebsocketServer behind its ASGIServer, served by Hypercorn (as its documentation
shows), rooms made on demand, no store. Run with the pycrdt venv's python:
`.venv-pycrdt/bin/python pycrdt_server.py [PORT]`; prints the port once listening, stops on SIGTERM."""

import asyncio
import signal
import socket
import sys

from hypercorn.asyncio import serve
from hypercorn.config import Config
from pycrdt.websocket import ASGIServer, WebsocketServer


async def main(port: int) -> None:
    listener = socket.create_server(("127.0.0.1", port))
    config = Config()
    config.bind = [f"fd://{listener.fileno()}"]
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with WebsocketServer() as rooms:
        print(listener.getsockname()[1], flush=True)  # connections wait in the backlog until serve accepts them
        await serve(ASGIServer(rooms), config, shutdown_trigger=stop.wait)


if __name__ == "__main__":
    try:
        asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
    except asyncio.CancelledError:  # WebsocketServer's stop cancels its task group, and with it main()
        pass
