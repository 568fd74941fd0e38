"""Compression recipes: registered steps chained from a values-only YAML file.

    # configs/recipes/default.yaml
    steps:
      - prune: {ratio: 0.5, steps: 2}
      - qat: {epochs: 1}
      - export: {int8: static}

Every step is measured before and after (params, fp32 bytes, FLOPs, validation accuracy, input
values) and its own details are logged; the log, the artifacts and the chosen deployable model
land in one folder. A recipe is checked whole before any step runs: an unknown step or option, a
step order that would undo work, or a budget the model cannot reach is an error naming the file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from racmkd.compress.inputs import input_values
from racmkd.compress.steps import Context, Step, Subject, val_accuracy
from racmkd.config import ConfigError, from_dict, read_yaml_mapping, to_dict
from racmkd.measure.cost import count_flops
from racmkd.registry import COMPRESSORS
from racmkd.utils import progress


class RecipeError(ConfigError):
    """A recipe file is malformed or cannot be applied; the message names the file and the fix."""


@dataclass(frozen=True)
class Recipe:
    """A validated sequence of compression steps."""

    source: str
    steps: tuple[tuple[str, Step], ...]

    def describe(self) -> list[dict[str, Any]]:
        return [{name: to_dict(step.options)} for name, step in self.steps]


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file."""
    try:
        data = read_yaml_mapping(path, "Name a recipe file; configs/recipes/ holds examples.")
    except ConfigError as err:
        raise RecipeError(str(err)) from None
    return parse_recipe(data, str(path))


def step_error(source: str, where: str, name: str, err: Exception) -> RecipeError:
    """A step's error with the recipe file and the step's place in it. A step's own message starts
    with the step's name where it is raised alone; said once (`steps[0].inputs: inputs: ...` read twice)."""
    message = str(err)
    return RecipeError(f"{source}: {where}: {message.removeprefix(f'{name}: ')}")


def parse_recipe(data: Any, source: str = "recipe") -> Recipe:
    """Validate plain recipe values: {"steps": [{name: {options}} or name, ...]}."""
    if not isinstance(data, dict) or set(data) != {"steps"} or not isinstance(data["steps"], list) or not data["steps"]:
        raise RecipeError(f"{source}: expected a mapping with one key, steps, holding a non-empty list of steps")
    steps = []
    for i, entry in enumerate(data["steps"]):
        if isinstance(entry, str):
            entry = {entry: {}}
        if not isinstance(entry, dict) or len(entry) != 1:
            raise RecipeError(f"{source}: steps[{i}]: expected one step name with its options, e.g. `- prune: {{ratio: 0.5}}`")
        ((name, options),) = entry.items()
        try:
            step_cls = COMPRESSORS.get(str(name))
        except KeyError as err:  # (it names the close matches and every known step)
            raise RecipeError(f"{source}: steps[{i}]: {err.args[0]}") from None
        try:
            # Only a step written alone (`- prune` or `- prune:`) takes every default: `- prune: []` or
            # `- prune: false` is a mistake, not "the defaults" (read as such before).
            given = {} if options is None else options
            steps.append((name, step_cls(from_dict(step_cls.options_type, given, where=f"steps[{i}].{name}", source=source))))
        except ConfigError as err:
            raise RecipeError(str(err)) from None
        except ValueError as err:  # an option's own check
            raise step_error(source, f"steps[{i}].{name}", name, err) from None
    names = [n for n, _ in steps]
    refining = {n for n, step in steps if step.refines_weights}  # (they retrain float weights)
    if names.count("export") != 1 or names[-1] != "export":
        raise RecipeError(f"{source}: a recipe ends with exactly one export step (it writes the deployable model); got {names}")
    after_lowrank = names[names.index("lowrank") :] if "lowrank" in names else []
    if "prune" in after_lowrank:
        raise RecipeError(f"{source}: prune after lowrank would cut factorised layers; prune first, then factorise")
    if "align" in after_lowrank:
        raise RecipeError(
            f"{source}: align after lowrank would leave the factorised layers unaligned (their rank was chosen, not their channels); align first, then factorise"
        )
    if names.count("qat") > 1:
        raise RecipeError(f"{source}: qat {names.count('qat')} times: each would round the weights the one before trained; keep one")
    if "qat" in names and any(n in refining for n in names[names.index("qat") :]):
        raise RecipeError(
            f"{source}: {[n for n in names[names.index('qat') :] if n in refining]} after qat would retrain the weights in float and undo it; put qat last before export"
        )
    if "equalize" in names and any(n in refining for n in names[names.index("equalize") :]):
        raise RecipeError(
            f"{source}: {[n for n in names[names.index('equalize') :] if n in refining]} after equalize would retrain the balanced weights in float; put equalize after them"
        )
    # Equalizing scales a layer's input channels, which moves its weights off the grid a QAT for the
    # weights-only files (activations: false) trained them onto; an int8 QAT's grid is the int8
    # graph's, which the weights-only files do not keep (after it, equalize measured better than
    # before it).
    for_weights_only = [i for i, (n, step) in enumerate(steps) if n == "qat" and not step.options.activations]
    if for_weights_only and any(n == "equalize" for n in names[for_weights_only[0] :]):
        raise RecipeError(
            f"{source}: equalize after a qat with activations: false (for the weights-only files) would move the weights off the grid that qat trained them for; put equalize before it"
        )
    return Recipe(source, tuple(steps))


def measure(subject: Subject, ctx: Context) -> dict[str, Any]:
    """What every step is judged by: size, arithmetic, inputs and validation accuracy."""
    from racmkd.compress.prune import example_inputs

    params = sum(p.numel() for p in subject.model.parameters())
    one = {m: x[:1] for m, x in example_inputs(subject.model).items()}
    return {
        "params": params,
        "param_bytes_fp32": 4 * params,
        "flops": count_flops(subject.model.eval(), one),
        "input_values": input_values(ctx.dataset.modalities, subject.specs),
        "val_accuracy": val_accuracy(subject, ctx),
    }


def check_recipe(recipe: Recipe, subject: Subject, ctx: Context) -> None:
    """Every step's own check, before anything runs, on the inputs the steps before it leave (an
    `inputs` step that shrinks the mel bands before a `bands` step: the band count is checked on
    the shrunk input, not found wrong after the first step's fine-tune); a check that reads the
    model's layers only while no earlier step has changed them (a budget the pruned model meets may
    be out of the unpruned one's reach: that step checks itself when it runs). `subject` is left as
    it is."""
    changed = False
    seen = replace(subject)  # the subject as the steps so far leave it: its specs move on
    for i, (name, step) in enumerate(recipe.steps):
        try:
            if not (changed and step.checks_structure):
                step.check(seen, ctx)
            seen.specs = step.specs_after(seen, ctx)
        except ValueError as err:
            raise step_error(recipe.source, f"steps[{i}].{name}", name, err) from None
        changed = changed or step.changes_structure


def run_recipe(recipe: Recipe, subject: Subject, ctx: Context) -> list[dict[str, Any]]:
    """Apply the steps in order; returns the step log (each with before, after, details, seconds)."""
    check_recipe(recipe, subject, ctx)
    log = []
    state = measure(subject, ctx)
    subject.start_accuracy = state["val_accuracy"]
    for name, step in progress(recipe.steps, desc=f"compress {subject.name}", leave=True):
        started = time.perf_counter()
        try:
            details = step.apply(subject, ctx)
        except ValueError as err:
            raise step_error(recipe.source, f"step {name} on {subject.name}", name, err) from None
        after = measure(subject, ctx)
        if name == "export":
            candidate = subject.manifest["candidates"][next(k for k, c in subject.manifest["candidates"].items() if c["path"] == subject.manifest["artifact"])]
            after.update(bytes_deployable=candidate["bytes"], format=subject.manifest["format"], test_accuracy=candidate["parity"]["accuracy"])
        log.append(
            {
                "step": name,
                "options": to_dict(step.options),
                "before": state,
                "after": after,
                "details": details,
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
        state = after
    return log
