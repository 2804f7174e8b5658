"""The package layers of addon/ and the one door to mitmproxy's internals, read from the source (AST).

A package imports only from the packages below it (LAYERS); only addon/mitm/ may import mitmproxy's
private modules, subclass their classes, read their `_private` names or fetch another addon's object
(`ctx.master.addons.get("view")`). What counts as public is the API mitmproxy documents
(docs/scripts/api-render.py) and what its addon documentation uses. A module over 300 lines says why at
its top (a line `Longer than 300 lines: REASON`).

KNOWN lists what is so today and is to go as the restructuring goes on: the test fails on anything
new, and on an entry of KNOWN that no longer occurs (so that the list only shrinks).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from helpers import ROOT

# package -> the packages of ours it may import besides itself; "" is addon/*.py (main, pipeline,
# startup, __main__), which may import anything
LAYERS: dict[str, set[str] | None] = {
    "mitm": set(),  # a leaf beside the layers: it knows nothing of ours, and any package may use it
    "util": {"mitm"},
    "rules": {"util", "mitm"},
    "tokens": {"util", "rules", "mitm"},
    "exits": {"util", "rules", "tokens", "mitm"},
    "runtime": {"util", "rules", "tokens", "exits", "mitm"},
    "request": {"util", "rules", "tokens", "exits", "runtime", "mitm"},
    "recovery": {"util", "rules", "tokens", "exits", "runtime", "request", "mitm"},
    "guard": {"util", "mitm"},
    "status": {"util", "rules", "tokens", "exits", "runtime", "mitm"},
    "cli": {"util", "rules", "tokens", "exits", "runtime", "request", "recovery", "status", "mitm"},
    "": None,
}
PUBLIC = {  # mitmproxy's documented API, and what its addon docs and examples use
    "mitmproxy", "mitmproxy.addonmanager", "mitmproxy.certs", "mitmproxy.connection", "mitmproxy.coretypes.multidict",
    "mitmproxy.flow", "mitmproxy.http", "mitmproxy.net.server_spec", "mitmproxy.proxy.context",
    "mitmproxy.proxy.server_hooks", "mitmproxy.proxy.mode_specs", "mitmproxy.tcp", "mitmproxy.tls", "mitmproxy.udp",
    "mitmproxy.dns", "mitmproxy.websocket", "mitmproxy.ctx", "mitmproxy.command", "mitmproxy.exceptions",
    "mitmproxy.flowfilter", "mitmproxy.io", "mitmproxy.log", "mitmproxy.types", "mitmproxy.version",
}  # fmt: skip
BOUNDARY = "mitm"
LONG = 300
LONG_REASON = "Longer than 300 lines:"

# (file, problem) as today, each to be removed by the restructuring (issue "The house shows its architecture")
KNOWN: set[tuple[str, str]] = set()  # none left: every module over LONG lines is split


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.what}"


def problems(root: Path) -> list[Problem]:
    found: list[Problem] = []
    for path in sorted((root / "addon").rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        parts = path.relative_to(root / "addon").parts
        package = parts[0] if len(parts) > 1 else ""
        text = path.read_text()
        tree = ast.parse(text)
        found += _imports(root, rel, package, tree)
        if package != BOUNDARY:
            found += _private_use(rel, tree)
        if text.count("\n") > LONG and LONG_REASON not in (ast.get_docstring(tree) or ""):
            found.append(Problem(rel, 1, f"over {LONG} lines without a reason at its top"))
    return found


def _imports(root: Path, rel: str, package: str, tree: ast.Module) -> list[Problem]:
    found = []
    for node in ast.walk(tree):  # TYPE_CHECKING imports too: none may hide a cycle
        if isinstance(node, ast.Import):
            names = [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [(node.module, a.name) for a in node.names]
        else:
            continue
        for module, name in names:
            if module == "addon" and name:
                if not ((root / "addon" / name).is_dir() or (root / "addon" / f"{name}.py").exists()):
                    continue  # a name of addon/__init__.py (__version__): no layer's
                module, name = f"addon.{name}", None
            if module.startswith("addon."):
                target = module.split(".")[1]
                target = target if (root / "addon" / target).is_dir() else ""
                allowed = LAYERS.get(package)
                if allowed is not None and target != package and target not in allowed:
                    found.append(Problem(rel, node.lineno, f"{package} imports {module} ({target or 'top'})"))
            elif module.split(".")[0] == "mitmproxy" and package != BOUNDARY:
                full = f"{module}.{name}" if name else module
                public = full in PUBLIC or (module in PUBLIC and module != "mitmproxy")
                if not public or (name or "").startswith("_"):
                    found.append(Problem(rel, node.lineno, f"private mitmproxy: {full}"))
    return found


def _private_use(rel: str, tree: ast.Module) -> list[Problem]:
    """Subclasses of mitmproxy's classes, `_private` names read off its modules, other addons' objects."""
    from_mitmproxy = set()  # local names bound to mitmproxy modules or their classes
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            from_mitmproxy |= {(a.asname or a.name).split(".")[0] for a in node.names if a.name.startswith("mitmproxy")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mitmproxy"):
            from_mitmproxy |= {a.asname or a.name for a in node.names}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                name = base
                while isinstance(name, ast.Attribute):
                    name = name.value
                if isinstance(name, ast.Name) and name.id in from_mitmproxy:
                    found.append(Problem(rel, node.lineno, f"subclasses mitmproxy's {ast.unparse(base)}"))
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if isinstance(node.value, ast.Name) and node.value.id in from_mitmproxy:
                found.append(Problem(rel, node.lineno, f"private attribute {ast.unparse(node)}"))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr"):
            args = node.args
            if (len(args) >= 2 and isinstance(args[0], ast.Name) and args[0].id in from_mitmproxy
                    and isinstance(args[1], ast.Constant) and str(args[1].value).startswith("_")):  # fmt: skip
                found.append(Problem(rel, node.lineno, f"private attribute via {ast.unparse(node)}"))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
            if "addons" in ast.unparse(node.func.value) and node.args and isinstance(node.args[0], ast.Constant):
                found.append(Problem(rel, node.lineno, f"another addon's object: {ast.unparse(node)}"))
    return found


def test_packages_import_only_downward_and_only_mitm_touches_mitmproxy_internals():
    found = problems(ROOT)
    new = [str(p) for p in found if (p.file, p.what) not in KNOWN]
    gone = sorted(KNOWN - {(p.file, p.what) for p in found})
    assert not new, "\n".join(new)
    assert not gone, f"no longer so (take them out of KNOWN): {gone}"


def test_the_check_finds_each_kind_of_problem(tmp_path):
    """A tree with one of each: the checker must report them all (else the test above proves nothing)."""
    for package in ("tokens", "request", "mitm"):
        (tmp_path / "addon" / package).mkdir(parents=True)
    (tmp_path / "addon" / "pipeline.py").write_text("")
    (tmp_path / "addon" / "tokens" / "up.py").write_text(
        "from addon.request import plan\nfrom addon import pipeline\nfrom addon import __version__\n")
    (tmp_path / "addon" / "request" / "inside.py").write_text(
        "from mitmproxy.proxy.layers import http\n"
        "from mitmproxy.addons.clientplayback import ReplayHandler\n"
        "from mitmproxy import optmanager, ctx\n"
        "class Mine(ReplayHandler):\n    pass\n"
        "x = optmanager._UnconvertedStrings\n"
        "y = getattr(optmanager, '_UnconvertedStrings', None)\n"
        "view = ctx.master.addons.get('view')\n"
        + "z = 1\n" * LONG
    )
    (tmp_path / "addon" / "mitm" / "door.py").write_text(
        "from mitmproxy.proxy.layers import http\nclass L(http.HttpLayer):\n    pass\n"
    )
    found = {(p.file, p.what) for p in problems(tmp_path)}
    assert found == {
        ("addon/tokens/up.py", "tokens imports addon.request (request)"),
        ("addon/tokens/up.py", "tokens imports addon.pipeline (top)"),
        ("addon/request/inside.py", "private mitmproxy: mitmproxy.proxy.layers.http"),
        ("addon/request/inside.py", "private mitmproxy: mitmproxy.addons.clientplayback.ReplayHandler"),
        ("addon/request/inside.py", "private mitmproxy: mitmproxy.optmanager"),
        ("addon/request/inside.py", "subclasses mitmproxy's ReplayHandler"),
        ("addon/request/inside.py", "private attribute optmanager._UnconvertedStrings"),
        ("addon/request/inside.py", "private attribute via getattr(optmanager, '_UnconvertedStrings', None)"),
        ("addon/request/inside.py", "another addon's object: ctx.master.addons.get('view')"),
        ("addon/request/inside.py", f"over {LONG} lines without a reason at its top"),
    }  # and nothing of addon/mitm/door.py: the boundary may
