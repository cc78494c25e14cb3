"""What the simulated students run: the course's first cell and the cells of an active class.

The first cell imports every Python package of the profile and, for a course with a
workload here (the optimization profile solves a small problem), runs it; a student
then runs a light cell every 20 s while active. A failing step is reported by kind
(`failure_kind`), so that the capacity record counts failures of the same cause.
"""

from __future__ import annotations

import re

import aiohttp

#: The course's "small computation" in the first cell, after the imports.
WORKLOADS = {
    "optimization": (
        "import pulp\n"
        "problem = pulp.LpProblem('class_start', pulp.LpMaximize)\n"
        "x, y = pulp.LpVariable('x', 0, 4), pulp.LpVariable('y', 0, 3)\n"
        "problem += 3 * x + 2 * y\nproblem += x + y <= 5\n"
        "problem.solve(pulp.PULP_CBC_CMD(msg=0))\n"
        "assert pulp.value(problem.objective) == 14, pulp.value(problem.objective)\n"),
    "ci": (
        "import networkx as nx\n"
        "assert nx.shortest_path_length(nx.grid_2d_graph(30, 30), (0, 0), (29, 29)) == 58\n"),
}


DEFAULT_WORKLOAD = "assert sum(i * i for i in range(10**6)) == 333332833333500000\n"


ACTIVE_CELL = "sum(i * i for i in range(10**5))"


IMPORT_CELL = """\
import importlib, importlib.metadata as metadata, re
def _norm(name):
    return re.sub(r"[-_.]+", "_", name).lower()
_by_dist = {{}}
for _module, _dists in metadata.packages_distributions().items():
    for _dist in _dists:
        _by_dist.setdefault(_norm(_dist), set()).add(_module)
for _dist in {wanted!r}:
    _modules = _by_dist.get(_dist)
    if not _modules:
        raise ModuleNotFoundError(f"no module of the course package {{_dist}}")
    for _module in ([_dist] if _dist in _modules else sorted(_modules)):
        if not _module.startswith("_"):
            importlib.import_module(_module)
"""


def distribution_names(packages: list[str]) -> list[str]:
    """Normalised distribution names of requirement specifiers (`pulp==3.3.2` -> pulp)."""
    names = []
    for spec in packages:
        match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", spec.strip())
        if match:
            names.append(re.sub(r"[-_.]+", "_", match.group(0)).lower())
    return names


def first_cell(profile_name: str, packages: list[str]) -> str:
    """The first cell: import the course's packages, then the course's small workload."""
    return (IMPORT_CELL.format(wanted=distribution_names(packages))
            + WORKLOADS.get(profile_name, DEFAULT_WORKLOAD))


class StepFailed(Exception):
    """A step of a student's session did not succeed; `kind` groups failures alike."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind, self.detail = kind, detail


def failure_kind(error: BaseException) -> str:
    """How a failure is counted: HTTP status, timeout, websocket error text, ... (pure)."""
    if isinstance(error, StepFailed):
        return error.kind
    if isinstance(error, aiohttp.WSServerHandshakeError):
        return f"websocket handshake HTTP {error.status}"
    if isinstance(error, aiohttp.ClientResponseError):
        return f"HTTP {error.status}"
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, aiohttp.ClientConnectionError):
        return f"connection: {type(error).__name__}"
    return f"error: {type(error).__name__}"
