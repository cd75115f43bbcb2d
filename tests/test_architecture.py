"""The house rules, read from the source: one installed name, doors that point one way
(pipelines → safety → encoders), the store as the only door to the tables, the row contract's
words and model identity each written in one place, one usage-error base."""

import ast
import inspect
import re
import shutil
import zipfile
from pathlib import Path

import pytest

import shoplens.encoders
import shoplens.encoders.rows as rows
import shoplens.pipelines
import shoplens.safety
from shoplens.encoders.errors import UsageError
from shoplens.encoders.media import MediaError

ROOT = Path(__file__).resolve().parents[1]
ROOMS = ("pipelines", "safety", "encoders")
# Where the rooms are imported from: the repository's folders (or a mutation run's copies of them).
FOLDERS = {room: Path(getattr(shoplens, room).__file__).resolve().parent for room in ROOMS}
# What each room may not import: doors point pipelines → safety → encoders, and only pipelines
# knows Ray and LanceDB.
FORBIDDEN = {
    "safety": ("shoplens.pipelines", "ray", "lancedb"),
    "encoders": ("shoplens.pipelines", "shoplens.safety", "ray", "lancedb"),
}
# The calls that open or query a LanceDB table (a FAISS index's `search(query, ...)` has arguments).
TABLE_ACCESS = re.compile(r"\.(open_table|create_table|to_lance|merge_insert|count_rows|list_indices|add_columns|existing)\(|\.search\(\)")
VOCABULARY = {rows.OK, rows.SKIPPED, *rows.KINDS, *rows.DECISIONS}


def modules(*rooms: str) -> list[Path]:
    return sorted(p for room in rooms or ROOMS for p in FOLDERS[room].rglob("*.py"))


def name(path: Path) -> str:
    """`pipelines/store/database.py`: a module's path in the repository."""
    room = next(r for r in ROOMS if FOLDERS[r] in path.parents)
    return (Path(room) / path.relative_to(FOLDERS[room])).as_posix()


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_doors_point_one_way(room):
    crossings = {
        f"{name(path)} imports {module}"
        for path in modules(room)
        for module in imported(path)
        if any(module == f or module.startswith(f + ".") for f in FORBIDDEN[room])
    }
    assert not crossings


def test_no_module_outside_the_store_opens_or_queries_a_table():
    store = FOLDERS["pipelines"] / "store"
    found = [
        f"{name(path)}:{n}: {line.strip()}"
        for path in modules()
        if store not in path.parents
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if TABLE_ACCESS.search(line) or re.match(r"\s*(import lancedb|from lancedb import|lancedb\.connect)", line)
    ]
    assert not found


def vocabulary_literals(path: Path) -> list[str]:
    """Status, kind and decision words written as literals where code decides on them: compared
    with, passed as a default or a `kind`/`status`/`decision` argument, or defined as a constant.
    (The same words as column names, dictionary keys or a command group's name are not values.)"""
    tree = ast.parse(path.read_text())
    found = []

    def words(node) -> list[ast.Constant]:
        """The vocabulary words `node` is, or holds: a collection of words, not a list of column
        names that happens to name one (`("image", "video")`)."""
        items = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
        strings = [c for c in items if isinstance(c, ast.Constant) and isinstance(c.value, str)]
        if not strings or not all(c.value in VOCABULARY | {rows.ERROR} for c in strings):
            return []
        return [c for c in strings if c.value in VOCABULARY]

    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            candidates = [c for operand in (node.left, *node.comparators) for c in words(operand)]
        elif isinstance(node, ast.Assign) and all(isinstance(t, (ast.Name, ast.Tuple)) for t in node.targets):
            unpacked = all(isinstance(t, ast.Tuple) for t in node.targets) and isinstance(node.value, ast.Tuple)
            candidates = [c for v in (node.value.elts if unpacked else [node.value]) for c in words(v)]
        elif isinstance(node, ast.arguments):
            candidates = [c for d in (*node.defaults, *node.kw_defaults) if d is not None for c in words(d)]
        elif isinstance(node, ast.keyword) and node.arg in ("kind", "status", "decision"):
            candidates = words(node.value)
        else:
            continue
        found += [f"{name(path)}:{c.lineno}: {c.value!r}" for c in candidates]
    return found


def test_status_kind_and_decision_words_are_written_only_in_the_row_contract():
    found = [hit for path in modules() if path != Path(rows.__file__).resolve() for hit in vocabulary_literals(path)]
    assert not found


def test_the_vocabulary_check_finds_a_literal(tmp_path):
    """The check above can fail: each way of writing a word as a value is found."""
    path = FOLDERS["encoders"] / "_probe.py"
    path.write_text(
        'UNSCORED = "unscored"\nif kind == "product": pass\ndef f(kind="live"): pass\nfilters(decision="block")\n'
        'if status in ("ok", "error"): pass\nrow["video"] = {"review": 1}\nSHOWN, KINDS = ["allow"], ("video",)\n'
        'COLUMNS = ("item_id", "video")\n'
    )
    try:
        found = sorted(hit.split(": ", 1)[1] for hit in vocabulary_literals(path))
        assert found == sorted(["'unscored'", "'product'", "'live'", "'block'", "'ok'", "'allow'", "'video'"])
    finally:
        path.unlink()


def test_a_risk_column_that_is_not_a_category_is_reserved():
    from shoplens.pipelines.store.schemas import items_schema

    aggregates = {n for n in items_schema(4, []).names if n.startswith(rows.RISK_PREFIX)}
    assert aggregates == set(rows.AGGREGATE_RISK_COLUMNS)
    assert [rows.risk_column(c) for c in rows.RESERVED_CATEGORIES] == list(rows.AGGREGATE_RISK_COLUMNS)


def test_model_provenance_is_formatted_in_one_place():
    found = [f"{name(p)}" for p in modules() if '"open_clip/' in p.read_text() or 'f"open_clip/' in p.read_text()]
    assert found == ["encoders/weights.py"]


def test_every_error_a_command_can_be_asked_wrongly_with_is_a_usage_error():
    """Exit code 2 is one class: each error class of the three rooms is a UsageError, but a
    media error, which is one item's (recorded in its row)."""
    import importlib

    errors = {}
    for path in modules():
        module_name = "shoplens." + name(path).removesuffix(".py").replace("/", ".").removesuffix(".__init__")
        module = importlib.import_module(module_name)
        errors |= {
            f"{module_name}.{n}": c
            for n, c in inspect.getmembers(module, inspect.isclass)
            if issubclass(c, Exception) and c.__module__ == module_name
        }
    assert len(errors) >= 8
    assert {n for n, c in errors.items() if not issubclass(c, UsageError)} == {"shoplens.encoders.media.MediaError"}
    assert not issubclass(MediaError, UsageError)


@pytest.mark.slow
def test_the_wheel_installs_one_name_holding_every_module(tmp_path):
    from setuptools import build_meta

    source = tmp_path / "source"
    for room in ROOMS:
        shutil.copytree(FOLDERS[room], source / room, ignore=shutil.ignore_patterns("__pycache__"))
    for file in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copyfile(ROOT / file, source / file)
    import os

    cwd = os.getcwd()
    os.chdir(source)
    try:
        wheel = source / build_meta.build_wheel(str(tmp_path))
    finally:
        os.chdir(cwd)
    names = zipfile.ZipFile(tmp_path / wheel.name).namelist()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"shoplens"}
    shipped = {f"shoplens/{name(p)}" for p in modules()}
    assert shipped <= set(names), sorted(shipped - set(names))
    assert "shoplens/safety/policies/default.yaml" in names
    assert any(n.startswith("shoplens/encoders/model_configs/") and n.endswith(".json") for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "shoplens = shoplens.pipelines.cli:main" in zipfile.ZipFile(tmp_path / wheel.name).read(entry_points).decode()
