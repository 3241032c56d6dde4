"""Getting a listing's image bytes by reference (file:// or http(s)://) under an explicit policy.

Image URIs come from untrusted messages, so every fetch is bounded:

- ``file://`` only under the configured roots (none by default: file:// refused), only regular
  files. The path is resolved (symlinks followed) and checked against the roots, opened with
  ``O_NOFOLLOW | O_NONBLOCK`` (a FIFO never blocks the open), then ``fstat``-ed: a FIFO, device
  or directory is refused without a read, and the opened file's real path is checked again.
- ``http(s)://``: the host is resolved once; every address must be public (no loopback,
  private, link-local, multicast, reserved or unspecified address, v4 or v6, IPv4-mapped and
  6to4/Teredo included) unless the host or a CIDR holding the address is in the allow-list; the
  connection goes to the checked address (no second lookup, so no DNS-rebinding gap) with the
  original host for the Host header and TLS. Redirects are followed by hand, at most
  ``max_redirects``, each hop checked again.
- One total deadline per fetch (connect, headers and body together: a watchdog shuts the socket
  at the deadline, so a server trickling a byte a second is cut off), one deadline per batch
  (all fetches of a batch run in parallel), and a size cap while streaming.

Every failure is an :class:`ImageFetchError` whose ``outcome`` is a stable code
(:class:`FetchOutcome`) for metrics and for the note on the prediction.
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import socket
import stat
import threading
import time
from collections.abc import Hashable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote, urljoin, urlsplit

from rakuten_stream.settings import ImageSettings

K = TypeVar("K", bound=Hashable)
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_CHUNK = 64 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class FetchOutcome(StrEnum):
    """What became of one image reference (a metric label and the start of the prediction's note)."""

    OK = "ok"
    REFUSED = "refused"  # the policy says no: scheme, roots, not a regular file, address
    NOT_FOUND = "not_found"
    TOO_LARGE = "too_large"
    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"  # name does not resolve, connection refused or reset
    HTTP_ERROR = "http_error"  # any other non-2xx status, or a broken response
    TOO_MANY_REDIRECTS = "too_many_redirects"


class ImageFetchError(OSError):
    def __init__(self, outcome: FetchOutcome, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome

    def __str__(self) -> str:
        return f"{self.outcome.value}: {self.args[0]}"


@dataclass(frozen=True)
class ImagePolicy:
    """Limits on images by reference and inline (the settings' images group, as one value)."""

    max_bytes: int = 5_000_000
    max_pixels: int = 40_000_000
    fetch_timeout_s: float = 3.0
    batch_timeout_s: float = 5.0
    file_roots: tuple[Path, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    max_redirects: int = 3
    max_parallel: int = 64
    _real_roots: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _hosts: frozenset[str] = field(init=False, repr=False, compare=False)
    _networks: tuple[IPNetwork, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_real_roots", tuple(os.path.realpath(r) for r in self.file_roots))
        hosts, networks = set(), []
        for entry in self.allowed_hosts:
            entry = entry.strip().lower()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                hosts.add(entry)
        object.__setattr__(self, "_hosts", frozenset(hosts))
        object.__setattr__(self, "_networks", tuple(networks))

    @classmethod
    def from_settings(cls, images: ImageSettings) -> ImagePolicy:
        return cls(max_bytes=images.max_bytes, max_pixels=images.max_pixels, fetch_timeout_s=images.fetch_timeout_s,
                   batch_timeout_s=images.batch_timeout_s, file_roots=tuple(images.file_roots),
                   allowed_hosts=tuple(images.allowed_hosts), max_redirects=images.max_redirects,
                   max_parallel=images.max_parallel_fetches)

    def within_roots(self, real_path: str) -> bool:
        return any(os.path.commonpath([real_path, root]) == root for root in self._real_roots)

    def address_refusal(self, host: str, address: IPAddress) -> str | None:
        """Why connecting to ``address`` (for ``host``) is refused, or None when it is allowed."""
        if host.lower() in self._hosts or any(address in n for n in self._networks if n.version == address.version):
            return None
        kind = non_public_kind(address)
        return None if kind is None else f"{host} resolves to {kind} address {address} (not in the allow-list)"


def non_public_kind(address: IPAddress) -> str | None:
    """'loopback', 'private', ... for an address a fetch must not reach by default; None if public."""
    if isinstance(address, ipaddress.IPv6Address):
        for embedded in (address.ipv4_mapped, address.sixtofour, address.teredo and address.teredo[1]):
            if embedded:
                kind = non_public_kind(embedded)
                if kind is not None:
                    return f"{kind} (embedded in IPv6)"
    for kind in ("unspecified", "loopback", "link_local", "multicast", "private", "reserved"):
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    return None if address.is_global else "non-global"


# --- file:// --------------------------------------------------------------------------------------
def _fetch_file(uri: str, path: str, host: str, policy: ImagePolicy) -> bytes:
    if host not in ("", "localhost"):
        raise ImageFetchError(FetchOutcome.REFUSED, f"{uri}: file:// on another host")
    if not policy.file_roots:
        raise ImageFetchError(FetchOutcome.REFUSED, f"{uri}: file:// is refused (no image file roots configured)")
    path = unquote(path)
    if "\x00" in path or not os.path.isabs(path):
        raise ImageFetchError(FetchOutcome.REFUSED, f"{uri}: not an absolute path")
    real = os.path.realpath(path)
    if not policy.within_roots(real):
        raise ImageFetchError(FetchOutcome.REFUSED, f"{uri}: outside the image file roots")
    try:
        _check_regular(uri, os.stat(real).st_mode)  # refuse a FIFO or device before opening it
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except ImageFetchError:
        raise
    except FileNotFoundError:
        raise ImageFetchError(FetchOutcome.NOT_FOUND, f"{uri}: no such file") from None
    except OSError as exc:  # ELOOP: swapped for a symlink since realpath; EACCES; ...
        raise ImageFetchError(FetchOutcome.REFUSED, f"{uri}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)  # what was opened, not what the name pointed to a moment ago
        _check_regular(uri, st.st_mode)
        opened = f"/proc/self/fd/{fd}"
        if os.path.exists(opened) and not policy.within_roots(os.path.realpath(opened)):
            raise ImageFetchError(FetchOutcome.REFUSED, f"{uri}: outside the image file roots")
        if st.st_size > policy.max_bytes:
            raise ImageFetchError(FetchOutcome.TOO_LARGE, f"{uri}: {st.st_size} bytes, over the "
                                  f"{policy.max_bytes}-byte limit")
        chunks, size = [], 0
        while chunk := os.read(fd, min(_CHUNK, policy.max_bytes + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > policy.max_bytes:  # the file grew after fstat
                raise ImageFetchError(FetchOutcome.TOO_LARGE, f"{uri}: over the {policy.max_bytes}-byte limit")
        return b"".join(chunks)
    except OSError as exc:
        if isinstance(exc, ImageFetchError):
            raise
        raise ImageFetchError(FetchOutcome.UNREACHABLE, f"{uri}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _check_regular(uri: str, mode: int) -> None:
    if not stat.S_ISREG(mode):
        kind = ("directory" if stat.S_ISDIR(mode) else "FIFO" if stat.S_ISFIFO(mode)
                else "device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "socket" if stat.S_ISSOCK(mode)
                else "special file")
        raise ImageFetchError(FetchOutcome.REFUSED, f"{uri}: a {kind}, not a regular file")


# --- http(s):// -----------------------------------------------------------------------------------
def _pinned_connection(scheme: str, host: str, port: int, address: IPAddress, timeout_s: float
                       ) -> http.client.HTTPConnection:
    """A connection to ``address`` that speaks to ``host`` (Host header, TLS SNI and certificate)."""
    cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
    conn = cls(host, port, timeout=timeout_s)
    conn._create_connection = lambda _addr, timeout, source: socket.create_connection(  # type: ignore[attr-defined]
        (str(address), port), timeout, source)
    return conn


def _resolve_checked(uri: str, host: str, port: int, policy: ImagePolicy) -> IPAddress:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ImageFetchError(FetchOutcome.UNREACHABLE, f"{uri}: {host} does not resolve ({exc})") from None
    addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))
    for address in addresses:  # every address must pass: a mix of public and private is refused
        refusal = policy.address_refusal(host, address)
        if refusal is not None:
            raise ImageFetchError(FetchOutcome.REFUSED, f"{uri}: {refusal}")
    if not addresses:
        raise ImageFetchError(FetchOutcome.UNREACHABLE, f"{uri}: {host} has no address")
    return addresses[0]


def _fetch_http(uri: str, policy: ImagePolicy, deadline: float) -> bytes:
    current = uri
    for _hop in range(policy.max_redirects + 1):
        parts = urlsplit(current)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ImageFetchError(FetchOutcome.REFUSED, f"{uri}: redirected to an unsupported URI {current!r}")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ImageFetchError(FetchOutcome.REFUSED, f"{uri}: bad port in {current!r}") from None
        address = _resolve_checked(uri, parts.hostname, port, policy)
        status, location, body = _get(uri, parts, port, address, policy, deadline)
        if status in _REDIRECTS and location:
            current = urljoin(current, location)
            continue
        if 200 <= status < 300:
            return body
        outcome = FetchOutcome.NOT_FOUND if status in (404, 410) else FetchOutcome.HTTP_ERROR
        raise ImageFetchError(outcome, f"{uri}: HTTP {status}")
    raise ImageFetchError(FetchOutcome.TOO_MANY_REDIRECTS, f"{uri}: more than {policy.max_redirects} redirects")


def _get(uri: str, parts, port: int, address: IPAddress, policy: ImagePolicy, deadline: float
         ) -> tuple[int, str | None, bytes]:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise ImageFetchError(FetchOutcome.TIMEOUT, f"{uri}: no time left for the fetch")
    conn = _pinned_connection(parts.scheme, parts.hostname, port, address, remaining)
    watchdog = threading.Timer(remaining, _abort, (conn,))
    watchdog.daemon = True
    watchdog.start()
    try:
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("GET", target, headers={"User-Agent": "rakuten-stream", "Accept": "image/*"})
        response = conn.getresponse()
        if response.status in _REDIRECTS or not 200 <= response.status < 300:
            return response.status, response.getheader("Location"), b""
        declared = response.getheader("Content-Length")
        if declared and declared.isdigit() and int(declared) > policy.max_bytes:
            raise ImageFetchError(FetchOutcome.TOO_LARGE, f"{uri}: {declared} bytes announced, over the "
                                  f"{policy.max_bytes}-byte limit")
        chunks, size = [], 0
        while chunk := response.read(min(_CHUNK, policy.max_bytes + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > policy.max_bytes:
                raise ImageFetchError(FetchOutcome.TOO_LARGE, f"{uri}: over the {policy.max_bytes}-byte limit")
            if time.monotonic() >= deadline:
                raise TimeoutError
        if time.monotonic() >= deadline:  # the watchdog cut a body of unknown length short
            raise TimeoutError
        return response.status, None, b"".join(chunks)
    except ImageFetchError:
        raise
    except (TimeoutError, OSError, http.client.HTTPException) as exc:
        if time.monotonic() >= deadline - 0.01 or isinstance(exc, TimeoutError):
            raise ImageFetchError(FetchOutcome.TIMEOUT, f"{uri}: no complete answer within the "
                                  f"{policy.fetch_timeout_s:g} s deadline") from None
        if isinstance(exc, http.client.HTTPException):
            raise ImageFetchError(FetchOutcome.HTTP_ERROR, f"{uri}: broken response ({exc!r})") from None
        raise ImageFetchError(FetchOutcome.UNREACHABLE, f"{uri}: {exc}") from None
    finally:
        watchdog.cancel()
        conn.close()


def _abort(conn: http.client.HTTPConnection) -> None:
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)  # the blocked read returns at once
        except OSError:
            pass


# --- one URI, a batch of URIs -----------------------------------------------------------------------
def fetch(uri: str, policy: ImagePolicy, deadline: float | None = None) -> bytes:
    """The bytes behind ``uri``, or :class:`ImageFetchError` (never anything else, never unbounded)."""
    deadline = min(deadline or float("inf"), time.monotonic() + policy.fetch_timeout_s)
    try:
        parts = urlsplit(uri)
    except ValueError:
        raise ImageFetchError(FetchOutcome.REFUSED, f"{uri[:200]}: not a URI") from None
    if parts.scheme == "file":
        return _fetch_file(uri, parts.path, parts.netloc, policy)
    if parts.scheme in ("http", "https"):
        return _fetch_http(uri, policy, deadline)
    raise ImageFetchError(FetchOutcome.REFUSED, f"{uri[:200]}: unsupported scheme {parts.scheme!r}")


def _fetch_result(uri: str, policy: ImagePolicy, deadline: float) -> bytes | ImageFetchError:
    try:
        return fetch(uri, policy, deadline)
    except ImageFetchError as exc:
        return exc
    except Exception as exc:  # untrusted input: any other failure is this URI's, not the batch's
        return ImageFetchError(FetchOutcome.UNREACHABLE, f"{uri[:200]}: {type(exc).__name__}: {exc}")


def fetch_many(uris: Mapping[K, str], policy: ImagePolicy) -> dict[K, bytes | ImageFetchError]:
    """Fetch a batch's URIs in parallel under one batch deadline (``policy.batch_timeout_s``).

    A fetch still running at the batch deadline is reported as a timeout and left to end at its
    own deadline in the background: the batch does not wait for it.
    """
    if not uris:
        return {}
    deadline = time.monotonic() + policy.batch_timeout_s
    if all(uri.startswith("file://") for uri in uris.values()):  # local, bounded reads: no threads
        return {key: _fetch_result(uri, policy, deadline) for key, uri in uris.items()}
    pool = ThreadPoolExecutor(max_workers=min(policy.max_parallel, len(uris)), thread_name_prefix="image-fetch")
    try:
        futures = {key: pool.submit(_fetch_result, uri, policy, deadline) for key, uri in uris.items()}
        wait(futures.values(), timeout=max(0.0, deadline - time.monotonic()))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    late = ImageFetchError(FetchOutcome.TIMEOUT, f"the batch's {policy.batch_timeout_s:g} s image deadline passed")
    return {key: (future.result() if future.done() and not future.cancelled() else
                  ImageFetchError(late.outcome, f"{uris[key][:200]}: {late.args[0]}"))
            for key, future in futures.items()}
