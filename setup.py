from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
requirements = [line.strip() for line in (here / "requirements.txt").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
TEST_ONLY = ("pytest", "hypothesis", "playwright")
BENCH_ONLY = ("websockets", "psutil")  # the load client of `python -m mcprt bench` (the tests use them too)
OPTIONAL = ("uvloop",)  # --loop uvloop
runtime = [r for r in requirements if not r.startswith(TEST_ONLY + BENCH_ONLY + OPTIONAL)]
bench = [r for r in requirements if r.startswith(BENCH_ONLY)]
uvloop = [r for r in requirements if r.startswith(OPTIONAL)]

DATA = {"schemas": ["*.json"], "migrations": ["sqlite/*.sql", "postgres/*.sql"], "static": ["*.html", "*.js", "*.css", "*.svg", "*.ico"]}

setup(
    name="mcprt",
    version="0.1.0",
    description="A real-time collaborative editing server: sessions over REST, shared documents over WebSocket",
    long_description=(here / "README.md").read_text(encoding="utf-8") if (here / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    license="MIT",
    # schemas/, migrations/ and static/ sit beside the package in a checkout; an installed mcprt
    # carries them inside as mcprt/_data/<name> (see mcprt.resource_dir).
    packages=find_packages(include=["mcprt", "mcprt.*"]) + [f"mcprt._data.{name}" for name in DATA],
    package_dir={f"mcprt._data.{name}": name for name in DATA},
    package_data={f"mcprt._data.{name}": patterns for name, patterns in DATA.items()},
    install_requires=runtime,
    extras_require={"bench": bench, "uvloop": uvloop, "test": [r for r in requirements if r not in runtime]},
    entry_points={"console_scripts": ["mcprt = mcprt.__main__:main"]},
)
