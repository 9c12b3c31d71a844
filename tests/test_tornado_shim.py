"""Every private name of Tornado (and of the standard library) the server relies on still exists: a release
that drops one fails here, by name, not in production."""

from __future__ import annotations

import importlib
import inspect
import re

import pytest
import tornado.httpserver
import tornado.iostream
import tornado.tcpserver
import tornado.websocket

from mcprt.handlers.wire import TORNADO_INTERNALS


def _resolve(dotted: str):
    parts = dotted.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for name in parts[split:]:
            target = getattr(target, name)
        return target
    raise ImportError(dotted)


INSTANCE_ATTRIBUTES = {  # set in __init__, so looked for in the source of the class's module
    "_message_bytes_in", "_message_bytes_out", "_wire_bytes_out", "_frame_compressed", "_compressor",
    "_fragmented_message_buffer", "_fragmented_message_opcode", "_decompressor", "_state",
    "_write_buffer", "_read_buffer", "_read_buffer_size", "_sockets", "_handlers", "_processes",
}


@pytest.mark.parametrize("dotted", sorted(TORNADO_INTERNALS))
def test_each_private_name_still_exists(dotted):
    owner, _, name = dotted.rpartition(".")
    if name in INSTANCE_ATTRIBUTES:
        source = inspect.getsource(inspect.getmodule(_resolve(owner)))
        assert f"self.{name} =" in source or f"self.{name}:" in source, dotted
    else:
        assert callable(_resolve(dotted)) or isinstance(_resolve(dotted), type), dotted


def test_nothing_outside_the_list_reaches_into_tornado():
    """The private names the server's own code uses on Tornado objects are all listed."""
    listed = {d.rpartition(".")[2] for d in TORNADO_INTERNALS}
    from mcprt import transport
    from mcprt.handlers import sockets, wire, ws
    source = "".join(inspect.getsource(m) for m in (wire, transport, sockets, ws))
    for cls in (tornado.websocket.WebSocketProtocol13, tornado.iostream.IOStream, tornado.iostream.BaseIOStream,
                tornado.tcpserver.TCPServer, tornado.httpserver.HTTPServer, tornado.websocket.WebSocketHandler,
                tornado.iostream._StreamBuffer):
        private = {n for n in vars(cls) if n.startswith("_") and not n.startswith("__")}
        used = {n for n in private if re.search(rf"\.{n}\b|\n +def {n}\(", source)}
        assert used <= listed, used - listed
