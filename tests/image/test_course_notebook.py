"""The course works in a notebook: every profile package imports, and the optimization
examples a student would run (TSP with networkx, LP with pulp, CP-SAT with ortools)
give the right answers, in a kernel of the student's own server, over its websocket.

The package list comes from the profile the image was built from
(HUBKILN_TEST_PROFILE, set by `invoke validate`); each example is skipped, with the
reason, when the profile does not list its package.
"""

from __future__ import annotations

import json
import os
import re
import textwrap

import pytest

from hubkiln.config.profile import load_profile


@pytest.fixture(scope="module")
def profile_packages() -> list[str]:
    """Distribution names of the profile's python_packages (specifiers stripped)."""
    path = os.environ.get("HUBKILN_TEST_PROFILE")
    if not path:
        pytest.skip("needs HUBKILN_TEST_PROFILE (the profile the image was built from)")
    specs = load_profile(path)["environment"]["python_packages"]
    return [re.split(r"[\s<>=!~;\[@]", spec, maxsplit=1)[0] for spec in specs]


def needs(profile_packages: list[str], name: str) -> None:
    if name not in {p.lower().replace("_", "-") for p in profile_packages}:
        pytest.skip(f"the profile does not list {name}")


IMPORT_ALL = textwrap.dedent("""\
    import importlib, importlib.metadata as md, json
    results = {}
    for dist in DISTS:
        try:
            meta = md.distribution(dist)
            top = (meta.read_text("top_level.txt") or "").split()
            if not top:
                top = sorted({f.parts[0].removesuffix(".py") for f in meta.files or []
                              if len(f.parts) > 1 and f.parts[0].isidentifier()
                              or f.parts[0].endswith(".py")})
            top = [t for t in top if not t.startswith("_")] or top
            for module in top:
                importlib.import_module(module)
            results[dist] = "ok: " + ", ".join(top)
        except Exception as error:
            results[dist] = f"FAILED: {type(error).__name__}: {error}"
    print(json.dumps(results))
""")


def test_every_profile_package_imports(kernel, profile_packages):
    if not profile_packages:
        pytest.skip("the profile lists no python_packages")
    run = kernel.execute(f"DISTS = {profile_packages!r}\n{IMPORT_ALL}", timeout=600)
    assert run.error is None, run.error
    results = json.loads(run.stdout.strip().splitlines()[-1])
    failed = {d: r for d, r in results.items() if not r.startswith("ok")}
    assert not failed, failed
    assert set(results) == set(profile_packages)


def test_default_kernel_is_the_course_kernel(student, kernel):
    """The notebook opens in the profile's named kernel, from the students' environment."""
    run = kernel.execute("import sys; print(sys.prefix)")
    assert run.error is None, run.error
    assert run.stdout.strip() == "/opt/hubkiln/user"
    status, _, text = student.client.request("GET", f"/user/{student.name}/api/kernelspecs")
    assert status == 200, text[:300]
    specs = json.loads(text)
    default = specs["kernelspecs"][specs["default"]]["spec"]["display_name"]
    path = os.environ.get("HUBKILN_TEST_PROFILE")
    if path:
        assert default == load_profile(path)["environment"]["kernel_display_name"]


TSP = textwrap.dedent("""\
    import math, random
    import networkx as nx
    from networkx.algorithms import approximation as approx
    n = 8
    points = [(math.cos(2 * math.pi * k / n), math.sin(2 * math.pi * k / n)) for k in range(n)]
    order = list(range(n))
    random.Random(7).shuffle(order)  # the cities come in a scrambled order
    G = nx.Graph()
    for i in order:
        for j in order:
            if i < j:
                G.add_edge(i, j, weight=math.dist(points[i], points[j]))
    tour = approx.traveling_salesman_problem(G, cycle=True)
    length = sum(G[a][b]["weight"] for a, b in zip(tour, tour[1:]))
    print(len(set(tour)), round(length, 6), round(n * 2 * math.sin(math.pi / n), 6))
""")


def test_tsp_with_networkx(kernel, profile_packages):
    """Eight cities on a circle: the optimal tour is the circle itself."""
    needs(profile_packages, "networkx")
    run = kernel.execute(TSP)
    assert run.error is None, run.error
    cities, length, optimum = run.stdout.split()
    assert int(cities) == 8
    assert float(length) == pytest.approx(float(optimum), abs=1e-6)


LP = textwrap.dedent("""\
    import pulp
    model = pulp.LpProblem("production", pulp.LpMaximize)
    x = pulp.LpVariable("x", lowBound=0)
    y = pulp.LpVariable("y", lowBound=0)
    model += 3 * x + 2 * y
    model += x + y <= 4
    model += x + 3 * y <= 6
    model += x <= 3
    status = model.solve(pulp.PULP_CBC_CMD(msg=False))
    print(pulp.LpStatus[status], x.value(), y.value(), pulp.value(model.objective))
""")


def test_lp_with_pulp(kernel, profile_packages):
    """max 3x + 2y, x + y <= 4, x + 3y <= 6, x <= 3: optimum 11 at (3, 1), by CBC."""
    needs(profile_packages, "pulp")
    run = kernel.execute(LP)
    assert run.error is None, run.error
    status, x, y, objective = run.stdout.split()
    assert status == "Optimal"
    assert (float(x), float(y), float(objective)) == pytest.approx((3, 1, 11))


CP_SAT = textwrap.dedent("""\
    from ortools.sat.python import cp_model
    model = cp_model.CpModel()
    x = model.new_int_var(0, 10, "x")
    y = model.new_int_var(0, 10, "y")
    model.add(x + y <= 10)
    model.add(x - y >= 2)
    model.maximize(2 * x + 3 * y)
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1
    status = solver.solve(model)
    print(solver.status_name(status), solver.value(x), solver.value(y),
          int(solver.objective_value))
""")


def test_cp_sat_with_ortools(kernel, profile_packages):
    """max 2x + 3y, x + y <= 10, x - y >= 2 over integers 0..10: optimum 24 at (6, 4)."""
    needs(profile_packages, "ortools")
    run = kernel.execute(CP_SAT)
    assert run.error is None, run.error
    assert run.stdout.split() == ["OPTIMAL", "6", "4", "24"]


def test_a_failing_cell_reports_its_error(kernel):
    """The checks above can fail: an exception in a cell comes back as an error."""
    run = kernel.execute("raise ValueError('on purpose')")
    assert run.error == "ValueError: on purpose"
