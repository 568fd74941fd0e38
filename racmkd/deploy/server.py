"""The tier servers: one FastAPI app, three roles.

    cloud   the fused teacher (PyTorch)                          racmkd serve --role cloud
    fog     the high and medium students (PyTorch)               racmkd serve --role fog
    edge    the resource-aware runtime over a variant bank,      racmkd serve --role edge
            offloading to the fog or cloud when that is better, installing signed OTA updates,
            publishing telemetry over MQTT; numpy and ONNX Runtime only, no torch

Endpoints (every role):
    POST /predict   image and/or audio, as JSON ({"image": [[...]], "audio": [...], "sample_rate":
                    8000}, by default the run's own rate; any other registered modality by its name, as nested lists of numbers) or
                    as an .npz archive (Content-Type application/x-npz, arrays named by modality);
                    sizes, shapes and dtypes are checked, bad requests get 4xx
    GET  /health    role, model, its accuracy (an edge's: its configuration's expected one) and median compute time
    GET  /metrics   Prometheus text: requests, latency histogram, current variant, resources
    GET  /models    what the server can answer with
Edge only, with the management token (Authorization: Bearer <token>):
    POST /deploy    a signed release (manifest, signature, full bytes or a delta)
    POST /rollback  back to the previous release
    GET  /deployment  what is installed
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import io
import json
import logging
import math
import os
import statistics
import threading
import time
import zipfile
import zlib
from collections import deque
from dataclasses import dataclass, replace
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, ValidationError
from typing_extensions import TypeAliasType

from racmkd.config import RunConfig, ServeConfig, modality_options, read_token
from racmkd.data.signals import MIN_RATE, AudioSpec  # (importing the signals registers them)
from racmkd.registry import SIGNALS

if TYPE_CHECKING:
    from racmkd.deploy.device import StoreError

log = logging.getLogger(__name__)
ROLES = ("cloud", "fog", "edge")
NPZ = "application/x-npz"
AUDIO_RATE = AudioSpec().sample_rate  # what the models hear; other rates are resampled


# Another modality's input in JSON: numbers, or lists of them to any depth (strings, booleans and
# nulls inside are refused, as the image's and audio's typed fields refuse them).
Numbers = TypeAliasType("Numbers", Union[StrictFloat, "list[Numbers]"])


class PredictRequest(BaseModel):
    """One sample's raw inputs; any may be missing. Image and audio have their fields; another
    registered modality (a sensor added beside them) comes under its own name as nested lists of
    numbers (a name no modality has is an error, not ignored: `refuse_unknown_inputs`)."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, list[Numbers] | None] = Field(init=False)

    image: list[list[StrictFloat]] | None = Field(None, description="28x28 grey image: whole numbers 0-255, or fractions in [0, 1]")
    audio: list[StrictFloat] | None = Field(None, description="mono waveform: samples in [-1, 1], or int16 PCM as whole numbers (-32768 to 32767)")
    # (the signals take up to MAX_RATE; a request's size limit is set for 192 kHz)
    sample_rate: StrictInt | None = Field(None, ge=MIN_RATE, le=192000, description="Hz of `audio`; default: the rate the served models hear")
    latency_target_ms: StrictFloat | None = Field(None, gt=0, allow_inf_nan=False, description="this request's latency target (edge: decides offloading)")
    model: str | None = Field(None, description="which of the server's models answers (see /models)")


class PredictResponse(BaseModel):
    label: int
    probabilities: list[float]
    served_by: str
    model: str
    variants: list[str] = []
    compute_ms: float
    offloaded: bool = False
    route: str = "local"
    fallbacks: list[str] = []
    # An upstream was tried and failed, the answer is this server's: the time waited on it is in
    # latency_ms, not compute_ms (a failed offload read as a local answer of 1 ms, the client having waited 163).
    offload_failed: bool = False
    latency_ms: float | None = None  # from the request's arrival here to its answer


class Inputs:
    """A parsed, checked request; when it arrived (time.monotonic: its latency target counts from
    then) and, for one another server forwarded, by when its answer is of use to that one (None: a
    client's own)."""

    def __init__(self, arrays: dict[str, np.ndarray | None], sample_rate: int, target_ms: float | None, model: str | None) -> None:
        self.arrays, self.sample_rate, self.target_ms, self.model = arrays, sample_rate, target_ms, model
        self.arrived = time.monotonic()
        self.forwarded_until: float | None = None

    def received(self, arrived: float, forwarded_ms: str | None) -> Inputs:
        """Note when the request arrived and what is left of a forwarding server's budget for it
        (FORWARDED_HEADER's value; one that does not parse counts as none left)."""
        self.arrived = arrived
        if forwarded_ms is not None:
            try:
                left = float(forwarded_ms)
            except ValueError:
                left = 0.0
            self.forwarded_until = arrived + (left / 1e3 if math.isfinite(left) else 0.0)
        return self

    def raws(self, uses: list[str] | None = None) -> dict[str, Any]:
        """Every array the request brought, by modality, as a predictor or the runtime takes them
        (JSON images back to uint8: `_image_for`); only those in `uses` if given."""
        return {m: _image_for(a) if m == "image" else a for m, a in self.arrays.items() if uses is None or m in uses}


META = ("sample_rate", "latency_target_ms", "model")  # the request's settings, beside its arrays


def parse_request(
    body: bytes, content_type: str, settings: ServeConfig, modalities: list[str], audio_rate: int = AUDIO_RATE, raw_specs: dict[str, Any] | None = None
) -> Inputs:
    """JSON or .npz into arrays; raises HTTPException (413, 415, 422) with a message on bad input.
    Inputs the server's models do not use are checked and ignored, as a model ignores them. Audio
    without a sample_rate is at `audio_rate`, the rate the served models hear (8000 was assumed:
    a 16-kHz run's audio was resampled as if it were 8 kHz). Each input is checked against
    `raw_specs`, the served models' spec of its modality (its signal's default spec where they
    give none): against the default, a run's own pen traces of 64 samples were refused as not 32.
    An input of a modality none of them reads is only checked to hold finite numbers: its shape is
    the sender's business (a device with a pen of 64 samples, talking to a server that reads images
    and audio, had every request refused for its pen's shape)."""
    if len(body) > settings.max_body_bytes:
        raise HTTPException(413, f"request body of {len(body):,} bytes exceeds the limit of {settings.max_body_bytes:,}")
    kind = content_type.split(";")[0].strip().lower()
    if kind == NPZ:
        arrays, meta = read_npz(body, settings)
        request = validated({k: meta[k] for k in META if k in meta}, where="the archive's settings are invalid")
    elif kind in ("application/json", ""):
        request = validated(body or b"{}", where="invalid JSON request")
        extra = request.model_extra or {}  # another modality's nested lists of numbers (the schema checked them)
        refuse_unknown_inputs(extra, "inputs")
        try:
            with np.errstate(over="ignore"):  # beyond float32's range becomes infinite: refused by the signals' checks below
                arrays = {m: np.asarray(v, dtype=np.float32) for m, v in {"image": request.image, "audio": request.audio, **extra}.items() if v is not None}
            if "audio" in arrays:  # (an .npz's arrays keep the type they were sent with)
                arrays["audio"] = _audio_for(arrays["audio"])
        except ValueError as err:  # ragged lists
            raise HTTPException(422, f"an input is not a rectangular array ({err})") from None
    else:
        raise HTTPException(415, f"unsupported Content-Type {kind!r}; send application/json or {NPZ}")
    sample_rate = request.sample_rate if request.sample_rate is not None else audio_rate
    target, model_name = request.latency_target_ms, request.model
    for name, array in arrays.items():  # (names are known by now: the JSON schema and read_npz checked them)
        if array.dtype.kind not in "iuf":
            raise HTTPException(422, f"{name}: expected numbers, got dtype {array.dtype}")
    audio = arrays.get("audio")
    if audio is not None and audio.size > settings.max_audio_seconds * sample_rate:
        raise HTTPException(413, f"audio: {audio.size} samples exceed {settings.max_audio_seconds:g} s at {sample_rate} Hz")
    for name, array in arrays.items():  # shapes, finiteness (as float32) and ranges of the inputs the served models read
        if name not in modalities:
            with np.errstate(over="ignore"):
                if array.dtype.kind == "f" and not np.isfinite(array.astype(np.float32)).all():
                    raise HTTPException(422, f"{name}: holds NaN or infinite values (or values beyond float32's range)")
            continue
        signal, spec = input_checker(name)
        spec = (raw_specs or {}).get(name) or spec
        if isinstance(spec, AudioSpec) and array.size > spec.samples:  # (placing a longer clip's window is the answer's: searched here, it was thrown away)
            spec = replace(spec, samples=array.size)
        try:  # at the native rate: the shape and values are what is checked here, the answer resamples
            signal.to_raw(_image_for(array) if name == "image" else array, spec)
        except (ValueError, TypeError) as err:
            raise HTTPException(422, str(err)) from None
    used = {m: arrays[m] for m in modalities if m in arrays}
    if not used:
        brought = f"; the request brought only {', '.join(sorted(arrays))}" if arrays else ""
        raise HTTPException(422, f"no input: send {' and/or '.join(modalities)}{brought}")
    return Inputs({m: used.get(m) for m in modalities}, sample_rate, target, model_name)


@functools.cache
def input_checker(name: str) -> tuple[Any, Any]:
    """A modality's signal and default spec, whose `to_raw` checks a request's input of it (made
    once: this is on every request's path)."""
    signal = SIGNALS.create(name)
    return signal, signal.spec_type()


def refuse_unknown_inputs(names: Iterable[str], what: str) -> None:
    """Inputs are named by a registered modality (or are a request setting): any other name is an
    error, not ignored."""
    unknown = sorted(n for n in names if n not in SIGNALS and n not in META)
    if unknown:
        raise HTTPException(422, f"unknown inputs {unknown[:10]}; {what} are named by modality ({', '.join(SIGNALS.names())}) or {', '.join(META)}")


def validated(values: bytes | dict[str, Any], where: str) -> PredictRequest:
    """The request's fields checked by the one schema, whether they came as JSON or in an archive.
    An unknown name is said to be unknown first (`{"foo": 1}` read "foo: Input should be a valid
    array", as if foo were an input of the wrong type)."""
    try:
        return PredictRequest.model_validate_json(values) if isinstance(values, bytes) else PredictRequest.model_validate(values)
    except ValidationError as err:
        refuse_unknown_inputs({str(e["loc"][0]) for e in err.errors() if e["loc"] and e["loc"][0] not in PredictRequest.model_fields}, "inputs")
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in err.errors()[:5])
        raise HTTPException(422, f"{where}: {problems}") from None


def read_npz(body: bytes, settings: ServeConfig) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """An .npz body's arrays (by modality) and settings (single values). The archive's table of
    contents is checked before anything is decompressed: only known names, each within the size
    limit and all of them together too (a few KB of compressed zeros can unpack to gigabytes), and
    each member is inflated no further than the size listed there (`member_bytes`).
    The zip's directory is read with zipfile, its members by `member_bytes` and `read_npy`: np.load's
    answer at a third of its cost or less (100-145 vs 410-460 us for an image and a second of audio
    on a 2-core host), which matters on the edge, where the handler's own time is what serving adds
    to a request."""
    limit = 8 * int(settings.max_audio_seconds * 192000) + 2**16  # the largest array a request may hold, decompressed
    try:
        with zipfile.ZipFile(io.BytesIO(body)) as archive:
            members = archive.infolist()
            names = [m.filename.removesuffix(".npy") for m in members]
            refuse_unknown_inputs(names, "arrays")
            if len(names) != len(set(names)):
                raise HTTPException(422, "the archive holds an array twice")
            for member in members:
                if member.file_size > limit:
                    raise HTTPException(413, f"{member.filename}: {member.file_size:,} bytes once decompressed, more than {limit:,}")
            total = sum(m.file_size for m in members)
            if total > limit + 2**16:
                raise HTTPException(413, f"the archive holds {total:,} bytes once decompressed, more than {limit + 2**16:,}")
            not_arrays = sorted(m.filename for m in members if not m.filename.endswith(".npy"))
            if not_arrays:
                raise HTTPException(422, f"{', '.join(not_arrays)}: not .npy arrays (write the archive with np.savez)")
            items = {name: read_npy(member_bytes(body, member)) for name, member in zip(names, members)}
    except HTTPException:
        raise
    except Exception as err:  # noqa: BLE001 - zipfile and numpy raise many kinds on garbage
        raise HTTPException(422, f"body is not a readable .npz archive ({type(err).__name__}: {err})"[:300]) from None
    meta: dict[str, Any] = {}
    for key in META:
        if key in items:
            value = items.pop(key)
            if value.size != 1:
                raise HTTPException(422, f"{key} must be a single value, got shape {value.shape}")
            meta[key] = value.item()
    return items, meta


def member_bytes(body: bytes, member: zipfile.ZipInfo) -> memoryview | bytes:
    """A zip member's content, checked against its CRC, found from its local header: a stored
    member (np.savez's) as a view of the body, a deflated one (np.savez_compressed's) inflated to
    its listed size and no further. zipfile's own read inflated a member whole before cutting it to
    the size the sender listed: a 1.7-KB bzip2 body took an edge server to 4.4 GB, a 3.9-MB deflate
    one 2 GB further. Other compressions (bzip2, LZMA: numpy writes neither) are refused."""
    if member.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise ValueError(f"{member.filename}: compression type {member.compress_type}; write the archive with np.savez or np.savez_compressed")
    at = member.header_offset
    if body[at : at + 4] != b"PK\x03\x04":
        raise ValueError(f"{member.filename}: no local header where the zip's directory says")
    start = at + 30 + int.from_bytes(body[at + 26 : at + 28], "little") + int.from_bytes(body[at + 28 : at + 30], "little")
    if member.compress_type == zipfile.ZIP_STORED:
        data: memoryview | bytes = memoryview(body)[start : start + member.file_size]
    else:
        inflate = zlib.decompressobj(-zlib.MAX_WBITS)  # (raw deflate, as zip stores it)
        data = inflate.decompress(memoryview(body)[start : start + member.compress_size], member.file_size + 1)
        if len(data) > member.file_size or not inflate.eof:
            raise ValueError(f"{member.filename}: inflates past the {member.file_size:,} bytes the zip's directory lists")
    if len(data) != member.file_size or zlib.crc32(data) != member.CRC:
        raise ValueError(f"{member.filename}: damaged (its bytes do not match the zip's CRC)")
    return data


def read_npy(data: bytes | memoryview) -> np.ndarray:
    """One .npy file's array, as np.load reads it (numbers only: pickled objects are refused), as a
    read-only view of `data`, with its header parsed once per distinct header (see npy_header)."""
    shape, fortran_order, dtype, offset = npy_header(bytes(data[: npy_header_end(data)]))  # (bytes: the cache must not hold the request)
    array = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=offset)
    return array.reshape(shape[::-1]).T if fortran_order else array.reshape(shape)


def npy_header_end(data: bytes) -> int:
    """Where an .npy file's header ends: the magic string, the format version, the header's length
    (2 bytes in version 1, 4 in version 2) and the header itself."""
    if data[:6] != b"\x93NUMPY" or len(data) < 12:
        raise ValueError("not an .npy file (no magic string)")
    if data[6] == 1:
        return 10 + int.from_bytes(data[8:10], "little")
    if data[6] == 2:
        return 12 + int.from_bytes(data[8:12], "little")
    raise ValueError(f".npy format version {data[6]}.{data[7]} (structured arrays) is not taken; send plain number arrays")


@functools.lru_cache(maxsize=256)
def npy_header(header: bytes) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """Shape, order, dtype and data offset of an .npy header, as numpy's reader parses them. Cached:
    clients send the same few headers again and again, and numpy parses each with
    ast.literal_eval (40 us per array on a 2-core host)."""
    stream = io.BytesIO(header)
    version = np.lib.format.read_magic(stream)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read(stream)
    if dtype.hasobject:
        raise ValueError("the array holds Python objects (pickled); send numbers")
    return shape, fortran_order, dtype, len(header)


def _audio_for(array: np.ndarray | None) -> np.ndarray | None:
    """JSON numbers come as floats: a waveform of whole numbers beyond [-1, 1] and within int16's
    range is int16 PCM written out, scaled as int16 is. Read as float samples, 90 dB below full
    scale in int16 (a range of a few units) passed as a live recording where the same samples sent
    as int16 were refused as silent; anything else stays as it came (floats in [-1, 1])."""
    if array is None or array.size == 0 or array.dtype.kind != "f":
        return array
    low, high = float(array.min()), float(array.max())
    if max(-low, high) > 1.0 and low >= -32768 and high <= 32767 and np.all(array == np.round(array)):
        return array.astype(np.int16)
    return array


def _image_for(array: np.ndarray | None) -> np.ndarray | None:
    """JSON numbers come as floats: 0-255 images go back to uint8 so the predictor scales them (any
    other image stays as it came, for the predictor's checks: a negative pixel must not wrap to 255)."""
    if array is None or array.size == 0:
        return array
    if array.dtype.kind == "f" and array.max() > 1.0 and array.min() >= 0 and np.all(array == np.round(array)) and array.max() <= 255:
        return array.astype(np.uint8)
    return array


# Services: what each role answers with ------------------------------------------------------------------


def run_audio_rate(cfg: RunConfig) -> int:
    """The sample rate a run's models hear (data.options.audio.sample_rate, its default the audio options')."""
    return int(modality_options().get("audio")(**cfg.data.options.get("audio", {})).sample_rate)


class Service:
    """A role's models behind /predict, /health and /models."""

    role = "base"

    def __init__(self, audio_rate: int = AUDIO_RATE) -> None:
        self.compute_ms: deque[float] = deque(maxlen=500)
        self.audio_rate = audio_rate  # what the served models hear: a request's audio without a sample_rate is at it

    def modalities(self) -> list[str]:
        raise NotImplementedError

    def raw_specs(self) -> dict[str, Any]:
        """The served models' spec of each modality they read, which a request's raw inputs are
        checked against (their raw forms agree across a run's models: sample rate, samples)."""
        return {}

    def answer(self, inputs: Inputs, body: bytes, content_type: str) -> PredictResponse:
        """The answer to one request; may block (network, long compute): the app runs it in a worker thread."""
        raise NotImplementedError

    def answer_now(self, inputs: Inputs) -> PredictResponse | None:
        """The answer, when it is quick to compute and waits on nothing (the app then computes it on
        its event loop, without a worker thread's hand-over); None when `answer` must run instead."""
        return None

    def target_ms(self, inputs: Inputs) -> float | None:
        """The latency target a request is answered against (None: none known here)."""
        return inputs.target_ms

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError

    def compute_ms_p50(self) -> float | None:
        return statistics.median(self.compute_ms) if self.compute_ms else None

    @staticmethod
    def give_up_if_late(inputs: Inputs, expected_ms: float) -> None:
        """GivenUp for a forwarded request whose answer, `expected_ms` from now, would come after
        its forwarding server gives up on it: started all the same, 19 of the 62 answers a loaded
        fog computed for requests its edge had answered itself meanwhile were begun in time and
        finished late."""
        if inputs.forwarded_until is None:
            return
        left_ms = (inputs.forwarded_until - time.monotonic()) * 1e3
        if left_ms < expected_ms:
            raise GivenUp(
                f"the server that forwarded this request gives up on it in {max(left_ms, 0.0):.1f} ms, and its answer here takes about {expected_ms:.1f} ms"
            )

    def close(self) -> None:
        pass


class ModelService(Service):
    """Cloud (the teacher) or fog (students): trained models of a run, PyTorch predictors."""

    def __init__(self, role: str, run_dir: Path, names: list[str], workers: int = 0) -> None:
        from racmkd.config import load_config
        from racmkd.runtime.predictor import load

        cfg = load_config(Path(run_dir) / "config.yaml")
        super().__init__(run_audio_rate(cfg))
        self.role, self.run_dir = role, Path(run_dir)
        self.predictors = {n: load(run_dir, n) for n in names}
        # each modality's spec from the first model that reads it (the raw forms agree across a run's models)
        self.specs = {m: spec for p in reversed(self.predictors.values()) for m, spec in p.specs.items()}
        self.inputs = list(cfg.data.modalities)  # a model ignores those it does not use
        self.accuracy = report_accuracies(self.run_dir, names)
        self.default = names[0]
        # Answers computed at once, at most (serve.compute_workers; 0: one per core this process may
        # use); the others wait their turn. All at once on the server's worker threads, a loaded
        # fog's answers shared the cores and held the GIL in turn, each taking ~60 ms against 5.
        if workers <= 0:
            from racmkd.resources.sources import allowed_cpus

            cores = os.cpu_count() or 1
            workers = len(allowed_cpus(cores) or range(cores))
        self.workers = workers
        self._computing = threading.Semaphore(self.workers)
        # each model's own compute times, for giving a forwarded request up (one median over all
        # of them, a 40 ms model's, gave up every request for a 3.5 ms one with 25 ms left)
        self.model_ms: dict[str, deque[float]] = {n: deque(maxlen=100) for n in names}

    def modalities(self) -> list[str]:
        return self.inputs

    def raw_specs(self) -> dict[str, Any]:
        return self.specs

    def answer(self, inputs: Inputs, body: bytes, content_type: str) -> PredictResponse:
        name = inputs.model or self.default
        if name not in self.predictors:
            raise HTTPException(422, f"model {name!r} is not served here; choose one of {', '.join(self.predictors)}")
        expected_ms = statistics.median(self.model_ms[name]) if self.model_ms[name] else 0.0
        # (a forwarded request waits for its turn only while its answer could still come in time)
        wait_s = None if inputs.forwarded_until is None else min(max(inputs.forwarded_until - time.monotonic() - expected_ms / 1e3, 0.0), threading.TIMEOUT_MAX)
        if not self._computing.acquire(timeout=wait_s):  # (only a forwarded request's wait ends)
            raise GivenUp(f"no compute worker came free (serve.compute_workers={self.workers}) in the {wait_s * 1e3:.1f} ms its forwarder's deadline left it")
        try:
            self.give_up_if_late(inputs, expected_ms)
            started = time.perf_counter()
            try:
                label, probs = self.predictors[name].predict(**inputs.raws(), sample_rate=inputs.sample_rate)
            except (ValueError, TypeError) as err:
                raise HTTPException(422, str(err)) from None
        finally:
            self._computing.release()
        ms = (time.perf_counter() - started) * 1e3
        self.compute_ms.append(ms)
        self.model_ms[name].append(ms)
        return PredictResponse(label=label, probabilities=probs.tolist(), served_by=self.role, model=name, compute_ms=ms)

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.default,
            "accuracy": self.accuracy.get(self.default),
            "models": [{"name": n, "uses": p.modalities, "test_accuracy": self.accuracy.get(n)} for n, p in self.predictors.items()],
        }


def report_accuracies(run_dir: Path, names: list[str]) -> dict[str, float | None]:
    """The served models' test accuracies from the run's report.json, for /health and /models (an
    edge weighs an upstream's when it offloads). They only inform: a report that is missing,
    unreadable or whose row is not a model's measurements leaves that accuracy unknown (None), with a
    warning naming the file, and the models serve. Read raw, a truncated report stopped the server
    with a JSON error naming no file, and a row that was a number with an AttributeError."""
    from racmkd.runs import RunError, read_report

    path = Path(run_dir) / "report.json"
    if not path.is_file():
        return dict.fromkeys(names)
    try:
        models = read_report(run_dir)["models"]
    except (RunError, OSError) as err:
        log.warning("%s; the served models' accuracies are unknown until it is", err)
        return dict.fromkeys(names)
    accuracies: dict[str, float | None] = {}
    for name in names:
        row = models.get(name)
        accuracy = row.get("accuracy") if isinstance(row, dict) else None
        if isinstance(accuracy, (int, float)) and not isinstance(accuracy, bool) and math.isfinite(accuracy) and 0 <= accuracy <= 1:
            accuracies[name] = float(accuracy)
            continue
        accuracies[name] = None
        if row is not None:
            log.warning(
                "%s: models.%s is %r, not a model's measurements with an accuracy in [0, 1]; its accuracy is unknown (measure the run again with `racmkd evaluate --run %s`)",
                path,
                name,
                row if not isinstance(row, dict) else {"accuracy": accuracy},
                run_dir,
            )
    return accuracies


@dataclass(frozen=True)
class Engine:
    """What the edge serves with: an EdgeRuntime over a bank, or one ONNX model; swapped whole."""

    runtime: Any
    label: str
    accuracy: float | None  # of a single ONNX model (its release's metrics); a runtime knows its own
    sha256: str | None = None  # of the installed release it serves; None: the run's own bank

    @functools.cached_property  # (read twice on every request)
    def adaptive(self) -> bool:
        from racmkd.runtime.edge import EdgeRuntime

        return isinstance(self.runtime, EdgeRuntime)

    def modalities(self) -> list[str]:
        return list(self.runtime.modalities) if self.adaptive else list(self.runtime.specs)

    @functools.cached_property
    def raw_specs(self) -> dict[str, Any]:
        """Its spec of each modality it reads, which requests are checked against."""
        specs = self.runtime.raw_specs if self.adaptive else self.runtime.specs
        return {m: spec for m, spec in specs.items() if spec is not None}

    @functools.cached_property
    def classes(self) -> int | None:
        """How many classes it tells apart (an upstream's answer must have as many); None when an
        ONNX model's graph does not say."""
        if self.adaptive:
            return int(next(iter(self.runtime.bank.biases.values())).size)
        last = self.runtime.session.get_outputs()[0].shape[-1]
        return last if isinstance(last, int) else None

    def close(self) -> None:
        if self.adaptive:
            self.runtime.close()


class EdgeService(Service):
    """The resource-aware runtime, offloading, OTA updates and telemetry."""

    role = "edge"

    def __init__(self, cfg: RunConfig, run_dir: Path, settings: ServeConfig, monitor: Any | None = None) -> None:
        from racmkd.deploy.offload import CircuitBreaker, Upstream
        from racmkd.resources.monitor import ResourceMonitor
        from racmkd.resources.sources import SystemSource

        broker_login = None
        if settings.mqtt_host:  # read first: a login the environment gets wrong is refused before anything starts
            from racmkd.deploy.telemetry import BrokerLogin

            broker_login = BrokerLogin.from_environment()
        super().__init__(run_audio_rate(cfg))
        self.cfg, self.run_dir, self.settings = cfg, Path(run_dir), settings
        self.monitor = monitor or ResourceMonitor(SystemSource(), cfg.runtime.monitor).start()
        self.store = self._store()
        self._updating = threading.Lock()  # one deploy or rollback at a time
        self.engine = self._startup_engine()
        upstream_token = read_token(settings.upstream_token_env) if settings.upstream_token_env else None
        self.upstreams = [
            Upstream(
                f"upstream{i}",
                url.rstrip("/"),
                settings.upstream_timeout_s,
                settings.upstream_retries,
                token=upstream_token,
                breaker=CircuitBreaker(settings.breaker_failures, settings.breaker_reset_s),
            )
            for i, url in enumerate(settings.upstreams)
        ]
        self.offloads: dict[str, int] = {}
        self.requests = 0
        self.telemetry = None
        if settings.mqtt_host:
            from racmkd.deploy.telemetry import TelemetryPublisher

            self.telemetry = TelemetryPublisher(
                settings.mqtt_host, settings.mqtt_port, settings.fleet, settings.device, settings.telemetry_buffer, login=broker_login
            )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._background, name="racmkd-edge", daemon=True)
        self._thread.start()

    # What runs ---------------------------------------------------------------------------------------

    @property
    def store_folder(self) -> Path:
        """Where installed releases live (serve.store_dir, else <run>/device)."""
        return Path(self.settings.store_dir or self.run_dir / "device")

    def _store(self) -> Any:
        if not self.settings.public_key:
            folder = self.store_folder
            if (folder / "state.json").exists():  # (served the run's bank in silence, `current: null`)
                log.warning(
                    "%s holds installed releases, but no public key is configured (serve.public_key): they are not served and no update is accepted; the run's bank serves",
                    folder,
                )
            return None
        from racmkd.deploy.device import DeviceStore
        from racmkd.deploy.signing import load_public_key

        store = DeviceStore(self.store_folder, load_public_key(Path(self.settings.public_key)), accept=self.settings.accept_releases)
        if store.held_elsewhere:  # (a second server on one store_dir started without a word, and the two pruned each other's releases)
            log.warning("%s is in use by another process: this server serves its releases but takes no update or rollback", self.store_folder)
        return store

    def _startup_engine(self) -> Engine:
        """The installed release; if it cannot be served, the previous one, made current (so that
        the state says what serves, and the next update replaces the broken release, not the one
        that works); else the run's bank."""
        if self.store is None:
            return self._bank_engine()
        from racmkd.deploy.device import StoreError

        try:
            current, previous = self.store.current(), self.store.previous()
        except StoreError as err:  # (state.json unreadable, not damaged: the device still answers)
            log.error("%s; serving the run's bank", err)
            return self._bank_engine()
        if current is not None:
            try:
                return self._load_checked(current)
            except Exception as err:  # noqa: BLE001 - a release that no longer loads must not stop the device
                log.error("installed release %s does not load (%s); trying the previous one", current.label, err)
        if previous is not None:
            try:
                engine = self._load_checked(previous)
            except Exception as err:  # noqa: BLE001
                log.error("previous release %s does not load either (%s); serving the run's bank", previous.label, err)
            else:
                if current is not None:
                    try:
                        self.store.rollback()
                        log.warning("rolled back to %s", previous.label)
                    except StoreError as err:  # (serving the release that loads matters more than the state saying so)
                        log.error("serving the previous release %s, but the store does not say so: %s", previous.label, err)
                return engine
        return self._bank_engine()

    def _bank_engine(self) -> Engine:
        return Engine(self._runtime(self.run_dir / "edge", "bank"), f"{self.run_dir.name}/edge", None)

    def _runtime(self, path: Path, kind: str) -> Any:
        from racmkd.runtime.bank import load_bank
        from racmkd.runtime.edge import EdgeRuntime
        from racmkd.runtime.predictor import OnnxPredictor

        return OnnxPredictor(path) if kind == "onnx" else EdgeRuntime(load_bank(path), self.cfg.runtime, self.monitor)

    def _load_checked(self, installed: Any) -> Engine:
        """An installed release read back from the store (at start-up, or to roll back to), checked
        again (signature, hash, files) before it serves: its files may have changed since `stage`."""
        self.store.check(installed)
        return self._load(installed)

    def _load(self, installed: Any) -> Engine:
        return Engine(
            self._runtime(installed.model_path, installed.manifest["kind"]),
            installed.label,
            installed.manifest.get("metrics", {}).get("accuracy"),
            installed.manifest.get("sha256"),
        )

    def modalities(self) -> list[str]:
        """The inputs the fleet sends (the run's modalities) and any other the current release
        uses: a release that uses fewer ignores the rest, so that clients keep working across updates."""
        configured = list(self.cfg.data.modalities)
        return configured + [m for m in self.engine.modalities() if m not in configured]

    def raw_specs(self) -> dict[str, Any]:
        return self.engine.raw_specs

    # Requests ----------------------------------------------------------------------------------------

    def local_expectation(self, engine: Engine | None = None) -> tuple[float, float]:
        """Expected accuracy and latency (ms, under the present load) of answering here."""
        engine = engine or self.engine
        if engine.adaptive:  # (the decision read once: one switching meanwhile gave one configuration's accuracy with another's latency)
            decision = engine.runtime.current
            return engine.runtime.expected_accuracy(decision), decision.costs.latency_ms * engine.runtime.budget.slowdown
        return engine.accuracy or 0.0, self.compute_ms_p50() or 0.0

    def route(self, engine: Engine, inputs: Inputs, body: bytes) -> tuple[Any, Any] | None:
        """Where to answer: (the route, its upstream) when offloading is expected to do better (see
        racmkd.deploy.offload.choose_route), None to answer here."""
        from racmkd.deploy.offload import choose_route

        # A request that names this edge's model wants its answer; a forwarded one is not forwarded again.
        if not self.upstreams or inputs.model is not None or inputs.forwarded_until is not None:
            return None
        target = self.target_ms(inputs) - (time.monotonic() - inputs.arrived) * 1e3  # (what is left of it: reading and parsing took some)
        accuracy, local_ms = self.local_expectation(engine)
        route = choose_route(accuracy, local_ms, target, self.upstreams, len(body), self.settings.offload_margin)
        if route.target == "local":
            return None
        return route, next(u for u in self.upstreams if u.name == route.target)

    def target_ms(self, inputs: Inputs) -> float:
        return inputs.target_ms or self.cfg.runtime.latency_target_ms

    def answer(self, inputs: Inputs, body: bytes, content_type: str) -> PredictResponse:
        engine = self.engine  # one engine for the whole request, whatever a deploy swaps meanwhile
        self.check_model(engine, inputs)
        fallbacks: list[str] = []
        chosen = self.route(engine, inputs, body)
        if chosen is not None:
            route, upstream = chosen
            started = time.perf_counter()
            try:
                # (the route's budget is what its target left when it was chosen, just now: the time since the request's arrival is off it)
                reply = upstream.predict(body, content_type, time.monotonic() + route.budget_ms / 1e3, engine.classes)
                answer = PredictResponse(
                    **{
                        **reply,
                        "offloaded": True,
                        "latency_ms": None,  # (the upstream's time from its own arrival: this edge's own is set as it answers)
                        "route": route.reason,
                        "compute_ms": (time.perf_counter() - started) * 1e3,
                        "served_by": f"{upstream.name}:{reply.get('served_by')}",
                    }
                )
                self.requests += 1
                self.offloads[upstream.name] = self.offloads.get(upstream.name, 0) + 1
                return answer
            except Exception as err:  # noqa: BLE001 - whatever goes wrong upstream (a refusal, a malformed answer), the edge answers locally
                fallbacks.append(f"offload failed, answered locally: {(str(err).splitlines() or [type(err).__name__])[0]}")
                local = self.local(engine, inputs, fallbacks)
                local.offload_failed = True
                return local
        else:
            fallbacks += self.upstreams_skipped(inputs)
        return self.local(engine, inputs, fallbacks)

    def upstreams_skipped(self, inputs: Inputs) -> list[str]:
        """A note for each upstream that routing passed over because its circuit breaker is open:
        after the first failed request, an unreachable upstream went unmentioned in every answer."""
        if inputs.model is not None or inputs.forwarded_until is not None:  # (a request for this edge's own model, or forwarded here, is never offloaded)
            return []
        return [
            f"offload not tried: {u.name}'s circuit is open after failed calls (tried again every {u.breaker.reset_after_s:g} s)"
            for u in self.upstreams
            if u.state() == "open"
        ]

    def answer_now(self, inputs: Inputs) -> PredictResponse | None:
        engine = self.engine
        self.check_model(engine, inputs)
        if inputs.arrays.get("audio") is not None and inputs.sample_rate != self.audio_rate:
            return None  # resampling can take a while: not on the event loop
        if self.upstreams and self.route(engine, inputs, b"") is not None:  # the body's size only refines the link's estimate
            return None
        return self.local(engine, inputs, self.upstreams_skipped(inputs))

    @staticmethod
    def check_model(engine: Engine, inputs: Inputs) -> None:
        """A request may name the model it wants: the edge serves one, its current release."""
        if inputs.model is not None and inputs.model != engine.label:
            raise HTTPException(422, f"model {inputs.model!r} is not served here; this edge serves {engine.label!r}")

    def local(self, engine: Engine, inputs: Inputs, fallbacks: list[str]) -> PredictResponse:
        """The answer of this device's own engine (from the inputs it uses)."""
        from racmkd.runtime.edge import NoVariantError, VariantsFailedError

        uses = engine.modalities()
        if not any(inputs.arrays.get(m) is not None for m in uses):
            raise HTTPException(422, f"no input this edge's model uses: send {' and/or '.join(uses)}")
        if inputs.forwarded_until is not None:  # (the expectation read only then: it takes the runtime's lock)
            self.give_up_if_late(inputs, self.local_expectation(engine)[1])
        self.requests += 1
        started = time.perf_counter()
        raws = inputs.raws(uses)
        try:
            if engine.adaptive:
                result = engine.runtime.predict(**raws, sample_rate=inputs.sample_rate)
                label, probs, variants, fallbacks = result.label, result.probabilities, result.variants, fallbacks + result.fallbacks
            else:
                label, probs = engine.runtime.predict(**raws, sample_rate=inputs.sample_rate)
                variants = [engine.label]
        except VariantsFailedError as err:  # the device's fault: the client may try again, or elsewhere
            raise HTTPException(503, str(err)) from None
        except (ValueError, TypeError, NoVariantError) as err:
            raise HTTPException(422, str(err)) from None
        ms = (time.perf_counter() - started) * 1e3
        self.compute_ms.append(ms)
        return PredictResponse(
            label=label,
            probabilities=np.asarray(probs).tolist(),
            served_by=f"edge:{self.settings.device}",
            model=engine.label,
            variants=variants,
            compute_ms=ms,
            fallbacks=fallbacks,
        )

    def describe(self) -> dict[str, Any]:
        engine = self.engine
        state = engine.runtime.state() if engine.adaptive else {"configuration": engine.label}
        accuracy, local_ms = self.local_expectation(engine)
        return {
            "model": engine.label,
            "uses": engine.modalities(),
            "accuracy": accuracy if engine.adaptive else engine.accuracy,  # a release without metrics: unknown, not 0
            "expected_latency_ms": local_ms,
            "runtime": state,
            "upstreams": [
                {"name": u.name, "url": u.url, "breaker": u.state(), "rtt_ms": u.link.rtt_ms, "transit_ms": u.link.transit_ms, "accuracy": u.accuracy}
                for u in self.upstreams
            ],
            "offloads": dict(self.offloads),
            "telemetry": self.telemetry.stats() if self.telemetry else None,
        }

    # Updates -------------------------------------------------------------------------------------------

    def deploy(self, manifest: dict[str, Any], signature: str, payload: bytes, delta: bool) -> dict[str, Any]:
        """Stage a release (verify, patch, health-check), load it for serving, and only then make it
        current; a release that cannot be served, or that the store cannot take (a full disk: 507),
        is discarded and nothing changes."""
        from racmkd.deploy.device import StoreError, UpdateFailed, UpdateRefused

        if self.store is None:
            raise HTTPException(409, "this edge has no public key configured (serve.public_key): it accepts no updates")
        with self._updating:
            try:
                staged = self.store.stage(manifest, signature, payload, delta)
            except UpdateRefused as err:
                raise HTTPException(422, f"update refused: {err}") from None
            except StoreError as err:
                raise store_failure(err) from None
            except UpdateFailed as err:
                raise HTTPException(409, str(err)) from None
            try:
                engine = self._load(staged)
            except Exception as err:  # noqa: BLE001 - it does not serve: the current release stays
                self.store.discard(staged)
                raise HTTPException(409, f"{staged.label} could not be served ({type(err).__name__}: {err}); {self.engine.label} stays") from None
            try:
                installed = self.store.commit(staged)
            except BaseException as err:  # (state.json not written: the loaded engine would never serve, nor be closed)
                engine.close()
                self.store.discard(staged)  # (its bytes, on a device whose disk may be full)
                if isinstance(err, StoreError):
                    raise store_failure(err) from None
                raise
            old, self.engine = self.engine, engine
        old.close()
        try:
            status = self.store.status()
        except StoreError as err:  # (committed and serving: the answer must not say it failed)
            status = {"current": installed.manifest, "problem": str(err)}
        return {"installed": installed.label, "delta": delta, "status": status}

    def rollback(self) -> dict[str, Any]:
        """Serve the previous release again (loaded first; the state changes only if it serves)."""
        from racmkd.deploy.device import StoreError, UpdateFailed

        if self.store is None:
            raise HTTPException(409, "this edge has no release store")
        with self._updating:
            try:
                previous = self.store.previous()
            except StoreError as err:
                raise store_failure(err) from None
            if previous is None:
                raise HTTPException(409, "no previous release to roll back to")
            try:
                engine = self._load_checked(previous)
            except Exception as err:  # noqa: BLE001
                raise HTTPException(409, f"the previous release {previous.label} could not be served ({type(err).__name__}: {err}); nothing changed") from None
            try:
                installed = self.store.rollback()
            except StoreError as err:
                engine.close()
                raise store_failure(err) from None
            except UpdateFailed as err:
                engine.close()
                raise HTTPException(409, str(err)) from None
            except BaseException:
                engine.close()
                raise
            old, self.engine = self.engine, engine
        old.close()
        return {"current": installed.label}

    # Background: upstream probes and telemetry ------------------------------------------------------------

    def _background(self) -> None:
        last_probe = 0.0
        while not self._stop.wait(self.settings.telemetry_interval_s if self.telemetry else 1.0):
            try:
                now = time.monotonic()
                if self.upstreams and now - last_probe >= self.settings.probe_interval_s:
                    last_probe = now
                    for up in self.upstreams:
                        up.probe()
                if self.telemetry is not None:
                    self.publish_telemetry()
            except Exception:  # noqa: BLE001 - probes and telemetry must outlive any one failure
                log.exception("edge background work failed; going on")

    def publish_telemetry(self) -> None:
        assert self.telemetry is not None
        engine = self.engine
        if engine.adaptive:
            state = engine.runtime.state()
            self.telemetry.publish("resources", {"level": state["level"], "readings": state["resources"], "budget": state["budget"]})
            self.telemetry.publish(
                "variant", {"configuration": state["configuration"], "variants": state["variants"], "pid": state["pid"], "failed": state["failed"]}
            )
        self.telemetry.publish(
            "stats", {"requests": self.requests, "compute_ms_p50": self.compute_ms_p50(), "offloads": dict(self.offloads), "model": engine.label}
        )

    def close(self) -> None:
        self._stop.set()
        # Its probes and telemetry end before what they use is closed (a probe under way met a
        # closed client, and a status it owed could follow the "offline" of the close).
        self._thread.join(timeout=self.settings.shutdown_timeout_s)
        if self.telemetry is not None:
            self.telemetry.close()
        for up in self.upstreams:
            up.close()
        self.monitor.stop()
        self.engine.close()
        if self.store is not None:  # (its lock: a store opened on the folder again in this process owns it)
            self.store.close()


def store_failure(err: StoreError) -> HTTPException:
    """A store that could not be written (device.StoreError) as an answer: 507 Insufficient Storage
    for a full disk, else 500; its message names the store's folder and the fix, which `racmkd
    deploy push` prints (it answered "internal error (OSError)", or blamed the release's health)."""
    return HTTPException(507 if err.no_space else 500, str(err))


def build_service(role: str, cfg: RunConfig, run_dir: Path, settings: ServeConfig) -> Service:
    """What a role serves from the run: the cloud the fused teacher, the fog its `fog_models`, the
    edge the variant bank (or the device store's current release) behind the runtime."""
    if role == "cloud":
        service = ModelService("cloud", run_dir, ["teacher"], settings.compute_workers)
    elif role == "fog":
        service = ModelService("fog", run_dir, list(settings.fog_models), settings.compute_workers)
    elif role == "edge":
        service = EdgeService(cfg, run_dir, settings)
    else:
        raise ValueError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    return service


# The app -------------------------------------------------------------------------------------------------


class Busy(HTTPException):
    """503 for a request turned away at the door (serve.max_waiting), counted as `busy`, not as the
    device's own failure (which is 503 too: every variant failed)."""


class GivenUp(HTTPException):
    """503 for a forwarded request whose forwarding server has given up on it (or would have, by
    the time its answer came), marked GIVEN_UP_HEADER for that server and counted as `given_up`,
    not as this server's failure."""

    def __init__(self, why: str) -> None:
        from racmkd.deploy.offload import GIVEN_UP_HEADER

        super().__init__(503, f"not computed, given up: {why}", {GIVEN_UP_HEADER: "1"})


class AnswerInternalErrors:
    """ASGI middleware: an unhandled error becomes a 500 answer and the connection stays open.
    (Starlette's handler for Exception answers and then re-raises; uvicorn then drops the
    keep-alive connection, and with it the requests a client had queued on it.)"""

    def __init__(self, app: Any, on_error: Callable[[str, Exception], None], on_gone: Callable[[str], None] = lambda path: None) -> None:
        self.app, self.on_error, self.on_gone = app, on_error, on_gone

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        answered = False

        async def send_noted(message: dict[str, Any]) -> None:
            nonlocal answered
            answered = answered or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_noted)
        except ClientDisconnect:  # the client left mid-body (/predict, an upload to /deploy): nobody to answer, no server error
            self.on_gone(scope.get("path", ""))
        except Exception as err:  # noqa: BLE001 - nothing crashes the server
            if answered:  # too late for an answer of its own: the client sees a cut response
                raise
            self.on_error(scope.get("path", ""), err)
            detail = f"internal error ({type(err).__name__}); the server logged the details"
            await JSONResponse(status_code=500, content={"detail": detail})(scope, receive, send)


class GuardManagement:
    """ASGI middleware: a management request's token is checked before its body is read, and the
    body is capped (FastAPI reads a form before it runs the route's dependencies, so without this
    anyone could make the server take in an upload of any size), and an upload that stops coming
    for `idle_timeout_s` is answered 408 (a stalled one held its connection and the worker for
    ever: a large release over a slow link may take long, but not pause that long). A client gone before its whole
    body came is told to `on_gone`, and the answer nobody would read is not sent: FastAPI turns the
    ClientDisconnect it meets reading a form into a 400, which was counted under no outcome."""

    def __init__(
        self,
        app: Any,
        paths: frozenset[str],
        refuse: Callable[[str | None], HTTPException | None],
        max_bytes: int,
        on_gone: Callable[[str], None] = lambda path: None,
        idle_timeout_s: float = 30.0,
    ) -> None:
        self.app, self.paths, self.refuse, self.max_bytes, self.on_gone = app, paths, refuse, max_bytes, on_gone
        self.idle_timeout_s = idle_timeout_s

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path", "").removeprefix(scope.get("root_path", "")) not in self.paths:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        problem = self.refuse(headers.get("authorization"))
        declared = headers.get("content-length", "")
        if problem is None and declared.isdigit() and int(declared) > self.max_bytes:
            problem = HTTPException(413, f"request body of {int(declared):,} bytes exceeds the limit of {self.max_bytes:,} (serve.max_update_bytes)")
        if problem is not None:
            await JSONResponse(status_code=problem.status_code, content={"detail": problem.detail}, headers=problem.headers)(scope, receive, send)
            return
        received, whole, gone = 0, False, False

        async def capped() -> dict[str, Any]:
            nonlocal received, whole, gone
            if whole:  # (after the body, a read waits for the client's disconnect: no deadline)
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.idle_timeout_s)
            except TimeoutError:  # FastAPI answers this one, as the 413 below
                raise HTTPException(408, f"no part of the upload came for {self.idle_timeout_s:g} s (serve.body_timeout_s)") from None
            gone = gone or (message["type"] == "http.disconnect" and not whole)
            whole = whole or (message["type"] == "http.request" and not message.get("more_body", False))
            received += len(message.get("body", b""))
            if received > self.max_bytes:  # a chunked upload declares no length; FastAPI answers this one
                raise HTTPException(413, f"request body exceeds the limit of {self.max_bytes:,} bytes (serve.max_update_bytes)")
            return message

        async def send_unless_gone(message: dict[str, Any]) -> None:
            if not gone:
                await send(message)

        await self.app(scope, capped, send_unless_gone)
        if gone:
            self.on_gone(scope.get("path", ""))


def create_app(service: Service, settings: ServeConfig, token: str | None = None) -> FastAPI:
    """The HTTP face of a service."""
    from racmkd.deploy.offload import FORWARDED_HEADER

    check_inference_token(settings, token)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()

    app = FastAPI(title=f"racmkd {service.role}", version="1", description=__doc__, lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def one_line(request: Request, err: RequestValidationError) -> JSONResponse:
        """A form FastAPI checks itself (/deploy's manifest, signature, payload) answers as /predict
        does, one string naming each problem's field (it answered FastAPI's list of objects, which
        `racmkd deploy push` printed raw)."""
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in err.errors()[:5])
        return JSONResponse(status_code=422, content={"detail": f"invalid request: {problems}"})

    registry = CollectorRegistry()
    requests = Counter(
        "racmkd_requests",
        "Requests answered, by outcome and route (offloaded, offload_failed: answered here after an upstream failed, local)",
        ["role", "outcome", "route"],
        registry=registry,
    )
    late = Counter(
        "racmkd_requests_late",
        "Requests answered past their latency target (the request's, else an edge's runtime target), from their arrival, or forwarded ones past their forwarder's deadline (FORWARDED_HEADER)",
        ["role"],
        registry=registry,
    )
    latency = Histogram(
        "racmkd_request_latency_seconds",
        "Time from request to answer",
        ["role"],
        registry=registry,
        buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2),
    )
    variant = Gauge("racmkd_variant", "1 for the configuration being served", ["variant"], registry=registry)
    breaker = Gauge("racmkd_upstream_open", "1 when an upstream's circuit breaker is open", ["upstream"], registry=registry)
    passed_over = Gauge(
        "racmkd_inputs_passed_over",
        "Bad inputs passed over since the runtime started (counted as dead, the answer from the others; each answer says so), by modality",
        ["modality"],
        registry=registry,
    )
    readings_help = {
        "racmkd_cpu_percent": "CPU load the monitor plans with",
        "racmkd_memory_available_bytes": "Free memory the monitor plans with",
        "racmkd_telemetry_buffered": "Telemetry messages waiting for the broker",
    }
    readings_exported: dict[str, Gauge] = {}
    # /metrics runs on the threadpool: two scrapes at once registered one reading's gauge twice
    # (prometheus_client's DuplicateTimeseries: a 500), or read the variants half cleared.
    exporting = threading.Lock()

    def export_reading(name: str, value: float | None) -> None:
        """A reading's gauge while there is a reading, none without (a role or an edge without the
        reading, e.g. no --mqtt, exported 0.0, which reads as a real value)."""
        if value is None:
            if name in readings_exported:
                registry.unregister(readings_exported.pop(name))
            return
        if name not in readings_exported:
            readings_exported[name] = Gauge(name, readings_help[name], registry=registry)
        readings_exported[name].set(value)

    started_at = time.monotonic()  # (uptime: the wall clock steps; a board without a real-time clock read 56 years after its NTP sync)

    bearer = HTTPBearer(auto_error=False, description=f"the management token (${settings.token_env})")

    def refusal(authorization: str | None) -> HTTPException | None:
        """Why a request's Authorization header does not open a protected endpoint (None: it does)."""
        if not token:
            return HTTPException(403, f"no management token is configured (set ${settings.token_env}); this endpoint is disabled")
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            return HTTPException(401, "missing or wrong token (Authorization: Bearer <token>)", headers={"WWW-Authenticate": "Bearer"})
        return None

    def check(credentials: HTTPAuthorizationCredentials | None) -> None:
        problem = refusal(f"Bearer {credentials.credentials}" if credentials is not None else None)
        if problem is not None:
            raise problem

    def management(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        """A second lock on the management routes, on purpose: GuardManagement refuses their
        requests before the body is read, by path; this holds on a route added without its path
        there (and shows the routes' security in the OpenAPI schema)."""
        check(credentials)

    async def body_of(request: Request) -> bytes:
        """The request body as sent (JSON or .npz), for parsing and forwarding; the token is checked
        first when inference is protected, and the body is read no further than the size limit."""
        request.state.arrived = time.monotonic()  # (the request's latency target counts from here)
        try:
            problem = refusal(request.headers.get("authorization")) if settings.protect_inference else None
            if problem is not None:
                raise problem
            declared = request.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > settings.max_body_bytes:
                raise HTTPException(413, f"request body of {int(declared):,} bytes exceeds the limit of {settings.max_body_bytes:,}")
            chunks, size = [], 0
            async with asyncio.timeout(settings.body_timeout_s):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > settings.max_body_bytes:
                        raise HTTPException(413, f"request body exceeds the limit of {settings.max_body_bytes:,} bytes")
                    chunks.append(chunk)
        except TimeoutError:  # a body that never ends (or trickles) held its connection and a worker for ever
            requests.labels(service.role, "bad_request", "-").inc()
            raise HTTPException(408, f"the request body did not come whole within {settings.body_timeout_s:g} s (serve.body_timeout_s)") from None
        except HTTPException:
            requests.labels(service.role, "bad_request", "-").inc()
            raise
        return b"".join(chunks)

    def internal_error(path: str, err: Exception) -> None:
        log.error("unhandled error on %s", path, exc_info=err)
        requests.labels(service.role, "error", "-").inc()

    def client_gone(path: str) -> None:
        log.info("%s: the client closed the connection before its whole body came", path)
        requests.labels(service.role, "client_gone", "-").inc()

    app.add_middleware(AnswerInternalErrors, on_error=internal_error, on_gone=client_gone)
    if isinstance(service, EdgeService):
        app.add_middleware(
            GuardManagement,
            paths=frozenset({"/deploy", "/rollback", "/deployment"}),
            refuse=refusal,
            max_bytes=settings.max_update_bytes,
            on_gone=client_gone,
            idle_timeout_s=settings.body_timeout_s,
        )

    schema = {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": PredictRequest.model_json_schema(ref_template="#/components/schemas/{model}")},
                NPZ: {
                    "schema": {
                        "type": "string",
                        "format": "binary",
                        "description": "np.savez archive: arrays named by modality (image, audio, any other registered one), optional single values sample_rate, latency_target_ms, model",
                    }
                },
            },
        }
    }

    protected = {401: {"description": "missing or wrong token"}, 403: {"description": "no token configured"}}
    predict_responses: dict[int | str, dict[str, Any]] = {
        408: {"description": "the body did not come whole in time"},
        413: {"description": "too large"},
        415: {"description": "unsupported content type"},
        422: {"description": "invalid input"},
        503: {
            "description": "busy: serve.max_waiting requests are being answered or waiting; or, for a forwarded request (X-Racmkd-Deadline-Ms), given up: its answer would come after that deadline (X-Racmkd-Given-Up)"
        },
    }
    waiting = [0]  # /predict requests on a worker thread or waiting for one

    @app.post(
        "/predict",
        response_model=PredictResponse,
        openapi_extra=schema,
        dependencies=[Depends(bearer)] if settings.protect_inference else [],
        responses={**predict_responses, **(protected if settings.protect_inference else {})},
    )
    async def predict(request: Request, body: bytes = Depends(body_of)) -> Response:
        # Async: a quick local answer is computed right here; one that waits on an upstream or on a
        # PyTorch model goes to a worker thread. The answer is serialised once, by its own model.
        started = time.perf_counter()
        content_type = request.headers.get("content-type", "application/json")
        try:
            inputs = parse_request(body, content_type, settings, service.modalities(), service.audio_rate, service.raw_specs())
            inputs.received(request.state.arrived, request.headers.get(FORWARDED_HEADER))
            answer = service.answer_now(inputs)
            if answer is None:
                if waiting[0] >= settings.max_waiting:  # (the event loop's thread alone counts: no lock)
                    raise Busy(
                        503, f"busy: {waiting[0]} requests are being answered or waiting (serve.max_waiting); answer locally or try again", {"Retry-After": "1"}
                    )
                waiting[0] += 1
                try:
                    answer = await run_in_threadpool(service.answer, inputs, body, content_type)
                finally:
                    waiting[0] -= 1
        except HTTPException as err:
            outcome = "bad_request" if err.status_code < 500 else "busy" if isinstance(err, Busy) else "given_up" if isinstance(err, GivenUp) else "error"
            requests.labels(service.role, outcome, "-").inc()
            raise
        latency.labels(service.role).observe(time.perf_counter() - started)
        requests.labels(service.role, "ok", "offloaded" if answer.offloaded else "offload_failed" if answer.offload_failed else "local").inc()
        answered = time.monotonic()
        answer.latency_ms = (answered - inputs.arrived) * 1e3
        target = service.target_ms(inputs)
        if (target is not None and answer.latency_ms > target) or (inputs.forwarded_until is not None and answered > inputs.forwarded_until):
            late.labels(service.role).inc()
        return Response(answer.model_dump_json(), media_type="application/json")

    @app.get("/health")
    def health() -> dict[str, Any]:
        info = service.describe()
        return {
            "status": "ok",
            "role": service.role,
            "model": info.get("model"),
            "accuracy": info.get("accuracy"),
            "compute_ms_p50": service.compute_ms_p50(),
            "uptime_s": time.monotonic() - started_at,
        }

    @app.get("/models")
    def models() -> dict[str, Any]:
        return {"role": service.role, "modalities": service.modalities(), **service.describe()}

    @app.get("/metrics")
    def metrics() -> Response:
        info = service.describe()
        state = info.get("runtime") or {}
        readings = state.get("resources") or {}
        with exporting:
            variant.clear()  # an adaptive engine's variants in force (none while every one has failed), else the one model
            for v in state["variants"] if "variants" in state else [info.get("model")]:
                variant.labels(str(v)).set(1)
            export_reading("racmkd_cpu_percent", readings.get("cpu_percent"))
            export_reading("racmkd_memory_available_bytes", readings.get("memory_available_bytes"))
            export_reading("racmkd_telemetry_buffered", (info.get("telemetry") or {}).get("buffered"))
            for up in info.get("upstreams", []):
                breaker.labels(up["name"]).set(1.0 if up["breaker"] == "open" else 0.0)
            for modality, count in (state.get("inputs_passed_over") or {}).items():  # (a faulty sensor on one device of a fleet)
                passed_over.labels(modality).set(count)
            exposition = generate_latest(registry)
        return Response(exposition, media_type=CONTENT_TYPE_LATEST)

    if isinstance(service, EdgeService):
        store_unwritable = {  # (`store_failure`'s answers)
            500: {"description": "the device's store could not be written (read-only, say) or read (a disk error); nothing changed"},
            507: {"description": "the device's disk is full; nothing changed"},
        }

        @app.post(
            "/deploy",
            dependencies=[Depends(management)],
            responses={
                **protected,
                400: {"description": "not a readable multipart form"},
                409: {"description": "failed its health check or could not be served; nothing changed"},
                413: {"description": "larger than serve.max_update_bytes"},
                422: {"description": "refused: signature, hash, downgrade, delta, malformed manifest"},
                **store_unwritable,
            },
        )
        def deploy(manifest: str = Form(...), signature: str = Form(...), delta: bool = Form(False), payload: UploadFile = File(...)) -> dict[str, Any]:
            try:
                parsed = json.loads(manifest)
            except (ValueError, RecursionError):  # (RecursionError: nested past the parser's depth)
                raise HTTPException(422, "manifest: not JSON") from None
            return service.deploy(parsed, signature, payload.file.read(), delta)

        @app.post(
            "/rollback",
            dependencies=[Depends(management)],
            responses={
                **protected,
                409: {"description": "nothing to roll back to"},
                **store_unwritable,
            },
        )
        def rollback() -> dict[str, Any]:
            return service.rollback()

        @app.get("/deployment", dependencies=[Depends(management)], responses={**protected, 500: store_unwritable[500]})
        def deployment() -> dict[str, Any]:
            """The store's current and previous releases, and what serves: not the current release
            when neither it nor the previous one loaded at start (the run's bank serves then)."""
            from racmkd.deploy.device import StoreError

            engine = service.engine
            try:
                status = service.store.status() if service.store is not None else {"current": None, "previous": None}
            except StoreError as err:
                raise store_failure(err) from None
            return {**status, "serving": {"label": engine.label, "sha256": engine.sha256}}

    return app


def serve(role: str, cfg: RunConfig, run_dir: Path, settings: ServeConfig, announce: Callable[[str], None] = print) -> None:
    """Run a role's server with uvicorn until interrupted; `announce` hears its address once the
    service is built and the address is free (not before, to be followed by an error)."""
    import uvicorn

    from racmkd.deploy.loopback import stop_with_parent

    stop_with_parent()
    token = read_token(settings.token_env)
    check_inference_token(settings, token)  # (before the models load)
    port = check_listen_address(settings.host, settings.port)
    service = build_service(role, cfg, run_dir, settings)
    app = create_app(service, settings, token)
    try:
        announce(f"http://{settings.host}:{port}")
    except OSError as err:  # (stdout on a full disk, or a closed pipe: a server that cannot say where it listens still serves)
        log.warning("could not announce the server's address (%s); serving on port %d", err, port)
    raise_open_file_limit()
    uvicorn.Server(server_config(app, settings, port)).run()


def server_config(app: FastAPI, settings: ServeConfig, port: int) -> Any:
    """uvicorn's settings for a role's server. Told to stop, uvicorn waited for every open request:
    a client stalled mid-upload held the server (and the device store's lock) until a container
    runtime's SIGKILL, so open requests get `shutdown_timeout_s` (a cut-off install leaves the
    current release serving: its slot is built aside). A connection's request line and headers get
    `header_timeout_s` (`header_deadline`); uvicorn's complaint about each malformed request, and
    asyncio's about each connection it cannot accept, are logged once a minute with a count
    (`OncePerMinute`)."""
    import uvicorn

    for logger, message in (("uvicorn.error", "Invalid HTTP request received."), ("asyncio", "socket.accept() out of system resource")):
        if not any(isinstance(f, OncePerMinute) and f.message == message for f in logging.getLogger(logger).filters):
            logging.getLogger(logger).addFilter(OncePerMinute(message))
    return uvicorn.Config(
        app,
        host=settings.host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
        http=header_deadline(settings.header_timeout_s),
    )


def header_deadline(timeout_s: float) -> type:
    """uvicorn's h11 protocol closing a connection whose request line and headers have not come
    whole within `timeout_s` of its opening or of its last answer. uvicorn bounds neither: its
    keep-alive timer stops at a request's first byte, and nothing times a connection that sends
    none, so clients that vanish without closing (a device off the network) or that send headers a
    byte at a time held their sockets for good: 1,100 of them took an edge under a 1024-file limit
    off the network. The body has its own bound (serve.body_timeout_s)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadline(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._start_deadline()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._start_deadline()  # (the next request on this connection has its own)

        def connection_lost(self, exc: Exception | None) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            super().connection_lost(exc)

        def _start_deadline(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline = self.loop.call_later(timeout_s, self._deadline_passed)

        def _deadline_passed(self) -> None:
            waiting_for_headers = self.cycle is None or self.cycle.response_complete  # (a request being read or answered is not ours to cut)
            if waiting_for_headers and not self.transport.is_closing():
                self.transport.close()

    return HeaderDeadline


class OncePerMinute(logging.Filter):
    """Lets a log message (the records that start with `message`) through once a minute, with how
    many were held back: uvicorn writes a line for every malformed request, and asyncio a traceback
    for every connection it cannot accept once the process is out of file descriptors (158 MB in 35 s
    under a flood of connections): a client could grow the log without bound."""

    def __init__(self, message: str, interval_s: float = 60.0) -> None:
        super().__init__()
        self.message, self.interval_s = message, interval_s
        self.next_at, self.held = 0.0, 0

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if not text.startswith(self.message):
            return True
        now = time.monotonic()
        if now < self.next_at:
            self.held += 1
            return False
        if self.held:
            record.msg, record.args = f"({self.held} more like it in the last {self.interval_s:g} s, not logged) {text}", ()
        self.next_at, self.held = now + self.interval_s, 0
        return True


def raise_open_file_limit(most: int = 65536) -> None:
    """Raise this process's soft limit on open files to its hard limit (at most `most`): a service
    manager's usual soft limit, 1024, is a few hundred clients, and a server at it accepts no more
    connections (nor answers /health) until some close. Windows has no such limit to raise (nor the
    `resource` module)."""
    try:
        import resource
    except ImportError:
        return

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = most if hard == resource.RLIM_INFINITY else min(hard, most)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as err:  # (a sandbox that forbids it: the limit stays)
            log.warning("could not raise the open-file limit from %d: %s", soft, err)


def check_inference_token(settings: ServeConfig, token: str | None) -> None:
    """ValueError when /predict is to be protected by a token that is not set: the server started,
    and then refused every request (403)."""
    if settings.protect_inference and not token:
        raise ValueError(
            f"serve.protect_inference is on but ${settings.token_env} is not set: every /predict would be refused. Set ${settings.token_env} (serve.token_env), or turn serve.protect_inference off."
        )


def check_listen_address(host: str, port: int) -> int:
    """The port to listen on: `port`, or for 0 one free now (so that the address announced is the
    one served; uvicorn's own line is not shown at log level warning). A clear error for an address
    uvicorn could not listen on (it would log and exit)."""
    import socket

    if not 0 <= port < 65536:
        raise ValueError(f"port {port}: choose one in 1-65535, or 0 for any free one (serve.port, --port)")
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as err:
        raise ValueError(f"cannot listen on {host}:{port} ({err}); choose another --host") from None
    problems = []
    for family, kind, proto, _, address in addresses:  # like uvicorn, one address that binds is enough
        try:
            with socket.socket(family, kind, proto) as probe:
                if os.name != "nt":  # (on Windows it lets a bind share a port in use: the probe would pass)
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(address)
                return int(probe.getsockname()[1])
        except OSError as err:
            problems.append(str(err))
    raise ValueError(f"cannot listen on {host}:{port} ({'; '.join(problems)}); choose another --host or --port")
