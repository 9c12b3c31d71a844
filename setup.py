from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
requirements = [line.strip() for line in (here / "requirements.txt").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
runtime = [r for r in requirements if not r.startswith(("pytest", "hypothesis", "playwright"))]

setup(
    name="mcprt",
    version="0.1.0",
    description="A real-time collaborative editing server: sessions over REST, shared documents over WebSocket",
    long_description=(here / "README.md").read_text(encoding="utf-8") if (here / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["mcprt", "mcprt.*"]),
    include_package_data=True,
    data_files=[("share/mcprt/schemas", [str(p) for p in sorted(Path("schemas").glob("*.json"))]),
                ("share/mcprt/migrations", [str(p) for p in sorted(Path("migrations").glob("*.sql"))])],
    install_requires=runtime,
    extras_require={"test": [r for r in requirements if r not in runtime]},
    entry_points={"console_scripts": ["mcprt = mcprt.__main__:main"]},
)
