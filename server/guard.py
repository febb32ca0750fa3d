"""What the server answers, to whom, and how much.

The server must not be turned against itself or anyone else (see docs/osc.md, "Safety"):

* **Never itself.** A datagram from the server's own address (its own reply, or a forged
  one) is dropped unread; a reply is never sent to the server's own address (a
  ``/mvae/reply`` or ``--reply-port`` naming it included); and messages the server only
  ever sends (``/mvae/pong``, ``/mvae/error``, notes, ...) are never answered, so two
  servers pointed at each other fall silent too.
* **Only allowed sources.** Loopback always; other sources only inside ``--allow-from``
  networks; everything else is dropped unread.
* **Verified destinations.** A reply to a non-loopback address could be a reflection
  aimed at someone who never asked (UDP sources can be forged). Such a destination first
  gets only ``/mvae/verify i cookie`` — never larger than the request that caused it —
  and nothing of the request is done; once the client echoes ``/mvae/verify i cookie``,
  its address is verified for as long as it keeps talking (the lease). The cookie is a
  keyed hash of the address and the time, so nothing is stored for unverified sources; it
  has 24 bits, so Pure Data (whose numbers are float32) can echo it exactly, and wrong
  guesses are limited to :data:`MAX_WRONG_COOKIES` a second for the whole server.
  The host named by ``--reply-host`` is trusted: the operator chose it.
* **A byte cap per destination.** Replies to one address are capped at
  ``reply_rate`` bytes per second (a token bucket one second deep); what exceeds it is
  dropped and counted.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from melodyvae.server.protocol import PREFIX
from melodyvae.server.state import Addr, BoundedMap

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

VERIFY_ADDRESS = f"{PREFIX}/verify"
REPLY_ADDRESS = f"{PREFIX}/reply"
# Addresses the server sends and never accepts: answering them is how loops start.
REPLY_ONLY = frozenset(f"{PREFIX}/{name}" for name in (
    "pong", "error", "melody/begin", "melody/end", "note", "noteon", "noteoff",
    "answer/begin", "answer/end"))
COOKIE_PERIOD_S = 600.0  # a cookie stays valid for one to two periods
DEFAULT_REPLY_RATE = 512 * 1024  # bytes per second to one destination
DEFAULT_LEASE_S = 600.0  # seconds a stream plays, and a verified address stays so, unheard
COOKIE_BITS = 24  # exact in a float32
MAX_WRONG_COOKIES = 50.0  # wrong /mvae/verify cookies taken per second (then none is)


def host_of(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address ``host`` names (an IPv4-mapped IPv6 address as IPv4), or None."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_loopback(host: str) -> bool:
    ip = host_of(host)
    return ip is not None and ip.is_loopback


def is_wildcard(host: str) -> bool:
    ip = host_of(host)
    return ip is not None and ip.is_unspecified


def parse_network(text: str) -> Network:
    """An ``--allow-from`` network: ``192.168.1.0/24``, ``10.0.0.5``, ``fd00::/8``."""
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError as e:
        raise ValueError(f"{text!r} is not an IP network (write e.g. 192.168.1.0/24)") from e


class LocalAddresses:
    """Whether an IP address is one of this machine's (a bind test, remembered)."""

    def __init__(self) -> None:
        self._known: BoundedMap[str, bool] = BoundedMap(256)
        self._lock = threading.Lock()

    def __contains__(self, host: str) -> bool:
        ip = host_of(host)
        if ip is None:
            return False
        if ip.is_loopback or ip.is_unspecified:
            return True
        with self._lock:
            known = self._known.get(str(ip))
        if known is not None:
            return known
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.bind((str(ip), 0))
            local = True
        except OSError:
            local = False
        with self._lock:
            self._known.put(str(ip), local)
        return local


@dataclass
class GuardStats:
    own: int = 0  # datagrams from the server's own address, dropped unread
    blocked: int = 0  # datagrams from outside loopback and --allow-from, dropped unread
    ignored: int = 0  # messages of addresses the server only sends, dropped
    challenged: int = 0  # requests to unverified destinations answered by /mvae/verify
    throttled: int = 0  # reply datagrams dropped: over the byte cap, or to itself
    refused: int = 0  # destinations that answered "port unreachable"
    expired: int = 0  # streams ended after the lease without a message


class _Bucket:
    __slots__ = ("tokens", "at")

    def __init__(self, tokens: float, at: float) -> None:
        self.tokens, self.at = tokens, at


class Guard:
    """The checks above, shared by the network thread and every thread that sends."""

    def __init__(self, allow_from: Sequence[Network] = (), reply_rate: int = DEFAULT_REPLY_RATE,
                 lease: float = DEFAULT_LEASE_S, max_destinations: int = 256,
                 trusted_host: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.allow_from = tuple(allow_from)
        self.trusted_host = trusted_host  # --reply-host: replies go there by the operator's word
        self.reply_rate = reply_rate
        self.lease = lease
        self.clock = clock
        self.own: Addr | None = None  # the listening address, once bound
        self.local = LocalAddresses()
        self.stats = GuardStats()
        self._secret = os.urandom(32)
        self._lock = threading.Lock()
        self._buckets: BoundedMap[Addr, _Bucket] = BoundedMap(max_destinations)
        self._verified: BoundedMap[Addr, float] = BoundedMap(max_destinations)  # last heard
        self._guesses = _Bucket(MAX_WRONG_COOKIES, clock())  # wrong cookies allowed

    # ------------------------------------------------------------ who
    def is_own(self, addr: Addr) -> bool:
        """Whether ``addr`` is the server's own listening address."""
        if self.own is None or addr[1] != self.own[1]:
            return False
        own_host = self.own[0]
        if host_of(addr[0]) == host_of(own_host):
            return True
        return is_wildcard(own_host) and addr[0] in self.local or (
            is_loopback(own_host) and is_loopback(addr[0]))

    def allowed(self, host: str) -> bool:
        """Whether datagrams from ``host`` are read at all."""
        ip = host_of(host)
        if ip is None:
            return False
        return ip.is_loopback or any(ip in net for net in self.allow_from
                                     if net.version == ip.version)

    def trusted(self, dest: Addr) -> bool:
        """Whether replies may go to ``dest`` without a cookie: a loopback address (no
        packet from the network can carry a loopback source), the ``--reply-host``, or one
        verified and heard within the lease."""
        if is_loopback(dest[0]) or dest[0] == self.trusted_host:
            return True
        with self._lock:
            heard = self._verified.get(dest)
        return heard is not None and self.clock() - heard <= self.lease

    def heard(self, dest: Addr) -> None:
        """A message whose replies go to ``dest``: a verified address stays verified."""
        with self._lock:
            if self._verified.get(dest) is not None:
                self._verified.put(dest, self.clock())

    # ------------------------------------------------------------ cookies
    def cookie(self, dest: Addr, period: int | None = None) -> int:
        """The cookie for ``dest`` now (or in ``period``): COOKIE_BITS bits of an HMAC."""
        if period is None:
            period = int(time.time() // COOKIE_PERIOD_S)
        text = f"{dest[0]}|{dest[1]}|{period}".encode()
        digest = hmac.new(self._secret, text, hashlib.sha256).digest()
        return int(struct.unpack(">I", digest[:4])[0] >> (32 - COOKIE_BITS))

    def verify(self, dest: Addr, cookie: int) -> bool:
        """Take a cookie echoed for ``dest``; True (and ``dest`` verified) when it is the
        cookie of this period or the last, and wrong guesses have not used up their rate."""
        now = self.clock()
        with self._lock:
            bucket = self._guesses
            bucket.tokens = min(MAX_WRONG_COOKIES,
                                bucket.tokens + max(0.0, now - bucket.at) * MAX_WRONG_COOKIES)
            bucket.at = now
            if bucket.tokens < 1.0:
                return False
        period = int(time.time() // COOKIE_PERIOD_S)
        if not any(hmac.compare_digest(cookie.to_bytes(4, "big"),
                                       self.cookie(dest, p).to_bytes(4, "big"))
                   for p in (period, period - 1)):
            with self._lock:
                self._guesses.tokens -= 1.0
            return False
        with self._lock:
            self._verified.put(dest, self.clock())
        return True

    def forget(self, dest: Addr) -> None:
        with self._lock:
            self._verified.pop(dest)

    # ------------------------------------------------------------ how much
    def may_send(self, nbytes: int, dest: Addr) -> bool:
        """Whether a reply of ``nbytes`` may go to ``dest`` now (and take its share of the
        byte cap). Never to the server itself."""
        if self.is_own(dest):
            with self._lock:
                self.stats.throttled += 1
            return False
        now = self.clock()
        with self._lock:
            bucket = self._buckets.get(dest)
            if bucket is None:
                bucket = _Bucket(float(self.reply_rate), now)
                self._buckets.put(dest, bucket)
            bucket.tokens = min(float(self.reply_rate),
                                bucket.tokens + max(0.0, now - bucket.at) * self.reply_rate)
            bucket.at = now
            if bucket.tokens < nbytes:
                self.stats.throttled += 1
                return False
            bucket.tokens -= nbytes
            return True
