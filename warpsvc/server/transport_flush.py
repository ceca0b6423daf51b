"""Wait, before gRPC stops, until the kernel has delivered what this process sent.

Why: ``server.stop()`` sends GOAWAY, and chttp2 closes a connection as soon as its last stream
is done. A stream is done once its frames are handed to the socket, not once the peer has them:
up to several MB can still sit in the kernel's send queue (the peer is still reading an 8 MB
JacobianDeterminant). If the peer's WINDOW_UPDATE or PING frames are unread in the receive
queue at that ``close()``, Linux answers with a reset instead of a FIN and drops the send queue:
the client sees UNAVAILABLE "Connection reset by peer", its response lost after the handler
ended OK (docs/service.md, "Draining").

The kernel says how much is outstanding: ``/proc/self/net/tcp{,6}`` lists every TCP socket with
``tx_queue`` = bytes written but not yet acknowledged by the peer (on loopback the peer's kernel
acknowledges what it buffers, so 0 means "in the peer's receive queue", which a reset does not
discard). The sockets are this process's when their inode is one of ``/proc/self/fd``.
Linux only; elsewhere :func:`unsent_bytes` returns ``None`` and :func:`wait_sent` returns at once.
"""

from __future__ import annotations

import os
import time

ESTABLISHED = "01"
POLL_S = 0.01
SETTLE_POLLS = 3  # consecutive polls at 0: bytes a finishing call writes between two polls count


def _own_socket_inodes(proc: str) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"{proc}/fd"):
        try:
            target = os.readlink(f"{proc}/fd/{fd}")
        except OSError:  # closed between listdir and readlink
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def unsent_bytes(local_port: int | None = None, proc: str = "/proc/self") -> int | None:
    """Bytes this process's established TCP sockets (on ``local_port`` if given) have written and
    the peers have not acknowledged; ``None`` where ``/proc`` does not tell (not Linux).

    Row format (``proc_net_tcp.rst``): ``sl local rem st tx_queue:rx_queue ... uid timeout inode``
    with ``local`` = ``ADDR:PORT`` in hex."""
    try:
        inodes = _own_socket_inodes(proc)
    except OSError:
        return None
    total, seen = 0, False
    for table in ("tcp", "tcp6"):
        try:
            with open(f"{proc}/net/{table}") as fh:
                rows = fh.read().splitlines()[1:]
        except OSError:
            continue
        seen = True
        for row in rows:
            cols = row.split()
            if len(cols) < 10 or cols[3] != ESTABLISHED or cols[9] not in inodes:
                continue
            if local_port is not None and int(cols[1].rsplit(":", 1)[1], 16) != local_port:
                continue
            total += int(cols[4].split(":")[0], 16)
    return total if seen else None


def wait_sent(timeout: float, local_port: int | None = None) -> bool:
    """Poll every 10 ms until :func:`unsent_bytes` reads 0 on :data:`SETTLE_POLLS` polls in a row,
    at most ``timeout`` s. True when flushed (or unknowable); False if bytes were still outstanding
    at the timeout (a peer that stopped reading: the grace bounds how long it can hold a drain).
    With no time left it reads once: 0 then is True."""
    deadline = time.monotonic() + max(0.0, timeout)
    zeros = 0
    while True:
        left = unsent_bytes(local_port)
        if left is None:
            return True
        zeros = zeros + 1 if left == 0 else 0
        if zeros >= SETTLE_POLLS:
            return True
        if time.monotonic() >= deadline:
            return left == 0  # a grace of 0 still polls once
        time.sleep(POLL_S)
