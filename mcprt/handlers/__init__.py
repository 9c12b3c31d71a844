"""Tornado request handlers: REST (rest.py), the editor WebSocket (ws.py), the demo's static files (static.py)."""
