"""transport_flush against real loopback sockets: the kernel's count of unacknowledged bytes is
the oracle (a peer that does not read leaves them queued; once it reads, they reach 0)."""

from __future__ import annotations

import socket
import sys
import threading
import time

import pytest

from warpsvc.server import transport_flush

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="/proc/self/net/tcp is Linux's")


@pytest.fixture
def stalled_pair():
    """(sender, receiver, listener): the sender has written until its buffers are full, the
    receiver has read nothing."""
    listener = socket.create_server(("127.0.0.1", 0))
    receiver_box = []
    accept = threading.Thread(target=lambda: receiver_box.append(listener.accept()[0]))
    accept.start()
    sender = socket.create_connection(listener.getsockname())
    accept.join(5)
    receiver = receiver_box[0]
    sender.setblocking(False)
    chunk = b"x" * 65536
    sent = 0
    try:
        while sent < 64 << 20:
            sent += sender.send(chunk)
    except BlockingIOError:
        pass
    yield sender, receiver, listener, sent
    for s in (sender, receiver, listener):
        s.close()


def test_counts_bytes_a_peer_has_not_taken(stalled_pair):
    sender, _receiver, listener, sent = stalled_pair
    own = sender.getsockname()[1]
    unsent = transport_flush.unsent_bytes(local_port=own)
    assert 0 < unsent <= sent
    # the receiving end, on the listener's port, owes nothing
    assert transport_flush.unsent_bytes(local_port=listener.getsockname()[1]) == 0
    assert transport_flush.unsent_bytes() >= unsent


def test_wait_sent_times_out_while_the_peer_does_not_read(stalled_pair):
    sender, _receiver, _listener, _sent = stalled_pair
    t0 = time.monotonic()
    assert transport_flush.wait_sent(0.2, local_port=sender.getsockname()[1]) is False
    assert time.monotonic() - t0 >= 0.2


def test_wait_sent_returns_once_the_peer_has_read_everything(stalled_pair):
    sender, receiver, _listener, sent = stalled_pair
    got = []

    def read_all():
        n = 0
        while n < sent:
            n += len(receiver.recv(1 << 20))
        got.append(n)

    reader = threading.Thread(target=read_all)
    time.sleep(0.05)
    assert transport_flush.unsent_bytes(local_port=sender.getsockname()[1]) > 0
    reader.start()
    assert transport_flush.wait_sent(10, local_port=sender.getsockname()[1]) is True
    reader.join(10)
    assert got == [sent]
    assert transport_flush.unsent_bytes(local_port=sender.getsockname()[1]) == 0


def test_unknowable_proc_is_not_a_wait(tmp_path):
    assert transport_flush.unsent_bytes(proc=str(tmp_path / "absent")) is None


def test_no_time_left_reads_once():
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        t0 = time.monotonic()
        assert transport_flush.wait_sent(0.0, local_port=listener.getsockname()[1]) is True  # nothing outstanding
        assert time.monotonic() - t0 < 0.5
    finally:
        listener.close()
