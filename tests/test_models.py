"""The teacher and every student design: shapes, budgets, missing modalities and gradient flow."""

from __future__ import annotations

import functools

import pytest
import torch

from racmkd.config import ConfigError, RunConfig, TierConfig
from racmkd.models.multimodal import build, count_params, teacher, widest_student
from racmkd.pipeline import build_student, candidates, model_inputs, teacher_specs
from racmkd.registry import MODALITIES, MODELS

MODS = {name: MODALITIES.create(name) for name in ("image", "audio")}
CFG = RunConfig()


@functools.cache  # read at collection and again by a test
def all_designs():  # every design any default tier may pick
    return [d for tier in CFG.students.tiers for d in candidates(CFG, MODS, tier)[0]]


def batch(model, n: int = 3) -> dict[str, torch.Tensor]:
    return {m: torch.randn(n, *spec["shape"]) for m, spec in model.arch["kwargs"]["inputs"].items()}


def assert_every_parameter_learns(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> None:
    model.train()
    model(inputs).logsumexp(1).sum().backward()
    silent = [n for n, p in model.named_parameters() if p.grad is None or float(p.grad.abs().sum()) == 0]
    assert not silent, f"no gradient reaches {silent}"


@pytest.mark.parametrize("design", all_designs(), ids=lambda d: d.name)
def test_every_student_fits_its_budget_and_learns(design) -> None:
    model = build_student(design, MODS, seed=0)
    assert 4 * count_params(model) <= design.budget_bytes
    assert model.modalities == list(design.modalities)
    inputs = batch(model)
    assert model(inputs).shape == (3, 10)
    assert_every_parameter_learns(model, inputs)


def test_teacher_learns_and_answers_with_a_modality_missing() -> None:
    model = teacher(model_inputs(MODS, teacher_specs(MODS, ["image", "audio"]), "teacher"))
    inputs = batch(model)
    assert_every_parameter_learns(model, inputs)
    model.eval()
    only_audio = model({"audio": inputs["audio"]})
    masked = model(inputs, present={"image": torch.zeros(3), "audio": torch.ones(3)})
    assert torch.allclose(only_audio, masked, atol=1e-5)
    with pytest.raises(ValueError, match="no input for any of this model's modalities"):
        model({"sensor": torch.zeros(1)})


def test_teachers_may_see_a_cheaper_input_than_full_resolution() -> None:
    assert teacher_specs(MODS, ["image", "audio"]) == {"image": MODS["image"].spec(0), "audio": MODS["audio"].spec(0)}
    cheaper = teacher_specs(MODS, ["image", "audio"], {"audio": 1})
    assert cheaper == {"image": MODS["image"].spec(0), "audio": MODS["audio"].spec(1)}
    assert cheaper["audio"].n_mels < MODS["audio"].spec(0).n_mels
    model = teacher(model_inputs(MODS, cheaper, "teacher"))
    assert model(batch(model)).shape == (3, 10)
    assert teacher_specs(MODS, ["image"], {"audio": 1}) == {"image": MODS["image"].spec(0)}  # a run without audio ignores its level
    with pytest.raises(ConfigError, match=r"teacher.level.audio 9: audio has levels 0-3 \(data.options.audio.levels\)"):
        teacher_specs(MODS, ["audio"], {"audio": 9})


def test_teacher_width_is_one_number_or_one_per_modality() -> None:
    inputs = model_inputs(MODS, teacher_specs(MODS, ["image", "audio"]), "teacher")

    def first_convs(model) -> dict[str, int]:
        return {m: enc.body[1][0].out_channels for m, enc in model.encoders.items()}

    assert first_convs(teacher(inputs, 8)) == {"image": 8, "audio": 8}
    per_modality = teacher(inputs, {"image": 16}, depth={"audio": 2})
    assert first_convs(per_modality) == {"image": 16, "audio": 32}  # 32 where none is given
    rebuilt = build(per_modality.arch)  # a checkpoint rebuilds the same network from its arch
    assert count_params(rebuilt) == count_params(per_modality) < count_params(teacher(inputs, depth={"audio": 2}))


def test_widest_student_is_the_widest_that_fits() -> None:
    inputs = model_inputs(MODS, {"audio": MODS["audio"].spec(2)}, "student")
    model = widest_student(inputs, 16 * 1024)  # a budget that binds below the width cap of 8
    assert model is not None and model.arch["kwargs"]["width"] < 8.0 and 4 * count_params(model) <= 16 * 1024
    wider = MODELS.create("student", inputs, width=model.arch["kwargs"]["width"] + 1 / 8)  # the next step
    assert 4 * count_params(wider) > 16 * 1024
    capped = widest_student(inputs, 1 << 30)  # a budget that does not bind: the cap
    assert capped is not None and capped.arch["kwargs"]["width"] == 8.0
    assert widest_student(inputs, 100) is None
    torch.manual_seed(3)
    searched = widest_student(inputs, 16 * 1024)
    torch.manual_seed(3)
    direct = MODELS.create("student", inputs, width=searched.arch["kwargs"]["width"])
    # the search draws nothing: the seed alone sets the weights
    assert all(torch.equal(a, b) for a, b in zip(searched.state_dict().values(), direct.state_dict().values()))


def test_aligned_students_round_every_layer_and_keep_the_budget() -> None:
    inputs = model_inputs(MODS, {m: MODS[m].spec(1) for m in MODS}, "student")
    plain, aligned = widest_student(inputs, 1 << 20, depth=3), widest_student(inputs, 1 << 20, depth=3, channel_multiple=8)
    channels = [c for e in aligned.encoders.values() for c in e.structure()["channels"]]
    assert all(c % 8 == 0 for c in channels), channels
    assert [c for e in plain.encoders.values() for c in e.structure()["channels"]] != channels  # 63, 126, 252: not aligned by themselves
    assert 4 * count_params(aligned) <= 1 << 20 and count_params(aligned) >= 0.99 * count_params(plain)
    width = aligned.arch["kwargs"]["width"]
    assert 4 * count_params(MODELS.create("student", inputs, width=width + 1 / 64, depth=3, channel_multiple=8)) > 1 << 20  # the widest aligned one
    assert [e.structure()["channels"] for e in build(aligned.arch).encoders.values()] == [e.structure()["channels"] for e in aligned.encoders.values()]
    with pytest.raises(ConfigError, match="channel_multiple must be >= 1"):
        TierConfig("high", 1 << 20, channel_multiple=0)


def test_arch_record_rebuilds_the_same_model() -> None:
    model = build_student(all_designs()[0], MODS, seed=0)
    clone = build(model.arch)
    clone.load_state_dict(model.state_dict())
    inputs = batch(model)
    model.eval()
    clone.eval()
    assert torch.equal(model(inputs), clone(inputs))


@pytest.mark.parametrize("name", [n for n in MODELS.names() if n not in ("teacher", "student", "linear_fusion")])  # the rest are encoders
def test_every_registered_encoder_maps_features_to_embeddings(name: str) -> None:
    encoder = MODELS.create(name, (1, 24, 24))
    fmap = encoder.forward_features(torch.randn(2, 1, 24, 24))
    assert fmap.dim() == 4 and encoder.forward_head(fmap).shape == (2, encoder.embed_dim)


def test_a_sequence_input_is_halved_along_its_length_with_kernels_on_its_rows() -> None:
    from racmkd.models.encoders import CNN2dEncoder, DSCNN2dEncoder
    from racmkd.models.multimodal import pin_structure, student

    trajectory = (3, 1, 32)  # pen: x, y, pen down over 32 points
    shallow, deep = DSCNN2dEncoder(trajectory, depth=1), DSCNN2dEncoder(trajectory, depth=3)
    assert deep.forward_features(torch.zeros(2, *trajectory)).shape == (2, 32, 1, 4)  # 32 -> 16 (stem) -> 8 -> 4
    assert count_params(deep) > count_params(shallow)  # (judged by its height of 1, it had no stage whatever its depth)
    convs = [m for m in deep.modules() if isinstance(m, torch.nn.Conv2d)]
    assert {m.kernel_size for m in convs} == {(1, 3), (1, 1)}  # no weight spent on padding rows
    assert CNN2dEncoder(trajectory).forward_features(torch.zeros(2, *trajectory)).shape == (2, 128, 1, 4)
    aggregated = DSCNN2dEncoder((3, 2, 8), depth=1)  # statistics x windows: 3x3 kernels mix the two rows
    assert aggregated.forward_features(torch.zeros(2, 3, 2, 8)).shape[2:] == (2, 4)
    for short in ((3, 1, 4), (3, 2, 4), (3, 2, 2)):  # too short to halve: one stage that keeps its size, its depth counted
        one, three = DSCNN2dEncoder(short, depth=1), DSCNN2dEncoder(short, depth=3)
        assert three.forward_features(torch.zeros(2, *short)).shape[2:] == short[1:] and count_params(three) > count_params(one), short
    # Images and spectrograms are maps, as before: their shorter side sets the stages.
    assert DSCNN2dEncoder((1, 64, 32)).forward_features(torch.zeros(1, 1, 64, 32)).shape[2:] == (8, 4)
    # A model whose input is reduced after training keeps its kernels and strides: rebuilt, its weights
    # fit, and it halves the length alone (a square stride would read one row of two).
    model = student({"pen": {"encoder": "dscnn2d", "shape": [3, 1, 16]}}, width=1.0, depth=1)
    model.arch = pin_structure(model)
    model.arch["kwargs"]["inputs"]["pen"]["shape"] = [3, 1, 4]  # 16 windows -> 4: no longer longer than 4
    rebuilt = build(model.arch)
    rebuilt.load_state_dict(model.state_dict())
    strides = lambda m: [c.stride for c in m.modules() if isinstance(c, torch.nn.Conv2d)]  # noqa: E731
    assert strides(rebuilt) == strides(model) and (1, 2) in strides(rebuilt)
    # A plan pinned before kernels and strides were (an older checkpoint) rebuilds as it was built: square.
    legacy = DSCNN2dEncoder((1, 3, 32), channels=[8, 16], stem_stride=1)
    assert {c.kernel_size for c in legacy.modules() if isinstance(c, torch.nn.Conv2d)} == {(3, 3), (1, 1)} and (2, 2) in strides(legacy)
