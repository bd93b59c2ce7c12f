"""zsdeploy's version, read once from the installed package's metadata (pyproject.toml is its only source)."""
from __future__ import annotations

from importlib import metadata

__all__ = ["VERSION", "PRODUCER"]

try:
    VERSION = metadata.version("zsdeploy")
except metadata.PackageNotFoundError:  # a source tree used without installing it
    VERSION = "0+unknown"

#: how exported graphs, bundles and engine sidecars name what wrote them
PRODUCER = f"zsdeploy-{VERSION}"
