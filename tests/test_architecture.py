"""The house rules, read from the source: one installed name, doors that point one way
(pipelines → safety → encoders), the store as the only door to the tables, the row contract's
words and model identity each written in one place, one usage-error base."""

import ast
import inspect
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
FORBIDDEN = {"safety": ("shoplens.pipelines", "ray", "lancedb"), "encoders": ("shoplens.pipelines", "shoplens.safety", "ray", "lancedb")}
# The methods of a LanceDB connection, table or Lance dataset (and the store's own table getters).
TABLE_METHODS = {
    "open_table",
    "create_table",
    "drop_table",
    "to_lance",
    "merge_insert",
    "count_rows",
    "list_indices",
    "add_columns",
    "alter_columns",
    "drop_columns",
    "create_index",
    "create_scalar_index",
    "create_fts_index",
    "optimize",
    "compact_files",
    "cleanup_old_versions",
    "checkout",
    "restore",
    "delete",
    "to_arrow",
    "list_versions",
    "existing",
    "_required",
    "_table",
}
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


def table_access(path: Path) -> list[str]:
    """Calls that open, query or change a LanceDB table or Lance dataset, and imports of LanceDB
    or Lance (but `lancedb.expr`, typed filter expressions). A table's `search` takes at most one
    argument (a FAISS index's takes a query and k); its `update` takes `where`/`values`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            method, keywords = node.func.attr, {k.arg for k in node.keywords}
            if (
                method in TABLE_METHODS
                or (method == "search" and len(node.args) <= 1)
                or (method == "update" and keywords & {"where", "values", "values_sql"})
            ):
                found.append(f"{name(path)}:{node.lineno}: .{method}()")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            modules_ = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [
                f"{name(path)}:{node.lineno}: import {m}"
                for m in modules_
                if m.split(".")[0] in ("lancedb", "lance") and m != "lancedb.expr"
            ]
    return found


def test_no_module_outside_the_store_opens_or_queries_a_table():
    store = FOLDERS["pipelines"] / "store"
    assert not [hit for path in modules() if store not in path.parents for hit in table_access(path)]


def test_the_table_access_check_finds_each_way_in():
    path = FOLDERS["pipelines"] / "_probe.py"
    path.write_text(
        "import lancedb\nfrom lance import dataset\nfrom lancedb.expr import col\nt.search(\n)\nt.search(q)\nindex.search(q, 10)\n"
        "t.delete(f\"item_id = '{x}'\")\nt.update(where='x', values={})\ncounts.update(other)\nstore.existing('items').count_rows()\n"
        "store._required('items')\nt.to_lance().to_table()\n"
    )
    try:
        found = [hit.split(": ", 1)[1] for hit in table_access(path)]
        assert sorted(found) == sorted(
            [
                "import lancedb",
                "import lance",
                ".search()",
                ".search()",
                ".delete()",
                ".update()",
                ".existing()",
                ".count_rows()",
                "._required()",
                ".to_lance()",
            ]
        )
    finally:
        path.unlink()


def literal_text(node) -> str | None:
    """The text a constant string expression spells: a literal, or literals joined by `+`."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = literal_text(node.left), literal_text(node.right)
        return None if left is None or right is None else left + right
    return None


def vocabulary_literals(path: Path) -> list[str]:
    """Status, kind and decision words written as literals in code. The same words naming
    something else are left alone: a column (`row["video"]`), a dictionary key, a keyword
    argument other than `kind`/`status`/`decision` (a command group's `name="review"`), a string
    beside other words in a collection or a conditional (`("image", "video")`), a docstring."""
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    docstrings = {
        node.body[0].value
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
    }

    def names_something_else(node, parent) -> bool:
        if node in docstrings or isinstance(parent, ast.BinOp):  # a part of a concatenation is judged whole
            return True
        if isinstance(parent, ast.Subscript) and parent.slice is node:
            return True
        if isinstance(parent, ast.Dict) and node in parent.keys:
            return True
        if isinstance(parent, ast.keyword) and parent.arg not in ("kind", "status", "decision"):
            return True
        siblings = (
            parent.elts
            if isinstance(parent, (ast.Tuple, ast.List, ast.Set))
            else [parent.body, parent.orelse]
            if isinstance(parent, ast.IfExp)
            else []
        )
        return any(literal_text(s) is not None and literal_text(s) not in VOCABULARY | {rows.ERROR} for s in siblings)

    return [
        f"{name(path)}:{node.lineno}: {literal_text(node)!r}"
        for node in ast.walk(tree)
        if literal_text(node) in VOCABULARY and not names_something_else(node, parents.get(node))
    ]


def test_status_kind_and_decision_words_are_written_only_in_the_row_contract():
    found = [hit for path in modules() if path != Path(rows.__file__).resolve() for hit in vocabulary_literals(path)]
    assert not found


def test_the_vocabulary_check_finds_a_literal():
    """The check above can fail: each way of writing a word as a value is found, and the same
    words naming columns, keys or other things are not."""
    path = FOLDERS["encoders"] / "_probe.py"
    path.write_text(
        '"""Docstring: ok."""\nUNSCORED = "unscored"\nif kind == "product": pass\ndef f(kind="live"): pass\nfilters(decision="block")\n'
        'if status in ("ok", "error"): pass\nrow["video"] = {"review": 1}\nSHOWN, KINDS = ["allow"], ("video",)\n'
        'COLUMNS = ("item_id", "video")\nrow["decision"] = "allow"\nx: str = "block"\nnp.where(m, "review", "allow")\n'
        'y = "un" + "scored"\nmedia = "image" if k else "video"\napp.add_typer(group, name="review")\n'
    )
    try:
        found = sorted(hit.split(": ", 1)[1] for hit in vocabulary_literals(path))
        expected = [
            "'unscored'",
            "'product'",
            "'live'",
            "'block'",
            "'ok'",
            "'allow'",
            "'video'",
            "'allow'",
            "'block'",
            "'review'",
            "'allow'",
            "'unscored'",
        ]
        assert found == sorted(expected)
    finally:
        path.unlink()


def test_a_risk_column_that_is_not_a_category_is_reserved():
    from shoplens.pipelines.store.schemas import items_schema

    aggregates = {n for n in items_schema(4, []).names if n.startswith(rows.RISK_PREFIX)}
    assert aggregates == set(rows.AGGREGATE_RISK_COLUMNS)
    assert [rows.risk_column(c) for c in rows.RESERVED_CATEGORIES] == list(rows.AGGREGATE_RISK_COLUMNS)


def test_model_provenance_is_formatted_in_one_place():
    """Only encoders/weights.py spells the provenance's family (`open_clip/...`), in a literal or
    a join."""
    spelled = {
        name(p)
        for p in modules()
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("open_clip")
    }
    assert spelled == {"encoders/weights.py"}


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
