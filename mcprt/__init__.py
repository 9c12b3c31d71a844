"""mcprt: a real-time collaborative editing server."""

from pathlib import Path

__version__ = "0.1.0"


def resource_dir(name: str) -> Path:
    """schemas/, migrations/ or static/: inside the package once installed, beside it in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_data" / name, here.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"mcprt's {name}/ folder is missing (looked in {here / '_data'} and {here.parent})")
