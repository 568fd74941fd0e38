"""The typer CLI through CliRunner: exit codes and effects."""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import wavfile
from typer.testing import CliRunner

from racmkd.cli import app

runner = CliRunner()


def test_data_builds_and_reports(shared_root: Path, cache_dir: Path) -> None:
    result = runner.invoke(app, ["data", "--protocol", "clean", "--set", f"data.cache_dir={cache_dir}"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["samples"] == {"train": 50000, "val": 10000, "test": 10000}


def test_bad_config_is_a_clean_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "--set", "data.protocl=clean"])
    assert result.exit_code == 2 and "Did you mean 'protocol'" in result.output
    result = runner.invoke(app, ["data", "--protocol", "noisy", "--set", f"data.cache_dir={tmp_path}"])
    assert result.exit_code == 2 and "unknown protocol 'noisy'" in result.output
    result = runner.invoke(
        app, ["data", "--set", "data.protocol=avmnst", "--set", f"data.cache_dir={tmp_path}"]
    )  # (it named no file, found when the data was built)
    assert (
        result.exit_code == 2
        and "configs/default.yaml + overrides ['data.protocol=avmnst'" in result.output
        and "data: unknown protocol 'avmnst'" in result.output
        and "Did you mean 'avmnist'" in result.output
    )
    # a section's own check names the file and key too
    result = runner.invoke(app, ["run", "--set", "students.tiers.0.budget_bytes=-5", "--set", f"runs_dir={tmp_path / 'runs'}"])
    assert (
        result.exit_code == 2
        and "configs/default.yaml + overrides" in result.output
        and "students.tiers[0]: tier 'high': budget_bytes must be positive" in result.output
    )
    result = runner.invoke(app, ["run", "--set", "distill.distill_losses={kdd: 1.0}", "--set", f"runs_dir={tmp_path / 'runs'}"])  # before any data or training
    assert result.exit_code == 2 and "unknown loss 'kdd'. Did you mean 'kd'?" in result.output and not (tmp_path / "runs").exists()
    for command in ("run", "train-teacher"):  # a teacher level the data does not have: refused before a run folder (and runs/latest) is made
        result = runner.invoke(app, [command, "--set", "teacher.level.audio=9", "--set", f"runs_dir={tmp_path / 'runs'}"])
        assert result.exit_code == 2 and "teacher.level.audio 9: audio has levels 0-3" in result.output and not (tmp_path / "runs").exists(), result.output


def test_a_name_is_taken_as_written() -> None:
    from racmkd.cli import _config

    for name in ("20261203", "yes", "exp: a", "null"):  # YAML would read a number, a boolean, a mapping, nothing
        assert _config(None, None, [], name).name == name


def test_outside_the_checkout_the_checkouts_default_config_is_read(tmp_path: Path, monkeypatch, capsys) -> None:  # noqa: ANN001
    """`cd /tmp && racmkd run` used the built-in defaults silently (they differ from
    configs/default.yaml in mixup, the tiers, compression, the edge bank...): the checkout's
    configs/default.yaml is read, as recipes are; without one, a line says which defaults are used."""
    from racmkd.cli import _config
    from racmkd.config import RunConfig, load_config
    from racmkd.data import paths

    checkout = load_config(paths.REPO_ROOT / "configs" / "default.yaml")
    assert checkout != RunConfig()  # (else this test would tell nothing)
    assert _config(None, None, []) == checkout and capsys.readouterr().err == ""  # inside the checkout, as before
    monkeypatch.chdir(tmp_path)
    assert _config(None, None, []) == checkout and capsys.readouterr().err == ""
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "default.yaml").write_text("seed: 7\n")
    assert _config(None, None, []).seed == 7  # the working directory's own comes first
    monkeypatch.chdir(tmp_path / "configs")
    monkeypatch.setattr(paths, "REPO_ROOT", tmp_path / "installed")  # a wheel: no checkout beside the package
    assert _config(None, None, []) == RunConfig()
    assert "using the built-in defaults" in capsys.readouterr().err


def test_installed_racmkd_reads_nothing_of_site_packages_as_its_checkout(tmp_path: Path, monkeypatch, capsys) -> None:  # noqa: ANN001
    """Installed (a wheel), the folder above the package is site-packages: a configs/default.yaml,
    recipe or device profile there (another distribution's) was read silently as racmkd's, and the
    note called site-packages "the racmkd checkout". Only a folder with racmkd's pyproject.toml is one."""
    from racmkd.cli import _config
    from racmkd.config import ConfigError, RunConfig
    from racmkd.data import paths
    from racmkd.data.paths import git_commit
    from racmkd.pipeline import recipe_for
    from racmkd.resources.devices import device_names, load_device

    site = tmp_path / "site-packages"
    for name, text in (("default.yaml", "seed: 99\n"), ("recipes/default.yaml", "steps: [export]\n"), ("devices/stray.yaml", "name: stray\n")):
        (site / "configs" / name).parent.mkdir(parents=True, exist_ok=True)
        (site / "configs" / name).write_text(text)
    (site / "pyproject.toml").write_text('[project]\nname = "someone-else"\n')
    monkeypatch.setattr(paths, "REPO_ROOT", site)
    monkeypatch.chdir(tmp_path)
    assert paths.checkout() is None
    assert _config(None, None, []) == RunConfig()
    note = capsys.readouterr().err
    assert "racmkd is installed" in note and "in the racmkd checkout" not in note
    assert recipe_for(RunConfig(), "high") == Path(RunConfig().compress.recipe)
    shipped = device_names()  # racmkd's own, package data: found installed too
    assert "cortex-m7" in shipped and "stray" not in shipped and git_commit() is None
    with pytest.raises(ConfigError, match="stray"):
        load_device("stray")
    (site / "pyproject.toml").write_text('[project]\nname = "racmkd"\n')  # a checkout
    assert paths.checkout() == site and _config(None, None, []).seed == 99 and device_names() == shipped


def test_stages_on_a_missing_run_fail_cleanly(tmp_path: Path) -> None:
    for args in (["distill", "--run", str(tmp_path / "nope")], ["evaluate", "--run", str(tmp_path)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and "not a run directory (no config.yaml)" in result.output, args


def test_evaluate_and_predict_on_the_tiny_run(tiny_run: Path, tmp_path: Path) -> None:
    timings = tiny_run / "timings.json"
    kept = timings.read_text()
    timings.write_text("")  # emptied bookkeeping: the run is evaluated anyway (it raised a JSONDecodeError)
    try:
        result = runner.invoke(app, ["evaluate", "--run", str(tiny_run)])
    finally:
        timings.write_text(kept)
    assert result.exit_code == 0, result.output
    assert "critical" in result.output and (tiny_run / "report.md").exists()
    assert list(json.loads((tiny_run / "report.json").read_text())["timings_s"]) == ["evaluate"]
    image = np.zeros((28, 28), dtype=np.uint8)
    image[5:23, 12:16] = 255
    Image.fromarray(image).save(tmp_path / "one.png")
    wavfile.write(tmp_path / "one.wav", 8000, (np.sin(np.arange(6000) / 4) * 5000 * (np.arange(6000) // 1000 % 2)).astype(np.int16))
    result = runner.invoke(
        app, ["predict", "--run", str(tiny_run), "--tier", "teacher", "--image", str(tmp_path / "one.png"), "--audio", str(tmp_path / "one.wav")]
    )
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert 0 <= answer["label"] <= 9 and abs(sum(answer["probabilities"]) - 1) < 1e-3
    bomb = tmp_path / "bomb.png"  # 69 bytes whose header says 30000 x 30000: Pillow's DecompressionBombError ended in a traceback
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))  # noqa: E731
    bomb.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0" * 100))
        + chunk(b"IEND", b"")
    )
    result = runner.invoke(app, ["predict", "--run", str(tiny_run), "--tier", "teacher", "--image", str(bomb)])
    assert result.exit_code == 2 and "not a readable image" in result.output, result.output
    result = runner.invoke(app, ["predict", "--run", str(tiny_run), "--tier", "teacher_audio", "--image", str(tmp_path / "one.png")])
    assert result.exit_code == 2 and "needs audio" in result.output
    # An input the model does not take is said to be left out (it was dropped in silence); the answer stays JSON on stdout.
    result = runner.invoke(
        app, ["predict", "--run", str(tiny_run), "--tier", "teacher_image", "--image", str(tmp_path / "one.png"), "--audio", str(tmp_path / "one.wav")]
    )
    assert result.exit_code == 0 and "note: --audio: not used by teacher_image, which takes image" in result.stderr, result.output
    assert json.loads(result.stdout)["model"] == "teacher_image"
    # A user's own recording: float samples, two channels (averaged), as the predictor takes them; the same answer as the int16 mono file.
    wave = (np.sin(np.arange(6000) / 4) * 5000 * (np.arange(6000) // 1000 % 2)).astype(np.int16)
    wavfile.write(tmp_path / "stereo.wav", 8000, np.stack([wave, wave], axis=1).astype(np.float32) / 32768)
    result = runner.invoke(
        app, ["predict", "--run", str(tiny_run), "--tier", "teacher", "--image", str(tmp_path / "one.png"), "--audio", str(tmp_path / "stereo.wav")]
    )
    assert result.exit_code == 0 and json.loads(result.output)["label"] == answer["label"], result.output
    # A drawing canvas's export: one colour of ink, the digit in its opacity ("L" dropped it: a blank image, passed over).
    canvas = np.zeros((28, 28, 4), dtype=np.uint8)
    canvas[..., 3] = image
    Image.fromarray(canvas, "RGBA").save(tmp_path / "canvas.png")
    result = runner.invoke(app, ["predict", "--run", str(tiny_run), "--tier", "teacher_image", "--image", str(tmp_path / "canvas.png")])
    alone = runner.invoke(app, ["predict", "--run", str(tiny_run), "--tier", "teacher_image", "--image", str(tmp_path / "one.png")])
    assert result.exit_code == 0 and json.loads(result.output) == json.loads(alone.output), result.output
    palette = Image.fromarray((image > 0).astype(np.uint8), "P")  # a PNG optimiser's: two entries of one colour, index 0 transparent
    palette.putpalette([0, 0, 0] * 256)
    palette.save(tmp_path / "palette.png", transparency=0)
    result = runner.invoke(app, ["predict", "--run", str(tiny_run), "--tier", "teacher_image", "--image", str(tmp_path / "palette.png")])
    assert result.exit_code == 0 and json.loads(result.output)["label"] == json.loads(alone.output)["label"], result.output
    Image.fromarray(255 - image).save(tmp_path / "paper.png")  # a dark digit on white: refused, naming the fix
    result = runner.invoke(app, ["predict", "--run", str(tiny_run), "--tier", "teacher_image", "--image", str(tmp_path / "paper.png")])
    assert result.exit_code == 2 and "light background" in result.output and "invert it" in result.output, result.output
    Image.fromarray(image.astype(np.uint16) * 257).save(tmp_path / "deep.png")  # 16-bit grey: refused, not clipped to white
    result = runner.invoke(app, ["predict", "--run", str(tiny_run), "--tier", "teacher", "--image", str(tmp_path / "deep.png")])
    assert result.exit_code == 2 and "pass an 8-bit image" in result.output


def test_staged_commands_make_a_run(shared_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    base = ["--config", str(Path(__file__).parent / "tiny.yaml"), "--set", f"data.cache_dir={cache_dir}", "--set", f"runs_dir={tmp_path}"]
    small = ["--set", "data.max_train=256", "--set", "teacher.unimodal.epochs=1", "--set", "teacher.fused.epochs=1"]
    result = runner.invoke(app, ["train-teacher", *base, *small, "--name", "staged"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "staged"
    assert {p.stem for p in (run / "checkpoints").glob("*.pt")} == {"teacher", "teacher_image", "teacher_audio"}
    result = runner.invoke(app, ["distill", "--run", str(run), "--tier", "critical"])
    assert result.exit_code == 0, result.output
    assert (run / "checkpoints" / "critical.pt").exists() and not (run / "checkpoints" / "high.pt").exists()
    for made in ("compressed/critical", "compressed/high", "edge"):  # as if compressed and banked since
        (run / made).mkdir(parents=True)
    (run / "edge" / "bank.json").write_text("{}")
    (run / "edge" / "live.json").write_text("{}")  # what `edge run` served: a record that stays true
    for name in ("report.json", "report.md", "training_curves.png"):  # as if evaluated: the retrained students' accuracy in it
        (run / name).write_text("{}")
    exported = ["critical.fp32.onnx", "critical.int8.onnx", "critical.export.json", "critical.fp32.profile.json", "critical-audio.fp32.onnx"]
    exported.append("critical_labels_only.fp32.onnx")  # its labels-only baseline, retrained beside it
    others = ["high.fp32.onnx", "high-image.fp32.onnx", "teacher.fp32.onnx"]
    (run / "onnx").mkdir()
    for name in exported + others:  # as if `racmkd export` (and `profile`) had run
        (run / "onnx" / name).write_text("x")
    result = runner.invoke(app, ["distill", "--run", str(run), "--tier", "critical"])  # retrained: what was made from it goes, not the rest
    assert result.exit_code == 0 and not (run / "compressed" / "critical").exists() and (run / "compressed" / "high").is_dir()
    assert sorted(p.name for p in (run / "edge").iterdir()) == ["live.json"]
    assert sorted(p.name for p in (run / "onnx").iterdir()) == sorted(others)
    assert not any((run / name).exists() for name in ("report.json", "report.md", "training_curves.png"))  # a fog served its old figures
    result = runner.invoke(app, ["distill", "--run", str(run), "--tier", "tiny"])
    assert result.exit_code == 2 and "unknown tier" in result.output
    result = runner.invoke(app, ["train-teacher", *base, *small, "--name", "staged"])  # the name taken: the run is not written over
    assert result.exit_code == 2 and "a run of that name exists" in result.output and (run / "checkpoints" / "critical.pt").exists()


def test_a_run_interrupted_before_its_teachers_goes_on_with_train_teacher_run(shared_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    """Ctrl-C during the teachers left runs/<name>/ with a config and no checkpoints; `racmkd run
    --name` again and `racmkd distill` both pointed at `train-teacher --run`, which did not exist."""
    from racmkd.runs import create_run

    from conftest import tiny_config

    small = ("data.max_train=256", "teacher.unimodal.epochs=1", "teacher.fused.epochs=1")
    run = create_run(tiny_config(cache_dir, tmp_path, "name=cut", *small))  # what the interrupted run left
    again = [
        "train-teacher",
        "--config",
        str(Path(__file__).parent / "tiny.yaml"),
        "--set",
        f"data.cache_dir={cache_dir}",
        "--set",
        f"runs_dir={tmp_path}",
        "--name",
        "cut",
    ]
    result = runner.invoke(app, again)
    assert result.exit_code == 2 and f"racmkd train-teacher --run {run}" in result.output, result.output
    result = runner.invoke(app, ["distill", "--run", str(run)])
    assert result.exit_code == 2 and f"racmkd train-teacher --run {run.resolve()}" in result.output, result.output
    result = runner.invoke(app, ["train-teacher", "--run", str(run), "--set", "teacher.width=4"])
    assert result.exit_code == 2 and "--set cannot change it" in result.output and not any((run / "checkpoints").iterdir())
    result = runner.invoke(app, ["train-teacher", "--run", str(run)])
    assert result.exit_code == 0, result.output
    assert {p.stem for p in (run / "checkpoints").glob("*.pt")} == {"teacher", "teacher_image", "teacher_audio"}
    saved = (run / "checkpoints" / "teacher.pt").read_bytes()
    result = runner.invoke(app, ["train-teacher", "--run", str(run)])  # its teachers exist: refused, named, kept
    assert result.exit_code == 2 and "teachers exist already (teacher.pt, teacher_image.pt, teacher_audio.pt)" in result.output, result.output
    assert (run / "checkpoints" / "teacher.pt").read_bytes() == saved
    result = runner.invoke(app, again)
    assert result.exit_code == 2 and f"racmkd distill --run {run}" in result.output, result.output


def test_a_partial_teacher_set_is_trained_again_and_every_message_agrees(cache_dir: Path, tmp_path: Path, caplog) -> None:  # noqa: ANN001
    """Ctrl-C during the fused teacher leaves teacher_image.pt and teacher_audio.pt: `racmkd run
    --name` said go on with distill, distill said teacher.pt is missing (train-teacher --run), and
    train-teacher --run said the teachers exist (go on with distill), round in a circle."""
    import re

    from racmkd.pipeline import check_teachers_trainable, load_teachers
    from racmkd.runs import RunError, create_run

    from conftest import tiny_config

    cfg = tiny_config(cache_dir, tmp_path, "name=cut")
    run = create_run(cfg)
    for m in ("image", "audio"):
        (run / "checkpoints" / f"teacher_{m}.pt").write_bytes(b"what the interrupted run saved")
    with pytest.raises(RunError, match=re.escape(f"`racmkd train-teacher --run {run}` trains them")):
        create_run(cfg)
    with pytest.raises(RunError, match=re.escape(f"teacher.pt: teacher missing. Run `racmkd train-teacher --run {run}`")):
        load_teachers(run, ["image", "audio"])
    with caplog.at_level("WARNING"):
        check_teachers_trainable(cfg, run)  # the set is trained again whole
    assert "a partial teacher set (teacher_image.pt, teacher_audio.pt; no teacher.pt)" in caplog.text


def test_teachers_are_not_trained_again_under_what_was_made_from_them(cache_dir: Path, tmp_path: Path) -> None:
    """Deleting a run's teachers (as the refusal said) let `train-teacher --run` train new ones
    while its students, compressed tiers and edge bank, made from the old teachers, stayed."""
    from racmkd.runs import create_run

    from conftest import tiny_config

    run = create_run(tiny_config(cache_dir, tmp_path, "name=made"))
    (run / "checkpoints" / "high.pt").write_bytes(b"a student")
    for made, shown in (("compressed/high", "compressed/"), ("edge", "edge/"), (None, "high.pt")):
        if made:
            (run / made).mkdir(parents=True)
        result = runner.invoke(app, ["train-teacher", "--run", str(run)])
        assert result.exit_code == 2 and "Start a new run to train teachers (`racmkd run --name NAME`" in result.output, result.output
        assert shown in result.output and not any((run / "checkpoints").glob("teacher*.pt"))
        shutil.rmtree(run / "compressed", ignore_errors=True)
        shutil.rmtree(run / "edge", ignore_errors=True)


def test_bad_input_anywhere_is_one_line_and_leaves_nothing_behind(tiny_run: Path, tmp_path: Path, monkeypatch, capsys) -> None:  # noqa: ANN001
    """What a user can get wrong, from the command line: an error that names the problem (exit 2),
    no traceback, nothing half-written."""
    import sys

    from racmkd.cli import main

    cases = [
        (["data", "--set", "data.seed=[1,"], "not valid YAML"),
        (["data", "--set", "data.seed.x=1"], "a single value"),
        (["data", "--set", "data.modalities=[image, smell]"], "data.modalities.smell: no modality 'smell'"),
        (["data", "--set", "teacher.level.adio=0"], "no modality 'adio'. Did you mean 'audio'?"),
        (["data", "--set", "data.options.audio.hop_length=0"], "hop_length 0"),
        (["data", "--set", "data.max_train=-5"], "max_train"),
        (["export", "--run", str(tiny_run), "--model", "critical", "--out", str(tmp_path / "onnx"), "--modality", "smell"], "cannot export inputs ['smell']"),
        (["evaluate", "--run", str(tmp_path / "nope")], "not a run directory"),
        (["predict", "--run", str(tmp_path / "nope"), "--image", str(tmp_path / "x.png")], "no such run folder"),
        (["registry", "list", "--root", str(tmp_path / "mistyped")], "no registry here"),
        (["registry", "keygen", "--out", str(tmp_path / "keys")], None),  # made once ...
        (["registry", "keygen", "--out", str(tmp_path / "keys")], "refusing to overwrite"),  # ... then refused
        (["simulate", "--run", str(tiny_run), "--requests", "0"], "--requests"),
        (["serve", "--run", str(tiny_run), "--role", "fog", "--port", "99999"], "port 99999"),
        # Edge-only options on another role were passed over in silence.
        (
            ["serve", "--run", str(tiny_run), "--role", "cloud", "--upstream", "http://fog:8001", "--device", "d1"],
            "--upstream, --device: for the edge role only",
        ),
        # Upstreams reach the config as they were typed (an IPv6 address's brackets, a comma), to the port check.
        (
            ["serve", "--run", str(tiny_run), "--role", "edge", "--port", "99999", "--upstream", "http://[::1]:8002", "--upstream", "http://fog:8001/a,b"],
            "port 99999",
        ),
        (["edge", "record", "--out", str(tmp_path), "--seconds", "0.2"], "a folder"),
        # Negative counts: a negative slice used 9,995 of 10,000 validation samples.
        (["edge", "build", "--run", str(tiny_run), "--val-samples", "-5"], "--val-samples"),
        (["edge", "build", "--run", str(tiny_run), "--test-samples", "-3"], "--test-samples"),
        (["registry", "verify", "edge", "--version", "0", "--root", str(tmp_path / "mistyped")], "--version"),
        (["simulate", "--run", str(tiny_run), "--trace", str(tmp_path)], "a folder, not a trace file"),
    ]
    (tmp_path / "summary-file").write_text("a file")  # --out names a file: said so, not "[Errno 17] File exists"
    cases.append((["simulate", "--run", str(tiny_run), "--out", str(tmp_path / "summary-file")], "--out must be a folder"))
    (tmp_path / "notdir").write_text("a file")
    cases.append((["export", "--run", str(tiny_run), "--model", "critical", "--out", str(tmp_path / "notdir")], "--out must be a folder"))
    cases.append((["export", "--run", str(tiny_run), "--model", "critical", "--out", str(tmp_path / "notdir" / "sub")], "notdir is a file"))
    (tmp_path / "empty.npy").write_bytes(b"")
    cases.append((["predict", "--run", str(tiny_run), "--image", str(tmp_path / "empty.npy")], "not a readable .npy"))
    (tmp_path / "garbage.npy").write_bytes(bytes(range(256)))  # numpy advised loading it unsafely, as a pickle
    cases.append((["predict", "--run", str(tiny_run), "--image", str(tmp_path / "garbage.npy")], "no .npy header: damaged, or not saved with np.save"))
    cases.append((["export", "--run", str(tiny_run), "--model", "critical", "--modality", "lidar", "--out", str(tmp_path / "new-out")], "lidar"))
    (tmp_path / "short.wav").write_bytes(_wav_head())
    cases.append((["predict", "--run", str(tiny_run), "--tier", "teacher_audio", "--audio", str(tmp_path / "short.wav")], "not a readable WAV"))
    compressed = tmp_path / "run"  # a copy of the run whose compression record is damaged
    (compressed / "compressed" / "critical").mkdir(parents=True)
    (compressed / "config.yaml").write_text((tiny_run / "config.yaml").read_text())
    (compressed / "compressed" / "critical" / "compression.json").write_text("{not json")
    cases.append(
        (["predict", "--run", str(compressed), "--tier", "critical_compressed", "--image", str(tmp_path / "empty.npy")], "compression.json: not readable JSON")
    )
    (compressed / "compressed" / "low").mkdir()
    (compressed / "compressed" / "low" / "compression.json").write_text(json.dumps({"artifact": "int8.onnx", "format": "onnx-int8"}))
    cases.append(
        (
            ["export", "--run", str(compressed), "--model", "low_compressed"],
            f"exported already, by `racmkd compress`: {compressed / 'compressed' / 'low' / 'int8.onnx'}",
        )
    )
    # A compressed tier whose artifact is gone: compress it again (`racmkd export` refuses compressed tiers).
    cases.append(
        (
            ["predict", "--run", str(compressed), "--tier", "low_compressed", "--image", str(tmp_path / "empty.npy")],
            f"int8.onnx: no such file; compress the tier again with `racmkd compress --run {compressed} --tier low`",
        )
    )
    # A trace of one reading, which `racmkd simulate` refuses: not recorded, not written.
    cases.append((["edge", "record", "--out", str(tmp_path / "short.csv"), "--seconds", "0.1", "--interval", "1"], "not longer than --interval 1.0"))
    cases.append((["edge", "record", "--out", str(tmp_path / "notdir" / "t.csv"), "--seconds", "0.2"], "notdir is a file, not a folder"))
    cases.append((["edge", "record", "--out", str(tmp_path / "traces" / "t.csv"), "--seconds", "0.5"], None))  # its folder made, as profile's
    (tmp_path / "run-file").mkdir()  # a file where compressed tiers go: said before the data loads, with the fix
    (tmp_path / "run-file" / "config.yaml").write_text((tiny_run / "config.yaml").read_text())
    (tmp_path / "run-file" / "compressed").write_text("not a folder")
    cases.append((["compress", "--run", str(tmp_path / "run-file"), "--tier", "critical"], "a file where the run keeps its compressed tiers; move it away"))
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07 an ONNX model named by mistake")  # replaced by CSV, before
    cases.append((["edge", "record", "--out", str(tmp_path / "model.onnx"), "--seconds", "0.2"], "an existing file that is not a trace; it is not overwritten"))
    for args, message in cases:
        monkeypatch.setattr(sys, "argv", ["racmkd", *args])
        try:
            main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code
        err = capsys.readouterr().err
        if message is None:
            assert code == 0, (args, err)
            continue
        assert code == 2 and message in err and "Traceback" not in err, (args, code, err)
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == ["racmkd.key", "racmkd.pub"]
    assert (tmp_path / "model.onnx").read_bytes() == b"\x08\x07 an ONNX model named by mistake"
    assert not (tmp_path / "mistyped").exists()
    assert not (tmp_path / "new-out").exists()  # a failed export leaves no empty folder it made
    assert not (tmp_path / "short.csv").exists() and (tmp_path / "traces" / "t.csv").is_file()


def _wav_head() -> bytes:
    """The first 100 bytes of a 1 s WAV file: a header promising samples that never come."""
    import io

    buffer = io.BytesIO()
    wavfile.write(buffer, 8000, np.zeros(8000, dtype=np.int16))
    return buffer.getvalue()[:100]


def test_two_trace_files_of_one_name_do_not_share_adefault_out_folder(tmp_path: Path) -> None:
    """`simulate --trace tr.csv`, then `--trace other/tr.json`: both wrote <run>/simulate/tr/, the
    second replacing the first's replay in silence. The folder holding another trace's is refused."""
    from racmkd.runtime.simulate import default_out_folder
    from racmkd.resources.sources import load_trace

    (tmp_path / "other").mkdir()
    first, second = tmp_path / "tr.csv", tmp_path / "other" / "tr.csv"
    for path in (first, second):
        path.write_text("t,cpu_percent\n0,20\n1,90\n")
    folder = default_out_folder(tmp_path / "run", load_trace(first))
    assert folder == tmp_path / "run" / "simulate" / "tr"
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"trace": "tr", "trace_source": str(first.resolve())}))
    assert default_out_folder(tmp_path / "run", load_trace(first)) == folder  # the same file again: replaced, as before
    with pytest.raises(ValueError, match=r"holds the replay of .*tr\.csv, not of .*other/tr\.csv; it is not replaced\. Name another folder with --out"):
        default_out_folder(tmp_path / "run", load_trace(second))
    # A replay cut short leaves no summary.json; its timeline.json names the trace too.
    (folder / "summary.json").unlink()
    (folder / "timeline.json").write_text(json.dumps({"trace_source": str(first.resolve()), "dynamic": []}))
    with pytest.raises(ValueError, match=r"holds the replay of .*tr\.csv, not of .*other/tr\.csv"):
        default_out_folder(tmp_path / "run", load_trace(second))


def test_deploy_plan_without_device_profiles_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no device profiles (their folder emptied), `deploy plan` printed nothing and exited 0."""
    from typer.testing import CliRunner

    from racmkd.cli import app
    from racmkd.resources import devices

    monkeypatch.setattr(devices, "device_names", lambda devices_dir=None: [])
    result = CliRunner().invoke(app, ["deploy", "plan", "--root", str(tmp_path / "registry")])
    assert result.exit_code == 2 and "no device profiles to plan for" in result.output and "holds none): pass --device" in result.output, result.output


def test_a_long_commands_lines_are_dropped_once_their_reader_has_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    """`racmkd deploy apply | head`: the closed pipe raised in the middle of the fleet's round, and
    the devices not begun were left out. The lines are dropped instead; the round goes on."""
    import os
    import sys

    from racmkd import cli

    said: list[str] = []

    def closed(line: str) -> None:
        if said:
            raise BrokenPipeError(32, "Broken pipe")
        said.append(line)

    monkeypatch.setattr(cli.typer, "echo", closed)
    monkeypatch.setattr(sys, "stdout", sys.stdout)  # (put back after)
    for line in ("gate-1 pushed", "gate-2 pushed", "2 devices: 2 pushed"):
        cli._echo_while_read(line)
    assert said == ["gate-1 pushed"] and sys.stdout.name == os.devnull
    sys.stdout.close()


def test_edge_record_refuses_an_unwritable_place_first_and_keeps_a_recording_the_disk_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An hour's recording to a read-only or full SD card was lost at its end: the place is
    checked before recording, and a write that fails at the end (the disk filled meanwhile) goes
    to the temporary folder instead, said."""
    from racmkd import utils
    from racmkd.resources import sources

    out = tmp_path / "card" / "trace.csv"
    recorded = []
    real_record = sources.record_trace

    def record(*args: object) -> object:
        recorded.append(True)
        return real_record(*args)

    monkeypatch.setattr(sources, "record_trace", record)

    def read_only(folder: Path, size: int = 0) -> None:
        raise OSError(30, "cannot write there (Read-only file system)", str(folder))

    with monkeypatch.context() as patched:
        patched.setattr(utils, "check_writable", read_only)
        result = runner.invoke(app, ["edge", "record", "--out", str(out), "--seconds", "0.3", "--interval", "0.1"])
    assert result.exit_code == 2 and "Read-only file system" in result.output and not recorded, result.output
    real_write = sources.Trace.write

    def card_full(trace: object, path: Path) -> None:
        if Path(path) == out:
            raise OSError(28, "cannot write it (No space left on device)", str(path))
        real_write(trace, path)

    monkeypatch.setattr(sources.Trace, "write", card_full)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "spare"))
    (tmp_path / "spare").mkdir()
    for _ in range(2):  # each kept under a name of its own (a container's pid is the same at every start)
        result = runner.invoke(app, ["edge", "record", "--out", str(out), "--seconds", "0.3", "--interval", "0.1"])
        assert result.exit_code == 0 and recorded and "written to" in result.output, result.output
    kept = list((tmp_path / "spare").glob("trace-*.csv"))
    assert len(kept) == 2 and all(len(sources.load_trace(k).times) >= 2 for k in kept) and not out.exists()


def test_running_out_of_memory_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A MemoryError (profile's calibration on a device with 100 MB to spare) was a traceback."""
    from racmkd.data import dataset

    def too_big(*args: object) -> None:
        raise MemoryError("Unable to allocate 64.0 MiB for an array with shape (16777216,) and data type float32")

    monkeypatch.setattr(dataset, "build_dataset", too_big)
    result = runner.invoke(app, ["data", "--protocol", "clean"])
    assert result.exit_code == 2 and "error: out of memory (Unable to allocate 64.0 MiB" in result.output and "Traceback" not in result.output, result.output
