"""Offloading from the edge to the fog or the cloud, and surviving when they are not there.

Per request the edge compares answering locally (its runtime's current configuration: expected
accuracy, and latency under the present load) with each upstream (the accuracy it reports, and
the latency the link predicts: measured round-trip time + payload / measured bandwidth + the
upstream's reported compute time) against the request's latency target. It forwards only when an
upstream is expected to be more accurate within the target, or when the local answer would miss
the target and an upstream would not. Every upstream call has a timeout, a bounded number of
retries with exponential backoff inside the request's deadline, and a circuit breaker; whatever
goes wrong upstream, the edge answers locally. No request is lost.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import httpx

log = logging.getLogger(__name__)

MAX_REPLY_BYTES = 1 << 20  # an answer is a label and a few probabilities (under 2 kB): a reply larger than this is no answer

# Calls to upstreams run here, so that a request waits for one no longer than its deadline: httpx's
# timeouts bound each phase of a call (connect, write, every read), not the whole, and an upstream
# slow in two phases answered a 500 ms deadline after 843 ms. A call given up on finishes in the
# background within its own timeouts (a reply read for at most the call's timeout, see `_call`; headers
# still coming DROP_AFTER_S later get the connection closed, see `Upstream._call_waiting`); while every worker is taken (an upstream hanging), requests
# wait their deadline out in the queue and are answered locally, and the breaker soon opens.
_CALLS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="racmkd-upstream")
# On a forwarded /predict: what is left of the forwarding server's budget for it, in ms, less the
# link's transit there and back (`LinkEstimate.transit_for`). A request that carries it is never
# offloaded again (two edges listing each other bounced one request 23 times), and a server gives it
# up uncomputed (503, GIVEN_UP_HEADER) when its answer is expected past that time (under load a
# fog computed 29% of its answers for requests the edge had given up on).
FORWARDED_HEADER = "X-Racmkd-Deadline-Ms"
# On a 503 answer to a forwarded /predict: the upstream gave the request up uncomputed, its answer
# expected after the forwarding server's deadline. Not tried again: it would be given up again.
GIVEN_UP_HEADER = "X-Racmkd-Given-Up"
TRANSFER_STALE_S = 30.0  # a link's transfer time no forwarded request has measured for this long is forgotten at the next probe
DROP_AFTER_S = 0.5  # past a call's own timeout, when its upstream's connections are closed (see `Upstream._call_waiting`)


class UpstreamError(RuntimeError):
    """An upstream could not answer in time (down, slow, refusing, or its breaker is open)."""


class InputRefused(UpstreamError):
    """The upstream answered that the request's input is invalid (4xx): not the upstream's fault."""


class GaveUp(UpstreamError):
    """The upstream gave a forwarded request up uncomputed: its answer would come after the deadline."""


@dataclass
class CircuitBreaker:
    """Closed: calls go through. After `failures_to_open` failures in a row it opens and calls are
    refused at once; after `reset_after_s` calls are tried again (half-open): the first success
    closes it (a probe's only when probes alone opened it: see `success`), the first failure opens
    it again."""

    failures_to_open: int = 3
    reset_after_s: float = 5.0
    state: str = "closed"
    failures: int = 0
    opened_at: float = 0.0
    probe_failures: int = 0  # of `failures`, those of probes (/health), which a healthy probe takes back
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def allow(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        with self._lock:
            if self.state == "open" and now - self.opened_at >= self.reset_after_s:
                self.state = "half-open"
            return self.state != "open"

    def success(self, probe: bool = False) -> bool:
        """Record a success; True when it ends an outage (the breaker was open or half-open). A
        `probe`'s (its /health answered) closes an open breaker only when probes alone opened it;
        one opened by failed predictions it leaves half-open, for the next prediction to try (a
        quick /health closed the breaker of an upstream whose /predict was too slow, and three
        more requests each waited out their budget: 18 of 30 at one request every 2 s). A closed
        one's failures in a row it resets only as far as they were probes': it reset failed
        predictions too, and with a health check every few seconds an upstream whose every
        /predict failed never had its breaker opened."""
        with self._lock:
            if probe and self.failures > self.probe_failures:  # predictions failed: only a prediction's success tells they work
                if self.state == "open":
                    self.state = "half-open"
                self.failures -= self.probe_failures
                self.probe_failures = 0
                return False
            ended = self.state != "closed"
            if ended or not probe:
                self.state, self.failures, self.probe_failures = "closed", 0, 0
            else:
                self.failures -= self.probe_failures
                self.probe_failures = 0
            return ended

    def failure(self, now: float | None = None, probe: bool = False) -> bool:
        """Record a failure; True when it starts an outage (closed until now, open from here; a
        failed half-open trial reopens the same outage)."""
        with self._lock:
            self.failures += 1
            self.probe_failures += probe
            started = self.state == "closed" and self.failures >= self.failures_to_open
            if self.state == "half-open" or self.failures >= self.failures_to_open:
                self.state, self.opened_at = "open", time.monotonic() if now is None else now
            return started


@dataclass
class LinkEstimate:
    """Round-trip time and transfer time per byte of a link, from the calls made over it (EWMA).
    Per byte, not bytes per ms: averaged as a rate, the fast calls ruled (the link slowing from 20
    to 350 ms a request took 14 calls to be expected at 300 ms), and one call quicker than the
    round trip, its transfer floored at 0.01 ms, set the rate to 1.8e7 bytes/ms (20 slow calls
    later it was still expected at 42 ms). Per byte, a call that took no longer than the round trip
    counts as a transfer of no time: passed over instead, one slow call's estimate stood against
    every quick one after it (a 178 kB request slowed once kept 60 ms requests local for 5 s,
    expected at 93 ms, 200 quick calls later still 96)."""

    rtt_ms: float | None = None
    ms_per_byte: float | None = None
    transit_ms: float | None = None  # of a small call, the time outside the upstream's hands (see `observe_transit`)
    transit_ms_per_byte: float | None = None  # and what each byte of a large one adds to it
    weight: float = 0.3
    transfer_seen: float = -math.inf  # when a call last measured the transfer (time.monotonic)

    def forget_stale_transfer(self, stale_s: float, now: float | None = None) -> None:
        """Forget a transfer time no call has measured for `stale_s`: only forwarded requests
        measure it, and one estimate high enough kept every request local, so none measured it
        again (an upstream slow for a while was never used again once it recovered: 0 offloads in
        40 s against 178). Forgotten, the next request that may go finds out."""
        if (time.monotonic() if now is None else now) - self.transfer_seen > stale_s:
            # (the transit's per-byte part too: probes send no bytes, and only forwarded requests measure it)
            self.ms_per_byte = self.transit_ms_per_byte = None

    def _blend(self, old: float | None, new: float) -> float:
        """One more observation folded into an estimate (EWMA; the first taken as it is)."""
        return new if old is None else (1 - self.weight) * old + self.weight * new

    def observe(self, total_ms: float, server_ms: float, payload_bytes: int) -> None:
        """One call: its wall time, the upstream's own compute time, and the bytes sent."""
        network = max(total_ms - server_ms, 0.01)
        if payload_bytes > 4096 and self.rtt_ms is not None:  # a large payload measures the transfer
            per_byte = max(network - self.rtt_ms, 0.0) / payload_bytes
            self.ms_per_byte = self._blend(self.ms_per_byte, per_byte)
            self.transfer_seen = time.monotonic()
        else:  # a small one measures the round trip
            self.rtt_ms = self._blend(self.rtt_ms, network)

    def observe_transit(self, total_ms: float, held_ms: float, payload_bytes: int = 0) -> None:
        """One call's time on the way, there and back: its wall time less the time the upstream
        held it (its answer's latency_ms, from its arrival there). The round trip (`rtt_ms`) counts
        the upstream's queue too, which it counts itself against a forwarded deadline. Learnt as
        the round trip and transfer are, a fixed part and a part per byte: one figure for every size
        sent a small request, after large ones, a deadline of 0 (60 ms taken off its 50)."""
        transit = max(total_ms - held_ms, 0.0)
        if payload_bytes > 4096 and self.transit_ms is not None:
            self.transit_ms_per_byte = self._blend(self.transit_ms_per_byte, max(transit - self.transit_ms, 0.0) / payload_bytes)
        else:  # (a large call before any small one: its whole transit, until probes say better)
            self.transit_ms = self._blend(self.transit_ms, transit)

    def transit_for(self, payload_bytes: int) -> float:
        """The transit expected of a call sending `payload_bytes` (0 while none is known)."""
        return (self.transit_ms or 0.0) + payload_bytes * (self.transit_ms_per_byte or 0.0)

    def expected_ms(self, payload_bytes: int, server_ms: float) -> float | None:
        if self.rtt_ms is None:
            return None
        return self.rtt_ms + payload_bytes * (self.ms_per_byte or 0.0) + server_ms


@dataclass(frozen=True)
class Reply:
    """An upstream's reply to one call."""

    status: int
    content: bytes  # at most MAX_REPLY_BYTES
    given_up: bool  # it carries GIVEN_UP_HEADER
    wall_ms: float  # from the call's start on a worker to the reply read whole


@dataclass
class _Watched:
    """What the watchdog of a call given up on needs (see `Upstream._call_waiting`), set by the call."""

    started: float | None = None  # when a worker started it (time.monotonic)
    client: httpx.Client | None = None  # the client it took


@dataclass
class Upstream:
    """A fog or cloud server the edge may forward requests to."""

    name: str
    url: str
    timeout_s: float = 1.0
    retries: int = 2
    backoff_s: float = 0.02
    token: str | None = None
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    link: LinkEstimate = field(default_factory=LinkEstimate)
    accuracy: float | None = None  # what its model scores on the test split (from its /health)
    compute_ms: float = 0.0  # its own median time per request (from its /health)
    _client: httpx.Client | None = field(default=None, repr=False)
    _client_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def state(self) -> str:
        """Its circuit breaker's state: closed, open or half-open."""
        return self.breaker.state

    def client(self) -> httpx.Client:
        with self._client_lock:  # (two requests' threads at once would open two, one never closed)
            if self._client is None:
                # identity: a reply's size limit counts the bytes that come (a small gzip body can unpack far past it)
                headers = {"Accept-Encoding": "identity", **({"Authorization": f"Bearer {self.token}"} if self.token else {})}
                self._client = httpx.Client(base_url=self.url, headers=headers)
            return self._client

    def probe(self) -> bool:
        """Ask the upstream's /health for its accuracy and compute time; measures the round trip."""
        if not self.breaker.allow():
            return False
        started = time.perf_counter()
        try:
            # On a worker, waited for at most the timeout: this thread also sends telemetry, and an
            # upstream trickling its headers holds a call past every read timeout.
            reply = self._call_waiting(self.timeout_s, f"/health did not answer within {self.timeout_s:g} s", "GET", "/health", self.timeout_s)
            if reply.status >= 400:
                raise httpx.HTTPError(f"HTTP {reply.status}")
            health = json.loads(reply.content)
            accuracy = health.get("accuracy")
            if accuracy is not None and not 0.0 <= float(accuracy) <= 1.0:  # (NaN fails too)
                raise ValueError(f"accuracy {accuracy!r} is not a share in [0, 1]")
            compute_ms = _time_ms(health.get("compute_ms_p50") or self.compute_ms, "compute_ms_p50")
            self.accuracy = float(accuracy) if accuracy is not None else self.accuracy  # (both checked first: a bad probe changes nothing)
            self.compute_ms = compute_ms
        except (httpx.HTTPError, ValueError, TypeError, AttributeError, RecursionError, UpstreamError) as err:
            self._failed(err, probe=True)
            return False
        self._succeeded(probe=True)
        self.link.observe((time.perf_counter() - started) * 1e3, 0.0, 0)
        # (and the transit: only forwarded requests measured it, and one estimate above every budget
        # sent a deadline of 0, each given up, none measuring it again: offloading was lost for good)
        self.link.observe_transit(reply.wall_ms, 0.0)
        self.link.forget_stale_transfer(TRANSFER_STALE_S)
        return True

    def _failed(self, err: BaseException | None, probe: bool = False) -> None:
        """One failed call: counted by the breaker; the log says when that opens it (once an outage:
        the breaker's own lock decides, whichever of the request and probe threads fails first)."""
        if self.breaker.failure(probe=probe):
            log.warning(
                "upstream %s (%s): circuit open after %d failure(s), last %s; answering locally, trying it again every %g s",
                self.name,
                self.url,
                self.breaker.failures,
                f"{type(err).__name__}: {err}" if err else "none",
                self.breaker.reset_after_s,
            )

    def _succeeded(self, probe: bool = False) -> None:
        if self.breaker.success(probe):
            log.warning("upstream %s (%s) answers again; offloading resumes", self.name, self.url)

    def _call_waiting(self, wait_s: float, late: str, method: str, path: str, timeout_s: float, *rest: Any) -> Reply:
        """`_call(method, path, timeout_s, *rest)` on an upstream worker, waited for at most
        `wait_s`; UpstreamError saying `late` after that. The call goes on in the background, and a
        call still running `DROP_AFTER_S` past its own timeout (counted from when a worker started
        it) has the connections of the client it took closed (`_drop_connections`): an upstream
        trickling its headers held a worker for as long as it trickled, httpx bounding each read and
        not the whole, and eight such calls took every worker."""
        watched = _Watched()
        future = _CALLS.submit(self._call, method, path, timeout_s, *rest, watched=watched)
        try:
            return future.result(timeout=wait_s)  # type: ignore[no-any-return]
        except FutureTimeout:
            if not future.cancel():  # (still queued: never sent) running: watched until its own time is up
                # (counted from when a worker took it: calls queue behind a hanging upstream's)
                now = time.monotonic()
                due_in = max(0.0, (watched.started or now) + timeout_s + DROP_AFTER_S - now)
                watchdog = threading.Timer(due_in, self._drop_connections, (future, watched))
                watchdog.daemon = True
                watchdog.start()
            raise UpstreamError(f"{self.name}: {late}") from None

    def _drop_connections(self, overdue: Future[Any], watched: _Watched) -> None:
        """Close the connections of the client the `overdue` call took (`watched`), if it still runs
        (not the upstream's current client: an earlier drop may have replaced it): it ends when its read
        returns (the next byte, or its read timeout: closing a socket does not wake a thread blocked
        on it), with nothing more to read; later calls open new ones. Calls in flight to the same
        upstream fail too, counted by the breaker (an upstream that trickles one reply is seldom
        healthy for the others), and a call that took the client just before is told so (`_call`)."""
        client = watched.client
        if overdue.done() or client is None:
            return
        with self._client_lock:
            if self._client is client:
                self._client = None
        if not client.is_closed:
            log.warning("upstream %s (%s): a call still running past its timeout; its connections closed", self.name, self.url)
            client.close()

    def _call(
        self,
        method: str,
        path: str,
        timeout_s: float,
        body: bytes | None = None,
        content_type: str | None = None,
        deadline: float | None = None,
        watched: _Watched | None = None,
    ) -> Reply:
        """One request; its status and at most MAX_REPLY_BYTES of the reply, read no further (a
        200 MB answer was read whole, and took the edge's memory from 201 to 901 MB), and read for
        at most `timeout_s` from the start: httpx's timeout bounds each read, and an upstream sending
        a byte a little faster than that kept a call (a worker, or the probing thread) for hours.
        `watched`: told when the call started and which client it took, for the watchdog. `deadline`
        (time.monotonic) of a forwarded request: what is left of it goes along (FORWARDED_HEADER),
        taken as the call starts (taken before, a call that waited for a worker claimed 1000 ms
        with 600 left), less the link's transit there and back: the upstream counts it from its own
        arrival, and its answer must come back in time (counted from arrival alone, 43 of the 62
        answers a loaded fog computed for requests the edge had given up on were done in that
        time)."""
        headers = {"Content-Type": content_type} if content_type else {}
        started = time.monotonic()
        if deadline is not None:
            left_ms = (deadline - started) * 1e3 - self.link.transit_for(len(body or b""))
            headers[FORWARDED_HEADER] = f"{max(left_ms, 0.0):.1f}"
        given_up_at = started + timeout_s
        client = self.client()
        if watched is not None:
            watched.started, watched.client = started, client
        try:
            with client.stream(method, path, content=body, headers=headers, timeout=timeout_s) as reply:
                chunks, size = [], 0
                for chunk in reply.iter_bytes():  # (decoded as they come: with identity asked for, the bytes that came)
                    size += len(chunk)
                    if size > MAX_REPLY_BYTES:
                        raise UpstreamError(f"{self.name}: a reply of more than {MAX_REPLY_BYTES:,} bytes, which is no answer")
                    if time.monotonic() > given_up_at:
                        raise UpstreamError(f"{self.name}: its reply still coming after {timeout_s:g} s")
                    chunks.append(chunk)
                return Reply(reply.status_code, b"".join(chunks), GIVEN_UP_HEADER in reply.headers, (time.monotonic() - started) * 1e3)
        except RuntimeError as err:  # httpx's "the client has been closed": `_drop_connections` closed it after this call took it
            if isinstance(err, UpstreamError) or not client.is_closed:
                raise
            raise UpstreamError(f"{self.name}: its connections were closed meanwhile (a call to it ran past its timeout)") from None

    def predict(self, body: bytes, content_type: str, deadline: float, classes: int | None = None) -> dict[str, Any]:
        """Forward one request; retries with backoff while the deadline (time.monotonic) allows. A
        malformed answer (see `check_answer`; `classes`: how many the edge's own model tells apart)
        counts as a failed call: it is never passed on as the upstream's answer. One the upstream
        gave up on (it expected to answer past the deadline) counts as failed too, and is not tried
        again."""
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if not self.breaker.allow():
                raise UpstreamError(f"{self.name}: circuit open after {self.breaker.failures} failures")
            started = time.perf_counter()
            try:
                late = f"no reply within the request's deadline ({remaining * 1e3:.0f} ms)"
                reply = self._call_waiting(remaining, late, "POST", "/predict", min(self.timeout_s, remaining), body, content_type, deadline)
                if reply.given_up and reply.status == 503:
                    raise GaveUp(f"{self.name}: gave the request up, its answer expected after the deadline ({reply.content[:200].decode(errors='replace')})")
                if reply.status in (413, 415, 422):  # the input itself is wrong: the upstream is fine, retrying will not help
                    raise InputRefused(f"{self.name}: refused the input (HTTP {reply.status}: {reply.content[:200].decode(errors='replace')})")
                if reply.status >= 400:  # down, overloaded, or it does not accept our token: count it against the upstream
                    raise UpstreamError(f"{self.name}: HTTP {reply.status}")
                answer = json.loads(reply.content)
                if not isinstance(answer, dict):
                    raise ValueError("the reply is not a JSON object")
                compute_ms = _time_ms(answer.get("compute_ms", 0.0), "compute_ms")
                check_answer(answer, classes)
            except InputRefused:
                raise
            except (httpx.HTTPError, ValueError, TypeError, RecursionError, UpstreamError) as err:  # (RecursionError: JSON nested past the parser's depth)
                last = err
                self._failed(err)
                if attempt == self.retries or not self.breaker.allow() or isinstance(err, GaveUp):
                    break  # (no pause after the last try, nor once the breaker opened: 41-81 ms each failed request waited for nothing)
                pause = min(self.backoff_s * 2**attempt, max(deadline - time.monotonic(), 0.0))
                if pause > 0:
                    time.sleep(pause)
                continue
            self._succeeded()
            total_ms = (time.perf_counter() - started) * 1e3
            self.link.observe(total_ms, compute_ms, len(body))
            held_ms = answer.get("latency_ms")  # (it only informs the estimate: one that is no time in the call is passed over, the answer kept)
            if isinstance(held_ms, (int, float)) and not isinstance(held_ms, bool) and 0.0 <= held_ms <= reply.wall_ms:
                self.link.observe_transit(reply.wall_ms, float(held_ms), len(body))
            return answer
        if last is None:
            raise UpstreamError(f"{self.name}: no time left in the request's deadline for a call")
        raise UpstreamError(f"{self.name}: no usable answer ({type(last).__name__}: {last})")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def _time_ms(value: Any, name: str) -> float:
    """A time an upstream reports, in ms: a finite number >= 0, or ValueError (a NaN taken in would
    make every expected time NaN, and NaN is never over a budget: that upstream would get every
    request whatever the target)."""
    ms = float(value)
    if not 0.0 <= ms < math.inf:
        raise ValueError(f"{name} {value!r} is not a time in ms")
    return ms


def check_answer(answer: dict[str, Any], classes: int | None) -> None:
    """ValueError unless an upstream's answer is one a client can use: a label among the classes,
    and a probability for each class, finite, in [0, 1], summing to 1 (an upstream serving another
    model, or a broken one, answered label 99 with no probabilities, and the edge relayed it)."""
    label, probabilities = answer.get("label"), answer.get("probabilities")
    if not isinstance(probabilities, list) or not probabilities or not all(isinstance(p, (int, float)) and not isinstance(p, bool) for p in probabilities):
        raise ValueError(f"probabilities {str(probabilities)[:80]} are not a list of numbers")
    if classes is not None and len(probabilities) != classes:
        raise ValueError(f"{len(probabilities)} probabilities for {classes} classes")
    if not all(0.0 <= p <= 1.0 for p in probabilities) or abs(math.fsum(probabilities) - 1.0) > 1e-3:  # (NaN fails too)
        raise ValueError(f"probabilities {str(probabilities)[:80]} are not a distribution (each in [0, 1], summing to 1)")
    if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(probabilities):
        raise ValueError(f"label {label!r} is not one of the {len(probabilities)} classes")
    if probabilities[label] < max(probabilities) - 1e-6:  # (relayed as it came: class 0 at 0.9 answered as 3)
        raise ValueError(f"label {label} is not the most probable class ({probabilities.index(max(probabilities))}: {max(probabilities):.3g})")
    if not isinstance(answer.get("model"), str) or not isinstance(answer.get("served_by", ""), str):
        raise ValueError("model or served_by is not a string")
    for name in ("variants", "fallbacks"):  # relayed to the client as they came: a malformed one was refused only then, after the call had counted as a success
        notes = answer.get(name, [])
        if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
            raise ValueError(f"{name} {str(notes)[:80]} is not a list of strings")


@dataclass(frozen=True)
class Route:
    """Where one request goes, and why."""

    target: str  # "local" or an upstream's name
    reason: str
    expected_ms: float | None = None
    budget_ms: float | None = None  # the time an upstream may take before the edge answers itself


def choose_route(local_accuracy: float, local_ms: float, target_ms: float, upstreams: list[Upstream], payload_bytes: int, margin: float = 0.005) -> Route:
    """Local unless an upstream is expected to answer in the time it may take and either be more
    accurate (by `margin`) or be in time where the local answer would not. The time it may take:
    when the local answer would be in time, what the target leaves after it (an upstream that fails
    is then still answered for in time, locally); when it would be late, the whole target."""
    local_in_time = local_ms <= target_ms
    budget_ms = target_ms - local_ms if local_in_time else target_ms
    best: Route | None = None
    best_accuracy = local_accuracy
    for up in upstreams:
        if not up.breaker.allow() or up.accuracy is None:
            continue
        expected = up.link.expected_ms(payload_bytes, up.compute_ms)
        limit_ms = min(budget_ms, up.timeout_s * 1e3)  # (each call is cut at the upstream's timeout: one expected past it never answers)
        if expected is None or expected > limit_ms:
            continue
        if up.accuracy > best_accuracy + margin or (not local_in_time and best is None):
            reason = (
                f"{up.name}: expected {expected:.1f} ms <= {budget_ms:.1f} ms of the {target_ms:g} ms target, accuracy {up.accuracy:.4f} vs local {local_accuracy:.4f}"
                + ("" if local_in_time else f" (local would take {local_ms:.1f} ms)")
            )
            best, best_accuracy = Route(up.name, reason, expected, budget_ms), max(up.accuracy, best_accuracy)
    if best is not None:
        return best
    return Route("local", f"local: expected {local_ms:.1f} ms, accuracy {local_accuracy:.4f}; no upstream is better within {target_ms:g} ms", local_ms)
