"""The package arrows of DESIGN.md, enforced: every project import points down the table.

    hsmproxy/     the application                          -> everything
    chaos/        chaos sessions                           -> wire, faults, forkserver, proxy, sim, diagrams
    diagrams/     sequence diagrams from traces            -> wire, faults, proxy.core, proxy.addons
    proxy/addons  hooks plugged into the shells            -> wire, faults, proxy.core, proxy.trio
    proxy/trio    the trio shells                          -> wire, faults, forkserver, proxy.core
    proxy/core    the sans-IO core                         -> wire, faults
    sim/          the simulated actors                     -> wire, forkserver
    faults/       plans and sans-IO decisions              -> wire
    wire/         the codec and the framer                 -> nothing of ours
    forkserver/   fork instead of exec for our own CLI     -> nothing of ours

Project imports sit at module top; the only function-level ones allowed are listed in
``LAZY_ALLOWED`` with the reason.
"""

from __future__ import annotations

import ast

import pytest

from tests.paths import ROOT

PACKAGES = ("wire", "faults", "forkserver", "proxy", "sim", "diagrams", "chaos", "hsmproxy")

ALLOWED: dict[str, frozenset[str]] = {
    "wire": frozenset({"wire"}),
    # Process starting, used by the node (its signer), the proxy's wrapper (its signer) and the
    # chaos runner (the node): below all of them, so it imports nothing of ours.
    "forkserver": frozenset({"forkserver"}),
    "faults": frozenset({"wire", "faults"}),
    "sim": frozenset({"wire", "forkserver", "sim"}),
    "proxy.core": frozenset({"wire", "faults", "proxy.core"}),
    "proxy.trio": frozenset({"wire", "faults", "forkserver", "proxy.core", "proxy.trio"}),
    "proxy.addons": frozenset({"wire", "faults", "proxy.core", "proxy.trio", "proxy.addons"}),
    # diagrams: reads traces (proxy.addons.trace), names what the shadow tracks (proxy.core) and
    # connections as fault events do (faults); the chaos report and `hsmproxy decode --mermaid` draw with it
    "diagrams": frozenset({"wire", "faults", "proxy.core", "proxy.addons", "diagrams"}),
    "chaos": frozenset({"wire", "faults", "forkserver", "proxy.core", "proxy.trio", "proxy.addons", "sim", "diagrams",
                        "chaos"}),
    "hsmproxy": frozenset({"wire", "faults", "forkserver", "proxy.core", "proxy.trio", "proxy.addons", "sim",
                           "diagrams", "chaos",
                           "hsmproxy"}),
}

# module -> why it may import project code inside a function
LAZY_ALLOWED = {
    "hsmproxy.cli": "per-command dispatch: `hsmproxy wrap --version` runs on every lightningd start",
    "hsmproxy.commands.wrap": "the --version fast path answers before trio and the relay are imported",
    "hsmproxy.commands.chaos": "the HTML report draws with matplotlib, 0.9 s to import: only `chaos --html` pays it",
    "sim.signer_proc": "`sim-signer --version` is lightningd's start-up check when the simulator stands in for hsmd",
    "hsmproxy.pyln_plugin": "pytest loads it into every run where hsmproxy[cln] is installed; it costs nothing "
    "unless --hsmproxy is given",
}


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] not in PACKAGES:
        return None
    if parts[0] == "proxy":
        return ".".join(parts[:2]) if len(parts) > 1 and parts[1] in ("core", "trio", "addons") else "proxy"
    return parts[0]


def source_modules() -> list[tuple[str, ast.Module]]:
    out = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
            out.append((name, ast.parse(path.read_text(), str(path))))
    return out


MODULES = source_modules()


def imported_modules(module: str, tree: ast.Module, *, is_package: bool):
    """(imported module, line, at module top?) for every import in ``tree``."""
    top_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, id(node) in top_level
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from proxy.core import hooks` imports proxy.core.hooks
            for alias in node.names:
                yield f"{target}.{alias.name}", node.lineno, id(node) in top_level


def _is_package(name: str) -> bool:
    return (ROOT / name.replace(".", "/") / "__init__.py").exists()


def test_every_package_is_scanned():
    found = {layer_of(name) for name, _ in MODULES}
    assert set(ALLOWED) <= found


@pytest.mark.parametrize("module,tree", MODULES, ids=[name for name, _ in MODULES])
def test_imports_point_down_the_table(module, tree):
    source_layer = layer_of(module)
    if source_layer == "proxy":  # proxy/__init__.py: a docstring only
        return
    bad = []
    for target, line, _ in imported_modules(module, tree, is_package=_is_package(module)):
        target_layer = layer_of(target)
        if target_layer is None or target_layer == "proxy":
            continue
        if target_layer not in ALLOWED[source_layer]:
            bad.append(f"{module}:{line} imports {target} ({source_layer} -> {target_layer})")
    assert not bad, "arrows the layering table forbids:\n" + "\n".join(bad)


@pytest.mark.parametrize("module,tree", MODULES, ids=[name for name, _ in MODULES])
def test_project_imports_at_module_top(module, tree):
    if module in LAZY_ALLOWED:
        return
    hidden = [
        f"{module}:{line} imports {target} inside a function or block"
        for target, line, top in imported_modules(module, tree, is_package=_is_package(module))
        if not top and layer_of(target) is not None
    ]
    assert not hidden, "project imports must sit at module top:\n" + "\n".join(hidden)


def test_the_checker_catches_an_upward_arrow():
    tree = ast.parse("import chaos.runner\nfrom proxy.core import hooks\n")
    targets = [t for t, _, _ in imported_modules("wire.codec", tree, is_package=False)]
    assert [layer_of(t) for t in targets] == ["chaos", "proxy.core"]
    assert not {layer_of(t) for t in targets} <= ALLOWED["wire"]
