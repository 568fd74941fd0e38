"""The `racmkd` command: thin typer commands over the library functions in racmkd.pipeline,
racmkd.eval.report and racmkd.runtime."""

from __future__ import annotations

import itertools
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from racmkd.config import ConfigError, RunConfig, load_config, read_token
from racmkd.data.paths import DataError

if TYPE_CHECKING:
    from racmkd.resources.sources import Trace

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Resource-aware cross-modal knowledge distillation for edge AI.")

DEFAULT_CONFIG = Path("configs/default.yaml")
ConfigOpt = Annotated[
    Optional[Path], typer.Option("--config", "-c", help="YAML config (default: ./configs/default.yaml, else the racmkd checkout's, else built-in defaults).")
]
ProtocolOpt = Annotated[Optional[str], typer.Option(help="Data protocol: avmnist (default) or clean.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Override one config field, e.g. --set students.train.epochs=2 (repeatable).")]
RunSetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override one field of the run's config for this command, e.g. --set runtime.latency_target_ms=3 (repeatable)."),
]
# Sections that say how models are trained: a command that serves a run's trained models reads none of them.
TRAINING_SECTIONS = ("teacher.unimodal.", "teacher.fused.", "students.train.", "distill.")
NameOpt = Annotated[Optional[str], typer.Option(help="Run name (default: <protocol>-<timestamp>).")]
RunOpt = Annotated[Path, typer.Option("--run", "-r", help="Run directory.")]


def default_config() -> Path | None:
    """The config a command reads without --config: ./configs/default.yaml, else the checkout's
    (as recipes and device profiles are found from anywhere), else None: the built-in defaults,
    said on stderr. Outside the checkout the built-in defaults were used silently, and they differ
    from configs/default.yaml (mixup, the tiers, compression, the edge bank...). Installed, there
    is no checkout (`checkout`): site-packages/configs/default.yaml is another distribution's."""
    from racmkd.data.paths import REPO_ROOT, checkout

    root = checkout()
    for path in (DEFAULT_CONFIG, *([root / DEFAULT_CONFIG] if root else [])):
        if path.is_file():
            return path
    where = f"in the racmkd checkout ({root})" if root else f"racmkd checkout ({REPO_ROOT} holds no racmkd pyproject.toml: racmkd is installed)"
    typer.secho(
        f"note: no {DEFAULT_CONFIG} here or {where}: using the built-in defaults of racmkd/config.py (pass --config FILE to choose)",
        fg=typer.colors.YELLOW,
        err=True,
    )
    return None


def _config(config: Path | None, protocol: str | None, overrides: list[str] | None, name: str | None = None) -> RunConfig:
    path = config if config is not None else default_config()
    extra = list(overrides or [])
    if protocol:
        extra.append(f"data.protocol={protocol}")
    if name:
        extra.append(f"name={_text(name)}")
    return load_config(path, extra)


def _text(value: str) -> str:
    """A string option as a YAML override that reads back as that string (a name like 20261203,
    yes or `a: b` would otherwise become a number, a boolean or a mapping)."""
    return json.dumps(str(value))


def _file_above(path: Path) -> Path | None:
    """The nearest existing path above `path` that is a file, not a folder: writing under it fails
    ("File exists", "Not a directory"), and a command should say so before its work, not after."""
    for parent in Path(path).absolute().parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def _check_out_folder(out: Path) -> None:
    """--out as a folder to write into (made if missing): refused up front when it or a path above it is a file."""
    blocking = out if out.exists() and not out.is_dir() else _file_above(out)
    if blocking is not None:
        raise ValueError(f"--out {out}: {blocking} is a file; --out must be a folder (made if missing) with no file on its path")


_OUT_JSON_MAX_BYTES = 10 << 20  # a profile JSON is a few kB; a file above this is not one


def _check_json_target(path: Path, flag: str) -> None:
    """A JSON file to write, named by `flag`: not a folder, a device or a pipe, nor under a file."""
    from racmkd.utils import not_a_regular_file

    problem = "a folder" if path.is_dir() else not_a_regular_file(path)
    if problem:
        raise ValueError(f"{flag} {path}: {problem}; name the JSON file to write")
    blocking = _file_above(path)
    if blocking is not None:
        raise ValueError(f"{flag} {path}: {blocking} is a file, not a folder; name a JSON file in an existing or new folder")


def _check_out_json(out: Path, inputs: list[Path]) -> None:
    """--out as the JSON file to write, checked before the work: not a folder or under a file, not
    one of the command's own inputs (`profile m.onnx --out m.onnx` replaced the model with JSON),
    and no existing file other than an earlier profile or an empty one, which would be lost.
    Only a file up to `_OUT_JSON_MAX_BYTES` is read to tell: a profile is a few kB, so a larger
    file is something else (a model, a dataset) and is refused without reading it whole."""
    _check_json_target(out, "--out")
    if not out.exists():
        return
    for given in inputs:
        if given.exists() and out.samefile(given):
            raise ValueError(f"--out {out}: that is the input {given} itself; name another file for the JSON (default: <model>.profile.json)")
    size = out.stat().st_size
    if size > _OUT_JSON_MAX_BYTES:
        raise ValueError(
            f"--out {out}: an existing file of {size} bytes, too large to be a profile; it is not overwritten. Name a new file, or remove it first"
        )
    try:
        earlier = json.loads(out.read_bytes()) if size else None
    except (ValueError, OSError):
        raise ValueError(f"--out {out}: an existing file that is not JSON; it is not overwritten. Name a new file, or remove it first") from None

    def a_profile(value: object) -> bool:
        return isinstance(value, dict) and "device" in value and "verdict" in value

    if earlier is not None and not (a_profile(earlier) or (isinstance(earlier, list) and earlier and all(map(a_profile, earlier)))):
        # (a run's bank.json, compression.json or report.json was replaced, and the run broken)
        raise ValueError(f"--out {out}: an existing JSON file that is not a profile; it is not overwritten. Name a new file, or remove it first")


def _check_edge_log(log: Path) -> None:
    """`edge run --log` as the file to write, checked before the run: a new file, an empty one or an
    earlier log (its JSON begins with the summary); anything else would be lost (`--log
    <run>/config.yaml` replaced the run's config, and left the run unreadable)."""
    _check_json_target(log, "--log")
    if log.exists():
        with log.open("rb") as f:
            head = f.read(64)
        if head.strip() and not head.lstrip(b"{ \n\r\t").startswith(b'"summary"'):
            raise ValueError(f"--log {log}: an existing file that is not an `edge run` log; it is not overwritten. Name a new file, or remove it first")


def _fail(err: Exception) -> typer.Exit:
    if isinstance(err, MemoryError):  # (numpy's says what it could not allocate, not that memory ran out)
        err = MemoryError(f"out of memory ({err or 'no detail'}); free some, or raise the process's limit (ulimit -v, the container's memory)")
    typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=2)


def _errors() -> tuple[type[Exception], ...]:
    """The errors a command reports in one line (OSError: a file that cannot be read or written,
    FileNotFoundError included; MemoryError: a small device's, or a process limit's: a traceback). A checkpoint or export error can only come from its module once
    imported, so torch is not imported for it (the edge server runs without torch)."""
    from racmkd.runs import RunError

    checkpoints, artifacts = sys.modules.get("racmkd.models.checkpoint"), sys.modules.get("racmkd.compress.artifacts")
    return (
        ConfigError,
        DataError,
        RunError,
        OSError,
        KeyError,
        ValueError,
        MemoryError,
        *([checkpoints.CheckpointError] if checkpoints else []),
        *([artifacts.ExportError] if artifacts else []),
    )


@app.command()
def data(
    config: ConfigOpt = None,
    protocol: ProtocolOpt = None,
    set_: SetOpt = None,
    download: Annotated[
        bool,
        typer.Option(
            help="First fetch the datasets of the config's modalities (MNIST, FSDD, the pen digits, a plugin's) from their official sources into the data root."
        ),
    ] = False,
) -> None:
    """Build and cache the paired dataset; print what it holds."""
    from racmkd.data.dataset import build_dataset, download_datasets

    try:
        cfg = _config(config, protocol, set_)
        if download:
            download_datasets(cfg.data)
        dataset = build_dataset(cfg.data)
    except _errors() as err:
        raise _fail(err) from None
    typer.echo(json.dumps(dataset.info, indent=2))


@app.command("train-teacher")
def train_teacher(
    config: ConfigOpt = None,
    protocol: ProtocolOpt = None,
    set_: SetOpt = None,
    name: NameOpt = None,
    run: Annotated[
        Optional[Path],
        typer.Option("--run", "-r", help="Train into this existing run that has no whole teacher set yet (an interrupted `racmkd run`), with its config.yaml."),
    ] = None,
) -> None:
    """Train the unimodal teachers and the fused teacher into a new run directory (or, with --run, into an existing one that has no whole teacher set yet)."""
    from racmkd.pipeline import check_teacher_inputs, check_teachers_trainable, open_run, prepare_data, train_teachers
    from racmkd.runs import new_run

    try:
        if run is not None:
            given = [option for option, value in (("--config", config), ("--protocol", protocol), ("--set", set_), ("--name", name)) if value]
            if given:
                raise ValueError(
                    f"--run {run}: the run's own config.yaml sets its teachers; {', '.join(given)} cannot change it (leave them out, or start a new run)"
                )
            run_dir, cfg = open_run(run)
            check_teachers_trainable(cfg, run_dir)  # before the data loads
        else:
            cfg = _config(config, protocol, set_, name)
        dataset = prepare_data(cfg)  # first: a run folder (and runs/latest) only for data that loads
        check_teacher_inputs(cfg, dataset)
        if run is None:
            with new_run(cfg) as run_dir:  # (removed again if no teacher is saved)
                train_teachers(cfg, dataset, run_dir)
        else:
            train_teachers(cfg, dataset, run_dir)
    except _errors() as err:
        raise _fail(err) from None
    typer.echo(f"teachers saved in {run_dir}/checkpoints")


@app.command()
def distill(
    run: RunOpt = Path("runs/latest"), tier: Annotated[Optional[list[str]], typer.Option(help="Only these tiers (repeatable; default: all).")] = None
) -> None:
    """Choose each tier's student design by measurement and distil it from the run's teachers."""
    from racmkd.pipeline import check_tiers, distill_students, open_run, prepare_data

    try:
        run_dir, cfg = open_run(run)
        check_tiers(cfg, f"{run_dir}/config.yaml")  # before the data loads
        names = distill_students(cfg, prepare_data(cfg), run_dir, tier)
    except _errors() as err:
        raise _fail(err) from None
    typer.echo(f"students saved in {run_dir}/checkpoints: {', '.join(names)}")


@app.command()
def evaluate(run: RunOpt = Path("runs/latest")) -> None:
    """Measure every model of a run; write report.json, report.md and plots."""
    from racmkd.eval.report import evaluate_run

    try:
        report = evaluate_run(run)
    except _errors() as err:
        raise _fail(err) from None
    _echo_report(report, Path(run))


def _echo_report(report: dict, run_dir: Path) -> None:
    """One line per model of a run's report (accuracy, bytes, latency), then where the report is."""
    for name, entry in report["models"].items():
        typer.echo(f"{name:24s} accuracy {entry['accuracy']:.4f}  {entry['param_bytes_fp32'] / 1024:9.1f} KB  {entry['latency_ms_p50']:.3f} ms")
    typer.echo(f"report: {run_dir / 'report.md'}")


@app.command("run")
def run_all(config: ConfigOpt = None, protocol: ProtocolOpt = None, set_: SetOpt = None, name: NameOpt = None) -> None:
    """The whole pipeline: data, teachers, students, report; also compression (compress.tiers) and the edge variant bank (runtime.build_bank) when the config asks."""
    from racmkd.pipeline import run_pipeline

    try:
        cfg = _config(config, protocol, set_, name)
        run_dir = run_pipeline(cfg)
    except _errors() as err:
        raise _fail(err) from None
    from racmkd.runs import read_report

    _echo_report(read_report(run_dir), run_dir)


@app.command()
def compress(
    run: RunOpt = Path("runs/latest"),
    tier: Annotated[Optional[list[str]], typer.Option(help="Tiers to compress (repeatable; default: all).")] = None,
    recipe: Annotated[
        Optional[Path],
        typer.Option(
            help="Recipe YAML for every tier named (default: the run config's compress.tier_recipes for its tiers, else compress.recipe, e.g. configs/recipes/default.yaml)."
        ),
    ] = None,
) -> None:
    """Compress tiers' students with a recipe (prune, low-rank, input reduction, QAT, int8, export) and re-measure the run."""
    from racmkd.eval.report import evaluate_run
    from racmkd.pipeline import compress_students, compression_recipes, open_run, prepare_data

    try:
        run_dir, cfg = open_run(run)
        tiers = list(tier or [t.name for t in cfg.students.tiers])
        compression_recipes(cfg, tiers, recipe)  # a recipe's mistakes said now, not after the data loads (11 s)
        compressed = run_dir / "compressed"
        if compressed.exists() and not compressed.is_dir():  # (found after the data and the teachers had loaded, as "[Errno 17] File exists")
            raise ValueError(f"{compressed}: a file where the run keeps its compressed tiers; move it away, then compress again")
        dataset = prepare_data(cfg)
        folders = compress_students(cfg, dataset, run_dir, tiers, recipe)
        report = evaluate_run(run_dir, dataset)
    except _errors() as err:
        raise _fail(err) from None
    for folder in folders:
        e = report["models"][f"{folder.name}_compressed"]
        typer.echo(
            f"{folder.name + '_compressed':24s} accuracy {e['accuracy']:.4f}  {e['bytes_deployable'] / 1024:9.1f} KB {e['format']}  {e['compression_ratio']:.1f}x  {e['latency_ms_p50']:.3f} ms"
        )
    typer.echo(f"report: {run_dir / 'report.md'}")


@app.command()
def export(
    run: RunOpt = Path("runs/latest"),
    model: Annotated[str, typer.Option(help="Checkpoint to export: teacher, teacher_image, teacher_audio, high, medium, low, critical, ...")] = "high",
    out: Annotated[Optional[Path], typer.Option(help="Folder for the .onnx files (default: <run>/onnx).")] = None,
    int8: Annotated[bool, typer.Option("--int8/--no-int8", help="Also write a static int8 (QDQ) model.")] = True,
    int8_weights: Annotated[
        bool,
        typer.Option("--int8-weights/--no-int8-weights", help="Also write int8 weights with float arithmetic (a quarter of the weight bytes, fp32 speed)."),
    ] = True,
    int4_weights: Annotated[
        bool,
        typer.Option(
            "--int4-weights/--no-int4-weights",
            help="Also write 4-bit weights with float arithmetic (an eighth of the weight bytes, fp32 speed), the most sensitive layers kept in 8 bits for the parity bound (a search: two trials per layer, then whole validation passes; minutes for a teacher).",
        ),
    ] = False,
    modality: Annotated[Optional[list[str]], typer.Option(help="Export the graph for these inputs only (repeatable): a variant with a sensor off.")] = None,
) -> None:
    """Export a model to ONNX (fp32, int8, int8 weights, optionally 4-bit weights) with its preprocessing contract; check parity on the whole test split."""
    from racmkd.pipeline import export_model, exportable_checkpoint, open_run, prepare_data

    try:
        if out is not None:
            _check_out_folder(out)  # found now, not after the data loads ("[Errno 17] File exists", "[Errno 20] Not a directory")
        run_dir, cfg = open_run(run)
        exportable_checkpoint(run_dir, model, list(modality) if modality else None)  # before the data loads
        result = export_model(
            cfg, prepare_data(cfg), run_dir, model, out, int8, list(modality) if modality else None, int8_weights=int8_weights, int4_weights=int4_weights
        )
    except _errors() as err:
        raise _fail(err) from None
    typer.echo(json.dumps(result, indent=2))
    for key in ("fp32", "int8", "int8-weights", "int4-weights"):
        if key in result and "why" in result[key]:
            typer.echo(f"note: no {key} file: {result[key]['why']}", err=True)
        elif key in result and not result[key]["meets_bound"]:
            p = result[key].get("parity_vs_fp32", result[key].get("parity_vs_pytorch"))
            typer.echo(
                f"warning: {result[key]['path']} misses the parity bound (argmax agreement {p['argmax_agreement']:.4f}, accuracy {p['accuracy']:.4f} vs {p['reference_accuracy']:.4f}): do not deploy it as is",
                err=True,
            )


@app.command()
def profile(
    model: Annotated[Path, typer.Argument(help="An exported racmkd .onnx model.")],
    device: Annotated[list[str], typer.Option(help="Device profile: a name of racmkd's (configs/devices/ in a checkout) or a YAML path (repeatable).")],
    json_: Annotated[bool, typer.Option("--json", help="Print one JSON object (a list for several devices).")] = False,
    out: Annotated[Optional[Path], typer.Option(help="Also write the profile(s) here as JSON (default: <model>.profile.json).")] = None,
    latency_ms: Annotated[
        Optional[float], typer.Option("--latency-ms", min=0.000001, max=1e9, help="Latency target for the verdict (default: the device's).")
    ] = None,
    measure: Annotated[bool, typer.Option("--measure/--no-measure", help="Time the model on this machine too.")] = True,
) -> None:
    """ROM, RAM, estimated latency and energy of a model on a device, and whether it fits."""
    from racmkd.compress.artifacts import ExportError
    from racmkd.resources.devices import load_device
    from racmkd.resources.profile import latency_model, profile_model, profiled_contract, render_profile
    from racmkd.utils import atomic_write_json

    try:
        out = out or model.with_suffix(".profile.json")
        _check_out_json(out, [model, *(Path(d) for d in device if Path(d).suffix)])  # a device given by path is an input too
        devices = [load_device(d) for d in device]
        profiled_contract(model)  # a bad model file or device fails here, before the latency model's calibration
        fitted = latency_model(show_progress=not json_)
        profiles = [profile_model(model, d, fitted, measure_here=measure, latency_target_ms=latency_ms) for d in devices]
        atomic_write_json(out, profiles[0] if len(profiles) == 1 else profiles)
    except (*_errors(), ExportError) as err:
        raise _fail(err) from None
    if json_:
        typer.echo(json.dumps(profiles[0] if len(profiles) == 1 else profiles))
    else:
        typer.echo("\n\n".join(render_profile(p) for p in profiles))


edge_app = typer.Typer(no_args_is_help=True, help="The resource-aware edge runtime: build its variant bank, run it live.")
app.add_typer(edge_app, name="edge")
TraceOpt = Annotated[str, typer.Option(help="A synthetic trace (steady, periodic, sudden, random, critical) or a trace file (.csv/.json).")]


def _run_config(run: Path, overrides: list[str] | None) -> tuple[Path, RunConfig]:
    """A run directory and its config, with `--set` overrides (e.g. runtime.latency_target_ms=5).
    An override of how models are trained is said to do nothing here (it passed in silence)."""
    from racmkd.runs import open_run

    for assignment in overrides or []:
        if assignment.strip().startswith(TRAINING_SECTIONS):
            typer.secho(
                f"note: --set {assignment}: says how models are trained; this command uses the run's trained models, so it changes nothing here",
                fg=typer.colors.YELLOW,
                err=True,
            )
    run_dir, _ = open_run(run)
    return run_dir, load_config(run_dir / "config.yaml", list(overrides or []))


@edge_app.command("build")
def edge_build(
    run: RunOpt = Path("runs/latest"),
    val_samples: Annotated[
        int, typer.Option(min=0, help="Validation samples that measure every configuration's accuracy (the allocator's P; 0 = all).")
    ] = 5000,
    test_samples: Annotated[int, typer.Option(min=0, help="Test samples for the reported accuracies (0 = all).")] = 0,
) -> None:
    """Export every (tier, modality) variant of a run and measure it: <run>/edge/bank.json."""
    from racmkd.pipeline import prepare_data
    from racmkd.runtime.variants import build_bank, load_bank

    from racmkd.compress.artifacts import ExportError
    from racmkd.runtime.variants import BankError

    try:
        run_dir, cfg = _run_config(run, None)
        folder = build_bank(cfg, prepare_data(cfg), run_dir, val_samples=val_samples, test_samples=test_samples)
        bank = load_bank(folder)
    except (*_errors(), BankError, ExportError) as err:
        raise _fail(err) from None
    for v in bank.data["variants"]:
        typer.echo(
            f"{v['tier'] + '/' + v['modality']:18s} {v['precision']:12s} {v['latency_ms']:7.3f} ms  {v['memory_bytes'] / 1024:8.1f} KB  {v['energy_mj']:.4f} mJ"
        )
    typer.echo(f"bank: {folder / 'bank.json'}")


def _live_trace(trace: str, seconds: float) -> Trace:
    """The trace `edge run --trace` replays. A synthetic one is made as long as the run, so its
    shape (sudden's critical middle third) plays within it: a step of 0.1 s (a tenth of a short
    run), longer for a run past 50,000 s, since a synthetic trace holds at most a million steps."""
    from racmkd.resources.sources import trace_from

    return trace_from(trace, seconds, step_s=max(min(0.1, seconds / 10), seconds / 500_000))


@edge_app.command("run")
def edge_run(
    run: RunOpt = Path("runs/latest"),
    seconds: Annotated[float, typer.Option(min=0.1, help="How long to serve.")] = 10.0,
    rate: Annotated[float, typer.Option(min=0.1, help="Requests per second (test samples, raw).")] = 50.0,
    trace: Annotated[Optional[str], typer.Option(help="Replay this trace in real time instead of reading the machine (synthetic name or file).")] = None,
    log: Annotated[Optional[Path], typer.Option(help="Where to write every request and decision as JSON (default: <run>/edge/live.json).")] = None,
    set_: RunSetOpt = None,
) -> None:
    """Serve test samples live with the resource-aware runtime on the real monitor; print its switches."""
    from racmkd.pipeline import prepare_data
    from racmkd.resources.monitor import ResourceMonitor
    from racmkd.resources.sources import SystemSource, TraceError, TraceSource
    from racmkd.runtime.edge import EdgeRuntime, NoVariantError
    from racmkd.runtime.simulate import serve_split
    from racmkd.runtime.variants import BankError, load_bank
    from racmkd.utils import atomic_write_json, check_writable, json_safe

    try:
        run_dir, cfg = _run_config(run, set_)
        bank = load_bank(run_dir / "edge")
        replayed = _live_trace(trace, seconds) if trace else None
        log = log or run_dir / "edge" / "live.json"
        _check_edge_log(log)  # found now, not after the whole run
        check_writable(log.parent)
        dataset = prepare_data(cfg)
        source = TraceSource(replayed, loop=True) if replayed is not None else SystemSource()
        with ResourceMonitor(source, cfg.runtime.monitor) as monitor:
            runtime = EdgeRuntime(bank, cfg.runtime, monitor)
            if isinstance(source, TraceSource):  # the trace plays from the first request (the sessions took a second to load: a tenth of a short run)
                source.start = runtime.clock()
            started, shown = runtime.clock(), [0]

            def show(i: int, answer: object) -> None:
                new = runtime.decision_count - shown[0]
                for d in list(runtime.decisions)[len(runtime.decisions) - min(new, len(runtime.decisions)) :]:
                    typer.echo(f"{d['t'] - started:8.2f} s  {d['from']:>34s} -> {d['to']:<34s} {d['reason']} ({d['adaptation_ms']:.3f} ms)")
                shown[0] = runtime.decision_count

            result = serve_split(runtime, dataset, seconds, rate, on_request=show, interruptible=True)  # Ctrl-C: the figures so far, not nothing
            result["monitor_overhead"] = monitor.overhead()
            result["state"] = runtime.state()
        written = json_safe(result)  # (for other tools: no NaN, no Infinity)
    except (*_errors(), BankError, TraceError, NoVariantError) as err:
        raise _fail(err) from None
    typer.echo(json.dumps(written["summary"], indent=2))
    try:
        atomic_write_json(log, written)
    except OSError as err:  # (the disk filled meanwhile: the summary above is kept at least)
        failed = _fail(OSError(err.errno, f"the log was not written: {err.strerror}", err.filename))
    else:
        failed = None
        typer.echo(f"monitor: {result['monitor_overhead']['cpu_fraction']:.4%} of one core over {result['monitor_overhead']['polls']} polls; log: {log}")
    if result["summary"]["interrupted"]:  # (its exit status first: the stop is what a supervisor asked for)
        stop = result["summary"]["interrupted"]
        typer.echo(
            f"stopped early ({'Ctrl-C' if stop == 'SIGINT' else stop}) after {result['summary']['requests']} requests; the figures above are theirs", err=True
        )
        raise typer.Exit(143 if stop == "SIGTERM" else 130)
    if failed is not None:
        raise failed


@edge_app.command("record")
def edge_record(
    out: Annotated[Path, typer.Option(help="The trace file to write: JSON if it ends in .json, else CSV.")] = Path("trace.csv"),
    seconds: Annotated[float, typer.Option(min=0.1, help="How long to record.")] = 60.0,
    interval: Annotated[float, typer.Option(min=0.01, help="Seconds between readings.")] = 0.1,
) -> None:
    """Record this machine's resource readings as a trace, for `racmkd simulate --trace FILE`."""
    import tempfile

    from racmkd.resources.sources import RecordingInterrupted, SystemSource, TraceError, load_trace, record_trace
    from racmkd.utils import check_writable

    blocking = _file_above(out)  # found now, not after the recording
    if out.is_dir() or blocking is not None:
        raise _fail(
            ValueError(f"--out {out}: {'a folder' if out.is_dir() else f'{blocking} is a file, not a folder'}; name the trace file to write (.csv or .json)")
        )
    if out.is_file() and out.stat().st_size:  # (a model named by mistake was replaced by CSV)
        try:
            load_trace(out)
        except TraceError:
            raise _fail(ValueError(f"--out {out}: an existing file that is not a trace; it is not overwritten. Name a new file, or remove it first")) from None
    if seconds <= interval:
        raise _fail(
            ValueError(f"--seconds {seconds} is not longer than --interval {interval}: one reading, and a trace needs two; record longer or more often")
        )
    try:
        check_writable(out.parent)  # found now, not after the recording (a read-only or full SD card)
    except OSError as err:
        raise _fail(ValueError(f"--out {out}: {err}; name a writable place")) from None
    interrupted = 0  # the exit status of a stop
    try:
        trace = record_trace(SystemSource(), seconds, interval, out.stem)
    except RecordingInterrupted as stopped:  # Ctrl-C or SIGTERM: what was read so far is written, not lost
        trace, interrupted = stopped.trace, stopped.status
    if len(trace.times) < 2:  # `racmkd simulate` refuses such a file: not written
        raise _fail(
            ValueError(
                f"{len(trace.times)} reading(s) in {seconds} s, and a trace needs two; record longer or more often (--seconds, --interval); nothing written"
            )
        )
    try:
        trace.write(out)
    except OSError as err:  # (the disk filled meanwhile): kept where it can be, not lost
        fallback, made = Path(tempfile.gettempdir()), None
        try:
            handle, name = tempfile.mkstemp(prefix=f"{out.stem}-", suffix=out.suffix)  # (a name of its own: a container's pid is the same at every start)
            os.close(handle)
            fallback = made = Path(name)
            trace.write(fallback)
        except OSError:
            if made is not None:
                made.unlink(missing_ok=True)
            raise _fail(ValueError(f"--out {out}: cannot write the trace ({err.strerror or err}), nor to {fallback}; the recording is lost")) from None
        typer.secho(f"--out {out}: cannot write the trace ({err.strerror or err}); written to {fallback} instead", fg=typer.colors.YELLOW, err=True)
        out = fallback
    typer.echo(f"{len(trace.times)} readings of {', '.join(trace.columns)} -> {out}" + (" (interrupted)" if interrupted else ""))
    if interrupted:
        raise typer.Exit(code=interrupted)


@app.command()
def simulate(
    trace: TraceOpt = "sudden",
    run: RunOpt = Path("runs/latest"),
    requests: Annotated[int, typer.Option(min=1, help="Requests spread evenly over the trace.")] = 2000,
    duration: Annotated[
        Optional[float], typer.Option(min=1.0, help="Length of a synthetic trace in seconds (default 120); a trace file is replayed as long as it is.")
    ] = None,
    out: Annotated[Optional[Path], typer.Option(help="Folder for summary.json, timeline.json/png, table.md (default: <run>/simulate/<trace>).")] = None,
    static: Annotated[bool, typer.Option("--static/--no-static", help="Also replay every static tier on the same requests.")] = True,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic trace and of the request order.")] = 0,
    latency: Annotated[
        str,
        typer.Option(
            help="Latency model: measured (this host's compute time x the trace's slowdown) or bank (the bank's median costs x the slowdown: the same on every run, to compare runtime versions)."
        ),
    ] = "measured",
    outage: Annotated[
        Optional[list[str]],
        typer.Option(
            help="Take an input away for a while, on every policy's requests: MODALITY:START-END[:missing|dead][:SHARE%] in seconds of trace time (dead: all zeros, a blank image or silence; SHARE: take it from that percentage of the stretch's requests only, spread evenly: a flickering input); repeatable. E.g. audio:30-60:dead or audio:0-120:dead:50%."
        ),
    ] = None,
    set_: RunSetOpt = None,
) -> None:
    """Replay a resource trace against the edge runtime with real inference; compare with static tiers."""
    from racmkd.pipeline import prepare_data
    from racmkd.resources.sources import SYNTHETIC, TraceError, trace_from
    from racmkd.runtime.simulate import LATENCY_MODELS, Outage, ReplayNotWritten, default_out_folder, render_table
    from racmkd.runtime.simulate import simulate as replay_trace
    from racmkd.runtime.variants import BankError, build_bank, load_bank

    if latency not in LATENCY_MODELS:
        raise _fail(ValueError(f"--latency {latency!r}: choose one of {', '.join(LATENCY_MODELS)}"))
    try:
        outages = [Outage.parse(text) for text in outage or []]
    except ValueError as err:
        raise _fail(err) from None
    if out is not None:  # found now, not after the replay ("[Errno 17] File exists")
        try:
            _check_out_folder(out)
        except ValueError as err:
            raise _fail(err) from None
    try:
        run_dir, cfg = _run_config(run, set_)
        resources = trace_from(trace, 120.0 if duration is None else duration, seed=seed)
        if duration is not None and trace not in SYNTHETIC:  # (passed over in silence: a 1.8 s file replayed for 1.8 s)
            typer.secho(f"note: --duration {duration:g}: {trace} is replayed as long as it is ({resources.duration:.1f} s)", fg=typer.colors.YELLOW, err=True)
        dataset = prepare_data(cfg)
        if not (run_dir / "edge" / "bank.json").is_file():
            typer.echo("no variant bank yet: building it (racmkd edge build)")
            build_bank(cfg, dataset, run_dir)
        folder = out or default_out_folder(run_dir, resources, outages)
        summary = replay_trace(load_bank(run_dir / "edge"), dataset, resources, cfg.runtime, requests, folder, static, seed, latency, outages)
    except ReplayNotWritten as err:  # (its figures shown at least)
        typer.echo(render_table(err.summary))
        raise _fail(err) from None
    except (*_errors(), BankError, TraceError) as err:
        raise _fail(err) from None
    typer.echo(render_table(summary))
    typer.echo(f"written: {folder}/summary.json, timeline.json, timeline.png, table.md")


@app.command("serve")
def serve_command(
    role: Annotated[str, typer.Option(help="cloud (the teacher), fog (high/medium students) or edge (the resource-aware runtime).")] = "edge",
    run: RunOpt = Path("runs/latest"),
    host: Annotated[Optional[str], typer.Option(help="Address to listen on (default: serve.host, 127.0.0.1).")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port (default: serve.port, 8000).")] = None,
    upstream: Annotated[Optional[list[str]], typer.Option(help="Edge: a fog or cloud server to offload to, nearest first (repeatable).")] = None,
    mqtt: Annotated[
        Optional[str], typer.Option(help="Edge: the MQTT broker for telemetry, HOST[:PORT] (port 1883 by default; IPv6 in brackets: [::1]:1883).")
    ] = None,
    device: Annotated[Optional[str], typer.Option(help="Edge: this device's name in telemetry.")] = None,
    public_key: Annotated[Optional[Path], typer.Option(help="Edge: the fleet's public key; updates must be signed with its private key.")] = None,
    set_: RunSetOpt = None,
) -> None:
    """Serve a run's models over HTTP (FastAPI + uvicorn): /predict, /health, /metrics, /models."""
    from racmkd.deploy.server import ROLES, serve

    overrides = list(set_ or [])
    for key, value in (("host", host), ("port", port), ("device", device), ("public_key", str(public_key) if public_key else None)):
        if value is not None:
            overrides.append(f"serve.{key}={value if isinstance(value, int) else _text(value)}")
    if upstream:
        overrides.append(f"serve.upstreams={json.dumps(list(upstream))}")  # (quoted: an IPv6 address's brackets or a comma is YAML too)
    if role not in ROLES:
        raise _fail(ValueError(f"--role {role!r}: choose one of {', '.join(ROLES)}"))
    edge_only = [flag for flag, value in (("--upstream", upstream), ("--mqtt", mqtt), ("--device", device), ("--public-key", public_key)) if value]
    if edge_only and role != "edge":  # (a fog or cloud server offloads nowhere, sends no telemetry, takes no update)
        raise _fail(ValueError(f"{', '.join(edge_only)}: for the edge role only; a {role} server has no use for them"))
    if mqtt:
        from racmkd.deploy.telemetry import broker_address

        try:
            mqtt_host, mqtt_port = broker_address(mqtt)
        except ValueError as err:
            raise _fail(ValueError(f"--mqtt: {err}")) from None
        overrides += [f"serve.mqtt_host={_text(mqtt_host)}", f"serve.mqtt_port={mqtt_port}"]
    try:
        run_dir, cfg = _run_config(run, overrides)
    except _errors() as err:
        raise _fail(err) from None
    from racmkd.compress.artifacts import ExportError
    from racmkd.deploy.signing import SignatureError
    from racmkd.runtime.bank import BankError

    try:
        serve(role, cfg, run_dir, cfg.serve, announce=lambda url: typer.echo(f"racmkd {role} server on {url} (run {run_dir.name})"))
    except (*_errors(), BankError, ExportError, SignatureError) as err:
        raise _fail(err) from None


registry_app = typer.Typer(no_args_is_help=True, help="The model registry: signing keys, signed versioned releases.")
app.add_typer(registry_app, name="registry")
RootOpt = Annotated[Path, typer.Option("--root", help="Registry folder.")]
DEFAULT_PUBLIC_KEY = Path("keys/racmkd.pub")


def _fleet_public_key(given: Path | None) -> Path | None:
    """--public-key, else keys/racmkd.pub when there is one, else None, said: signatures go unchecked."""
    key = given or (DEFAULT_PUBLIC_KEY if DEFAULT_PUBLIC_KEY.is_file() else None)
    if key is None:
        typer.secho(f"note: signatures not checked (no --public-key, and no {DEFAULT_PUBLIC_KEY})", fg=typer.colors.YELLOW, err=True)
    return key


def _registry_errors() -> tuple[type[Exception], ...]:
    from racmkd.compress.artifacts import ExportError
    from racmkd.deploy.registry import RegistryError
    from racmkd.deploy.signing import SignatureError

    return (*_errors(), RegistryError, SignatureError, ExportError)


def _management_token(token_env: str, whose: str) -> str:
    """The management token from $token_env; a clear error when it is unset or unreadable."""
    try:
        token = read_token(token_env)
    except ValueError as err:
        raise _fail(err) from None
    if not token:
        raise _fail(ValueError(f"${token_env} is not set: {whose} management token is needed"))
    return token


@registry_app.command("keygen")
def registry_keygen(
    out: Annotated[Path, typer.Option(help="Folder for racmkd.key (private, keep it in the cloud) and racmkd.pub (for devices).")] = Path("keys"),
) -> None:
    """Create the fleet's Ed25519 signing key pair."""
    from racmkd.deploy.signing import generate_keypair

    try:
        private, public = generate_keypair(out)
    except _registry_errors() as err:
        raise _fail(err) from None
    typer.echo(f"private key: {private} (mode 0600)\npublic key:  {public}")


@registry_app.command("add")
def registry_add(
    model: Annotated[str, typer.Argument(help="What to release from the run: `edge` (the variant bank) or a tier (its compressed artifact).")],
    run: RunOpt = Path("runs/latest"),
    name: Annotated[Optional[str], typer.Option(help="Release name (default: the model's).")] = None,
    key: Annotated[Path, typer.Option(help="The fleet's private signing key.")] = Path("keys/racmkd.key"),
    root: RootOpt = Path("registry"),
    devices: Annotated[
        bool, typer.Option("--devices/--no-devices", help="Profile it on every device profile racmkd ships (configs/devices/; signed into the manifest).")
    ] = True,
) -> None:
    """Register the next signed version of a model from a run."""
    from racmkd.deploy.orchestrator import artifact_from_run, device_fit
    from racmkd.deploy.registry import ModelRegistry, artifact_kind
    from racmkd.deploy.signing import load_private_key
    from racmkd.resources.devices import device_names, load_device

    try:
        signing_key = load_private_key(key)  # before anything is written
        artifact, tier, metrics = artifact_from_run(run, model)
        fit = device_fit(artifact, artifact_kind(artifact), [load_device(d) for d in device_names()]) if devices else {}
        release = ModelRegistry(root).register(artifact, name or model, signing_key, tier, metrics, fit)
    except _registry_errors() as err:
        raise _fail(err) from None
    typer.echo(json.dumps({**release.summary(), "fits": {d: f["fits"] for d, f in release.device_fit.items()}}, indent=2))


@registry_app.command("list")
def registry_list(root: RootOpt = Path("registry")) -> None:
    """Every release: name, version, kind, bytes, hash, accuracy; a damaged record or blob is marked."""
    from racmkd.deploy.registry import ModelRegistry

    try:
        registry = ModelRegistry(root, create=False)
        releases = registry.releases()
    except _registry_errors() as err:
        raise _fail(err) from None
    problems: dict[str, str | None] = {}
    for r in releases:
        if r.damaged:
            typer.echo(f"{r.name:16s} v{r.version!s:<3} DAMAGED: {r.damaged}; remove it with `racmkd registry remove {r.name} --version {r.version}`")
            continue
        if r.altered:
            typer.echo(
                f"{r.name:16s} v{r.version:<3d} ALTERED: its record's {', '.join(r.altered)} disagree with its signed manifest, so it is never planned or pushed; remove it with `racmkd registry remove {r.name} --version {r.version}`"
            )
            continue
        if r.sha256 not in problems:  # (versions share blobs: each read and hashed once)
            problems[r.sha256] = registry.blob_problem(r.sha256)
        problem = problems[r.sha256]
        typer.echo(
            f"{r.name:16s} v{r.version:<3d} {r.kind:5s} {r.bytes:>10,} B  {r.sha256[:12]}  accuracy {r.metrics.get('accuracy', float('nan')):.4f}  parent {r.parent_version or '-'}"
            + (f"  BLOB DAMAGED: {problem}" if problem else "")
        )


@registry_app.command("remove")
def registry_remove(
    name: Annotated[str, typer.Argument(help="Release name.")],
    version: Annotated[int, typer.Option(min=1, help="The version to remove (a damaged record, typically: `registry list` marks them).")],
    root: RootOpt = Path("registry"),
) -> None:
    """Remove one release's record (its version is never given again; blobs stay)."""
    from racmkd.deploy.registry import ModelRegistry

    try:
        removed = ModelRegistry(root, create=False).remove(name, version)
    except _registry_errors() as err:
        raise _fail(err) from None
    typer.echo(f"removed {removed.label}{f' ({removed.damaged})' if removed.damaged else ''}; the next `registry add` of {name} makes a new version")


@registry_app.command("prune")
def registry_prune(
    keep: Annotated[int, typer.Option(min=1, help="Newest intact versions of each release name to keep.")],
    root: RootOpt = Path("registry"),
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would go; remove nothing.")] = False,
) -> None:
    """Remove all but the newest --keep versions of each release, then the blobs and deltas no release needs."""
    from racmkd.deploy.registry import ModelRegistry
    from racmkd.utils import human_bytes

    try:
        pruned = ModelRegistry(root, create=False).prune(keep, dry_run=dry_run)
    except _registry_errors() as err:
        raise _fail(err) from None
    verb = "would remove" if dry_run else "removed"
    typer.echo(
        f"{verb} {len(pruned['removed'])} release(s){': ' + ', '.join(pruned['removed']) if pruned['removed'] else ''}; "
        f"{len(pruned['blobs'])} blob(s) and {len(pruned['deltas'])} delta(s), {human_bytes(pruned['bytes'])}"
        + ("" if dry_run or not pruned["removed"] else "; a device running a removed release gets its next one whole")
    )


@registry_app.command("verify")
def registry_verify(
    name: Annotated[str, typer.Argument()],
    version: Annotated[Optional[int], typer.Option(min=1, help="Default: the latest.")] = None,
    public_key: Annotated[Path, typer.Option(help="The fleet's public key.")] = DEFAULT_PUBLIC_KEY,
    root: RootOpt = Path("registry"),
) -> None:
    """Check a release's signature and its blob's hash, as a device would."""
    from racmkd.deploy.registry import ModelRegistry
    from racmkd.deploy.signing import load_public_key, verify

    try:
        registry = ModelRegistry(root, create=False)
        release = registry.release(name, version)
        verify(release.manifest, release.signature, load_public_key(public_key))
        blob = registry.blob(release.manifest["sha256"])  # read back and hashed against the signed sha256
    except _registry_errors() as err:
        raise _fail(err) from None
    typer.echo(f"{name} v{release.version}: signature valid, {len(blob):,} bytes hash to {release.sha256}")


TimeoutOpt = Annotated[
    float, typer.Option(min=0.001, help="Seconds each call to a device may wait (connect, send, answer); raise it for large releases over slow links.")
]
deploy_app = typer.Typer(no_args_is_help=True, help="The orchestrator: which release fits which device, and OTA pushes.")
app.add_typer(deploy_app, name="deploy")


@deploy_app.command("plan")
def deploy_plan(
    root: RootOpt = Path("registry"),
    device: Annotated[Optional[list[str]], typer.Option(help="Device profiles (default: every one racmkd ships, configs/devices/).")] = None,
    public_key: Annotated[
        Optional[Path],
        typer.Option(help="The fleet's public key: a release whose signature does not verify is passed over (default: keys/racmkd.pub when present)."),
    ] = None,
    json_: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The most accurate release that fits each device (by its signed manifest), or why none does."""
    from racmkd.deploy.orchestrator import plan
    from racmkd.deploy.registry import ModelRegistry
    from racmkd.deploy.signing import load_public_key
    from racmkd.resources.devices import SHIPPED_DEVICES, device_names, load_device

    key = _fleet_public_key(public_key)
    devices = device or device_names()
    if not devices:  # (its profiles' folder emptied: the plan was empty, exit 0)
        raise _fail(ValueError(f"no device profiles to plan for ({SHIPPED_DEVICES} holds none): pass --device with a profile's YAML file"))
    try:
        assignments = plan(ModelRegistry(root, create=False), [load_device(d) for d in devices], load_public_key(key) if key else None)
    except _registry_errors() as err:
        raise _fail(err) from None
    if json_:
        typer.echo(json.dumps([a.as_dict() for a in assignments], indent=2))
        return
    for a in assignments:
        typer.echo(f"{a.device:16s} {a.as_dict()['release'] or '-':20s} {a.reason}")


@deploy_app.command("push")
def deploy_push(
    name: Annotated[str, typer.Argument(help="Release name.")],
    url: Annotated[str, typer.Option(help="The edge server, e.g. http://127.0.0.1:8003.")],
    version: Annotated[Optional[int], typer.Option(min=1, help="Default: the latest.")] = None,
    root: RootOpt = Path("registry"),
    token_env: Annotated[str, typer.Option(help="Environment variable holding the device's management token.")] = "RACMKD_TOKEN",
    full: Annotated[bool, typer.Option("--full", help="Send the whole release, never a delta.")] = False,
    timeout: TimeoutOpt = 60.0,
) -> None:
    """Send a release to an edge device (a delta when smaller; the whole when the delta is refused); it verifies, checks, swaps or rolls back."""
    import httpx

    from racmkd.deploy.orchestrator import push
    from racmkd.deploy.registry import ModelRegistry

    token = _management_token(token_env, "the device's")
    try:
        registry = ModelRegistry(root, create=False)
        result = push(registry, registry.release(name, version), url, token, timeout, full=full)
    except (*_registry_errors(), httpx.HTTPError, httpx.InvalidURL) as err:
        raise _fail(err if isinstance(err, _registry_errors()) else ValueError(f"{url}: {err}")) from None
    typer.echo(json.dumps(result, indent=2))
    if result.get("status_code", 200) >= 400:
        raise typer.Exit(code=1)


@deploy_app.command("apply")
def deploy_apply(
    fleet: Annotated[Path, typer.Option(help="Fleet file (YAML): `devices: [{name, profile, url}, ...]`, each device's profile and edge server.")],
    root: RootOpt = Path("registry"),
    public_key: Annotated[
        Optional[Path],
        typer.Option(help="The fleet's public key: a release whose signature does not verify is passed over (default: keys/racmkd.pub when present)."),
    ] = None,
    token_env: Annotated[str, typer.Option(help="Environment variable holding the devices' management token.")] = "RACMKD_TOKEN",
    mqtt_host: Annotated[Optional[str], typer.Option(help="The telemetry broker: devices whose last will says offline are passed over.")] = None,
    mqtt_port: Annotated[Optional[int], typer.Option(min=1, max=65535, help="The broker's port where --mqtt-host gives none (1883 if neither does).")] = None,
    fleet_name: Annotated[str, typer.Option(help="The fleet's name in the telemetry topics (racmkd/<fleet>/<device>/status).")] = "default",
    full: Annotated[bool, typer.Option("--full", help="Send whole releases, never deltas.")] = False,
    timeout: TimeoutOpt = 60.0,
    concurrency: Annotated[int, typer.Option(min=1, max=256, help="Devices served at a time.")] = 8,
    json_: Annotated[bool, typer.Option("--json", help="One JSON list at the end instead of a line per device as each is done.")] = False,
) -> None:
    """Plan each device's release by its profile and push it (no human step); exits 1 if a device could not be updated."""
    from collections import Counter

    from racmkd.deploy.orchestrator import apply_fleet, load_fleet
    from racmkd.deploy.registry import ModelRegistry
    from racmkd.deploy.signing import load_public_key

    token = _management_token(token_env, "the devices'")
    key = _fleet_public_key(public_key)
    if mqtt_port and not mqtt_host:  # (it was passed over in silence)
        raise _fail(ValueError("--mqtt-port: the broker's port, with --mqtt-host; without a broker the devices' statuses are not read"))
    if mqtt_host:
        from racmkd.deploy.telemetry import broker_for, watch_fleet

        try:
            mqtt_host, mqtt_port = broker_for(mqtt_host, mqtt_port, fleet_name)
        except ValueError as err:
            raise _fail(err) from None
    watcher = None
    try:
        devices, profiles = load_fleet(fleet)
        registry = ModelRegistry(root, create=False)
        if mqtt_host:
            watcher = watch_fleet(mqtt_host, mqtt_port, fleet_name, [d.name for d in devices.devices])
            if not watcher.connected.is_set():
                why = watcher.refused or "did not answer in 3 s"
                typer.echo(f"note: the MQTT broker at {mqtt_host}:{mqtt_port}: {why}: no device's status is known, none is skipped as offline", err=True)
        results = apply_fleet(
            registry,
            devices,
            profiles,
            token,
            load_public_key(key) if key else None,
            watcher.online if watcher else None,
            full=full,
            timeout_s=timeout,
            concurrency=concurrency,
            on_result=None if json_ else lambda r: _echo_while_read(f"{r['device']:16s} {r['action']:10s} {r['release'] or '-':16s} {r['reason']}"),
        )
    except _registry_errors() as err:
        raise _fail(err) from None
    finally:
        if watcher is not None:
            watcher.close()
    if json_:
        typer.echo(json.dumps(results, indent=2))
    else:  # (the lines came as the devices were done; the count at the end)
        counts = Counter(r["action"] for r in results)
        _echo_while_read(f"{len(results)} devices: " + ", ".join(f"{n} {action}" for action, n in sorted(counts.items())))
    if any(r["action"] in ("failed", "refused") for r in results):
        raise typer.Exit(code=1)


def _echo_while_read(line: str) -> None:
    """A line of a long command's progress, dropped once its reader has gone (`racmkd deploy apply |
    head`: the closed pipe stopped the fleet's round partway, the devices not begun left out)."""
    try:
        typer.echo(line)
    except BrokenPipeError:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - (for the rest of the process: Python flushes stdout again at exit)


@app.command()
def predict(
    run: RunOpt = Path("runs/latest"),
    tier: Annotated[
        str,
        typer.Option(
            help="teacher, teacher_<modality> (teacher_image, teacher_audio, ...), high, medium, low or critical; <tier>_compressed for a compressed tier's deployed ONNX artifact."
        ),
    ] = "high",
    image: Annotated[Optional[Path], typer.Option(help="A 28x28 grey digit: .png or .npy.")] = None,
    audio: Annotated[Optional[Path], typer.Option(help="A mono .wav recording.")] = None,
    input_: Annotated[
        Optional[list[str]], typer.Option("--input", help="Another modality's raw input as NAME=FILE.npy, e.g. --input imu=trace.npy (repeatable).")
    ] = None,
) -> None:
    """Classify one sample from files with a trained model."""
    import numpy as np

    from racmkd.runtime.files import read_image_file, read_wav_file
    from racmkd.runtime.predictor import load

    try:
        others = _read_inputs(input_ or [])
        predictor = load(run, tier)
        image_array = read_image_file(image) if image else None
        audio_array, rate = read_wav_file(audio) if audio else (None, 8000)
        label, probs = predictor.predict(image=image_array, audio=audio_array, sample_rate=rate, **others)
    except _errors() as err:
        raise _fail(err) from None
    given = {"--image": image_array, "--audio": audio_array, **{f"--input {m}": v for m, v in others.items()}}
    unused = [flag for flag, value in given.items() if value is not None and flag.split()[-1].removeprefix("--") not in predictor.modalities]
    if unused:  # (the predictor ignores them, as documented; a user should not think they counted)
        typer.secho(f"note: {', '.join(unused)}: not used by {predictor.name}, which takes {', '.join(predictor.modalities)}", fg=typer.colors.YELLOW, err=True)
    typer.echo(json.dumps({"label": label, "probabilities": np.round(probs, 4).tolist(), "model": predictor.name}))


def _read_inputs(pairs: list[str]) -> dict[str, object]:
    """`--input NAME=FILE.npy` values: a modality beyond image and audio (a sensor registered beside
    them) has no option of its own, so its raw input comes as an array file named by modality."""
    from racmkd.data import signals as _signals  # noqa: F401 - registers image, audio and pen
    from racmkd.registry import SIGNALS
    from racmkd.runtime.files import read_array_file

    arrays: dict[str, object] = {}
    for pair in pairs:
        name, _, file = pair.partition("=")
        if not name or not file or name in ("image", "audio") or name in arrays:
            raise ValueError(f"--input {pair!r}: expected NAME=FILE.npy, each modality once (image and audio have --image and --audio)")
        if name not in SIGNALS:
            raise ValueError(f"--input {pair!r}: no modality {name!r}; registered: {', '.join(SIGNALS.names())}")
        arrays[name] = read_array_file(Path(file))
    return arrays


# The top-level modules of the `train` extra (pyproject.toml), which an edge install lacks; a test
# holds the two lists together. (ml_dtypes is in the extra too, but onnx needs it: every install has it.)
TRAINING_MODULES = frozenset({"torch", "sklearn", "matplotlib", "onnxscript", "torch_pruning", "ot", "unlzw3"})
EDGE_COMMANDS = "profile, predict --tier <tier>_compressed, serve --role edge, edge record, registry and deploy"


def _command_named(argv: list[str]) -> str:
    """The command `argv` names, as a user typed it: `simulate`, a group's `edge run`, and the
    role of `serve --role fog` (the edge role needs no training install, the others do)."""
    words = list(itertools.takewhile(lambda arg: not arg.startswith("-"), argv))
    groups = {group.name for group in app.registered_groups}
    named = words[:2] if words and words[0] in groups else words[:1]
    for i, arg in enumerate(argv):
        if arg == "--role" and i + 1 < len(argv):
            named += ["--role", argv[i + 1]]
        elif arg.startswith("--role="):
            named += ["--role", arg.removeprefix("--role=")]
    return " ".join(named)


def main() -> None:
    """The `racmkd` entry point: the app, with a last line of defence for the errors a command did
    not report itself. Bad input (our own errors, files, databases, URLs) is told in one line;
    anything else is a bug, and its traceback is shown. A command that needs the `train` extra on
    an install without it says which install it needs (it ended in a ModuleNotFoundError's
    traceback)."""
    import sqlite3

    from racmkd.utils import exit_on_sigterm  # (here: racmkd.utils imports numpy, which `racmkd --help` needs not)

    with exit_on_sigterm():
        try:
            app()
        except ModuleNotFoundError as err:
            if (err.name or "").split(".")[0] not in TRAINING_MODULES:
                raise
            _fail(
                RuntimeError(
                    f"racmkd {_command_named(sys.argv[1:])} needs the training install ({err.name} is not installed): pip install 'racmkd[train]'. "
                    f"This install runs {EDGE_COMMANDS}"
                )
            )
            sys.exit(2)
        except Exception as err:
            module = type(err).__module__
            if not (module.startswith(("racmkd.", "httpx")) or isinstance(err, (OSError, ValueError, sqlite3.DatabaseError))):
                raise
            _fail(err)
            sys.exit(2)


if __name__ == "__main__":
    main()
