"""The shape of the core: a facade over small machines, handlers behind a narrow port,
typed key access. These rules are what keeps the station from growing back into one
module split across files."""

from __future__ import annotations

import ast
import importlib
import inspect
import pathlib
from datetime import timedelta

import pytest

from twin.core import actions as A
from twin.core import ports
from twin.core.auth import AuthCache, LocalList
from twin.core.handlers import HANDLERS
from twin.core.keys import ConfigKeys
from twin.core.ops import NS
from twin.core.reservation import Reservations
from twin.core.settings import FALLBACKS, Settings
from twin.profiles import load_profile

from .harness import Harness

CORE = pathlib.Path(__file__).resolve().parents[2] / "twin" / "core"
HANDLER_MODULES = ["core", "local_list", "reservation", "trigger", "smart_charging", "firmware"]
# A function-level import that is not the station's (twin.profiles validates its keys with
# twin.core.keys, and keys loads the default profile lazily).
FUNCTION_IMPORTS_ALLOWED = {("keys.py", "_default_profile")}


def _modules() -> list[pathlib.Path]:
    return sorted(CORE.rglob("*.py"))


def _members(protocol: type) -> set[str]:
    names: set[str] = set()
    for cls in protocol.__mro__:
        if cls.__module__ != ports.__name__:
            continue
        names |= {n for n in vars(cls) if not n.startswith("_")}
        names |= set(getattr(cls, "__annotations__", {}))
    return names


# ----------------------------------------------------------------------------- handlers
@pytest.mark.parametrize("module", HANDLER_MODULES)
def test_a_handler_uses_only_its_profile_port_and_writes_no_field(module: str) -> None:
    """Each handler reads and calls only what its feature profile's Protocol lists, and
    never assigns to another object's attribute (it asks the owning machine instead)."""
    path = CORE / "handlers" / f"{module}.py"
    tree = ast.parse(path.read_text())
    checked = 0
    for fn in (n for n in tree.body if isinstance(n, ast.FunctionDef)):
        if not fn.args.args or fn.args.args[0].arg != "st":
            continue
        annotation = fn.args.args[0].annotation
        assert isinstance(annotation, ast.Name), f"{module}.{fn.name}: st must be typed with a ports Protocol"
        allowed = _members(getattr(ports, annotation.id))
        for node in ast.walk(fn):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "st":
                assert node.attr in allowed, f"{module}.{fn.name} uses st.{node.attr}, not in {annotation.id}"
            if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                assert not any(isinstance(t, ast.Attribute) for t in targets), f"{module}.{fn.name} writes a field"
        checked += 1
    assert checked


def test_the_station_implements_every_port_member() -> None:
    st = Harness().st
    missing = sorted(name for name in _members(ports.StationOps) if not hasattr(st, name))
    assert missing == []


def test_every_handler_table_entry_is_a_handler_of_its_module() -> None:
    for module in HANDLER_MODULES:
        for action, fn in importlib.import_module(f"twin.core.handlers.{module}").HANDLERS.items():
            assert HANDLERS[action] is fn
            assert list(inspect.signature(fn).parameters) == ["st", "p", "now"]


# ----------------------------------------------------------------------------- modules
def test_no_core_module_reaches_another_objects_private_names() -> None:
    offences = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
                offences.append(f"{path.relative_to(CORE)}:{node.lineno} {ast.unparse(node)}")
    assert offences == []


def test_core_imports_are_at_module_level_and_form_no_cycle() -> None:
    imports: dict[str, set[str]] = {}
    for path in _modules():
        rel = path.relative_to(CORE)
        name = ".".join(("twin", "core", *rel.with_suffix("").parts)).removesuffix(".__init__")
        tree = ast.parse(path.read_text())
        for fn in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            nested = [n for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))]
            assert not nested or (rel.name, fn.name) in FUNCTION_IMPORTS_ALLOWED, f"import inside {rel}:{fn.name}"
        imports[name] = {m for node in tree.body if isinstance(node, ast.ImportFrom) and node.module
                         for m in (node.module, *(f"{node.module}.{a.name}" for a in node.names))}
    graph = {m: sorted(d for d in deps if d in imports and d != m) for m, deps in imports.items()}
    done: set[str] = set()

    def visit(m: str, trail: tuple[str, ...]) -> None:
        assert m not in trail, "import cycle: " + " -> ".join((*trail, m))
        if m not in done:
            for d in graph[m]:
                visit(d, (*trail, m))
            done.add(m)

    for m in graph:
        visit(m, ())


def test_the_namespaces_of_the_ops_are_the_ones_the_stores_of_auth_and_reservations_use() -> None:
    assert (AuthCache.NS, LocalList.NS, LocalList.VERSION_NS, Reservations.NS) == (
        NS.AUTH_CACHE, NS.LOCAL_LIST, NS.LOCAL_LIST_META, NS.RESERVATIONS)


# ----------------------------------------------------------------------------- typed keys
@pytest.mark.parametrize("name", ["ConnectionTimeout", "connectiontimeout", "ConnectionTimeOuts"])
def test_a_misspelt_key_name_is_an_error_not_a_silent_fallback(name: str) -> None:
    with pytest.raises(KeyError):
        Settings(ConfigKeys()).get_int(name)


def test_a_key_read_as_the_wrong_type_is_an_error() -> None:
    with pytest.raises(KeyError):
        Settings(ConfigKeys()).get_bool("ConnectionTimeOut")


def test_an_optional_key_the_profile_lacks_takes_its_one_fallback() -> None:
    profile = load_profile(pathlib.Path(__file__).resolve().parents[2] / "twin/profiles/examples/generic-ac-1c.toml")
    keys = ConfigKeys(profile=profile)
    assert "MaxEnergyOnInvalidId" not in keys.names()
    settings = Settings(keys)
    assert settings.get_int("MaxEnergyOnInvalidId") == FALLBACKS["MaxEnergyOnInvalidId"]
    assert settings.get_bool("ReserveConnectorZeroSupported") is FALLBACKS["ReserveConnectorZeroSupported"]
    assert settings.get_int("ConnectionTimeOut") == keys.get_int("ConnectionTimeOut")  # present: the profile's


# ----------------------------------------------------------------------------- ChangeConfiguration
def test_a_heartbeat_interval_changed_in_another_letter_case_takes_effect() -> None:
    """Key names are CiString (§7.21): "heartbeatinterval" changes HeartbeatInterval, and the
    running heartbeat follows it at once, as for the canonical spelling."""
    h = Harness().boot()
    h.run(h.st.csms_call("c1", "ChangeConfiguration", {"key": "heartbeatinterval", "value": "7"}, h.now))
    assert h.replies[-1].payload == {"status": "Accepted"}
    assert h.st.next_heartbeat_at == h.now + timedelta(seconds=7)


def test_a_ping_interval_changed_in_another_letter_case_reaches_the_link() -> None:
    h = Harness().boot()
    fx = h.st.csms_call("c1", "ChangeConfiguration", {"key": "WEBSOCKETPINGINTERVAL", "value": "25"}, h.now)
    assert fx.control == [A.LinkSetting(25)]
