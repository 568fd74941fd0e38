"""The registry and the typed configs: errors name the field and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

import racmkd.data  # noqa: F401 - importing the subpackages fills the registries (racmkd imports them lazily)
import racmkd.distill  # noqa: F401
import racmkd.models  # noqa: F401
from racmkd.config import ConfigError, RunConfig, load_config, save_config, to_dict
from racmkd.registry import LOSSES, MODALITIES, MODELS, Registry

REPO = Path(__file__).resolve().parents[1]


def test_registry_rejects_duplicates_and_suggests_names() -> None:
    reg: Registry = Registry("widget")
    reg.register("conv")(int)
    with pytest.raises(KeyError, match="registered twice"):
        reg.register("conv")(float)
    with pytest.raises(KeyError, match="Did you mean 'conv'"):
        reg.get("cnv")
    assert reg.create("conv", "7") == 7
    assert "conv" in reg and reg.names() == ["conv"]


def test_project_registries_are_filled() -> None:
    assert {"image", "audio"} <= set(MODALITIES.names())
    assert {"teacher", "student", "linear_fusion", "cnn2d", "dscnn2d", "mbv3"} <= set(MODELS.names())
    assert {"kd", "multi_teacher", "feature", "rkd", "similarity", "contrastive", "attention", "group_sparsity", "task", "emd"} == set(LOSSES.names())


def test_default_yaml_matches_the_dataclass_defaults_it_documents() -> None:
    from_file = load_config(REPO / "configs" / "default.yaml")
    assert from_file.data.protocol == "avmnist"
    assert [t.name for t in from_file.students.tiers] == ["high", "medium", "low", "critical"]
    assert [t.budget_bytes for t in from_file.students.tiers] == [1 << 20, 1 << 18, 1 << 16, 1 << 14]


def test_overrides_set_single_fields_including_list_items() -> None:
    cfg = load_config(None, ["students.train.epochs=7", "students.tiers.1.budget_bytes=1000", "data.modalities=[audio]"])
    assert cfg.students.train.epochs == 7
    assert cfg.students.tiers[1].budget_bytes == 1000
    assert cfg.students.tiers[0].budget_bytes == 1 << 20
    assert cfg.data.modalities == ("audio",)


def test_unknown_key_names_file_and_suggestion(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("teacher:\n  widht: 16\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*teacher\.widht.*Did you mean 'width'"):
        load_config(path)


def test_wrong_type_names_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("students:\n  train:\n    epochs: three\n")
    with pytest.raises(ConfigError, match=r"students\.train\.epochs: expected an integer, got 'three'"):
        load_config(path)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(None, ["students.train.epochs"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="workers >= 1"):
        load_config(None, ["workers=0"])
    with pytest.raises(ConfigError, match=r"compress\.teacher_cache_bytes must be >= 0"):
        load_config(None, ["compress.teacher_cache_bytes=-1"])
    with pytest.raises(ConfigError, match=r"students\.replay_cache_bytes must be >= 0"):
        load_config(None, ["students.replay_cache_bytes=-1"])
    with pytest.raises(ConfigError, match=r"teacher\.width and teacher\.depth must be >= 1"):
        load_config(None, ["teacher.width={image: 0}"])


def test_configs_are_frozen_and_round_trip(tmp_path: Path) -> None:
    cfg = load_config(None, ["seed=3", "distill.align_losses={feature: 2.0}"])
    with pytest.raises(AttributeError):
        cfg.seed = 4  # type: ignore[misc]
    assert cfg.distill.align_losses == {"feature": 2.0}  # a file's loss table replaces the default one
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    assert to_dict(RunConfig())["students"]["tiers"][0] == {"name": "high", "budget_bytes": 1 << 20, "modalities": [], "scale": -1, "depth": 0, "ties": "capacity", "epochs": 0, "channel_multiple": 8}


def test_modality_options_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"data\.options\.audio.*n_melz"):
        MODALITIES.create("audio", n_melz=3)
    with pytest.raises(ConfigError, match="unknown protocol"):
        MODALITIES.create("image", protocol="noisy")


def test_modality_options_are_checked_when_the_config_is_read(tmp_path: Path) -> None:
    """A mistyped option fails when the file is read, naming the file (it failed when the dataset
    was built, minutes into a run, naming only "config")."""
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  options:\n    audio: {snr_dbb: [0, 10]}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown key 'data\.options\.audio\.snr_dbb'\. Did you mean 'snr_db'"):
        load_config(path)
    path.write_text("data:\n  options:\n    imagee: {crop: 24}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: data\.options\.imagee: no options registered for a modality 'imagee' .*; registered: audio, image"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"data\.options\.image\.crop: expected an integer"):
        load_config(None, ["data.options={image: {crop: big}}"])
    assert load_config(REPO / "configs" / "default.yaml").data.options["image"]["crop"] == 24
    from racmkd.registry import MODALITY_OPTIONS

    assert MODALITY_OPTIONS.names() == MODALITIES.names()
    for name in MODALITIES:  # what the config is checked against is what the modality reads
        assert MODALITIES.get(name).options_type is MODALITY_OPTIONS.get(name)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("audio.duration=.inf", r"duration inf: .*finite"),  # an OverflowError when the recordings were windowed
        ("audio.duration=0.00001", r"duration 1e-05: .*at least one sample long"),  # 0 samples at 8 kHz
        ("audio.snr_db=[-.inf, 10]", r"snr_db \[-inf, 10\.0\]: a range of finite decibels"),
        ("audio.semitones=.inf", r"semitones inf \(a finite number"),
        ("image.rotation_deg=.inf", r"rotation_deg and shift must be finite"),  # NaN images in training
        ("image.shift=.inf", r"rotation_deg and shift must be finite"),
        ("image.zoom=1.0", r"zoom in \[0, 1\)"),  # a scale drawn as 0: a division by zero
    ],
)
def test_a_modality_option_out_of_range_names_the_file_and_key(tmp_path: Path, override: str, message: str) -> None:
    """A value YAML reads as a float but no modality can use (.inf, .nan, a duration under one sample)
    is refused when the config is read, as every other out-of-range option is."""
    modality, assignment = override.split(".", 1)
    key, value = assignment.split("=")
    path = tmp_path / "bad.yaml"
    path.write_text(f"data:\n  options:\n    {modality}: {{{key}: {value}}}\n")
    with pytest.raises(ConfigError, match=rf"bad\.yaml: data\.options\.{modality}: .*{message}"):
        load_config(path)
    with pytest.raises(ConfigError, match=rf"overrides .*: data\.options\.{modality}: .*{message}"):
        load_config(None, [f"data.options.{override}"])


def test_the_shortest_audio_window_is_one_sample() -> None:
    from racmkd.data.options import AudioOptions

    assert AudioOptions(sample_rate=8000, duration=1 / 8000).duration == 1 / 8000  # one sample: one STFT frame
    with pytest.raises(ConfigError, match="at least one sample long"):
        AudioOptions(sample_rate=8000, duration=0.4 / 8000)  # rounds to no sample at all


def test_a_run_is_never_written_over(tmp_path: Path) -> None:
    from racmkd.runs import RunError, create_run, open_run

    first = create_run(load_config(None, [f"runs_dir={tmp_path}", "name=first", "seed=1"]))
    with pytest.raises(RunError, match="a run of that name exists"):
        create_run(load_config(None, [f"runs_dir={tmp_path}", "name=first", "seed=2"]))
    assert open_run(first)[1].seed == 1  # its config still matches its checkpoints
    for bad in ("latest", "../elsewhere", ".hidden"):
        with pytest.raises(RunError, match="not a run folder's name"):
            create_run(load_config(None, [f"runs_dir={tmp_path}", f"name={bad}"]))
    assert open_run(tmp_path / "latest")[0] == first.resolve()  # runs/latest still a link to a run
    unnamed = [create_run(load_config(None, [f"runs_dir={tmp_path}"])) for _ in range(3)]  # within the same second
    assert len(set(unnamed)) == 3 and open_run(tmp_path / "latest")[0] == unnamed[-1].resolve()
