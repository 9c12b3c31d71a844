"""mcprt: a real-time collaborative editing server."""

__version__ = "0.1.0"
