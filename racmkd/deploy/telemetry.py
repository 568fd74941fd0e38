"""Device telemetry over MQTT (paho-mqtt client, any broker such as Mosquitto).

Topic scheme, one subtree per device of a fleet:

    racmkd/<fleet>/<device>/status      {"online": true|false, ...}  retained; the broker publishes
                                        {"online": false} itself when the device dies (last will)
    racmkd/<fleet>/<device>/resources   the monitor's readings
    racmkd/<fleet>/<device>/variant     the configuration being served and why
    racmkd/<fleet>/<device>/stats       request counts, latency percentiles, offloads

Messages go at QoS 1 (at least once). While the broker is unreachable the device keeps working:
messages wait in a bounded buffer (the oldest are dropped first, and counted) and are sent when the
connection returns. `FleetWatcher` is the orchestrator's side: it follows every device's status
and notices a dead one from its last will.

Both log in to the broker with what the environment holds (`BrokerLogin`): a user name and password
(`RACMKD_MQTT_USERNAME`, `RACMKD_MQTT_PASSWORD`; Mosquitto's password_file) and TLS verified
against a CA (`RACMKD_MQTT_CA_FILE`). A broker open to anonymous clients lets anyone publish a
device's "offline" (the orchestrator then passes it over) or read every device's telemetry.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import ssl
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt

KINDS = ("status", "resources", "variant", "stats")
DEFAULT_PORT = 1883
log = logging.getLogger(__name__)


def broker_address(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """A broker's HOST[:PORT] as (host, port): an IPv6 address in brackets when a port follows
    ([::1]:1883) or bare without one (::1), `default_port` (1883) when none is given. Cut at the last colon,
    "[::1]:18884" kept its brackets and never connected, ":1883" became the host, "::1" port 1."""
    usage = "write HOST[:PORT], e.g. 127.0.0.1:1883, broker.local or [::1]:1883"
    text = text.strip()
    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r}: an IPv6 address in brackets, then nothing or :PORT; {usage}")
        port = rest[1:] if rest else None
    elif text.count(":") > 1:  # a bare IPv6 address: no port can follow it
        host, port = text, None
    else:
        host, colon, port = text.partition(":")
        port = port if colon else None
    if not host:
        raise ValueError(f"{text!r}: no host; {usage}")
    if "://" in text:  # (a URL's two colons made it a "bare IPv6 address": accepted, then never connected)
        raise ValueError(f"{text!r}: a URL; {usage} (the scheme is MQTT's own)")
    if ":" in host and not _is_ipv6(host):
        raise ValueError(f"{text!r}: {host!r} is no IPv6 address; {usage}")
    if any(c.isspace() or c in "/?#@" for c in host):
        raise ValueError(f"{text!r}: {host!r} is no host name; {usage}")
    if port is None:
        return host, default_port
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: invalid port {port!r}, a number in 1-65535; {usage}")
    return host, int(port)


USERNAME_ENV, PASSWORD_ENV, CA_FILE_ENV = "RACMKD_MQTT_USERNAME", "RACMKD_MQTT_PASSWORD", "RACMKD_MQTT_CA_FILE"
SYSTEM_CAS = "system"  # RACMKD_MQTT_CA_FILE=system: TLS, the broker verified against the system's CAs


@dataclass(frozen=True)
class BrokerLogin:
    """How a client proves itself to the broker, and the broker to it: a user name and password,
    and TLS verified against `ca_file` (a PEM bundle, or "system"). Read from the environment, like
    the servers' token: a config file or a command line would show the password (`ps`, the run's
    config.yaml). Empty fields: anonymous, in plain text."""

    username: str = ""
    password: str = ""
    ca_file: str = ""

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> BrokerLogin:
        """The login the environment gives; ValueError naming the variable to fix (checked before a
        server starts: paho raised a bad CA file from its network thread, or a password without a
        user name went unsent while the broker answered "not authorized")."""
        # (a trailing newline, from a secret made of a file written with `echo`, is no part of it)
        username, password, ca_file = (environ.get(name, "").rstrip("\r\n") for name in (USERNAME_ENV, PASSWORD_ENV, CA_FILE_ENV))
        if password and not username:
            raise ValueError(f"${PASSWORD_ENV} is set but ${USERNAME_ENV} is not: MQTT sends a password only with a user name; set both")
        for name, value in ((USERNAME_ENV, username), (PASSWORD_ENV, password)):
            if any(ord(c) < 0x20 for c in value):
                raise ValueError(f"${name} holds a control character; write it without one")
        if ca_file and ca_file != SYSTEM_CAS:
            try:
                ssl.create_default_context(cafile=ca_file)
            except OSError as err:  # FileNotFoundError, and ssl.SSLError for a file holding no certificate
                why = "no such file" if isinstance(err, FileNotFoundError) else f"not a PEM file of CA certificates ({err})"
                raise ValueError(f"${CA_FILE_ENV}={ca_file}: {why}; name the CA bundle that signed the broker's certificate, or write {SYSTEM_CAS!r}") from None
        return cls(username, password, ca_file)

    def apply(self, client: mqtt.Client) -> None:
        """Give `client` the login and TLS settings (before it connects)."""
        if self.username:
            client.username_pw_set(self.username, self.password or None)
        if self.ca_file:
            client.tls_set(ca_certs=system_ca_bundle() if self.ca_file == SYSTEM_CAS else self.ca_file)

    def refusal(self, reason_code: Any) -> str:
        """What a refused connection means, and what to change (paho gave "Not authorized" alone)."""
        if self.username:
            return f"the broker refused the connection ({reason_code}) for user {self.username!r}; check ${USERNAME_ENV} and ${PASSWORD_ENV}"
        return f"the broker refused the connection ({reason_code}); a broker that takes no anonymous clients needs ${USERNAME_ENV} and ${PASSWORD_ENV}"


def system_ca_bundle() -> str | None:
    """None where the system's CA store is there for OpenSSL; else certifi's bundle (httpx's
    dependency): python.org's macOS builds find no CA until their "Install Certificates" step has
    run, and every TLS connection to a broker then failed to verify."""
    paths = ssl.get_default_verify_paths()
    if paths.cafile or paths.capath:
        return None
    try:
        import certifi
    except ImportError:
        return None
    return certifi.where()


def _is_ipv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def topic(fleet: str, device: str, kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown telemetry kind {kind!r}; choose one of {', '.join(KINDS)}")
    for label, name in (("fleet", fleet), ("device", device)):
        if not name or any(c in name for c in "/+#"):
            raise ValueError(f"{label} name {name!r} cannot be part of an MQTT topic (empty, or holds / + #)")
    return f"racmkd/{fleet}/{device}/{kind}"


class TelemetryPublisher:
    """Publishes a device's telemetry; buffers (bounded) while the broker is away."""

    def __init__(self, host: str, port: int, fleet: str, device: str, buffer_size: int = 1000, keepalive_s: int = 5, login: BrokerLogin | None = None) -> None:
        self.fleet, self.device = fleet, device
        self.login = login if login is not None else BrokerLogin.from_environment()
        self.buffer: deque[tuple[str, bytes, bool]] = deque(maxlen=buffer_size)
        self.dropped = 0
        self.sent = 0
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.unreachable = False  # said once per outage in the log, not at every retry
        self.connected = threading.Event()
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"racmkd-{fleet}-{device}", clean_session=True)
        self.client.will_set(topic(fleet, device, "status"), json.dumps({"online": False, "device": device, "reason": "connection lost"}), qos=1, retain=True)
        self.login.apply(self.client)
        self.client.reconnect_delay_set(min_delay=1, max_delay=5)
        # paho's own queue (messages handed over, not yet acknowledged) is bounded too, with room
        # beyond our buffer: at the buffer's size, a queue still full of unacknowledged messages
        # when the broker came back refused the "online" status, leaving a live device marked offline.
        self.client.max_queued_messages_set(2 * buffer_size + 16)
        self._status_due = False  # the "online" status, owed since the last connection until paho takes it
        self._closing = False  # set by `close`: no "online" status after its "offline"
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.connect_async(host, port, keepalive=keepalive_s)
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any = None) -> None:
        if getattr(reason_code, "is_failure", False):
            self._unreachable(self.login.refusal(reason_code))
            return
        if self.unreachable:
            log.warning("telemetry: connected to the MQTT broker at %s again; sending %d buffered message(s)", self.address, len(self.buffer))
        self.unreachable = False
        with self._lock:  # (after `close` has said "offline", nothing says "online" again)
            self._status_due = not self._closing
        self.connected.set()
        self._flush()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        if self.login.ca_file:  # (a TLS handshake that fails is a failed connection to paho, like a closed port)
            self._unreachable(
                f"cannot connect (no broker there, the host does not resolve, no TLS on that port, or a certificate ${CA_FILE_ENV} does not verify)"
            )
        else:
            self._unreachable("cannot connect (no broker there, or the host does not resolve)")

    def _unreachable(self, why: str) -> None:
        """Say so in the log when the broker cannot be reached (nothing did: a mistyped --mqtt
        looked like a working edge); once per outage, as paho retries every few seconds."""
        if not self.unreachable:
            log.error("telemetry: MQTT broker at %s: %s; retrying, messages wait in a buffer of %d", self.address, why, self.buffer.maxlen)
        self.unreachable = True

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any = None) -> None:
        self.connected.clear()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any = None, properties: Any = None) -> None:
        """An acknowledgement frees room in paho's queue, which paho takes after this callback: what
        waits in ours goes on here once earlier acknowledgements made room (it waited for the next
        publish), one message behind at worst."""
        if self.buffer or self._status_due:
            self._flush(blocking=False)

    def publish(self, kind: str, payload: dict[str, Any], retain: bool = False) -> None:
        """Send now if connected, else keep it (bounded) for when the broker is back."""
        message = (topic(self.fleet, self.device, kind), json.dumps({"t": time.time(), **payload}, default=str).encode(), retain)
        with self._lock:
            if len(self.buffer) == self.buffer.maxlen:
                self.dropped += 1  # the oldest message makes room
            self.buffer.append(message)
        if self.connected.is_set():
            self._flush()

    def _flush(self, blocking: bool = True) -> None:
        """Hand paho the owed "online" status, then the buffered messages, oldest first, while it
        takes them. From paho's own thread (`blocking` False) it gives way to a flush under way."""
        if not self._lock.acquire(blocking=blocking):
            return
        try:
            if self._status_due and self.connected.is_set():
                status = json.dumps({"online": True, "device": self.device, "t": time.time()})
                if self.client.publish(topic(self.fleet, self.device, "status"), status, qos=1, retain=True).rc != mqtt.MQTT_ERR_SUCCESS:
                    return  # paho's queue full, or not connected after all: owed still, before anything else
                self._status_due = False
            while self.buffer and self.connected.is_set():
                name, body, retain = self.buffer[0]
                info = self.client.publish(name, body, qos=1, retain=retain)
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    break  # not connected after all: keep it for the next connection
                self.buffer.popleft()
                self.sent += 1
        finally:
            self._lock.release()

    def stats(self) -> dict[str, int | bool]:
        return {"connected": self.connected.is_set(), "buffered": len(self.buffer), "sent": self.sent, "dropped": self.dropped}

    def close(self, offline: bool = True) -> None:
        """Disconnect cleanly (publishing an offline status first), stop the network thread. The
        "online" status a connection still owed is dropped first, under the flush's lock: paho's
        thread sent it after the "offline" (5 in 120 clean shutdowns), and as the disconnect was
        clean the broker sent no last will: a stopped device stayed online at the broker."""
        with self._lock:
            self._closing, self._status_due = True, False
        if offline and self.connected.is_set():
            try:
                self.client.publish(
                    topic(self.fleet, self.device, "status"), json.dumps({"online": False, "device": self.device, "reason": "shut down"}), qos=1, retain=True
                ).wait_for_publish(2.0)
            except (RuntimeError, ValueError):
                pass  # the broker went away meanwhile: its last-will message says offline anyway
        self.client.disconnect()
        self.client.loop_stop()


def broker_for(host: str, port: int | None, fleet: str) -> tuple[str, int]:
    """The broker's address from `--mqtt-host` (HOST[:PORT], as `serve --mqtt` takes it) and
    `--mqtt-port`, checked with the fleet's name; ValueError naming the option to fix. (A fleet
    name holding # or + was paho's traceback, one holding / matched no device; two different ports
    were one passed over in silence.)"""
    try:
        topic(fleet, "device", "status")
    except ValueError as err:
        raise ValueError(f"--fleet-name: {err}") from None
    try:
        host, written = broker_address(host, default_port=0)  # (0: no port written)
    except ValueError as err:
        raise ValueError(f"--mqtt-host: {err}") from None
    if written and port and written != port:
        raise ValueError(f"--mqtt-host / --mqtt-port: two ports, {written} in --mqtt-host and {port} in --mqtt-port: give one")
    return host, written or port or DEFAULT_PORT


def watch_fleet(host: str, port: int, fleet: str, devices: list[str], wait_s: float = 3.0, login: BrokerLogin | None = None) -> FleetWatcher:
    """A watcher that has had `wait_s` to hear every device's retained status (the broker sends them
    at once on subscribing); `connected` tells whether the broker answered at all, `refused` why it
    would not have us. It hears the statuses alone: subscribed to every kind, a watcher of 2,000
    devices publishing each second fell behind the broker (it read 2.3-4.4k of their 6k messages a
    second), and a status read late may be out of date."""
    login_given = {} if login is None else {"login": login}  # (by default, the environment's)
    watcher = FleetWatcher(host, port, fleet, kinds=("status",), **login_given)
    watcher.wait_for(lambda w: bool(w.refused) or all(w.online(d) is not None for d in devices), timeout_s=wait_s)
    return watcher


@dataclass
class FleetWatcher:
    """Follows a fleet's telemetry: which devices are online, and what they last reported (of the
    message `kinds` given: status, resources, variant, stats; none given, all of them)."""

    host: str
    port: int
    fleet: str
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    messages: int = 0
    login: BrokerLogin = field(default_factory=BrokerLogin.from_environment)
    refused: str = ""  # why the broker refused the connection, when it did
    kinds: tuple[str, ...] = ()  # the message kinds to hear; () = all

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.connected = threading.Event()  # the broker took the connection (else every status stays unknown)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"racmkd-watcher-{self.fleet}-{time.monotonic_ns()}")
        self.login.apply(self.client)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect_async(self.host, self.port, keepalive=5)
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any = None) -> None:
        if getattr(reason_code, "is_failure", False):
            self.refused = self.login.refusal(reason_code)
            return
        client.subscribe([(f"racmkd/{self.fleet}/+/{kind}", 1) for kind in self.kinds or ("+",)])
        self.connected.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        """One message, read if it is ours: anything else on the topics (a payload that is not a JSON
        object, a topic that is not UTF-8) is passed over. An exception here would end paho's
        network thread, and a retained bad message would end every watcher that connects after."""
        try:
            parts = message.topic.split("/")
            payload = json.loads(message.payload)
        except (ValueError, RecursionError):  # UnicodeDecodeError included; RecursionError: JSON nested past the parser's depth
            return
        if len(parts) != 4 or not isinstance(payload, dict):
            return
        _, _, device, kind = parts
        with self._lock:
            self.messages += 1
            entry = self.devices.setdefault(device, {"online": None, "counts": {}})
            entry["counts"][kind] = entry["counts"].get(kind, 0) + 1
            entry[kind] = payload
            if kind == "status":  # (a status without a true or false "online" says nothing: {} read as offline, "false" as online)
                online = payload.get("online")
                entry["online"] = online if isinstance(online, bool) else None

    def online(self, device: str) -> bool | None:
        with self._lock:
            return self.devices.get(device, {}).get("online")

    def wait_for(self, predicate: Any, timeout_s: float = 10.0) -> bool:
        """Poll until `predicate(self)` holds or the timeout passes."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        if self.connected.is_set():  # (never connected: paho printed "Client is not connected" on stderr)
            self.client.disconnect()
        self.client.loop_stop()
