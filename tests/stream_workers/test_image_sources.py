"""Images by reference are fetched under a policy: roots, regular files, addresses, deadlines, sizes.

Servers are on loopback, started by the tests; loopback is refused unless allow-listed, so the
policy of most tests allow-lists 127.0.0.1 and one test checks the refusal without it.
"""

from __future__ import annotations

import ipaddress
import os
import time
from pathlib import Path

import pytest

from stream_workers.image_sources import FetchOutcome, ImageFetchError, ImagePolicy, fetch, fetch_many, non_public_kind
from tests.helpers import ImageServers

BIG = 10_000_000  # the 10 MB image of issue 8


@pytest.fixture(scope="module")
def photo(data_dir: Path) -> bytes:
    return next((data_dir / "images").glob("*.jpg")).read_bytes()


@pytest.fixture(scope="module")
def servers(photo):
    with ImageServers(photo) as running:
        yield running


@pytest.fixture(scope="module")
def server(servers) -> str:
    return servers.url


@pytest.fixture(scope="module")
def silent_server(servers) -> str:
    return servers.silent_url


TRUSTED = ImagePolicy(allowed_hosts=("127.0.0.1",), fetch_timeout_s=1.0, batch_timeout_s=1.5)


def outcome_of(uri: str, policy: ImagePolicy) -> FetchOutcome:
    with pytest.raises(ImageFetchError) as caught:
        fetch(uri, policy)
    return caught.value.outcome


# --- http(s) ----------------------------------------------------------------------------------------
def test_an_http_image_from_an_allow_listed_host_arrives_byte_for_byte(server, photo):
    assert fetch(f"{server}/photo.jpg", TRUSTED) == photo
    assert fetch(f"{server}/photo.jpg", ImagePolicy(allowed_hosts=("127.0.0.0/8",))) == photo  # a CIDR


def test_loopback_is_refused_without_the_allow_list(server):
    error = pytest.raises(ImageFetchError, fetch, f"{server}/photo.jpg", ImagePolicy()).value
    assert error.outcome is FetchOutcome.REFUSED and "loopback" in str(error)
    port = server.rsplit(":", 1)[1]
    assert outcome_of(f"http://localhost:{port}/photo.jpg", ImagePolicy()) is FetchOutcome.REFUSED


@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "0.0.0.0", "224.0.0.1",
    "240.0.0.1", "100.64.0.1", "::1", "::", "fe80::1", "fc00::1", "ff02::1", "::ffff:127.0.0.1",
    "::ffff:169.254.169.254", "2002:7f00:1::1",
])
def test_non_public_addresses_are_refused_v4_and_v6(address):
    assert non_public_kind(ipaddress.ip_address(address)) is not None
    host = f"[{address}]" if ":" in address else address
    assert outcome_of(f"http://{host}:9/x.jpg", ImagePolicy()) is FetchOutcome.REFUSED


def test_public_addresses_pass_the_address_check():
    for address in ("8.8.8.8", "2001:4860:4860::8888", "151.101.1.1"):
        assert non_public_kind(ipaddress.ip_address(address)) is None


def test_a_missing_http_image_is_not_found(server):
    assert outcome_of(f"{server}/missing.jpg", TRUSTED) is FetchOutcome.NOT_FOUND


def test_redirects_are_followed_up_to_the_limit_and_each_hop_is_checked(server, photo):
    assert fetch(f"{server}/redirect/3", TRUSTED) == photo
    assert outcome_of(f"{server}/redirect/4", TRUSTED) is FetchOutcome.TOO_MANY_REDIRECTS
    port = server.rsplit(":", 1)[1]
    # the allow-listed address redirects to one that is not allow-listed: refused at that hop
    assert outcome_of(f"{server}/redirect-to?http://[::1]:{port}/photo.jpg", TRUSTED) is FetchOutcome.REFUSED
    assert outcome_of(f"{server}/redirect-to?http://169.254.169.254/latest/meta-data/", TRUSTED) is \
        FetchOutcome.REFUSED
    assert outcome_of(f"{server}/redirect-to?file:///etc/passwd", TRUSTED) is FetchOutcome.REFUSED


def test_a_10_mb_image_is_refused_whether_announced_or_streamed(server):
    assert outcome_of(f"{server}/big.jpg", TRUSTED) is FetchOutcome.TOO_LARGE
    assert outcome_of(f"{server}/big-unannounced.jpg", TRUSTED) is FetchOutcome.TOO_LARGE


@pytest.mark.parametrize("path", ["/trickle.jpg", "/trickle-headers.jpg"])
def test_a_trickling_server_is_cut_off_at_the_fetch_deadline(server, path):
    start = time.monotonic()
    assert outcome_of(f"{server}{path}", TRUSTED) is FetchOutcome.TIMEOUT
    assert time.monotonic() - start < TRUSTED.fetch_timeout_s + 1.5  # the trickle lasts minutes


def test_a_batch_of_silent_servers_costs_one_batch_deadline_not_one_per_message(silent_server, server, photo):
    uris = {i: f"{silent_server}/{i}.jpg" for i in range(20)} | {"good": f"{server}/photo.jpg"}
    start = time.monotonic()
    results = fetch_many(uris, TRUSTED)
    assert time.monotonic() - start < TRUSTED.batch_timeout_s + 1.5  # not 20 x the fetch deadline
    assert results["good"] == photo
    assert all(isinstance(results[i], ImageFetchError) and results[i].outcome is FetchOutcome.TIMEOUT
               for i in range(20))


def test_the_batch_deadline_bounds_fetches_waiting_for_a_thread(silent_server):
    policy = ImagePolicy(allowed_hosts=("127.0.0.1",), fetch_timeout_s=2.0, batch_timeout_s=1.0, max_parallel=2)
    start = time.monotonic()
    results = fetch_many({i: f"{silent_server}/{i}.jpg" for i in range(6)}, policy)
    assert time.monotonic() - start < policy.batch_timeout_s + 1.5  # not 3 rounds of the fetch deadline
    assert {r.outcome for r in results.values()} == {FetchOutcome.TIMEOUT}


def test_an_unsupported_scheme_is_refused():
    assert outcome_of("ftp://example.org/x.jpg", TRUSTED) is FetchOutcome.REFUSED


# --- file:// ----------------------------------------------------------------------------------------
@pytest.fixture
def root(tmp_path: Path, photo: bytes) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    (root / "photo.jpg").write_bytes(photo)
    return root


def test_file_uris_are_refused_when_no_root_is_configured(root):
    assert outcome_of((root / "photo.jpg").as_uri(), ImagePolicy()) is FetchOutcome.REFUSED


def test_a_file_under_a_root_is_read_and_one_outside_is_refused(root, photo, tmp_path):
    policy = ImagePolicy(file_roots=(root,))
    assert fetch((root / "photo.jpg").as_uri(), policy) == photo
    assert outcome_of("file:///etc/passwd", policy) is FetchOutcome.REFUSED
    assert outcome_of(f"file://{root}/../../../../etc/passwd", policy) is FetchOutcome.REFUSED
    (tmp_path / "secret.jpg").write_bytes(photo)
    assert outcome_of(f"file://{root}/%2E%2E/secret.jpg", policy) is FetchOutcome.REFUSED
    assert outcome_of((root / "missing.jpg").as_uri(), policy) is FetchOutcome.NOT_FOUND


def test_a_symlink_is_resolved_and_checked_against_the_roots(root, photo, tmp_path):
    policy = ImagePolicy(file_roots=(root,))
    (tmp_path / "outside.jpg").write_bytes(photo)
    (root / "escape.jpg").symlink_to(tmp_path / "outside.jpg")
    (root / "alias.jpg").symlink_to(root / "photo.jpg")
    assert outcome_of((root / "escape.jpg").as_uri(), policy) is FetchOutcome.REFUSED
    assert fetch((root / "alias.jpg").as_uri(), policy) == photo


def test_a_fifo_under_a_root_is_refused_at_once_without_blocking(root):
    os.mkfifo(root / "pipe.jpg")
    start = time.monotonic()
    error = pytest.raises(ImageFetchError, fetch, (root / "pipe.jpg").as_uri(), ImagePolicy(file_roots=(root,))).value
    assert time.monotonic() - start < 2  # a blocking open would never return
    assert error.outcome is FetchOutcome.REFUSED
    assert str(error) == f"refused: {(root / 'pipe.jpg').as_uri()}: a FIFO, not a regular file"


def test_devices_and_directories_are_refused_even_under_a_root(root):
    policy = ImagePolicy(file_roots=(Path("/dev"), root))
    for uri in ("file:///dev/zero", "file:///dev/urandom", "file:///dev/null", root.as_uri()):
        start = time.monotonic()
        assert outcome_of(uri, policy) is FetchOutcome.REFUSED
        assert time.monotonic() - start < 2  # reading /dev/zero would not end


def test_an_oversized_file_is_refused(root, photo):
    (root / "big.jpg").write_bytes(b"\xff" * BIG)
    assert outcome_of((root / "big.jpg").as_uri(), ImagePolicy(file_roots=(root,))) is FetchOutcome.TOO_LARGE
    assert outcome_of((root / "photo.jpg").as_uri(),
                      ImagePolicy(file_roots=(root,), max_bytes=len(photo) - 1)) is FetchOutcome.TOO_LARGE


def test_a_mixed_batch_reports_each_uri_on_its_own(server, root, photo):
    policy = ImagePolicy(file_roots=(root,), allowed_hosts=("127.0.0.1",), fetch_timeout_s=1, batch_timeout_s=1.5)
    results = fetch_many({0: f"{server}/photo.jpg", 1: (root / "photo.jpg").as_uri(), 2: "file:///etc/shadow",
                          3: f"{server}/missing.jpg"}, policy)
    assert results[0] == photo and results[1] == photo
    assert results[2].outcome is FetchOutcome.REFUSED and results[3].outcome is FetchOutcome.NOT_FOUND
