"""The shape of the code: no import circles, the stages import nothing of the ladder at module level (the ladder
drives the stages, never the other way round), and small units (files and functions)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("ladder", "stages", "cluster")
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60
MAX_CONTROLLER_LINES = 220  # the controller is the transition loop; its phases' handlers live beside it


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


def imports(module: str, path: Path, known, module_level: bool) -> set[str]:
    """Project modules `module` imports: at module level only, or anywhere (functions too); never the
    `if TYPE_CHECKING:` blocks, which do not run."""
    found, todo = set(), list(ast.parse(path.read_text()).body)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    while todo:
        node = todo.pop()
        if _type_checking(node) or (module_level and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))):
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


def test_the_import_graph_has_no_circle():
    assert circles(graph(module_level=False)) == []


def test_circles_are_found():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_stages_import_nothing_of_the_ladder_at_module_level():
    leaks = sorted((m, d) for m, deps in graph(module_level=True).items() if m.startswith("stages")
                   for d in deps if d.startswith("ladder"))
    assert leaks == []


def test_the_graph_sees_function_level_imports():
    everything, top = graph(module_level=False), graph(module_level=True)
    assert "ladder.registry" in everything["ladder.judges"] and "ladder.registry" not in top["ladder.judges"]


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
    """Load, run the phase's handler, save: the handlers are the phase modules' (train_phase, gate_phase)."""
    from ladder.controller import LadderController
    from ladder.progress import Phase

    assert len((ROOT / "ladder" / "controller.py").read_text().splitlines()) <= MAX_CONTROLLER_LINES
    assert set(LadderController.HANDLERS) == set(Phase) - {Phase.DONE}
    assert {h.__module__ for h in LadderController.HANDLERS.values()} == {"ladder.train_phase", "ladder.gate_phase"}
