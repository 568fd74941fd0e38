"""The benchmark suite: the seed paper's evaluation (its Tables 6.6, 6.7 and 6.8) and what a reader
needs beyond it (robustness, cross-modal transfer, cost growth, Pareto front), with every baseline
trained and measured in the same run. `benchmarks/suite.py` (`make bench`) is its command line.

For each protocol and seed the suite keeps one run directory, runs/bench/<protocol>-s<seed>/, and
fills in only what is missing, so an interrupted benchmark resumes where it stopped:

    teachers        trained in the first seed's run and shared by the other seeds (the seeds vary
                    the students and baselines; training a teacher per seed would take the whole
                    time budget), or copied from an existing run with the same data (--teachers-from)
    tier students   the pipeline's design selection in the first seed; the other seeds reuse its
                    designs, so each seed trains the same architectures
    baselines       racmkd.eval.baselines, trained beside the tiers with the same recipe
    compression     each tier's compressed artifact (the suite's recipe, or the tier's own:
                    SuiteSettings.tier_recipes); compressed again when its recipe changed
    variant bank    the first seed's, for the runtime's trace replay (Table 6.7, the ablation)

Then every row is measured as deployed (racmkd.eval.deployed) and the tables are assembled.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from racmkd.config import ConfigError, RunConfig, config_differences, load_config, to_dict
from racmkd.data.dataset import PairedDataset
from racmkd.data.modalities import Modality
from racmkd.registry import MODALITIES
from racmkd.eval.baselines import ABLATION, BASELINES, matched_name, matched_widths, train_extras
from racmkd.eval.deployed import Deployed, artifact_accuracy, artifact_costs, closest_in_cost, cost_growth, deploy, dominates, pareto_front, robustness, twin
from racmkd.data.paths import committed, git_commit
from racmkd.measure.timing import machine
from racmkd.pipeline import (
    checkpoint,
    compress_students,
    compressed_dir,
    create_run,
    distill_students,
    missing_teachers,
    prepare_data,
    recipe_for,
    teacher_names,
    train_teachers,
)
from racmkd.runs import RunError, compressed_records, open_run
from racmkd.utils import atomic_write_json, cached_json, human_bytes, progress, same_source, sha256

TIERS = ("high", "medium", "low", "critical")
# rows.json's note (under `missing`) for rows the suite does not train when it compresses nothing
NOT_TRAINED_NOTE = "TinyML at each tier's bytes"
# How many times rows.json is measured with the same code, models, settings and machine while
# some row is not produced: a failure that comes back every time (an export the code cannot make)
# had every resumed suite measure every row of every seed again.
MEASURE_ATTEMPTS = 2
MATCHED = tuple(matched_name(t) for t in TIERS)  # the TinyML recipe at each compressed tier's bytes (trained only when the suite compresses)
TABLE_ROWS = ("teacher", "standard_kd", "mobilenetv3", "tinyml", *MATCHED, "emd_kd", "kd_align", "kd_align_resource", *TIERS)
LABELS = {
    "teacher": "Teacher (image + audio)",
    "standard_kd": "Standard KD",
    "mobilenetv3": "MobileNetV3-Small-style",
    "tinyml": "TinyML (plain CNN, int8 PTQ)",
    **{matched_name(t): f"TinyML at racmkd {t}'s bytes" for t in TIERS},
    "emd_kd": "EMD-KD",
    "kd_align": "KD + feature alignment (the ablation's step)",
    "kd_align_resource": "KD + alignment + resource term (the ablation's step)",
    **{t: f"racmkd {t}" for t in TIERS},
    **{f"{t}_fp32": f"racmkd {t}, uncompressed (fp32)" for t in TIERS},
}
# The seed paper's published figures (their Table 6.6 tiers; not measured here, shown for reference).
SEED_PAPER = {
    "retention": {"high": 0.974, "medium": 0.947, "low": 0.903, "critical": 0.873},
    "memory_mb": {"high": 42.6, "medium": 18.3, "low": 6.2},
}  # no memory given for their critical tier


@dataclass(frozen=True)
class SuiteSettings:
    """What the suite trains and measures; `quick()` gives the CI smoke test's minutes-long version."""

    config: Path
    protocols: tuple[str, ...] = ("avmnist", "clean")  # Table 6.6 for both; the other tables are the first's
    seeds: tuple[int, ...] = (0, 1, 2)
    runs_dir: Path = Path("runs/bench")
    overrides: tuple[str, ...] = ()  # KEY=VALUE config overrides for every run
    recipe: Path | None = Path("configs/recipes/bench.yaml")  # tiers' compression; None: uncompressed tiers
    tier_recipes: dict[str, Path] = field(default_factory=dict)  # tier -> a recipe that replaces `recipe` for it
    teachers_from: Path | None = None  # an existing run whose teachers to reuse (same data settings)
    transfer: bool = True
    robustness_samples: int = 0  # test samples per robustness point; 0 = all
    # modality -> the levels of its degradation to sweep (`Modality.degraded`: audio SNR in dB, image
    # noise std); a modality not named here sweeps its own `degradation_levels`
    degradations: dict[str, tuple[float, ...]] = field(default_factory=dict)
    degradation_ends: bool = False  # sweep only each modality's first and last level
    batches: tuple[int, ...] = (1, 4, 16, 64, 256)
    scales: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    traces: tuple[str, ...] = ("periodic", "random")
    trace_seconds: float = 120.0
    requests: int = 2000
    bank_test_samples: int = 0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.tier_recipes) - set(TIERS))
        if unknown:
            raise ValueError(f"tier recipes for {unknown}: the suite's tiers are {list(TIERS)}")

    def quick(self) -> SuiteSettings:
        return replace(
            self,
            seeds=self.seeds[:2],
            robustness_samples=300,
            degradation_ends=True,
            batches=(1, 8, 32),
            scales=(0.5, 1.0, 2.0),
            traces=("random",),
            trace_seconds=20.0,
            requests=200,
            bank_test_samples=300,
        )


def degradation_sweeps(settings: SuiteSettings, modalities: Mapping[str, Modality | type[Modality]]) -> dict[str, tuple[float, ...]]:
    """The levels swept per modality of the dataset (its modalities, or their registered classes):
    the settings' or the modality's own; a modality without a degradation is only withheld."""
    unknown = sorted(set(settings.degradations) - set(modalities))
    if unknown:
        raise ValueError(f"degradations for {unknown}: the dataset's modalities are {list(modalities)}")
    sweeps = {}
    for name, modality in modalities.items():
        levels = tuple(settings.degradations.get(name, modality.degradation_levels))
        if levels and not modality.degradation:
            raise ValueError(f"{name}: levels {levels} to sweep, but the modality has no degradation (`Modality.degraded`)")
        if levels:
            sweeps[name] = (levels[0], levels[-1]) if settings.degradation_ends and len(levels) > 2 else levels
    return sweeps


def mean_std(values: list[float]) -> dict[str, float | None]:
    """Mean, sample standard deviation and count. One value has no spread (None, not 0.0): a
    verdict that weighs a difference against the seeds' spread is left undecided on one seed."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None, "n": len(values)}


def seed_spread(*stats: dict[str, float | None]) -> float | None:
    """The larger standard deviation of some mean_std results; None when one has a single seed."""
    stds = [s["std"] for s in stats]
    return None if any(x is None for x in stds) else max(stds)


# Training --------------------------------------------------------------------------------------------


def _pinned_tiers(first_run: Path) -> list[str]:
    """Overrides that fix every tier's design to the one the first seed selected. The rest of each
    tier's settings is the first seed's: rebuilt from the design alone, the tiers lost their own
    epochs, and the later seeds' critical students trained for students.train.epochs while the
    first seed's trained for 8 (one row's mean and spread mixed two recipes)."""
    from racmkd.models.checkpoint import load_model

    tiers = []
    for tier in load_config(first_run / "config.yaml").students.tiers:
        d = load_model(checkpoint(first_run, tier.name))[3]["design"]
        tiers.append({**to_dict(tier), "budget_bytes": d["budget_bytes"], "modalities": list(d["modalities"]), "scale": d["level"], "depth": d["depth"]})
    return [f"students.tiers={json.dumps(tiers)}"]


COPIED_TEACHERS = "teachers (copied from --teachers-from)"


def _copy_teachers(source: Path, run_dir: Path, cfg: RunConfig) -> bool:
    """Reuse another run's teachers when its data settings are this run's and the teachers take
    inputs as the dataset gives them (else they saw other data: say so and return False, and the
    caller trains its own). Teachers made before the audio window was placed on the speech were
    copied, and the run failed at its first evaluation, an hour on, asking for them to be retrained."""
    theirs, ours = to_dict(load_config(source / "config.yaml").data), to_dict(cfg.data)
    # Every data setting but where the files and caches are: a --quick run's teachers (max_train,
    # max_eval, augment) were copied into a full suite without a word.
    differ = [k for k in ours if k not in ("root", "cache_dir", "cache_max_gb") and theirs.get(k) != ours[k]]
    why = (
        f"its data {', '.join(differ)} differ"
        if differ
        else "it has no whole teacher set"
        if missing_teachers(source, cfg.data.modalities)
        else _stale_teacher(source, cfg)
    )
    if why is not None:
        print(f"{source}: not reusing its teachers for {run_dir.name} ({why}); training them")
        return False
    for name in teacher_names(cfg.data.modalities):  # copied aside, then renamed: a copy cut short is never taken for a teacher
        target = checkpoint(run_dir, name)
        partial = target.with_name(f".{target.name}.partial")
        shutil.copy2(checkpoint(source, name), partial)
        partial.replace(target)
    return True


def _stale_teacher(source: Path, cfg: RunConfig) -> str | None:
    """Why one of a run's teachers cannot be trained on with this dataset (unreadable; inputs the
    dataset no longer gives, `Modality.check_bank_spec`), or None."""
    from racmkd.data.paths import DataError
    from racmkd.models.checkpoint import CheckpointError, load_model

    for name in teacher_names(cfg.data.modalities):
        try:
            _, specs, modalities, _ = load_model(checkpoint(source, name))
            for modality, spec in specs.items():
                modalities[modality].check_bank_spec(spec)
        except (CheckpointError, DataError) as err:
            return f"{name}: {err}"
    return None


def seed_config(settings: SuiteSettings, protocol: str, seed: int, first_run: Path | None) -> RunConfig:
    """The config of one (protocol, seed)'s run: the suite's settings, the first seed's designs
    pinned for the others, label-only twins only where the transfer table reads them."""
    overrides = [
        f"name={protocol}-s{seed}",
        f"runs_dir={settings.runs_dir}",
        f"seed={seed}",
        f"data.protocol={protocol}",
        "compress.tiers=[]",
        "runtime.build_bank=false",
        *settings.overrides,
    ]
    if first_run is not None:  # the first seed's designs
        overrides += _pinned_tiers(first_run)
    if not _has_transfer(settings, protocol, first_run):  # no label-only twins: only the transfer study uses them
        overrides.append("students.labels_only=false")
    return load_config(settings.config, overrides)


def _has_transfer(settings: SuiteSettings, protocol: str, first_run: Path | None) -> bool:
    return settings.transfer and first_run is None and protocol == settings.protocols[0]  # the transfer table is the first protocol's first seed's


def resumable(run_dir: Path, cfg: RunConfig, transfer: bool) -> tuple[RunConfig, bool]:
    """The config a resumed run goes on with, and whether it holds the transfer study; ConfigError
    when it was made with other settings (its models would be reported as this configuration's).
    Whether a run trains label-only twins follows which protocol comes first in --protocols (the
    transfer study's): `--protocols clean` after a whole suite refused clean-s0, made without them.
    A run made with them serves without; one made without serves without the transfer table (its
    cells n/a, said here)."""
    stored = load_config(run_dir / "config.yaml")
    differences = config_differences(stored, cfg)
    if differences == ["students.labels_only"]:
        if transfer and not stored.students.labels_only:
            print(f"{run_dir}: made without label-only twins; the transfer table is left out (remove the folder to make them)")
        return replace(cfg, students=replace(cfg.students, labels_only=stored.students.labels_only)), transfer and stored.students.labels_only
    if differences:
        raise ConfigError(
            f"{run_dir}/config.yaml: this run was made with other settings ({', '.join(differences[:5])}{', ...' if len(differences) > 5 else ''}) than the suite's now; its models would be reported as this configuration's. Remove the folder, or give another --runs-dir."
        )
    return cfg, transfer


def seed_run(
    settings: SuiteSettings, protocol: str, seed: int, first_run: Path | None, datasets: dict[str, PairedDataset]
) -> tuple[RunConfig, Path, list[str], list[str]]:
    """The run of one (protocol, seed), with everything the tables need trained; also returns what
    this call made and what it found made by an earlier invocation (resumed: the wall time leaves it out)."""
    transfer = _has_transfer(settings, protocol, first_run)
    cfg = seed_config(settings, protocol, seed, first_run)
    run_dir = settings.runs_dir / f"{protocol}-s{seed}"
    if not (run_dir / "config.yaml").is_file():
        create_run(cfg)
    else:  # resumed: its models are taken as done only if they were made with these settings
        cfg, transfer = resumable(run_dir, cfg, transfer)
    run_dir = run_dir.resolve()
    made: list[str] = []
    resumed: list[str] = []
    if protocol not in datasets:
        datasets[protocol] = prepare_data(cfg)
    dataset = datasets[protocol]
    if not missing_teachers(run_dir, cfg.data.modalities):
        stale = _stale_teacher(run_dir, cfg)
        if stale is not None:  # before, the suite trained on and failed at distillation's first batch
            raise ConfigError(
                f"{run_dir}: its teachers cannot be resumed ({stale}); the students in it learned from them too. Remove the folder, or give another --runs-dir."
            )
        resumed.append("teachers")
    else:
        source = first_run or settings.teachers_from
        if source is None or not _copy_teachers(Path(source), run_dir, cfg):
            train_teachers(cfg, dataset, run_dir)
            made.append("teachers")  # (a copy of the first seed's is not counted: instant)
        elif first_run is None:  # another run's: their training is not in this suite's wall time
            resumed.append(COPIED_TEACHERS)
    if all(checkpoint(run_dir, t).exists() for t in TIERS):
        resumed.append("students")
    else:
        distill_students(cfg, dataset, run_dir)
        made.append("students")
    trained, found = train_extras(cfg, dataset, run_dir, (*BASELINES, *ABLATION), transfer=transfer)
    made, resumed = made + trained, resumed + found
    if settings.recipe is not None:
        compress_cfg = suite_compress_config(settings, cfg)
        recipes = tier_recipe_steps(settings, compress_cfg)
        todo = [t for t in TIERS if not compressed_with(run_dir, t, *recipes[t])]
        if todo:
            # The variant bank (Table 6.7, the ablation) is built from the compressed students: one
            # built before holds the models these replace (dropped first, so that an interrupted
            # compression cannot leave it standing beside the new models).
            shutil.rmtree(run_dir / "edge", ignore_errors=True)
            compress_students(compress_cfg, dataset, run_dir, todo)
        made += [f"{t} compressed" for t in todo]
        resumed += [f"{t} compressed" for t in TIERS if t not in todo]
        trained, found = train_extras(cfg, dataset, run_dir, MATCHED, transfer=False, widths=matched_widths(first_run) if first_run is not None else None)
        made, resumed = made + trained, resumed + found
    return cfg, run_dir, made, resumed


def suite_compress_config(settings: SuiteSettings, cfg: RunConfig) -> RunConfig:
    """A run's config with the suite's recipes in it: they go through the config so that the check
    of what is compressed and the compression read them alike (recipe_for), and one call shares the
    fine-tunes' caches across recipes."""
    assert settings.recipe is not None
    tier_recipes = {t: str(r) for t, r in settings.tier_recipes.items()}
    return replace(cfg, compress=replace(cfg.compress, recipe=str(settings.recipe), tier_recipes=tier_recipes))


def tier_recipe_steps(settings: SuiteSettings, compress_cfg: RunConfig) -> dict[str, tuple[Path, list[dict[str, Any]]]]:
    """Each tier's recipe file and its steps (`recipe_steps`), every file read once. A file that
    does not load is an error naming the option that gave it (--recipe, or --tier-recipe TIER)."""
    from racmkd.compress.recipe import RecipeError

    steps: dict[Path, list[dict[str, Any]]] = {}
    out = {}
    for tier in TIERS:
        path = recipe_for(compress_cfg, tier)
        if path not in steps:
            try:
                steps[path] = recipe_steps(path)
            except RecipeError as err:
                option = f"--tier-recipe {tier}={settings.tier_recipes[tier]}" if tier in settings.tier_recipes else f"--recipe {settings.recipe}"
                raise RecipeError(f"{option}: {err}. Fix the file or name another; nothing was trained.") from None
        out[tier] = (path, steps[path])
    return out


def recipe_steps(recipe: Path) -> list[dict[str, Any]]:
    """A recipe's steps with every option, defaults included, as compression.json records them."""
    from racmkd.compress.recipe import load_recipe

    return json.loads(json.dumps(load_recipe(recipe).describe()))


def compressed_with(run_dir: Path, tier: str, recipe: Path, steps: list[dict[str, Any]] | None = None, into: str = "compressed") -> bool:
    """The tier's compressed artifact (in <run>/<into>/) exists, was made from its student as it is
    (`same_source`), and came from this recipe's steps as they read now, defaults included (an edited recipe
    or step compresses again; before, a resumed suite kept the old artifacts under the new name).
    `steps`: the recipe's, when the caller has read them already."""
    manifest = compressed_dir(run_dir, tier, into) / "compression.json"
    made = cached_json(manifest) if manifest.is_file() else None  # unreadable: made again
    return (
        made is not None
        and same_source(checkpoint(run_dir, tier), made.get("source_sha256"), manifest)
        and made.get("recipe_steps") == (recipe_steps(recipe) if steps is None else steps)
    )


# Measuring -------------------------------------------------------------------------------------------


def models_stamp(run_dir: Path) -> str:
    """A digest of which model files a run holds, their sizes and times: it changes when one is retrained."""
    files = sorted([*run_dir.glob("checkpoints/*.pt"), *compressed_records(run_dir)])
    return sha256(json.dumps([(str(f.relative_to(run_dir)), f.stat().st_size, f.stat().st_mtime_ns) for f in files]).encode())


def settings_stamp(cfg: RunConfig) -> str:
    """A digest of what the figures depend on besides the code, the models and the machine: the
    evaluation and data settings (`--set eval.energy.static_watts=50` changes every energy figure,
    `data.max_eval` every accuracy) and ONNX Runtime's version (every row runs on it)."""
    import onnxruntime

    settings = {"eval": to_dict(cfg.eval), "data": to_dict(cfg.data), "onnxruntime": onnxruntime.__version__}
    return sha256(json.dumps(settings, sort_keys=True, default=str).encode())


def measure_seed(cfg: RunConfig, dataset: PairedDataset, run_dir: Path, with_costs: bool) -> dict[str, Any]:
    """Accuracy of every row's artifact (and, with `with_costs`, its costs), cached in <run>/bench/rows.json."""
    cache = run_dir / "bench" / "rows.json"
    stored = cached_json(cache) or {}  # damaged: measured again
    commit, models, settings = git_commit(), models_stamp(run_dir), settings_stamp(cfg)
    # Reused only when measured by this very code on these very models with these settings: not
    # from an uncommitted tree, nor after a retrain or a changed evaluation setting; and only when
    # every row was produced (a row that failed, a killed export or a full disk, is tried again
    # rather than kept missing for good, up to MEASURE_ATTEMPTS times), the note of the rows the
    # suite never trains aside.
    same = (
        committed(commit)
        and stored.get("commit") == commit
        and stored.get("models") == models
        and stored.get("settings") == settings
        and stored.get("machine") == machine()
        and bool(stored.get("costs") or not with_costs)
    )
    whole = set(stored.get("missing", {})) <= {NOT_TRAINED_NOTE}
    if same and (whole or stored.get("attempts", 1) >= MEASURE_ATTEMPTS):
        return stored  # (and on this machine: a run moved elsewhere is measured again)
    out_dir = run_dir / "bench" / "onnx"
    compressed_tiers = [t for t in TIERS if (run_dir / "compressed" / t).is_dir()]
    wanted = [(name, True) for name in TABLE_ROWS if name not in MATCHED or checkpoint(run_dir, name).exists()] + [(t, False) for t in compressed_tiers]
    rows: list[Deployed] = []
    result: dict[str, Any] = {
        "commit": commit,
        "models": models,
        "settings": settings,
        "machine": machine(),
        "run": run_dir.name,
        "seed": cfg.seed,
        "rows": {},
        "missing": {},
        "attempts": stored.get("attempts", 1) + 1 if same else 1,  # (measured again: some row was missing)
    }
    for name, compressed in progress(wanted, desc=f"measure {run_dir.name}"):
        try:  # a row that cannot be produced is reported with the reason; the others go on
            row = deploy(cfg, dataset, run_dir, name, out_dir, compressed=compressed)
            result["rows"][row.name] = {
                "artifact": str(row.artifact.relative_to(run_dir)),
                "bytes_deployable": row.artifact.stat().st_size,
                **artifact_accuracy(row, dataset),
            }
            rows.append(row)
        except Exception as err:  # noqa: BLE001 - recorded in the table, never hidden
            result["missing"][name if compressed else f"{name}_fp32"] = f"{type(err).__name__}: {err}"
    if not compressed_tiers:
        result["missing"][NOT_TRAINED_NOTE] = "not trained: no tier was compressed (the suite ran without a recipe), and these copy a compressed tier's bytes"
    if with_costs:
        result["costs"] = artifact_costs(rows, dataset, cfg.eval, result["missing"])
    atomic_write_json(cache, result)
    return result


def table_66(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Rows: accuracy, F1 and AUC as mean and std over seeds; costs from the first seed, and every
    seed's deployable bytes where they differ (a recipe's step may stop early in one seed only: a
    bench run's low tier deployed 11.6 KB in two seeds and 21.3 KB in the third)."""
    costs = per_seed[0]["costs"]
    rows = {}
    for name in costs:
        seeds = [s["rows"][name] for s in per_seed if name in s["rows"]]
        sizes = [r["bytes_deployable"] for r in seeds if "bytes_deployable" in r]
        rows[name] = {
            "label": LABELS.get(name, name),
            "accuracy": mean_std([r["accuracy"] for r in seeds]),
            "f1_macro": mean_std([r["f1_macro"] for r in seeds]),
            "auc_roc": mean_std([r["auc_roc"] for r in seeds if r["auc_roc"] is not None]) if any(r["auc_roc"] is not None for r in seeds) else None,
            **costs[name],
            **({"bytes_deployable_seeds": sizes} if len(set(sizes)) > 1 else {}),
        }
    teacher = rows["teacher"]["accuracy"]["mean"] if "teacher" in rows else None
    for name, row in rows.items():
        if name != "teacher" and teacher:
            row["retention"] = row["accuracy"]["mean"] / teacher
    return rows


def table_targets(rows: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets: each tier dominates its closest baseline (and, where the suite trained
    it, the TinyML recipe at its own bytes); retention above the seed paper's at a tenth of its memory."""
    flat = {n: {"accuracy": r["accuracy"]["mean"], "bytes_deployable": r["bytes_deployable"], "latency_ms_p50": r["latency_ms_p50"]} for n, r in rows.items()}
    baselines = {n: flat[n] for n in (*BASELINES, *MATCHED) if n in flat}
    # The baseline is chosen on the first seed's costs (those of the rows' other columns); dominance
    # is judged on a tier's largest seed (a mean accuracy does not come from the smallest model
    # alone) against the baseline's smallest: the strict direction both ways.
    seeds = {n: rows[n].get("bytes_deployable_seeds", [f["bytes_deployable"]]) for n, f in flat.items()}
    largest = {n: {**f, "bytes_deployable": max(seeds[n]) if n in TIERS else min(seeds[n])} for n, f in flat.items()}
    out = []
    for tier in TIERS:
        if tier not in flat or not baselines or "retention" not in rows[tier]:
            out.append({"target": f"racmkd {tier}: dominance and retention", "measured": "not produced (see the rows not produced)", "reached": False})
            continue
        near = closest_in_cost(flat[tier], baselines)
        out.append(_dominance(f"racmkd {tier} dominates the baseline closest in cost ({LABELS[near]})", largest[tier], largest[near]))
        if matched_name(tier) in flat:  # (the closest by bytes and latency together may be another: a plain int8 CNN is slower at the same bytes)
            out.append(_dominance(f"racmkd {tier} dominates the TinyML recipe at its bytes", largest[tier], largest[matched_name(tier)]))
        goal, paper_mb = SEED_PAPER["retention"][tier], SEED_PAPER["memory_mb"].get(tier, SEED_PAPER["memory_mb"]["low"])
        retention, memory_mb = rows[tier]["retention"], rows[tier]["memory_bytes"] / 2**20
        out.append(
            {
                "target": f"racmkd {tier}: retention > {goal:.1%} (seed paper) at memory <= {paper_mb / 10:.2f} MB (a tenth of theirs)",
                "measured": f"{retention:.2%} at {memory_mb:.3f} MB",
                "reached": retention > goal and memory_mb <= paper_mb / 10,
            }
        )
    return out


def _dominance(target: str, a: dict[str, float], b: dict[str, float]) -> dict[str, Any]:
    measured = f"accuracy {a['accuracy']:.4f} vs {b['accuracy']:.4f}, {a['bytes_deployable'] / 1024:.1f} vs {b['bytes_deployable'] / 1024:.1f} KB, {a['latency_ms_p50']:.3f} vs {b['latency_ms_p50']:.3f} ms"
    return {"target": target, "measured": measured, "reached": dominates(a, b)}


def bank_record(folder: Path) -> dict[str, Any] | None:
    """A variant bank's bank.json as written (where and by which code it was built), or None when
    there is none or it cannot be read: then it is built again."""
    return cached_json(folder / "bank.json")


def bank_is_current(folder: Path) -> bool:
    """Whether a run's variant bank can be replayed as it is: built by this very code (its commit,
    as rows.json's: a bank from an older commit or an uncommitted tree is built again, since its
    costs come from that code's graph_cost and exports) on this machine (its latencies)."""
    bank, commit = bank_record(folder), git_commit()
    return bank is not None and committed(commit) and bank.get("commit") == commit and bank.get("machine") == machine()


def replay_tables(cfg: RunConfig, dataset: PairedDataset, run_dir: Path, settings: SuiteSettings) -> dict[str, Any]:
    """Table 6.7 from the runtime's trace replay (dynamic and every static tier) on the first seed's bank."""
    from racmkd.resources.sources import synthetic_trace
    from racmkd.runtime.simulate import simulate
    from racmkd.runtime.variants import build_bank, load_bank

    folder = run_dir / "edge"
    if not bank_is_current(folder):
        build_bank(cfg, dataset, run_dir, test_samples=settings.bank_test_samples)
    bank = load_bank(folder)
    bank_bytes = sum(int(v["file_bytes"]) for v in bank.data["variants"])  # what a device holds to run the runtime: every variant's file
    out = {}
    for trace in settings.traces:
        summary = simulate(
            bank, dataset, synthetic_trace(trace, settings.trace_seconds, seed=0), cfg.runtime, settings.requests, run_dir / "bench" / "replay" / trace
        )
        out[trace] = {
            k: summary[k] for k in ("trace", "requests", "latency_target_ms", "latency_model", "dynamic", "static", "oracle", "levels", "levels_static")
        }
        out[trace]["bytes_deployable"] = bank_bytes
    return out


def ablation(rows: dict[str, Any], replays: dict[str, Any], missing: dict[str, str] | None = None, compressed: bool = True) -> list[dict[str, Any]]:
    """Table 6.8: each component added to the previous rows, measured on the high tier. The order is
    Base KD -> + feature alignment -> + resource term (both at the largest weights the config's
    schedule gives them) -> the racmkd objective as scheduled at the high tier's budget (where they
    may fade out) -> + compression -> + dynamic allocation (the runtime needs the compressed tiers,
    so it comes last); the dynamic row is the trace replay.
    A row that could not be produced says why (`missing`: Table 6.6's reasons, by "<row> (seed n)";
    `compressed`: whether the suite compressed the tiers)."""
    missing = missing or {}
    out: list[dict[str, Any]] = []
    racmkd = "high_fp32" if compressed else "high"  # without compression, "high" is the uncompressed student
    steps = [
        ("Base KD (high tier, KD only)", "standard_kd"),
        ("+ lightweight feature alignment (KD + alignment at its largest scheduled weight, no resource term)", "kd_align"),
        ("+ resource term (group sparsity at its largest scheduled weight)", "kd_align_resource"),
        ("the racmkd objective at the high tier's budget (alignment and resource term as distill schedules them)", racmkd),
        ("+ compression (the suite's recipe: pruning, QAT, int8; the same steps for every modality)", "high" if compressed else None),
    ]
    previous = None
    for label, name in steps:
        if name is None or name not in rows:  # said, not skipped; the next row has nothing to compare with
            why = (
                "the suite ran without a compression recipe (--recipe)"
                if name is None
                else next((w for k, w in missing.items() if k.split(" (seed")[0] == name), "not measured")
            )
            out.append({"row": label, "model": name, "not_produced": why})
            previous = None
            continue
        r = rows[name]
        entry = {
            "row": label,
            "model": name,
            "accuracy": r["accuracy"],
            "memory_bytes": r["memory_bytes"],
            "bytes_deployable": r["bytes_deployable"],
            "latency_ms_p50": r["latency_ms_p50"],
            "energy_mj_estimated": r["energy_mj_estimated"],
        }
        if previous is not None:
            gain = r["accuracy"]["mean"] - previous["accuracy"]["mean"]
            spread = seed_spread(r["accuracy"], previous["accuracy"])
            entry.update(
                accuracy_change=gain,
                spread=spread,
                helps_accuracy=None if spread is None else gain > spread,
                memory_ratio=previous["memory_bytes"] / r["memory_bytes"],
                latency_ratio=previous["latency_ms_p50"] / r["latency_ms_p50"],
            )
        out.append(entry)
        previous = r
    for trace, replay in replays.items():
        static = replay["static"].get("high")
        dynamic = replay["dynamic"]
        # Helps when the gain in SLO-accuracy exceeds twice its standard error over the replay's
        # requests (a single replay: one seed, no spread; 0.003 on 2,000 requests is noise). A bank
        # without a static high policy leaves it undecided (None), not "no": nothing was compared.
        gain = dynamic["slo_accuracy"] - static["slo_accuracy"] if static else None
        noise = 2 * math.sqrt(sum(x["slo_accuracy"] * (1 - x["slo_accuracy"]) / x["requests"] for x in (dynamic, static))) if static else None
        # Memory and energy by the bank's figures for its variants (not Table 6.6's graph measure):
        # the sessions the runtime held (every variant it may switch to; static high its own two) and
        # the energy of the variants that answered, per request (RAPL where readable, else estimated).
        costs = {
            "memory_bytes": dynamic.get("memory_held_bytes_max"),
            "memory_bytes_static_high": (static or {}).get("memory_held_bytes_max"),
            "energy_mj_estimated": dynamic.get("energy_mj_mean"),
            "energy_mj_estimated_static_high": (static or {}).get("energy_mj_mean"),
        }
        out.append(
            {
                "row": f"+ dynamic resource allocation (trace '{trace}')",
                "model": "runtime",
                "slo_accuracy": dynamic["slo_accuracy"],
                "slo_accuracy_static_high": static["slo_accuracy"] if static else None,
                "accuracy_served": dynamic["accuracy"],
                "latency_ms_p50": dynamic["latency_ms_p50"],
                "latency_ms_p50_static_high": static["latency_ms_p50"] if static else None,
                **costs,
                "slo_gain": gain,
                "slo_noise": noise,
                "helps_accuracy": None if gain is None or noise is None else bool(gain > noise),
            }
        )
    return out


def transfer_table(run_dir: Path, dataset: PairedDataset, limit: int) -> dict[str, dict[str, float | None]]:
    """For each student modality set: accuracy with cross-modal KD, unimodal KD and labels only."""
    from racmkd.eval.deployed import accuracy_under
    from racmkd.models.checkpoint import load_model

    def acc(name: str) -> float | None:
        path = checkpoint(run_dir, name)
        if not path.exists():
            return None
        model, specs, _, _ = load_model(path)
        return accuracy_under(model.eval(), specs, dataset, limit=limit)

    table = {
        m: {"crossmodal_kd": acc(f"transfer_{m}_crossmodal"), "unimodal_kd": acc(f"transfer_{m}_unimodal"), "labels_only": acc(f"transfer_{m}_labels")}
        for m in dataset.modalities
    }
    table["+".join(dataset.modalities)] = {"crossmodal_kd": acc("standard_kd"), "unimodal_kd": None, "labels_only": acc("high_labels_only")}
    return table


def run_suite(settings: SuiteSettings) -> dict[str, Any]:
    """Train what is missing, measure everything, and return the suite's result."""
    started = time.perf_counter()
    datasets: dict[str, PairedDataset] = {}
    result: dict[str, Any] = {
        "commit": git_commit(),
        "machine": machine(),
        "config": str(settings.config),
        "seeds": list(settings.seeds),
        "overrides": list(settings.overrides),
        "recipe": str(settings.recipe) if settings.recipe else None,
        "tier_recipes": {t: str(r) for t, r in settings.tier_recipes.items()},
        "teachers_from": str(settings.teachers_from) if settings.teachers_from else None,
        "protocols": {},
    }
    # the sweeps' settings, the compression recipes and the run to take teachers from checked now, not after hours of training
    base = load_config(settings.config, list(settings.overrides))
    if settings.teachers_from is not None:  # (found after the first seed's run folder was made, as a config error about --config)
        try:
            open_run(Path(settings.teachers_from))
        except RunError as err:
            raise ConfigError(f"--teachers-from {settings.teachers_from}: {err}") from None
    degradation_sweeps(settings, {m: MODALITIES.get(m) for m in base.data.modalities})
    if settings.recipe is not None:
        tier_recipe_steps(settings, suite_compress_config(settings, base))
    for protocol in settings.protocols:
        first: tuple[RunConfig, Path] | None = None
        per_seed = []
        for seed in settings.seeds:
            cfg, run_dir, made, resumed = seed_run(settings, protocol, seed, first[1] if first else None, datasets)
            result.setdefault("made", {})[run_dir.name] = made
            result.setdefault("resumed", {})[run_dir.name] = resumed
            first = first or (cfg, run_dir)
            per_seed.append(measure_seed(cfg, datasets[protocol], run_dir, with_costs=first[1] == run_dir))
        assert first is not None
        cfg, run_dir = first
        dataset = datasets[protocol]
        rows = table_66(per_seed)
        missing = {f"{name} (seed {s['seed']})": why for s in per_seed for name, why in s.get("missing", {}).items()}
        section: dict[str, Any] = {"runs": [s["run"] for s in per_seed], "table_66": rows, "missing": missing, "targets": table_targets(rows)}
        section["pareto"] = {
            "bytes": pareto_front({n: (r["bytes_deployable"], r["accuracy"]["mean"]) for n, r in rows.items()}),
            "latency": pareto_front({n: (r["latency_ms_p50"], r["accuracy"]["mean"]) for n, r in rows.items()}),
        }
        if protocol == settings.protocols[0]:
            result["resumed" if bank_is_current(run_dir / "edge") else "made"][run_dir.name].append("edge bank")
            replays = replay_tables(cfg, dataset, run_dir, settings)
            section["table_67"] = replays
            section["table_68"] = ablation(rows, replays, missing, compressed=settings.recipe is not None)
            models = {n: twin(run_dir, n) for n in ("teacher", *TIERS, *BASELINES)}  # what each row deploys
            section["robustness_not_measured"], section["cost_growth_not_measured"] = {}, {}
            sweeps = degradation_sweeps(settings, dataset.modalities)
            section["degradations"] = {m: {"what": dataset.modalities[m].degradation, "column": dataset.modalities[m].degradation_column} for m in sweeps}
            section["robustness"] = robustness(
                models,
                dataset,
                sweeps,
                limit=settings.robustness_samples,
                threads=cfg.threads,
                not_measured=section["robustness_not_measured"],
            )
            if settings.transfer:
                section["transfer"] = transfer_table(run_dir, dataset, settings.robustness_samples)
            section["cost_growth"] = cost_growth(
                {n: twin(run_dir, n) for n in ("teacher", *TIERS)}, dataset, settings.batches, settings.scales, not_measured=section["cost_growth_not_measured"]
            )
        result["protocols"][protocol] = section
    result["seconds"] = time.perf_counter() - started
    return result


# Presenting ------------------------------------------------------------------------------------------


def _in_repo(path: str | None) -> str | None:
    """A config path as the reader's checkout names it (configs/...), wherever the suite ran from."""
    return "configs/" + path.split("/configs/", 1)[1] if path and "/configs/" in path else path


def _resumed(result: dict[str, Any]) -> str:
    """What the wall time left out: the models an earlier invocation trained, which this one resumed."""
    resumed = result.get("resumed")
    if resumed is None:  # a result written before resumed models were recorded
        return ""
    if not any(resumed.values()):
        return " (from scratch: nothing was resumed)"
    if not any(result["made"].values()):
        return " (everything trained was resumed from an earlier invocation; only measured here)"
    return (
        " (not counting what an earlier invocation trained and this one resumed: "
        + "; ".join(f"{run}: {', '.join(r)}" for run, r in resumed.items() if r)
        + ")"
    )


def _not_measured(reasons: dict[str, str] | None, section: str) -> list[str]:
    """A section's models that could not be measured, and why."""
    return ["", f"Not measured for {section}: " + "; ".join(f"{LABELS.get(n, n)}: {why}" for n, why in reasons.items()) + "."] if reasons else []


def _levels_side_by_side(replay: dict[str, Any]) -> list[str]:
    """Table 6.7 per level, dynamic beside each static tier: SLO-accuracy (accuracy, mean latency)."""
    statics = replay.get("levels_static") or {}
    if not statics:
        return []
    per = {policy: {r["level"]: r for r in rows} for policy, rows in {"dynamic": replay["levels"], **{f"static {k}": v for k, v in statics.items()}}.items()}
    levels = [r["level"] for r in replay["levels"]]
    lines = ["", "Per level, each policy's SLO-accuracy (accuracy; mean latency):", "", "| level | " + " | ".join(per) + " |", "|---|" + "---|" * len(per)]
    for level in levels:
        cells = [f"{r['slo_accuracy']:.4f} ({r['accuracy']:.4f}; {r['latency_ms_mean']:.2f} ms)" if (r := rows.get(level)) else "n/a" for rows in per.values()]
        lines.append(f"| {level} | " + " | ".join(cells) + " |")
    return lines


def mean_pm(stat: dict[str, float] | None, digits: int = 4) -> str:
    """A mean_std result as "mean ± std" (the mean alone for one seed or no spread)."""
    if not stat:
        return "n/a"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}" if stat["n"] > 1 and stat["std"] > 0 else f"{stat['mean']:.{digits}f}"


def _tier_recipes(result: dict[str, Any]) -> str:
    """The recipes that replaced the suite's for some tiers."""
    return "".join(f" (`{_in_repo(r)}` for the {t} tier)" for t, r in result.get("tier_recipes", {}).items())


def _seed_sizes(row: dict[str, Any]) -> str:
    """The seeds' deployable bytes, when they differ from one another as printed (int8 files of one
    design differ by a few bytes of scales: TinyML's read "11.7 KB" three times)."""
    sizes = [human_bytes(n) for n in row.get("bytes_deployable_seeds", [])]
    return f" (seeds: {', '.join(sizes)})" if len(set(sizes)) > 1 else ""


def _acc(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def render(result: dict[str, Any], plots: dict[str, str]) -> str:
    """BENCHMARKS.md: every table, the targets and the plots."""
    m = result["machine"]
    lines = [
        "# racmkd benchmarks",
        "",
        (
            f"Regenerate with `make bench` (or `python benchmarks/suite.py`; `--quick` for the minutes-long smoke version). Commit `{result['commit']}`, {m['cpu']} ({m['cores']} cores), Python {m['python']}, torch {m['torch']}. "
            f"Seeds {result['seeds']}; config `{_in_repo(result['config'])}`{' with ' + ', '.join(f'`{o}`' for o in result['overrides']) if result['overrides'] else ''}; compression recipe `{_in_repo(result['recipe'])}`{_tier_recipes(result)}. Wall time {result['seconds'] / 60:.1f} min{_resumed(result)}."
        ),
        "",
        (
            "Every figure below was measured in this run, on this machine; nothing is copied. The seed paper's published figures appear only in columns labelled as theirs. "
            "Teachers are trained once per protocol and shared by the seeds, which vary the students and baselines (their spread is the ± column). "
            "Costs are the first seed's models'; where the seeds' deployable files differ in size as printed the column lists each seed's; a tier's baseline is the closest in the first seed's costs, and dominance is judged on the tier's largest seed against the baseline's smallest. "
            "Latency: ONNX Runtime, batch 1, one thread, the models timed in turn over several rounds (median, 95th percentile). Memory: weight bytes as ONNX Runtime holds them (int8-weights artifacts keep a quarter of the bytes on disk and hold floats once loaded) + peak activation bytes from the ONNX graph's tensor lifetimes. "
            "Energy is **estimated** (FLOPs, bytes moved and latency through the energy model of `racmkd.config.EnergyModel`), not measured."
        ),
    ]
    copied = [run for run, found in result.get("resumed", {}).items() if COPIED_TEACHERS in found]
    if result.get("teachers_from"):  # (refused where its teachers saw other data or learned inputs the dataset no longer gives: trained here)
        where = ""
        if "resumed" in result:  # (a result written before copies were recorded says no more)
            where = f": into {', '.join(copied)}" if copied else ": nowhere (they saw other data or take inputs the dataset no longer gives; trained here)"
        lines += ["", f"Teachers copied from `{result['teachers_from']}` (same data settings, checked){where}."]
    for protocol, section in result["protocols"].items():
        lines += _table_66_md(protocol, section)
        lines += _table_67_md(protocol, section)
        lines += _table_68_md(protocol, section)
        lines += _robustness_md(protocol, section)
        lines += _transfer_md(protocol, section)
        lines += _cost_growth_md(protocol, section)
    if plots:  # (the JSON and PNGs are run outputs, kept out of git: a fresh clone has them once the suite has run)
        lines += ["", "Plots, written beside the suite's JSON by the run (not kept in git: `make bench` makes them):", ""]
    lines += [f"![{title}]({path})" for title, path in plots.items()] + [""]
    return "\n".join(lines)


def _heading(title: str, intro: str) -> list[str]:
    """A section's heading and its opening paragraph, as markdown lines."""
    return ["", f"## {title}", "", intro, ""]


def _table_66_md(protocol: str, section: dict[str, Any]) -> list[str]:
    """Table 6.6 of one protocol: every model's accuracy and costs, the targets, the seed paper's figures beside ours, the Pareto fronts."""
    rows = section["table_66"]
    lines = _heading(f"Table 6.6: comparison with existing approaches ({protocol})", f"Runs: {', '.join(section['runs'])}.")
    lines += [
        "| model | accuracy | macro-F1 | AUC-ROC | retention | params | deployable | peak memory | FLOPs | latency p50 / p95 | energy (est.) | format |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        ret = f"{r['retention']:.2%}" if "retention" in r else ""
        lines.append(
            f"| {r['label']} | {mean_pm(r['accuracy'])} | {mean_pm(r['f1_macro'])} | {mean_pm(r['auc_roc'])} | {ret} | {r['params']:,} | {human_bytes(r['bytes_deployable'])}{_seed_sizes(r)} | {human_bytes(r['memory_bytes'])} | {r['flops'] / 1e6:.2f} M | {r['latency_ms_p50']:.3f} / {r['latency_ms_p95']:.3f} ms | {r['energy_mj_estimated']:.4f} mJ | {r['format']} |"
        )
    if section.get("missing"):
        lines += ["", "Rows not produced: " + "; ".join(f"{name}: {why}" for name, why in section["missing"].items()) + "."]
    lines += ["", "### Targets", "", "| target | measured | reached |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['measured']} | {'yes' if t['reached'] else '**no**'} |" for t in section["targets"]]
    lines += [
        "",
        "### Beside the seed paper (their figures, not measured here)",
        "",
        "| tier | retention here | seed paper's retention | memory here | seed paper's memory |",
        "|---|---|---|---|---|",
    ]
    for tier in TIERS:
        if "retention" in rows.get(tier, {}):
            lines.append(
                f"| {tier} | {rows[tier]['retention']:.2%} | {SEED_PAPER['retention'][tier]:.1%} | {human_bytes(rows[tier]['memory_bytes'])} | {SEED_PAPER['memory_mb'].get(tier, SEED_PAPER['memory_mb']['low'])} MB{' (their low tier; critical not given)' if tier == 'critical' else ''} |"
            )
    for cost, front in section["pareto"].items():
        lines += ["", f"Pareto front, accuracy vs {cost} (cheapest first): " + " → ".join(LABELS.get(n, n) for n in front) + "."]
    return lines


def _table_67_md(protocol: str, section: dict[str, Any]) -> list[str]:
    """Table 6.7 of one protocol: each trace's replay, per resource level and per policy."""
    from racmkd.runtime.simulate import replay_markdown

    lines: list[str] = []
    for trace, replay in section.get("table_67", {}).items():
        lines += _heading(
            f"Table 6.7: performance under dynamic resource constraints ({protocol}, trace '{trace}')",
            f"{replay['requests']} requests replayed by the edge runtime; latency target {replay['latency_target_ms']} ms; latency model: {replay['latency_model']}. SLO-accuracy: answered correctly within the target.",
        )
        lines += replay_markdown(replay) + _levels_side_by_side(replay)
    return lines


def _table_68_md(protocol: str, section: dict[str, Any]) -> list[str]:
    """Table 6.8 of one protocol: the ablation, one component added per row."""
    if "table_68" not in section:
        return []
    lines = _heading(
        f"Table 6.8: ablation, edge deployment ({protocol})",
        "Each row adds one component to the row above, on the high tier. A component helps accuracy when its gain exceeds the seed spread; the dynamic rows compare SLO-accuracy under a trace with the static high tier, and help when the gain exceeds twice its standard error over the replay's requests.",
    )
    lines += [
        "| configuration | accuracy | change | helps accuracy | memory | deployable | latency p50 | energy (est.) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in section["table_68"]:
        if r["model"] == "runtime":
            no_static = "no static high policy in the bank to compare with"
            change = f"{r['slo_gain']:+.4f} (noise {r['slo_noise']:.4f})" if r.get("slo_gain") is not None else no_static
            helps = _verdict(r["helps_accuracy"])
            memory = (
                f"{human_bytes(r['memory_bytes'])} held"
                + (f" (static high {human_bytes(r['memory_bytes_static_high'])})" if r["memory_bytes_static_high"] else "")
                + ", the bank's figures"
            )
            energy = (
                "none answered"
                if r["energy_mj_estimated"] is None
                else f"{r['energy_mj_estimated']:.4f} mJ"
                + (f" (static high {r['energy_mj_estimated_static_high']:.4f})" if r["energy_mj_estimated_static_high"] is not None else "")
            )
            lines.append(
                f"| {r['row']} | SLO-accuracy {r['slo_accuracy']:.4f} (static high {_acc(r['slo_accuracy_static_high'])}) | {change} | {helps} | {memory} | | {r['latency_ms_p50']:.2f} ms (static high {_ms(r['latency_ms_p50_static_high'])}) | {energy} |"
            )
        elif "not_produced" in r:
            lines.append(f"| {r['row']} | not produced: {r['not_produced']} | | | | | | |")
        else:
            spread = "no spread: one seed" if r.get("spread") is None else f"spread {r['spread']:.4f}"
            change = (
                f"{r['accuracy_change']:+.4f} ({spread}); memory / {r['memory_ratio']:.2f}, latency / {r['latency_ratio']:.2f}"
                if "accuracy_change" in r
                else ""
            )
            helps = _verdict(r["helps_accuracy"]) if "helps_accuracy" in r else ""
            lines.append(
                f"| {r['row']} | {mean_pm(r['accuracy'])} | {change} | {helps} | {human_bytes(r['memory_bytes'])} | {human_bytes(r['bytes_deployable'])} | {r['latency_ms_p50']:.3f} ms | {r['energy_mj_estimated']:.4f} mJ |"
            )
    return lines


def _verdict(helps: bool | None) -> str:
    """An ablation row's "helps accuracy" cell: None is a gain within the noise."""
    return "undecided" if helps is None else "yes" if helps else "no"


def _robustness_md(protocol: str, section: dict[str, Any]) -> list[str]:
    """Robustness of one protocol: accuracy with each modality degraded or missing (or why it was not measured)."""
    lines: list[str] = []
    if section.get("robustness"):  # (every model failing leaves only the reasons, below)
        rob = section["robustness"]
        degradations = section.get("degradations", {})
        levels = {m: sorted({k for r in rob.values() for k in r["degraded"].get(m, {})}, key=float) for m in degradations}
        withheld = list(next(iter(rob.values()))["missing"])
        what = "; ".join(f"{m}: {d['what']}" for m, d in degradations.items())
        lines += _heading(
            f"Robustness ({protocol}): accuracy under acquisition noise (the seed's eq. 25)",
            f"Each modality degraded on its own ({what}), and each modality missing; PyTorch models, test split: each row's deployed weights (a racmkd tier's compressed model), in float arithmetic (the TinyML row's fp32 twin, not its int8 rounding).",
        )
        headings = [f"{m} {degradations[m]['column'].format(level=level)}" for m in levels for level in levels[m]] + [f"without {m}" for m in withheld]
        lines += ["| model | " + " | ".join(headings) + " |", "|---|" + "---|" * len(headings)]
        for name, r in rob.items():
            cells = [_acc(r["degraded"].get(m, {}).get(level)) for m in levels for level in levels[m]] + [_acc(v) for v in r["missing"].values()]
            lines.append(f"| {LABELS.get(name, name)} | " + " | ".join(cells) + " |")
    lines += _not_measured(section.get("robustness_not_measured"), "robustness")
    return lines


def _transfer_md(protocol: str, section: dict[str, Any]) -> list[str]:
    """Cross-modal transfer of one protocol: the same student taught three ways."""
    if "transfer" not in section:
        return []
    lines = _heading(
        f"Cross-modal transfer ({protocol})",
        "Students of the high tier's resolution and depth, widest within its budget, each trained three ways with the same recipe. Cross-modal KD: from the fused image + audio teacher; unimodal KD: from the teacher of the student's own modality. n/a: for image+audio unimodal KD, no single-modality teacher sees what the student sees; elsewhere, that student was not trained (its checkpoint is missing).",
    )
    lines += ["| student sees | cross-modal KD | unimodal KD | labels only |", "|---|---|---|---|"]
    for mods, r in section["transfer"].items():
        lines.append(f"| {mods} | {_acc(r['crossmodal_kd'])} | {_acc(r['unimodal_kd'])} | {_acc(r['labels_only'])} |")
    return lines


def _cost_growth_md(protocol: str, section: dict[str, Any]) -> list[str]:
    """Cost growth of one protocol: how latency and memory grow with batch and input size (or why not measured)."""
    lines: list[str] = []
    if "cost_growth" in section:
        lines += _heading(
            f"Cost growth ({protocol})",
            "PyTorch, one thread, every point of a model timed in turn over several rounds. Exponent: slope of log cost against log batch size, or against log input values (every input side scaled). Each call also pays a fixed cost (eager dispatch, the same for any input): where it dominates, small students at batch 1, the latency exponent stays near 0, which says the model is overhead-bound, not that its arithmetic does not grow.",
        )
        lines += ["| model | latency ~ batch^k | memory ~ batch^k | latency ~ input^k | memory ~ input^k |", "|---|---|---|---|---|"]
        for name, r in section["cost_growth"].items():
            k = [r[f"exponent_{what}"] for what in ("latency_vs_batch", "memory_vs_batch", "latency_vs_input", "memory_vs_input")]
            lines.append(f"| {LABELS.get(name, name)} | " + " | ".join("n/a" if v is None else f"{v:.2f}" for v in k) + " |")
    lines += _not_measured(section.get("cost_growth_not_measured"), "cost growth")
    return lines


def plot_all(result: dict[str, Any], out: Path, stem: str) -> dict[str, str]:
    """The Pareto plot of every protocol, robustness and cost-growth plots of the first, as PNGs in `out`; returns title -> file name."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from racmkd.utils import save_figure

    protocol, section = next(iter(result["protocols"].items()))
    made = {}

    # Every model of every table on one plot: each protocol's Table 6.6 rows (the first protocol's
    # points filled, the others' hollow; each protocol's tiers connected) and the first protocol's
    # runtime in each trace replay (accuracy served; every variant's bytes, as the device holds them;
    # its latency is under the trace's load, not idle as the others').
    fig, axes = plt.subplots(1, 2, figsize=(15, 6))
    for ax, key, xlabel in (
        (axes[0], "bytes_deployable", "deployable bytes"),
        (axes[1], "latency_ms_p50", "latency p50 (ms, ONNX Runtime, batch 1; runtime: replayed under the trace's load)"),
    ):
        for i, (name_of_protocol, part) in enumerate(result["protocols"].items()):
            rows = part["table_66"]
            suffix = "" if i == 0 else f" ({name_of_protocol})"
            for name, r in rows.items():
                colour = "tab:blue" if name in TIERS else "tab:cyan" if name.endswith("_fp32") else "tab:red" if name == "teacher" else "tab:gray"
                ax.errorbar(
                    r[key],
                    r["accuracy"]["mean"],
                    yerr=r["accuracy"]["std"],
                    fmt="o" if i == 0 else "s",
                    color=colour,
                    mfc=colour if i == 0 else "none",
                    capsize=3,
                )
                ax.annotate(LABELS.get(name, name) + suffix, (r[key], r["accuracy"]["mean"]), textcoords="offset points", xytext=(4, 3), fontsize=6)
            tiers = [t for t in TIERS if t in rows]
            ax.plot(
                [rows[t][key] for t in tiers],
                [rows[t]["accuracy"]["mean"] for t in tiers],
                "-" if i == 0 else "--",
                color="tab:blue",
                alpha=0.6,
                label=f"racmkd tiers ({name_of_protocol})",
            )
        for trace, replay in section.get("table_67", {}).items():
            x = replay["bytes_deployable"] if key == "bytes_deployable" else replay["dynamic"]["latency_ms_p50"]
            if math.isfinite(x):  # (a replay with nothing answered has no latency)
                ax.plot(x, replay["dynamic"]["accuracy"], "*", markersize=11, color="tab:green")
                ax.annotate(
                    f"runtime, '{trace}' ({protocol})",
                    (x, replay["dynamic"]["accuracy"]),
                    textcoords="offset points",
                    xytext=(4, -9),
                    fontsize=6,
                    color="tab:green",
                )
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # (labelled minor ticks overlap on a short log axis)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel("test accuracy")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle("Accuracy vs cost: every table's models (" + ", ".join(result["protocols"]) + ")")
    fig.tight_layout()
    save_figure(fig, out / f"{stem}-pareto.png", dpi=120)
    made["Pareto: accuracy vs bytes and latency"] = f"{stem}-pareto.png"

    if section.get("robustness"):
        rob = section["robustness"]
        swept = list(section.get("degradations", {}))
        fig, axes = plt.subplots(1, max(1, len(swept)), figsize=(6 * max(1, len(swept)), 4.5), squeeze=False)
        for ax, modality in zip(axes[0], swept):
            for name, r in rob.items():
                points = r["degraded"].get(modality)
                if points:
                    xs = [float(k) for k in points]
                    finite = [x for x in xs if math.isfinite(x)]
                    span = (max(finite) - min(finite)) if len(finite) > 1 else 1.0
                    # an infinite level (audio: the clean recording) plotted a third of the axis beyond the largest finite one
                    ax.plot(
                        [x if math.isfinite(x) else max(finite, default=0.0) + span / 3 for x in xs], list(points.values()), "o-", label=LABELS.get(name, name)
                    )
            infinite = any(not math.isfinite(float(k)) for r in rob.values() for k in r["degraded"].get(modality, {}))
            ax.set_xlabel(f"{modality}: {section['degradations'][modality]['what']}" + ("; rightmost point: inf" if infinite else ""), fontsize=8)
            ax.set_ylabel("test accuracy")
            ax.grid(True, alpha=0.3)
        axes[0][-1].legend(fontsize=7)
        fig.tight_layout()
        save_figure(fig, out / f"{stem}-robustness.png", dpi=120)
        made["Robustness: accuracy vs each modality's degradation"] = f"{stem}-robustness.png"

    if section.get("cost_growth"):
        fig, axes = plt.subplots(2, 2, figsize=(12, 8.5), sharex="col")
        for (row, key, unit), (col, sweep, x) in itertools.product(
            [(0, "latency_ms", 1.0), (1, "peak_activation_bytes", 1 / 1024)], [(0, "batch", "batch"), (1, "resolution", "input_values")]
        ):
            for name, r in section["cost_growth"].items():
                axes[row][col].loglog([p[x] for p in r[sweep]], [p[key] * unit for p in r[sweep]], "o-", label=LABELS.get(name, name))
        axes[1][0].set_xlabel("batch size")
        axes[1][1].set_xlabel("input values per sample (all inputs, scaled sides)")
        for col in (0, 1):
            axes[0][col].set_ylabel("latency (ms, PyTorch, one thread)")
            axes[1][col].set_ylabel("peak activation memory (KB)")
        for ax in axes.flat:
            ax.grid(True, which="both", alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        save_figure(fig, out / f"{stem}-cost-growth.png", dpi=120)
        made["Cost growth: latency and memory vs batch size and input size (log-log)"] = f"{stem}-cost-growth.png"
    return made
