"""The registry and the typed configs: errors name the field and the fix."""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import pytest

import racmkd.data  # noqa: F401 - importing the subpackages fills the registries (racmkd imports them lazily)
import racmkd.distill  # noqa: F401
import racmkd.models  # noqa: F401
from racmkd.config import ConfigError, RunConfig, load_config, read_yaml_mapping, save_config, to_dict
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


def install_widget_plugins(root: Path, monkeypatch: pytest.MonkeyPatch, modules: dict[str, str], points: dict[str, str]) -> Registry:
    """A fresh registry of group racmkd.test_widgets (as `racmkd.registry.TEST_WIDGETS`, where the
    plugin modules find it), and a distribution under `root` declaring `points` (name -> value) with
    the `modules` (name -> source) beside it, on sys.path; the plugin bookkeeping starts empty."""
    from conftest import fake_distribution

    from racmkd import registry as registry_module

    widgets: Registry = Registry("widget", plugins="racmkd.test_widgets")
    monkeypatch.setattr(registry_module, "TEST_WIDGETS", widgets, raising=False)
    for name in ("_FAILED", "_LOADED", "_LOADING", "_TRIED"):
        monkeypatch.setattr(registry_module, name, type(getattr(registry_module, name))())
    fake_distribution(root, "widget-plugins", "0.1", {"racmkd.test_widgets": points})
    for module, source in modules.items():
        (root / f"{module}.py").write_text("from racmkd.registry import TEST_WIDGETS\n" + source)
        monkeypatch.setitem(sys.modules, module, None)  # (so that the undo takes out what the test imports)
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.syspath_prepend(str(root))
    return widgets


def test_plugins_register_through_entry_points_and_a_broken_one_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A registry with a plugin group loads what installed distributions declare there at its
    first lookup, once: a module (its import registers), a function (called), a class (registered by
    its module, not called); another thread's lookup meanwhile waits for the whole group (it read a
    half-loaded table); one that fails is a warning, leaves nothing of its own registered, and asking
    for what it would have registered says why it is missing."""
    import threading

    widgets = install_widget_plugins(
        tmp_path,
        monkeypatch,
        {
            "widget_gear": "import time\nassert 'gear' not in TEST_WIDGETS  # its own lookup while it loads: what is loaded so far\ntime.sleep(0.5)\nTEST_WIDGETS.register('gear')(complex)\n",
            "widget_fn": "def register():\n    TEST_WIDGETS.register('spring')(bytes)\n",
            "widget_cls": "@TEST_WIDGETS.register('sprocket')\nclass Sprocket:\n    def __init__(self, teeth):\n        self.teeth = teeth\n",
            "widget_broken": "def register():\n    TEST_WIDGETS.register('half')(float)\n    raise ImportError('needs libwidget')\n",
        },
        {"gear": "widget_gear", "spring": "widget_fn:register", "sprocket": "widget_cls:Sprocket", "broken": "widget_broken:register"},
    )
    widgets.register("cog")(int)  # registering never loads plugins
    assert "widget_gear" not in sys.modules
    seen: list[list[str]] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = threading.Thread(target=lambda: seen.append(widgets.names()))
        first.start()
        time.sleep(0.2)  # the first lookup is inside widget_gear's import
        seen.append(widgets.names())
        first.join()
    loaded = ["cog", "gear", "spring", "sprocket"]  # 'half' undone with its plugin
    assert seen == [loaded, loaded] and widgets.get("gear") is complex and widgets.get("sprocket").__name__ == "Sprocket"
    assert [str(w.message) for w in caught] == [
        "racmkd plugin 'broken' (widget_broken:register, entry-point group racmkd.test_widgets) failed to load: ImportError: needs libwidget; nothing it registers is available"
    ]
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        assert widgets.names() == loaded
    assert not again  # loaded once per process: no second try, no second warning
    with pytest.raises(
        KeyError, match=r"unknown widget 'half'.*failed to load \(racmkd.test_widgets\): broken \(widget_broken:register: ImportError: needs libwidget\)"
    ):
        widgets.get("half")


def test_plugin_entry_points_of_every_callable_kind_and_racmkds_own_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A classmethod named by an entry point was passed over in silence (only functions were
    called), a decorated function registered at import was called as if it registered (a loss,
    with no arguments), a failed plugin's alias of a racmkd class stayed registered, and a plugin
    that took one of racmkd's own names before racmkd's module was imported made racmkd's own
    registration fail ("registered twice"), and every later lookup in that process."""
    widgets = install_widget_plugins(
        tmp_path,
        monkeypatch,
        {
            "widget_cm": "class Maker:\n    @classmethod\n    def register(cls):\n        TEST_WIDGETS.register('made')(cls)\n",
            "widget_dec": "@TEST_WIDGETS.register('spin')\ndef spin(speed):\n    return speed\n",
            "widget_alias": "from racmkd.registry import Registry\ndef register():\n    TEST_WIDGETS.register('alias')(Registry)\n    raise ImportError('half done')\n",
            "widget_taker": "def register():\n    TEST_WIDGETS.register('gear')(str)\n",
        },
        {"made": "widget_cm:Maker.register", "spin": "widget_dec:spin", "alias": "widget_alias:register", "taker": "widget_taker:register"},
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert widgets.names() == ["gear", "made", "spin"]  # the alias undone with its plugin
        assert widgets.get("spin")(3) == 3 and widgets.get("made").__name__ == "Maker"
        exec("TEST_WIDGETS.register('gear')(complex)", {"__name__": "racmkd.widgets", "TEST_WIDGETS": widgets})  # racmkd's own module, imported late
    assert widgets.get("gear") is complex
    assert [str(w.message) for w in caught][-1] == "a plugin registered racmkd's own widget 'gear' (<class 'str'>); racmkd's stays"
    with pytest.raises(KeyError, match="registered twice"):  # racmkd's names are not taken back from racmkd, nor by a plugin
        exec("TEST_WIDGETS.register('gear')(float)", {"__name__": "racmkd.widgets", "TEST_WIDGETS": widgets})
    with pytest.raises(KeyError, match="registered twice"):
        exec("TEST_WIDGETS.register('gear')(float)", {"__name__": "someone_else", "TEST_WIDGETS": widgets})


def test_an_interrupted_plugin_load_goes_on_where_it_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C inside a plugin: its own registrations are undone, and the next lookup loads it and
    the rest without loading the ones done again (their register() said 'registered twice')."""
    widgets = install_widget_plugins(
        tmp_path,
        monkeypatch,
        {
            "widget_a": "def register():\n    TEST_WIDGETS.register('a')(int)\n",
            "widget_b": "import os\ndef register():\n    TEST_WIDGETS.register('b')(float)\n    if not os.environ.get('WIDGET_B_OK'):\n        raise KeyboardInterrupt\n",
            "widget_c": "def register():\n    TEST_WIDGETS.register('c')(complex)\n",
        },
        {"a": "widget_a:register", "b": "widget_b:register", "c": "widget_c:register"},
    )
    with pytest.raises(KeyboardInterrupt):
        widgets.names()
    assert widgets._entries == {"a": int}  # b's registration undone, c not reached
    monkeypatch.setenv("WIDGET_B_OK", "1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert widgets.names() == ["a", "b", "c"]
    assert not caught


def test_project_registries_are_filled() -> None:
    assert {"image", "audio"} <= set(MODALITIES.names())
    assert {"teacher", "student", "linear_fusion", "cnn2d", "dscnn2d", "mbv3"} <= set(MODELS.names())
    assert {"kd", "multi_teacher", "feature", "rkd", "similarity", "contrastive", "attention", "group_sparsity", "task", "emd"} == set(LOSSES.names())


def test_default_yaml_holds_the_headline_protocol_and_tiers() -> None:
    """configs/default.yaml is `make run`'s file: the avmnist protocol and the four tiers at their
    budgets (the dataclass defaults differ from it on purpose; see test_cli)."""
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


def test_a_key_given_twice_or_a_required_field_left_out_is_named(tmp_path: Path) -> None:
    """A key twice in one mapping was read silently as its last value; a tier without its budget
    said `TierConfig.__init__() missing 1 required positional argument`."""
    path = tmp_path / "bad.yaml"
    path.write_text("teacher:\n  epochs: 3\nseed: 1\nteacher:\n  epochs: 4\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML: key 'teacher' appears twice in one mapping \(lines 1 and 4\)"):
        load_config(path)
    with pytest.raises(ConfigError, match="appears twice"):
        load_config(None, ["teacher.width={image: 8, image: 16}"])
    path.write_text("students:\n  tiers:\n    - name: small\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: students\.tiers\[0\]\.budget_bytes is missing: students\.tiers\[0\] has no default for it"):
        load_config(path)


def test_yaml_merge_keys_still_work_and_a_list_key_is_a_clear_error(tmp_path: Path) -> None:
    """The duplicate-key loader refused `<<: *base` (no constructor for the merge tag) and let a
    list key escape as a bare TypeError instead of the usual "not valid YAML" error."""
    path = tmp_path / "merge.yaml"
    path.write_text("base: &b {a: 1, c: 2}\nx: {<<: *b, a: 3}\ny: {<<: [*b, {c: 5}], d: 4}\n")
    assert read_yaml_mapping(path, "") == {"base": {"a": 1, "c": 2}, "x": {"a": 3, "c": 2}, "y": {"a": 1, "c": 2, "d": 4}}
    path.write_text("base: &b {a: 1}\nx: {<<: *b, a: 3, a: 4}\n")
    with pytest.raises(ConfigError, match="key 'a' appears twice"):
        read_yaml_mapping(path, "")
    path.write_text("? [a, b]\n: 1\n")
    with pytest.raises(ConfigError, match=r"(?s)merge\.yaml: not valid YAML: .*found unhashable key"):
        read_yaml_mapping(path, "")


def test_wrong_type_names_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("students:\n  train:\n    epochs: three\n")
    with pytest.raises(ConfigError, match=r"students\.train\.epochs: expected an integer, got 'three'"):
        load_config(path)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(None, ["students.train.epochs"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"workers in \[1, 256\]"):
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
    assert to_dict(RunConfig())["students"]["tiers"][0] == {
        "name": "high",
        "budget_bytes": 1 << 20,
        "modalities": [],
        "scale": -1,
        "depth": 0,
        "ties": "capacity",
        "epochs": 0,
        "channel_multiple": 8,
    }


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
    with pytest.raises(ConfigError, match=rf"overrides .*: data\.options\.{modality}: .*{message}") as err:
        load_config(None, [f"data.options.{override}"])
    assert "Fix this value in" not in str(err.value)  # (the value is the override's, not the file's)


def test_a_bad_modality_option_from_set_is_blamed_on_the_override() -> None:
    """It said "Fix this value in configs/default.yaml + overrides [...]", sending the user to the file."""
    with pytest.raises(ConfigError, match=r"data\.options\.audio\.snr_db: expected a list .* Fix the override 'data\.options\.audio\.snr_db=foo' \(--set\)"):
        load_config(REPO / "configs" / "default.yaml", ["data.options.audio.snr_db=foo"])


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


def test_a_second_whose_run_names_are_all_taken_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import racmkd.runs as runs

    monkeypatch.setattr(runs.time, "strftime", lambda _: "20261205-093000")
    stem = "avmnist-20261205-093000"
    for name in [stem, *(f"{stem}-{i}" for i in range(2, 10_000))]:
        (tmp_path / name).mkdir()
    with pytest.raises(runs.RunError, match="every run name of this second is taken"):  # (it was a NameError)
        runs.create_run(load_config(None, [f"runs_dir={tmp_path}"]))
    assert not (tmp_path / "latest").exists()


@pytest.mark.parametrize(
    "name",
    [
        "teacher",
        "Teacher",
        "teacher_image",
        "high_labels_only",
        "high_compressed",
        "edge",
        "standard_kd",
        "emd_kd",
        "mobilenetv3",
        "tinyml",
        "tinyml_high",
        "kd_align",
        "kd_align_resource",
        "transfer_audio_labels",
        "edge/high",
        ".hidden",
        "high tier",
        "",
        "x" * 65,
    ],
)
def test_a_tier_name_is_a_plain_file_stem_no_other_model_of_the_run_has(tmp_path: Path, name: str) -> None:
    """A tier's students are saved as checkpoints/<tier>.pt: a tier named `teacher` overwrote the
    fused teacher, and a name with a slash was a path. Refused when the config is read."""
    path = tmp_path / "tiers.yaml"
    path.write_text(f"students:\n  tiers:\n    - {{name: '{name}', budget_bytes: 16384}}\n")
    with pytest.raises(ConfigError, match=r"tiers\.yaml: students\.tiers\[0\]: tier .*(taken by the run's other models|letters, digits).*"):
        load_config(path)


def test_every_name_the_run_gives_its_other_models_is_refused_as_a_tier_name() -> None:
    """The names the teachers, the baselines, the ablation and the release of the variant bank are
    saved or looked up under (kept in step with the modules that make them)."""
    from racmkd.config import MIN_STUDENT_WIDTH, TierConfig
    from racmkd.eval.baselines import ABLATION, BASELINES, matched_name
    from racmkd.models.encoders import DSCNN2dEncoder
    from racmkd.pipeline import TEACHER

    others = [
        TEACHER,
        f"{TEACHER}_audio",
        *BASELINES,
        *ABLATION,
        matched_name("high"),
        "transfer_image_crossmodal",
        "transfer_image_unimodal",
        "edge",
        "high_labels_only",
        "high_compressed",
    ]
    for name in others:
        with pytest.raises(ConfigError, match="taken by the run's other models"):
            TierConfig(name, 16384)
    for name in ("high", "t", "edge-16k", "tier_2", "Critical"):
        assert TierConfig(name, 16384).name == name
    assert MIN_STUDENT_WIDTH == 2 / DSCNN2dEncoder.base_channels  # the narrowest width `widest_student` tries


def test_two_tiers_of_one_name_are_refused_when_the_config_is_read() -> None:
    """They wrote one checkpoint; the trainer refused them hours later, naming no setting."""
    for second in ("edge-a", "EDGE-A"):  # one file on a case-insensitive file system
        with pytest.raises(ConfigError, match=rf"overrides .*: students: students\.tiers: two tiers are named 'edge-a' and '{second}'"):
            load_config(REPO / "tests" / "tiny.yaml", [f"students.tiers=[{{name: edge-a, budget_bytes: 262144}}, {{name: {second}, budget_bytes: 16384}}]"])


def test_a_run_without_tiers_is_refused_before_the_teachers_train(tmp_path: Path) -> None:
    """The students' pass ran the teachers over the data with no student to teach; the teachers
    alone (`racmkd train-teacher`) read such a config."""
    from racmkd.pipeline import run_pipeline

    cfg = load_config(REPO / "tests" / "tiny.yaml", ["students.tiers=[]", "compress.tiers=[]", f"runs_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"students\.tiers is empty: .*racmkd train-teacher. trains the teachers alone"):
        run_pipeline(cfg)
    assert not any(tmp_path.iterdir())  # refused before a run folder was made


def test_a_bad_value_from_the_command_line_is_fixed_there(tmp_path: Path) -> None:
    """It said "Fix this value in tests/tiny.yaml + overrides [...]": the file was not where it came from."""
    with pytest.raises(ConfigError, match=r"data\.seed: expected an integer, got 'abc'\. Fix the override 'data\.seed=abc' \(--set\)\.$"):
        load_config(REPO / "tests" / "tiny.yaml", ["seed=1", "data.seed=abc"])
    with pytest.raises(ConfigError, match=r"students\.tiers\[0\]\.epochs: .*Fix the override 'students\.tiers\.0\.epochs=x' \(--set\)"):
        load_config(REPO / "tests" / "tiny.yaml", ["students.tiers.0.epochs=x"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {seed: abc}\n")
    with pytest.raises(ConfigError, match=r"Fix this value in .*bad\.yaml \+ overrides \['seed=1'\]\.$"):  # a file's value: the file
        load_config(bad, ["seed=1"])


def test_compression_names_tiers_the_config_defines() -> None:
    with pytest.raises(
        ConfigError, match=r"compress\.tiers names \['hgh'\], not tiers of students\.tiers \(high, medium, low, critical\)\. Did you mean 'high'\?"
    ):
        load_config(REPO / "tests" / "tiny.yaml", ["compress.tiers=[hgh]"])
    with pytest.raises(ConfigError, match=r"compress\.tier_recipes names \['critcal'\].*Did you mean 'critical'\?"):
        load_config(REPO / "tests" / "tiny.yaml", ["compress.tier_recipes={critcal: configs/recipes/critical.yaml}"])
    assert load_config(REPO / "configs" / "default.yaml").compress.tiers == ("high", "medium", "low", "critical")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("students.train.mixup=.inf", r"students\.train: mixup must be a finite number >= 0"),  # NaN weights, silently
        ("teacher.unimodal.mixup=.nan", r"teacher\.unimodal: mixup must be a finite number >= 0"),
        ("students.train.epochs=0", r"students\.train: batch_size and epochs must be >= 1"),  # refused by the trainer after the teachers
        ("teacher.fused.epochs=0", r"teacher\.fused: batch_size and epochs must be >= 1"),
        ("students.selection.depths=[1, 0]", r"students\.selection\.depths must list at least one depth, each >= 1"),  # ZeroDivisionError after the teachers
        ("students.selection.scales=[-1]", r"students\.selection\.scales must list at least one resolution level, each >= 0"),
        ("students.selection.modality_sets=[]", r"students\.selection\.modality_sets must list at least one set"),
        ("students.selection.modality_sets=[[]]", r"students\.selection\.modality_sets must list .* none of them empty"),
        ("students.max_width=.nan", r"students\.max_width must be a finite number >= 0\.25"),
        ("students.max_width=.inf", r"students\.max_width must be a finite number >= 0\.25"),
        ("students.max_width=0.2", r"students\.max_width must be a finite number >= 0\.25"),  # no design for any tier
        ("teacher.dropout=1.5", r"teacher\.dropout must be in \[0, 1\)"),
        ("teacher.dropout=1.0", r"teacher\.dropout must be in \[0, 1\)"),
        ("teacher.dropout=.nan", r"teacher\.dropout must be in \[0, 1\)"),
        ("teacher.fusion_hidden=-4", r"teacher\.fusion_hidden must be >= 0 \(0: no hidden layer"),
        ("teacher.embed_dim=0", r"teacher\.embed_dim must be >= 1"),
        ("students.tiers.0.scale=-2", r"students\.tiers\[0\]: tier 'high': scale must be >= -1"),
        ("students.tiers.0.depth=-1", r"students\.tiers\[0\]: tier 'high': .*depth >= 0"),
        ("runtime.pid.min_scale=2.0", r"runtime\.pid: need 0 < min_scale <= max_scale"),  # simple-pid refused it when the runtime started
        ("runtime.pid.ki=.nan", r"runtime\.pid: kp, ki and kd must be finite and >= 0"),
        ("data.modalities=[image, image]", r"data: modalities names a modality twice"),
        ("serve.upstreams=[notaurl]", r"serve: upstreams: 'notaurl' is not an http\(s\) URL with a host"),  # the breaker opened on it, silently
        ("serve.upstreams=['ftp://fog:21']", r"serve: upstreams: 'ftp://fog:21' is not an http\(s\) URL"),
        ("serve.upstreams=['http://fog:99999']", r"serve: upstreams: 'http://fog:99999' has an invalid port '99999' \(a port is a number in 1-65535\)"),
        ("serve.mqtt_host='[::1]'", r"serve: mqtt_host '\[::1\]'.*without brackets"),
        ("serve.body_timeout_s=0", r"serve: body_timeout_s must be finite and > 0"),
        ("serve.fog_models=[]", r"serve: fog_models is empty"),  # the fog server failed at start with an IndexError
        ("serve.max_body_bytes=-1", r"serve: max_body_bytes -1.*each limit must be finite and > 0"),  # every /predict answered 413
        ("serve.breaker_failures=0", r"serve: breaker_failures 0 \(>= 1\)"),
        ("distill.temperature={low: .inf, high: 2}", r"distill: temperature \(low inf.*must be finite and > 0"),  # NaN loss after the teachers trained
        ("eval.energy.static_watts=.nan", r"eval\.energy: static_watts must be a finite number >= 0"),  # NaN energy figures
        ("eval.latency_iters=0", r"eval: latency_warmup must be >= 0, latency_iters and latency_rounds >= 1"),  # a ZeroDivisionError after training
        ("seed=4294967296", r"RunConfig: seed must be in \[0, 2\*\*32\)"),  # refused by torch after the run folder was made
        ("data.seed=-1", r"data: data\.seed must be in \[0, 2\*\*32\)"),
        ("seed=18446744073709551616", r"seed: expected an integer within ±2\*\*63"),
        ("students.train.lr=1" + "0" * 400, r"students\.train\.lr: expected a number within ±1\.8e308"),  # an OverflowError traceback
        ("runtime.threads=100000", r"runtime: threads must be in \[1, 256\]"),  # 7,143 threads, the process hung
        ("workers=1000", r"RunConfig: threads must be in \[0, 256\] .* workers in \[1, 256\]"),
        ("data.modalities=[[[[[[[1, 2, 3, 4, 5, 6, 7, 8]]]]]]]", r"data\.modalities\[0\]: expected a string, got \[\[\[\[\.\.\.\]\]\]\]\."),  # shown short
        ("data.modalities=[imag, audio]", r"data\.modalities\.imag: no modality 'imag'\. Did you mean 'image'"),  # found when the dataset was built
        (
            "students.tiers.0.modalities=[adio]",
            r"students\.tiers\.0\.modalities\.adio: no modality 'adio'\. Did you mean 'audio'",
        ),  # no design, after the teachers
        (
            "students.selection.modality_sets=[[image, adio], [audio]]",
            r"students\.selection\.modality_sets\.0\.adio: no modality",
        ),  # the set skipped in silence
    ],
)
def test_a_value_that_would_fail_after_the_teachers_trained_is_refused_when_read(override: str, message: str) -> None:
    """Each was accepted and failed (or trained NaN weights) only at the stage that used it, after
    the stages before it had run; now the config names the file and the key."""
    with pytest.raises(ConfigError, match=rf"tiny\.yaml \+ overrides .*: {message}"):
        load_config(REPO / "tests" / "tiny.yaml", [override])


def test_the_limits_keep_the_values_that_mean_something() -> None:
    cfg = load_config(
        REPO / "tests" / "tiny.yaml",
        [
            "teacher.fusion_hidden=0",
            "teacher.dropout=0",
            "students.max_width=0.25",
            "students.train.mixup=0",
            "students.tiers.3.epochs=0",
            "students.tiers.0.scale=-1",
        ],
    )
    assert (cfg.teacher.fusion_hidden, cfg.students.max_width, cfg.students.train.mixup, cfg.students.tiers[3].epochs) == (0, 0.25, 0.0, 0)


def test_a_folder_at_runs_latest_is_named_and_nothing_is_left_behind(tmp_path: Path) -> None:
    """runs/latest copied as a folder (`cp -rL`, `scp -r`): every new run failed with
    IsADirectoryError from os.replace, leaving an empty run folder and a `.latest.<pid>` link."""
    from racmkd.runs import RunError, create_run

    (tmp_path / "latest" / "checkpoints").mkdir(parents=True)
    (tmp_path / "latest" / "config.yaml").write_text("{}\n")
    for name in ("", "named"):
        with pytest.raises(RunError, match=r"latest is a folder, not the link to the newest run: rename or remove it"):
            create_run(load_config(None, [f"runs_dir={tmp_path}", f"name='{name}'"]))
        assert sorted(p.name for p in tmp_path.iterdir()) == ["latest"]
    assert sorted(p.name for p in (tmp_path / "latest").iterdir()) == ["checkpoints", "config.yaml"]  # left as it was


def test_a_run_that_cannot_be_linked_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from racmkd import runs

    def fail(src: object, dst: object) -> None:
        raise OSError("no room")

    monkeypatch.setattr(runs.os, "replace", fail)
    (tmp_path / "kept" / "notes").mkdir(parents=True)  # a folder of the name, not a run: left as it was
    for name in ("", "fresh", "kept"):
        with pytest.raises(OSError, match="no room"):
            runs.create_run(load_config(None, [f"runs_dir={tmp_path}", f"name='{name}'"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["notes"]


def test_of_two_runs_started_with_one_name_one_gets_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both checked that no config.yaml was there, then both wrote theirs: two runs trained into one
    folder (reproduced 3 times in 3 with two processes). The config is now claimed where none is."""
    from racmkd import runs

    real_write_new = runs.write_new

    def other_run_first(path: Path, data: bytes) -> None:
        path.write_text("seed: 1  # the other run's\n")  # (its write lands between this one's check and its write)
        real_write_new(path, data)

    monkeypatch.setattr(runs, "write_new", other_run_first)
    with pytest.raises(runs.RunError, match="a run of that name was started meanwhile; choose another --name"):
        runs.create_run(load_config(None, [f"runs_dir={tmp_path}", "name=same"]))
    assert (tmp_path / "same" / "config.yaml").read_text() == "seed: 1  # the other run's\n"  # the winner's, left alone
    assert sorted(p.name for p in (tmp_path / "same").iterdir()) == ["checkpoints", "config.yaml"] and not (tmp_path / "latest").exists()
    monkeypatch.undo()
    made = runs.create_run(load_config(None, [f"runs_dir={tmp_path}", "name=fresh"]))
    assert load_config(made / "config.yaml").name == "fresh" and sorted(p.name for p in made.iterdir()) == ["checkpoints", "config.yaml"]


def test_a_run_goes_on_without_the_link_where_no_link_can_be_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Windows without Developer Mode makes no symbolic link (WinError 1314): every `racmkd run`
    failed and its folder was removed. Now the run goes on, says to pass --run, and a link to an
    older run is taken away rather than left for the commands that default to runs/latest."""
    from racmkd import runs

    older = runs.create_run(load_config(None, [f"runs_dir={tmp_path}", "name=older"]))
    assert (tmp_path / "latest").resolve() == older.resolve()

    def refuse(self: Path, target: object, target_is_directory: bool = False) -> None:
        raise OSError(22, "A required privilege is not held by the client")

    monkeypatch.setattr(Path, "symlink_to", refuse)
    with caplog.at_level("WARNING", logger="racmkd.runs"):
        newer = runs.create_run(load_config(None, [f"runs_dir={tmp_path}", "name=newer"]))
    assert (newer / "config.yaml").is_file() and not (tmp_path / "latest").is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["newer", "older"]  # (no .latest.<pid> left)
    assert f"pass --run {newer}" in caplog.text and "privilege is not held" in caplog.text


def test_an_unreadable_timings_file_is_written_anew_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """timings.json is bookkeeping: an emptied one raised a JSONDecodeError naming no file, and
    distill_students lost the students it had just trained."""
    import json

    from racmkd.runs import record_timing

    path = tmp_path / "timings.json"
    for content in ("", "[1, 2]", "\xff"):
        path.write_text(content, encoding="latin-1")
        with caplog.at_level("WARNING", logger="racmkd.runs"):
            record_timing(tmp_path, "distill_students", 12.34)
        assert json.loads(path.read_text()) == {"distill_students": 12.3}
        assert str(path) in caplog.text
        caplog.clear()
    record_timing(tmp_path, "compress_students", 1.0)
    assert json.loads(path.read_text()) == {"distill_students": 12.3, "compress_students": 1.0}


def test_an_unreadable_selection_record_reads_as_none_with_a_warning_naming_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """selection.json was read after a selection's minutes of training: a truncated one failed as
    "Expecting value", `{}` as "'tiers'", `[]` with a traceback. It is a record: read first, warned
    of, written anew."""
    from racmkd.runs import read_selection

    path = tmp_path / "selection.json"
    assert read_selection(tmp_path) == {}
    for content in ('{"tiers": ', "{}", "[]", '{"tiers": [1]}', "\xff"):
        path.write_text(content, encoding="latin-1")
        with caplog.at_level("WARNING", logger="racmkd.runs"):
            assert read_selection(tmp_path) == {}
        assert str(path) in caplog.text
        caplog.clear()
    path.write_text('{"samples_per_candidate": 10, "tiers": {"low": {"chosen": "x"}}}')
    assert read_selection(tmp_path)["tiers"] == {"low": {"chosen": "x"}} and not caplog.text


def test_a_config_names_its_base_and_says_only_what_differs(tmp_path: Path) -> None:
    from racmkd.config import config_differences

    repo = Path(__file__).parents[1] / "configs"
    trimodal, default = load_config(repo / "trimodal.yaml"), load_config(repo / "default.yaml")
    assert config_differences(default, trimodal) == ["data.modalities", "runtime.critical.pen", "students.selection.modality_sets", "students.selection.scales"]
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.yaml").write_text("seed: 3\nstudents: {train: {epochs: 7}}\n")
    (tmp_path / "sub" / "b.yaml").write_text("base: ../a.yaml\nstudents: {train: {lr: 0.5}}\n")  # relative to b, sections merged
    (tmp_path / "c.yaml").write_text("base: sub/b.yaml\nseed: 4\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert (cfg.seed, cfg.students.train.epochs, cfg.students.train.lr) == (4, 7, 0.5)
    (tmp_path / "a.yaml").write_text("base: c.yaml\n")
    with pytest.raises(ConfigError, match="in a circle"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"missing\.yaml does not exist\. .*d\.yaml names it as its base"):
        load_config(tmp_path / "d.yaml")
    (tmp_path / "j.yaml").write_text("bogus: 1\n")
    (tmp_path / "k.yaml").write_text("base: j.yaml\n")
    with pytest.raises(ConfigError, match=r"k\.yaml over .*j\.yaml.*unknown key 'bogus'"):  # (the value may be in either file: both are named)
        load_config(tmp_path / "k.yaml")
    (tmp_path / "e.yaml").write_text("base: [a.yaml]\n")
    with pytest.raises(ConfigError, match="base must be the path"):
        load_config(tmp_path / "e.yaml")


# Layering ------------------------------------------------------------------------------------------

LAYERS = [
    ("config", "registry", "utils", "runs"),
    "measure",
    "data",
    "models",
    "distill",
    "compress",
    "resources",
    "runtime",
    "deploy",
    "eval",
    "pipeline",
    "cli",
]  # a tuple: one layer
ALLOWED_UPWARD = {  # (importing module, package it reaches up to): each with its reason
    ("racmkd", "runtime"): "racmkd.load, imported on first use",
    ("racmkd.config", "data"): "modality_options registers data's options classes when a config is read",
    ("racmkd.eval.suite", "pipeline"): "the benchmark suite trains and compresses through the pipeline",
    ("racmkd.eval.baselines", "pipeline"): "the suite's baselines are trained the pipeline's way",
    ("racmkd.eval.deployed", "pipeline"): "the suite exports its baselines as the pipeline does",
}


def test_a_package_imports_only_from_the_layers_above_it() -> None:
    """The layout in the README reads top to bottom: compression, the profiler and the runtime
    reached up into eval for timing, FLOPs and energy (14 imports, five packages in one cycle) until
    racmkd.measure held them."""
    import ast

    root = Path(racmkd.data.__file__).resolve().parents[2]
    rank = {name: i for i, layer in enumerate(LAYERS) for name in (layer if isinstance(layer, tuple) else (layer,))}
    upward, files = [], sorted((root / "racmkd").rglob("*.py"))
    assert len(files) > 50
    for path in files:
        parts = path.relative_to(root).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        layer = parts[1] if len(parts) > 1 else None
        layer = layer if layer in rank else (layer.removesuffix(".py") if layer else None)
        if layer == "__init__" or layer is None:
            layer = "config"  # the package's own __init__: the top
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("racmkd.") and node.level == 0:
                targets = [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("racmkd.")]
            else:
                continue
            for target in targets:
                target_layer = target.split(".")[1]
                if target_layer in rank and rank[target_layer] > rank[layer] and (module, target_layer) not in ALLOWED_UPWARD:
                    upward.append(f"{path.relative_to(root)}:{node.lineno} imports {target}")
    assert not upward, "imports from a layer below (move the shared code up, or list the exception with its reason):\n" + "\n".join(upward)


def test_scientific_notation_is_a_number_in_configs_and_overrides(tmp_path: Path) -> None:
    """YAML 1.1 needs a dot in a float: `lr: 1e-3` was the string '1e-3', refused as "expected a
    number" (1.0e-3 was taken)."""
    (tmp_path / "c.yaml").write_text("students:\n  train:\n    lr: 2e-3\n")
    cfg = load_config(tmp_path / "c.yaml", ["teacher.fused.lr=1E-4", "students.train.weight_decay=5e-5"])
    assert (cfg.students.train.lr, cfg.teacher.fused.lr, cfg.students.train.weight_decay) == (0.002, 0.0001, 5e-05)
    with pytest.raises(ConfigError, match="expected an integer"):
        load_config(None, ["students.train.epochs=1e3"])  # not a count
    options = load_config(
        None, ["data.options.audio.f_max=3e3", "data.options.audio.snr_db=[0, 10]"]
    ).data.options  # the checked value travels on, not the string
    assert options["audio"]["f_max"] == 3000.0 and options["audio"]["snr_db"] == [0, 10]  # (0 stays 0: the dataset cache's key reads them)
    assert all(type(v) is int for v in options["audio"]["snr_db"])
    named = load_config(None, ["name=1e5"])  # a string where a string goes: a run of that name is written and read back
    save_config(named, tmp_path / "run.yaml")
    assert named.name == load_config(tmp_path / "run.yaml").name == "1e5"


def test_a_run_whose_config_lost_its_sections_is_refused_not_read_as_the_defaults(tmp_path: Path) -> None:
    """An emptied config.yaml read as the defaults: `racmkd evaluate` measured the run on the
    default protocol's data and wrote that over its report."""
    from racmkd.runs import RunError, open_run

    run = tmp_path / "run"
    run.mkdir()
    save_config(load_config(None, ["data.protocol=clean"]), run / "config.yaml")
    assert open_run(run)[1].data.protocol == "clean"
    for text in ("", "seed: 3\n"):
        (run / "config.yaml").write_text(text)
        with pytest.raises(RunError, match=r"config.yaml: not a whole run config \(no data, teacher, students\)"):
            open_run(run)


def test_a_folder_taken_over_by_a_run_that_fails_is_left_as_it_was(tmp_path: Path) -> None:
    """A run given the --name of a folder without a config takes it over; failing before its first
    checkpoint, it removed a timings.json the folder had and left the checkpoints/ it made."""
    from racmkd.runs import new_run

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    (mine / "timings.json").write_text("{}")
    with pytest.raises(RuntimeError, match="diverged"), new_run(load_config(None, [f"runs_dir={tmp_path}", "name=mine"])):
        raise RuntimeError("diverged")
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt", "timings.json"] and not (tmp_path / "latest").exists()


def test_a_key_of_another_section_is_named_there() -> None:
    """`--set serve.max_loaded=1` listed serve's keys, not that the setting is the runtime's."""
    with pytest.raises(ConfigError, match=r"unknown key 'serve\.max_loaded'\. It is a setting of another section: runtime\.max_loaded\."):
        load_config(None, ["serve.max_loaded=1"])
    with pytest.raises(
        ConfigError, match=r"unknown key 'students\.lr'\. It is a setting of other sections: teacher\.unimodal\.lr, teacher\.fused\.lr, students\.train\.lr\."
    ):
        load_config(None, ["students.lr=0.1"])
    with pytest.raises(ConfigError, match=r"Did you mean 'threads'\?"):  # a close name in the section still comes first
        load_config(None, ["runtime.treads=2"])
