"""The shape of the code: rooms on floors with every import pointing down (the ladder's subpackages, then the
stages, then the Ray layer), no import circle (imports inside functions and `if TYPE_CHECKING:` blocks counted), few
modules at the ladder's top level, and small units (files and functions)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("ladder", "stages", "cluster")
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60
MAX_CONTROLLER_LINES = 220  # the controller is the transition loop; its phases' handlers live beside it
MAX_TOP_LEVEL_MODULES = 8
# The floors, top to bottom: a room (a subpackage or top-level module of `ladder/`, or `stages`, or `cluster`)
# imports only rooms on floors below its own. cli: the user's process; control: the controller actor; judging:
# which judge, and the gate; rung: driving one rung; registry: MLflow; spec: pure data; models and tasks: what is
# trained and on what; progress and errors: the saved state and error text under all; stages: the Ray actors of the
# roles; cluster: the Ray layer (connect, placement, submission).
FLOORS = (("ladder.cli",), ("ladder.control",), ("ladder.judging",), ("ladder.rung",), ("ladder.registry",),
          ("ladder.spec", "ladder.models"), ("ladder.tasks",), ("ladder.progress", "ladder.errors"), ("stages",),
          ("cluster",))


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _owner(name: str, known) -> str:
    """The project module `name` refers to (a module, or a name inside one); "" when not ours."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name


def _type_checking(node) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports(module: str, path: Path, known, module_level: bool, source: str = "") -> set[str]:
    """Project modules `module` imports: at module level only (what runs on import), or anywhere (functions and
    `if TYPE_CHECKING:` blocks too: a type-only import still ties two modules together)."""
    found, todo = set(), list(ast.parse(source or path.read_text()).body)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    while todo:
        node = todo.pop()
        if module_level and (_type_checking(node) or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))):
            continue
        if isinstance(node, ast.Import):
            found.update(_owner(a.name, known) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            found.update(_owner(f"{base}.{a.name}", known) or _owner(base, known) for a in node.names)
        else:
            todo.extend(ast.iter_child_nodes(node))
    return found - {"", module}


def graph(module_level: bool) -> dict[str, set[str]]:
    known = modules()
    return {m: imports(m, p, known, module_level) for m, p in known.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle, each once (as found by a depth-first walk)."""
    found, state = [], {}

    def walk(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                walk(nxt, path + [nxt])
        state[node] = "done"

    for start in sorted(edges):
        if start not in state:
            walk(start, [start])
    return found


def room(module: str) -> str:
    """The room a module lives in: `ladder.<subpackage or top-level module>`, `stages` or `cluster`."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "ladder" and len(parts) > 1 else parts[0]


def floor_of(module: str) -> int:
    return next(i for i, rooms in enumerate(FLOORS) if room(module) in rooms)


def test_the_import_graph_has_no_circle():
    assert circles(graph(module_level=False)) == []


def test_a_type_only_import_that_closes_a_circle_is_found():
    """`if TYPE_CHECKING:` imports are counted: a phase handler typed against the controller that imports it closes
    a circle (the one this layout removed, with the `PhaseContext` protocol)."""
    known = modules()
    handler = known["ladder.control.train_phase"]
    typed = handler.read_text() + "\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ladder.control.controller " \
                                  "import LadderController\n"
    edges = graph(module_level=False)
    edges["ladder.control.train_phase"] = imports("ladder.control.train_phase", handler, known, False, typed)
    assert ["ladder.control.controller", "ladder.control.train_phase", "ladder.control.controller"] in circles(edges)


def test_every_room_is_on_a_floor_and_imports_point_down():
    """The house drawn from the imports (all of them): no arrow runs up or sideways between rooms."""
    edges = graph(module_level=False)
    assert {room(m) for m in edges} == {r for rooms in FLOORS for r in rooms}
    upward = sorted((m, d) for m, deps in edges.items() for d in deps
                    if room(m) != room(d) and floor_of(d) <= floor_of(m))
    assert upward == []
    assert len(FLOORS) <= 10


def test_the_ladder_has_few_modules_at_its_top_level():
    top = sorted(p.name for p in (ROOT / "ladder").glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


def test_circles_are_found():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_stages_and_cluster_import_nothing_of_the_ladder():
    leaks = sorted((m, d) for m, deps in graph(module_level=False).items() if m.startswith(("stages", "cluster"))
                   for d in deps if d.startswith("ladder"))
    assert leaks == []


def test_the_graph_sees_function_level_imports():
    everything, top = graph(module_level=False), graph(module_level=True)
    resolve = "ladder.judging.resolve"
    assert "ladder.registry.registry" in everything[resolve] and "ladder.registry.registry" not in top[resolve]


def test_no_file_is_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in modules().values()
            if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES}
    assert long == {}


def test_no_function_is_over_60_lines():
    long = {}
    for path in modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(ROOT)}:{node.name}"] = lines
    assert long == {}


def test_the_controller_is_a_thin_transition_function():
    """Load, run the phase's handler, save: the handlers are the phase modules' (train_phase, gate_phase), which
    see the controller through the `PhaseContext` protocol only."""
    from ladder.control.controller import LadderController
    from ladder.progress import Phase

    from ladder.control.phase import PhaseContext

    assert len((ROOT / "ladder" / "control" / "controller.py").read_text().splitlines()) <= MAX_CONTROLLER_LINES
    assert set(LadderController.HANDLERS) == set(Phase) - {Phase.DONE}
    assert {h.__module__ for h in LadderController.HANDLERS.values()} == {"ladder.control.train_phase",
                                                                        "ladder.control.gate_phase"}
    members = {n for n in vars(PhaseContext) if not n.startswith("_")} | set(PhaseContext.__annotations__)
    assert all(hasattr(LadderController, n) or n in PhaseContext.__annotations__ for n in members)


def test_tag_names_are_written_in_one_place():
    """Every `ladder.*` MLflow tag name is a constant of `ladder/registry/tags.py`; no other module of the ladder
    spells one out (a tag renamed in one place only would split a ladder's records)."""
    from ladder.registry.tags import Tag

    names = {v for k, v in vars(Tag).items() if k.isupper()}
    spelled = sorted(f"{path.relative_to(ROOT)}:{node.lineno}" for path in modules().values()
                     if path.name != "tags.py"
                     for node in ast.walk(ast.parse(path.read_text()))
                     if isinstance(node, ast.Constant) and node.value in names)
    assert spelled == []
