"""Shared fixtures: the real data root, a small cached dataset, and one tiny end-to-end run that
the predictor, report and CLI tests all read."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from racmkd.config import RunConfig, load_config
from racmkd.data.paths import data_root

os.environ.setdefault("RACMKD_PROGRESS", "0")
TINY = Path(__file__).parent / "tiny.yaml"


@pytest.fixture(scope="session")
def shared_root() -> Path:
    """The real datasets (../shared/data or $RACMKD_DATA); the tests need them, the pen digits and
    the IMU example's too (a root without those failed in a pen test with a bare FileNotFoundError)."""
    root = data_root()
    missing = [name for name in ("mnist", "fsdd/recordings", "pendigits", "imu_pen_digits") if not (root / name).is_dir()]
    if missing:
        pytest.fail(
            f"the datasets are not all at {root} (no {', '.join(missing)}): set RACMKD_DATA to the folder holding mnist/, fsdd/, pendigits/ and "
            "imu_pen_digits/, or fetch them (README, Quickstart)"
        )
    return root


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One dataset cache for the whole session, so each protocol is built once."""
    return tmp_path_factory.mktemp("cache")


def fake_distribution(folder: Path, name: str, version: str, groups: dict[str, dict[str, str]]) -> Path:
    """What `pip install` leaves of a distribution's entry points, without touching the environment:
    a dist-info folder in `folder` (put it on sys.path or PYTHONPATH) declaring `groups`
    ({group: {entry point: value}}). Returns `folder`."""
    info = folder / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(
        "".join(f"[{group}]\n" + "".join(f"{point} = {value}\n" for point, value in points.items()) + "\n" for group, points in groups.items())
    )
    return folder


def tiny_config(cache: Path, runs: Path, *overrides: str) -> RunConfig:
    """The tiny run of tests/tiny.yaml with its cache and runs folder inside the test's temp dir."""
    return load_config(TINY, [f"data.cache_dir={cache}", f"runs_dir={runs}", *overrides])


def one_tier_run(work: Path, name: str, modalities: list[str], tier: str, recipe: str, *overrides: str):  # noqa: ANN201 - (RunConfig, PairedDataset, Path)
    """A small run of tests/tiny.yaml in `work` on `modalities`: teachers (four unimodal epochs, one
    of fusion), one student tier `tier` (a YAML mapping: its name must be low) distilled for four
    epochs, then compressed by the recipe text `recipe`. Returns the config, dataset and run folder."""
    from racmkd.data.dataset import build_dataset
    from racmkd.pipeline import compress_students, create_run, distill_students, train_teachers

    cfg = tiny_config(
        work / "cache",
        work / "runs",
        f"name={name}",
        f"data.modalities=[{', '.join(modalities)}]",
        "teacher.unimodal={epochs: 4}",
        "teacher.fused={epochs: 1}",
        "students.train={epochs: 4}",
        "students.labels_only=false",
        f"students.tiers=[{tier}]",
        *overrides,
    )
    dataset = build_dataset(cfg.data, use_cache=False)
    run_dir = create_run(cfg)
    train_teachers(cfg, dataset, run_dir)
    distill_students(cfg, dataset, run_dir)
    (work / "recipe.yaml").write_text(recipe)
    compress_students(cfg, dataset, run_dir, ["low"], recipe=work / "recipe.yaml")
    return cfg, dataset, run_dir


@pytest.fixture(scope="session")
def tiny_run(shared_root: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A whole pipeline run on a few hundred samples (teachers, four tiers, baselines, report)."""
    from racmkd.pipeline import run_pipeline

    runs = tmp_path_factory.mktemp("runs")
    return run_pipeline(tiny_config(cache_dir, runs, "name=tiny"))


@pytest.fixture(scope="session")
def tiny_dataset(tiny_run: Path):  # noqa: ANN201 - PairedDataset
    """The tiny run's dataset (read back from the cache)."""
    from racmkd.data.dataset import build_dataset

    return build_dataset(load_config(tiny_run / "config.yaml").data)


@pytest.fixture(scope="session")
def bank_dir(tiny_run: Path, tiny_dataset) -> Path:  # noqa: ANN001
    """The tiny run's edge variant bank (<run>/edge)."""
    from racmkd.runtime.variants import build_bank

    return build_bank(load_config(tiny_run / "config.yaml"), tiny_dataset, tiny_run, val_samples=300, test_samples=300, latency_iters=30)


@pytest.fixture(scope="session")
def consumer():  # noqa: ANN201 - the example, as a module
    """examples/onnx_without_racmkd.py, which must import nothing of racmkd: the runtime a user
    writes from a model's contract and docs/contract.md alone."""
    import ast
    import importlib.util

    example = Path(__file__).resolve().parents[1] / "examples" / "onnx_without_racmkd.py"
    tree = ast.parse(example.read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert not [name for name in imported if name.split(".")[0] == "racmkd"], imported
    spec = importlib.util.spec_from_file_location("onnx_without_racmkd", example)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def report_fields() -> list[str]:
    """The fields issue 2 promises for every model of report.json (scripts read them; do not rename)."""
    return [
        "accuracy",
        "f1_macro",
        "auc_roc",
        "params",
        "bytes_fp32",
        "flops",
        "peak_activation_bytes",
        "latency_ms_p50",
        "latency_ms_p95",
        "energy_mj",
        "energy_source",
        "modalities",
    ]


def ended_pid() -> int:
    """The id of a process that has ended (its temporary files are a killed writer's)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    return int(done.stdout)
