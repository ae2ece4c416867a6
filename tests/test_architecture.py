"""The structure the packages promise: dependencies one way, one format table, extras that say
what is missing, an API that is thread-safe and frees what it holds, a chip grid apart from the reader."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from clay.runtime import formats
from clay.runtime.scenes.grid import Chip, chip_grid, chip_starts, patch_cells

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("runtime", "training", "export", "benchmarks")

# Run before the code under test: makes the named top-level modules (and clay sub-packages)
# unimportable, as on an install without the extra that brings them.
BLOCKER = """
import importlib.abc, sys
BLOCKED = {blocked!r}
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in BLOCKED or name.split(".")[0] in BLOCKED or any(name.startswith(b + ".") for b in BLOCKED):
            raise ImportError(f"{{name}} is not installed (blocked by the test)")
        return None
sys.meta_path.insert(0, Blocker())
"""


def run_python(code: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def imports_of(package: str) -> set[str]:
    """The clay packages a folder's modules import (absolute imports, at any depth)."""
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        found |= set(re.findall(r"^\s*(?:from|import) clay\.(\w+)", path.read_text(), flags=re.M))
    return found


def test_dependencies_run_one_way():
    assert imports_of("runtime") <= {"runtime"}
    assert imports_of("training") <= {"runtime", "training"}
    assert imports_of("export") <= {"runtime", "training", "export"}


def test_no_private_name_is_imported_across_packages():
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for line in re.findall(r"^from clay\.(\w+)(?:\.\w+)+ import (.+)$", path.read_text(), flags=re.M):
                other, names = line
                imported = [name.split(" as ")[0].strip(" ()") for name in names.split(",")]
                if other != package:
                    assert not [n for n in imported if n.startswith("_")], f"{path.name} imports a private name of {other}: {names}"


def test_the_runtime_runs_the_demo_with_torch_training_and_export_unimportable(tmp_path):
    out = tmp_path / "demo"
    code = BLOCKER.format(blocked=("torch", "clay.training", "clay.export", "clay.benchmarks", "lightning")) + (
        "from clay.runtime.cli import main\n"
        f"try:\n    main(['--demo', '--out', {str(out)!r}])\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "assert not any(m.split('.')[0] == 'torch' or m.startswith(('clay.training', 'clay.export')) for m in sys.modules)\n"
        "print('ran without torch')\n"
    )
    result = run_python(code)
    assert result.returncode == 0 and "ran without torch" in result.stdout, result.stderr[-3000:]
    assert (out / "demo.parquet").is_file() and (out / "demo-preview.png").is_file()


@pytest.mark.parametrize(
    ("entry", "command", "extra", "blocked", "args"),
    [
        ("clay.training", "clay-train", "training", ("torch", "lightning"), ["--help"]),
        ("clay.export", "clay-export", "export", ("torch", "onnx"), ["--help"]),
        ("clay.benchmarks", "clay-bench", "bench", ("matplotlib",), ["--help"]),
        ("clay.runtime.serve.cli", "clay-serve", "serve", ("kserve",), ["--engine", "engine.onnx"]),
        ("clay.runtime.search.cli", "clay-search", "search", ("lancedb",), ["--mode", "index", "--id", "a:0:0", "out"]),
    ],
)
def test_a_console_script_without_its_extra_says_which_to_install(entry, command, extra, blocked, args):
    code = BLOCKER.format(blocked=blocked) + f"sys.argv = [{command!r}, *{args!r}]\nfrom {entry} import main\nmain()\n"
    result = run_python(code)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    # the folder this environment was installed from (the checkout), torch first where it is missing
    torch_first = "pip install torch && " if "torch" in blocked else ""
    assert lines[0].startswith(f'{command} needs the {extra} extra: {torch_first}pip install "{ROOT}[{extra}]" ('), lines[0]
    assert ("torch first: the CPU or CUDA build you want" in lines[0]) == ("torch" in blocked)


def test_console_scripts_point_at_the_guarded_entry_points():
    text = (ROOT / "pyproject.toml").read_text()
    for command, entry in (("clay-train", "clay.training:main"), ("clay-export", "clay.export:main"),
                           ("clay-bench", "clay.benchmarks:main"), ("clay-run", "clay.runtime.cli:main"),
                           ("clay-serve", "clay.runtime.serve.cli:main"),
                           ("clay-change", "clay.runtime.change.cli:main"),
                           ("clay-search", "clay.runtime.search.cli:main")):  # fmt: skip
        assert f'{command} = "{entry}"' in text


def test_artifact_file_names_live_in_the_format_table_only():
    names = [f.file_name for f in formats.FORMATS]
    pattern = re.compile("|".join(re.escape(n) + r"\b" for n in names))
    holders = sorted(
        str(path.relative_to(ROOT)) for package in PACKAGES for path in (ROOT / package).rglob("*.py") if pattern.search(path.read_text())
    )
    assert holders == ["runtime/formats.py"], holders


def test_the_format_table_is_consistent():
    table = formats.FORMATS
    assert len({f.name for f in table}) == len(table) and len({f.file_name for f in table}) == len(table)
    pairs = [(backend, f.precision) for f in table for backend in f.runs_on]
    assert len(pairs) == len(set(pairs)), "a backend has two artifacts of one precision: clay-bench could not tell them apart"
    for f in table:
        assert set(f.runs_on) <= set(formats.RUNTIME_BACKENDS) and f.precision in formats.PRECISION_ORDER
        assert 0.9 < f.cosine_bound < 1
    pytest.importorskip("torch", reason="the builders need the [export] extra")
    from clay.export.builders import BUILDERS

    assert set(BUILDERS) == {f.name for f in table}, "every format needs exactly one builder"


def test_an_export_folder_offers_each_backend_its_artifact(tmp_path):
    for f in formats.FORMATS:
        (tmp_path / f.file_name).write_bytes(b"")
    assert formats.pick_artifact(tmp_path, "onnx-cpu").name == formats.format_named("int8").file_name
    assert formats.pick_artifact(tmp_path, "tensorrt").name == formats.format_named("plan").file_name
    (tmp_path / formats.format_named("int8").file_name).unlink()
    assert formats.pick_artifact(tmp_path, "onnx-cpu").name == formats.format_named("fp32").file_name
    assert formats.pick_artifact(tmp_path / "missing", "onnx-cpu") is None


def test_chip_grid_is_pure_and_covers_remainders():
    assert chip_starts(1300, 512, "shift") == [0, 512, 788]
    assert chip_starts(1300, 512, "pad") == [0, 512, 1024]
    assert chip_starts(1300, 512, "drop") == [0, 512]
    assert chip_starts(300, 512, "drop") == [0]
    chips = chip_grid(900, 1300, 512, "pad")
    assert len(chips) == 6 and chips[-1] == Chip(512, 1024, 388, 276)
    cells = patch_cells(Chip(0, 0, 300, 300), 512, 32)
    assert len(cells) == 10 * 10 and cells[-1].row == 9 * 32
    with pytest.raises(ValueError, match="unknown edge mode"):
        chip_grid(10, 10, 512, "wrap")


# --- the runtime's parts and the direction of their imports ------------------------------------------

#: Each part of ``clay.runtime`` and the parts it may import (issue 31). The contract every part
#: shares sits at the top of the package, below everything; the pipeline, the Python API,
#: ``clay-run`` and the Ray job sit on top of the parts.
CONTRACT = {"bands", "sensors", "metadata", "formats", "options", "timing", "console", "errors", "resampling"}
MAY_IMPORT = {
    "contract": {"contract"},
    "demo": {"demo"},
    "scenes": {"contract", "scenes"},
    "engines": {"contract", "engines"},
    "outputs": {"contract", "scenes", "outputs"},
    "pipeline": {"contract", "scenes", "engines", "outputs", "pipeline"},
    "api": {"contract", "demo", "scenes", "engines", "outputs", "pipeline", "api"},
    "ray_job": {"contract", "scenes", "engines", "outputs", "pipeline", "ray_job"},
    # chips through engines or the API, never the reader; a URL's files listed and sized (scenes) before the API reads them
    "serve": {"contract", "demo", "scenes", "engines", "api", "serve"},  # demo: --engine demo, as clay-run
    "search": {"contract", "outputs", "search"},  # reads outputs only: no scene, no engine
    "cli": {"contract", "demo", "scenes", "engines", "outputs", "pipeline", "api", "ray_job", "cli"},
    "change": {"contract", "scenes", "outputs", "change"},  # clay-change: on the outputs, never the engines
}


def module_files(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """``clay.<package>.<module>`` → its file, for every module of the folders (``__init__``: the package)."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root / package).with_suffix("").parts
            found[".".join(("clay", package, *(parts[:-1] if parts[-1] == "__init__" else parts)))] = path
    return found


def import_graph(root: Path = ROOT, packages=PACKAGES) -> dict[str, set[str]]:
    """Which of these modules each one imports: every ``import`` statement of the file, at module
    level, inside functions or under ``TYPE_CHECKING`` alike (a deferred import is still a dependency)."""
    files = module_files(root, packages)
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base for alias in node.names]
            else:
                continue
            edges |= {t for t in targets if t in files and t != name}
        graph[name] = edges
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of two or more modules (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(circles)


def runtime_part(module: str) -> str | None:
    """The part of ``clay.runtime`` a module belongs to (``None``: the package itself)."""
    parts = module.split(".")[2:]
    if not parts:
        return None
    return "contract" if parts[0] in CONTRACT else parts[0]


def direction_violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports inside ``clay.runtime`` against :data:`MAY_IMPORT`, as ``importer -> imported`` lines."""
    wrong = []
    for module, imported in sorted(graph.items()):
        if not module.startswith("clay.runtime.") or runtime_part(module) is None:
            continue
        for other in sorted(imported):
            if other.startswith("clay.runtime") and runtime_part(other) not in MAY_IMPORT[runtime_part(module)]:
                wrong.append(f"{module} -> {other}")
    return wrong


def test_every_runtime_module_belongs_to_a_part():
    """A module added at the top of clay.runtime must be placed: contract, or one of the parts on top."""
    unplaced = [m for m in module_files(ROOT, ("runtime",)) if runtime_part(m) not in (None, *MAY_IMPORT)]
    assert not unplaced, f"place these in CONTRACT or MAY_IMPORT: {unplaced}"
    for part in ("scenes", "engines", "outputs", "serve", "change", "search"):
        init = ROOT / "runtime" / part / "__init__.py"
        assert init.is_file() and ast.get_docstring(ast.parse(init.read_text())), f"{part}/ says what lives there"


def test_no_import_circle_anywhere():
    assert import_circles(import_graph()) == []


def test_runtime_imports_point_down_only():
    assert direction_violations(import_graph()) == []
    graph = import_graph(ROOT, ("runtime",))
    reached = {part: {runtime_part(o) for m, i in graph.items() if runtime_part(m) == part for o in i} for part in MAY_IMPORT}
    # what the issue names explicitly, checked on the graph itself
    for part in ("scenes", "engines"):
        assert not reached[part] & {"outputs", "serve", "pipeline"}, (part, reached[part])
    assert "engines" not in reached["outputs"]
    assert not any(o.startswith("clay.runtime.scenes.reader") for m, i in graph.items() if runtime_part(m) == "serve" for o in i)


def test_scene_discovery_uses_headers_and_stac_and_neither_imports_it_back():
    graph = import_graph(ROOT, ("runtime",))
    discovery = "clay.runtime.scenes.discovery"
    assert {"clay.runtime.scenes.headers", "clay.runtime.scenes.stac"} <= graph[discovery]
    assert discovery not in graph["clay.runtime.scenes.headers"] | graph["clay.runtime.scenes.stac"]
    assert "clay.runtime.scenes.headers" in graph["clay.runtime.scenes.stac"]  # STAC builds on file headers
    assert "clay.runtime.scenes.stac" not in graph["clay.runtime.scenes.headers"]


def test_every_backend_imports_the_base_and_not_the_choice():
    graph = import_graph(ROOT, ("runtime",))
    choice = "clay.runtime.engines.choice"
    for backend in ("onnxruntime_engine", "tensorrt_engine", "openvino_engine"):
        module = f"clay.runtime.engines.{backend}"
        assert "clay.runtime.engines.base" in graph[module] and module in graph[choice]
        assert choice not in graph[module]


def test_the_checks_fail_on_a_circle_and_on_an_import_against_the_direction(tmp_path):
    """The checks above, run on a copy of the runtime with two imports added: a function-level one
    that closes a circle (scenes.stac -> scenes.discovery) and one against the direction
    (scenes.grid -> outputs.geoparquet)."""
    import shutil

    shutil.copytree(ROOT / "runtime", tmp_path / "runtime", ignore=shutil.ignore_patterns("demo"))
    stac = tmp_path / "runtime" / "scenes" / "stac.py"
    stac.write_text(stac.read_text() + "\n\ndef _late():\n    from .discovery import discover_scenes\n\n    return discover_scenes\n")
    grid = tmp_path / "runtime" / "scenes" / "grid.py"
    grid.write_text(grid.read_text() + "\nfrom ..outputs.geoparquet import warm_up  # noqa: E402\n")
    graph = import_graph(tmp_path, ("runtime",))
    assert ["clay.runtime.scenes.discovery", "clay.runtime.scenes.stac"] in import_circles(graph)
    assert direction_violations(graph) == ["clay.runtime.scenes.grid -> clay.runtime.outputs.geoparquet"]
    assert import_circles(import_graph(ROOT, ("runtime",))) == [] and direction_violations(import_graph(ROOT, ("runtime",))) == []


torch = pytest.importorskip("torch", reason="the engines under test are exported with the [export] extra")


@pytest.fixture(scope="module")
def engine_dir(checkpoint, tmp_path_factory) -> Path:
    from clay.export.artifacts import ExportOptions, export_artifacts

    out = tmp_path_factory.mktemp("engine")
    export_artifacts(ExportOptions(out=out, checkpoint=checkpoint, groups=("rgb", "rededge", "nir", "swir")), log=lambda _: None)
    return out


def test_one_embedder_serves_threads_with_the_serial_results(engine_dir, tmp_path):
    from clay.runtime import ClayEmbedder, RunOptions
    from clay.runtime.bands import S2_BANDS
    from clay.training.synthetic import write_scene

    scenes = [write_scene(tmp_path / f"s{i}.tif", 700 + 150 * i, 600, seed=i, dtype="uint16", bands=S2_BANDS) for i in range(3)]
    options = RunOptions(readers=2, batch_size=2)
    with ClayEmbedder(engine_dir, options=options) as embedder:
        serial = [embedder.embed_scene(s) for s in scenes]
        threaded: dict[int, object] = {}
        errors = []

        def work(i: int) -> None:
            try:
                threaded[i] = embedder.embed_scene(scenes[i])
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
    assert not errors, errors
    for i, table in enumerate(serial):
        other = threaded[i]
        assert other.num_rows == table.num_rows == len(table["row"])
        assert other["row"].to_pylist() == table["row"].to_pylist() and other["col"].to_pylist() == table["col"].to_pylist()
        a = np.stack(table["embeddings"].to_numpy(zero_copy_only=False))
        b = np.stack(other["embeddings"].to_numpy(zero_copy_only=False))
        assert np.array_equal(a, b)


def test_engine_close_frees_it_and_later_calls_fail(engine_dir):
    from clay.runtime import EngineError, open_engine
    from clay.training.synthetic import make_chips

    pixels, lonlat, date = make_chips(1, seed=1)
    with open_engine(engine_dir) as engine:
        assert engine.path.name == formats.format_named("fp32").file_name  # the only artifact in the folder
        assert engine.infer(pixels[:, :10], lonlat, date)["embedding"].shape == (1, 256)
    with pytest.raises(EngineError, match="closed"):
        engine.infer(pixels[:, :10], lonlat, date)
    engine.close()  # idempotent


def test_an_artifact_refuses_a_backend_it_is_not_made_for(engine_dir):
    from clay.runtime import EngineError, open_engine

    with pytest.raises(EngineError, match="the fp32 artifact runs on onnx-cpu or onnx-cuda, not on backend tensorrt$"):
        open_engine(engine_dir / formats.format_named("fp32").file_name, "tensorrt")


def test_engine_errors_reached_through_the_api_do_not_name_clay_runs_flag(engine_dir):
    """The messages serve clay-run and ClayEmbedder(backend=...) alike, so they name the backend,
    not ``--backend`` (a Python caller has no such flag)."""
    from clay.runtime import ClayEmbedder, EngineError
    from clay.runtime.engines.choice import available_backends

    missing = next((b for b in ("onnx-cuda", "openvino-cpu") if b not in available_backends()), None)
    if missing is None:
        pytest.skip("both onnx-cuda and openvino-cpu are available here: no backend is missing")
    with pytest.raises(EngineError, match=f"^backend {missing}: ") as raised:
        ClayEmbedder(engine_dir / formats.format_named("fp32").file_name, backend=missing)
    with pytest.raises(EngineError) as wrong:
        ClayEmbedder(engine_dir / formats.format_named("fp32").file_name, backend="tensorrt")
    assert "--backend" not in str(raised.value) + str(wrong.value)


def test_api_options_reach_what_the_cli_does(engine_dir, tmp_path):
    """sar_units / s2_offset / date through RunOptions, with errors that name the option."""
    from clay.runtime import ClayEmbedder, RunOptions, SceneError
    from clay.runtime.bands import S2_BANDS
    from clay.training.synthetic import write_scene

    scene = write_scene(tmp_path / "nodate.tif", 600, 600, dtype="uint16", bands=S2_BANDS, with_date_tag=False)
    with ClayEmbedder(engine_dir) as embedder:
        with pytest.raises(SceneError, match="no acquisition date"):
            embedder.embed_scene(scene)
        from datetime import date

        table = embedder.embed_scene(scene, RunOptions(date=date(2021, 5, 1), s2_offset=1000))
        assert table["date"][0].as_py() == date(2021, 5, 1)
        assert "--s2-offset 1000: DN - 1000" in table.schema.metadata[b"clay:preprocessing"].decode()
    with pytest.raises(ValueError, match="sar_units must be one of"):
        RunOptions(sar_units="decibel")


def test_a_missing_patch_output_is_named_in_the_callers_terms(engine_dir, tmp_path):
    """The Python API names the RunOptions field (or embed's argument), clay-run its flag; both say
    how to get such an engine; the CLI says it before any output folder is made."""
    import subprocess
    import sys

    from clay.runtime import ClayEmbedder, RunOptions, SceneError
    from clay.runtime.bands import S2_BANDS
    from clay.training.synthetic import make_chips, write_scene

    scene = write_scene(tmp_path / "s.tif", 512, 512, dtype="uint16", bands=S2_BANDS)
    with ClayEmbedder(engine_dir) as embedder:
        with pytest.raises(SceneError, match=r"^patch_embeddings=True needs .*clay-export --patch-embeddings"):  # fmt: skip
            embedder.embed_scene(scene, RunOptions(patch_embeddings=True))
        pixels, lonlat, date = make_chips(1, seed=3)
        with pytest.raises(SceneError, match=r"^patch_embeddings=True needs"):
            embedder.embed(pixels[:, : len(S2_BANDS)], lonlat, date, patch_embeddings=True)  # S2: the first 10
    out = tmp_path / "new"
    result = subprocess.run([sys.executable, "-m", "clay.runtime.cli", str(scene), "--engine", str(engine_dir),
                             "--patch-embeddings", "--out", str(out)], capture_output=True, text=True, timeout=300)  # fmt: skip
    last_line = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1 and last_line.startswith("clay-run: --patch-embeddings needs")
    assert "Traceback" not in result.stderr and not out.exists()


@pytest.mark.parametrize(("entry", "command"), [("clay.training", "clay-train"), ("clay.export", "clay-export")])
def test_help_answers_without_loading_torch_or_lightning(entry, command):
    """--help is read before anything heavy is imported (it took seconds when it was not)."""
    code = (f"import sys\nsys.argv = [{command!r}, '--help']\nfrom {entry} import main\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code\n"
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'lightning', 'onnx', 'polygraphy'})\n"
            "print('loaded:', heavy)\n")  # fmt: skip
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"usage: {command}") or result.stdout.startswith("Usage: clay-export"), result.stdout[:200]
    assert "loaded: []" in result.stdout


def test_clay_train_help_offers_what_lightnings_own_top_level_help_offers():
    """clay-train --help is ours (no Lightning import); the same subcommands and options as LightningCLI's."""
    pytest.importorskip("lightning", reason="the training extra")
    import os
    import subprocess
    import sys

    from clay.training import top_level_help

    theirs = subprocess.run([sys.executable, "-m", "clay.training.cli", "--help"], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "COLUMNS": "200"}).stdout  # fmt: skip
    ours = top_level_help()

    def offered(text: str) -> tuple[set[str], set[str]]:
        subcommands = set(re.search(r"\{([a-z,]+)\}", text).group(1).split(","))
        return subcommands, set(re.findall(r"(?<![\w-])--?[a-z][a-z_]*", text.split("subcommands:")[0]))

    assert offered(ours)[0] == offered(theirs)[0] == {"fit", "validate", "test", "predict"}
    assert offered(theirs)[1] <= offered(ours)[1], (offered(theirs)[1], offered(ours)[1])
