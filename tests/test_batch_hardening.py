"""The batch client's findings of issue 13 (and the record/retry traps of issue 10), one test each:
symlinked manifest and lock, sweeping another run's temporary files, non-UTF-8 and
terminal-forging names, inputs swapped for symlinks (racing), decoding without a pixel limit,
ENOSPC; ``attempts`` counting tries, retries in one layer."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import fcntl
import os
import shutil
import struct
import subprocess
import threading
import time
import zlib

import cv2
import grpc
import numpy as np
import pytest

import warpsvc
from test_batch_helpers import all_files, make_align_folder, make_mixed_folder, read_manifest, run_batch
from warpsvc_client.batch import probe, storage
from warpsvc_client.batch.paths import PathError

SHIFT = "1,0,2,0,1,-1"


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width x height`` (the IDAT is a token: it would never decode)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data  # noqa: E731
                                + struct.pack(">I", zlib.crc32(kind + data)))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


# -- issue 10: attempts count tries, retries in one layer -------------------------------------------
@contextlib.contextmanager
def _always_unavailable():
    """A real gRPC server on loopback whose WarpService answers every call UNAVAILABLE; counts calls."""
    calls = []

    def refuse(request, context):
        calls.append(len(request))
        context.abort(grpc.StatusCode.UNAVAILABLE, "down for the test")

    handler = grpc.method_handlers_generic_handler("warpsvc.v1.WarpService", {
        name: grpc.unary_unary_rpc_method_handler(refuse) for name in ("Warp", "Align", "JacobianDeterminant")})
    server = grpc.server(cf.ThreadPoolExecutor(4), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", calls
    finally:
        server.stop(0).wait()


def test_attempts_equal_the_tries_on_the_wire(tmp_path):
    src = tmp_path / "in"
    names = make_mixed_folder(src, 3)
    with _always_unavailable() as (target, calls):
        res = run_batch("warp", src, tmp_path / "out", "--matrix", SHIFT, "--target", target, "--retries", "2",
                        "--server-workers", "1", "--inflight", "1", "--no-report")
    assert res.returncode == 1, res.stderr
    records = read_manifest(tmp_path / "out" / "manifest.jsonl")
    assert sorted(r["input"] for r in records) == names
    for r in records:  # --retries 2: three tries per image, each one a call the server saw
        assert r["status"] == "failed" and "UNAVAILABLE" in r["error"]
        assert r["attempts"] == 3 and len(r["retried"]) == 2, r
    assert len(calls) == 3 * len(names)  # no second retry layer in the gRPC channel


def test_an_align_job_is_one_try(tmp_path):
    src = tmp_path / "in"
    tmpl, _ = make_align_folder(src, 3, seed=3)
    cv2.imwrite(str(tmp_path / "ref.png"), tmpl)
    res = run_batch("align", src, tmp_path / "out", "--reference", tmp_path / "ref.png", "--model", "affine",
                    "--no-report", "--jobs", "1")
    assert res.returncode == 0, res.stderr
    assert [r["attempts"] for r in read_manifest(tmp_path / "out" / "manifest.jsonl")] == [1, 1, 1]


# -- issue 13 item 4 --------------------------------------------------------------------------------
@pytest.mark.parametrize("planted", ["manifest.jsonl", ".warpsvc-batch.lock"])
def test_symlinked_manifest_or_lock_is_refused_not_followed(tmp_path, planted):
    src, out = tmp_path / "in", tmp_path / "out"
    make_mixed_folder(src, 2)
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    os.symlink(victim, out / planted)
    res = run_batch("warp", src, out, "--matrix", SHIFT, "--no-report")
    assert res.returncode == 2 and ("symbolic link" in res.stderr or "through a symlink" in res.stderr), res.stderr
    assert victim.read_text() == "precious\n"
    # planted after planning (a race): the open itself refuses it, for writing or reading
    for flags in (os.O_RDWR | os.O_CREAT | os.O_APPEND, os.O_RDONLY):
        with pytest.raises(PathError, match="symbolic link"):
            storage.LocalStore(str(out)).open_file(planted, flags, "manifest")
    assert victim.read_text() == "precious\n"
    hard = tmp_path / "out2"
    hard.mkdir()
    os.link(victim, hard / planted)  # a hard link is refused too (root can make one to any file)
    res = run_batch("warp", src, hard, "--matrix", SHIFT, "--no-report")
    assert res.returncode == 2 and "hard-linked" in res.stderr, res.stderr
    assert victim.read_text() == "precious\n"


def test_sweep_leaves_other_runs_temporary_files(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    names = make_mixed_folder(src, 3)
    assert run_batch("warp", src, out, "--matrix", SHIFT, "--no-report").returncode == 0
    [ours] = (out / ".warpsvc-batch.lock").read_text().split()
    # a live run writing to out/sub (its own lock held), and a stranger's file in out/ itself
    sub = out / "sub"
    sub.mkdir()
    live_tmp = sub / ".x.png.aaaaaaaaaaaa-12345678.warpsvc-tmp"
    live_tmp.write_bytes(b"in progress")
    stranger = out / ".y.png.bbbbbbbbbbbb-12345678.warpsvc-tmp"
    stranger.write_bytes(b"not ours")
    stale = out / "d0" / f".k000.png.{ours}-12345678.warpsvc-tmp"  # left by our folder's killed run
    stale.write_bytes(b"half")
    with open(sub / ".warpsvc-batch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        lock.write("aaaaaaaaaaaa\n")
        lock.flush()
        res = run_batch("warp", src, out, "--matrix", SHIFT, "--no-report", "--resume")
        assert res.returncode == 0, res.stderr
        assert f"0 ok, 0 failed, {len(names)} skipped" in res.stdout
    assert live_tmp.read_bytes() == b"in progress" and stranger.read_bytes() == b"not ours"
    assert not stale.exists()


def test_hostile_names_are_escaped_for_terminal_and_drawing(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    make_mixed_folder(src, 2)
    bad = os.fsencode(src) + b"/caf\xe9\n\x1b[31mFORGED.png"  # Latin-1 byte: not UTF-8
    shutil.copyfile(src / "d0" / "k000.png", bad)
    broken = os.fsencode(src) + b"/x\nFAILED everything.png"
    with open(broken, "wb") as fh:
        fh.write(b"\x89PNG not really")
    res = run_batch("warp", src, out, "--matrix", SHIFT)  # report on: draws the names
    assert res.returncode == 1, res.stderr  # the broken file fails; the run and its report finish
    assert "1 failed" in res.stdout and "report " in res.stdout and "report failed" not in res.stdout
    for stream in (res.stdout, res.stderr):
        assert "\x1b" not in stream
        assert not any(line.startswith("FORGED") or line.startswith("FAILED everything") for line in
                       stream.splitlines())
    assert "FAILED x\\x0aFAILED everything.png: " in res.stderr, res.stderr  # one line, escaped
    assert cv2.imread(str(out / "contact_sheet.png")) is not None
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "\x1b" not in html and "caf\\xe9" in html
    written = [os.fsencode(p) for p in map(str, out.iterdir())]
    assert os.fsencode(out) + b"/caf\xe9\n\x1b[31mFORGED.png" in written  # the output keeps the real name


def test_inputs_are_read_beneath_the_folder_even_racing(tmp_path):
    root, outside = tmp_path / "in", tmp_path / "outside"
    (root / "real").mkdir(parents=True)
    outside.mkdir()
    (root / "real" / "a.png").write_bytes(b"inside")
    (outside / "a.png").write_bytes(b"SECRET")
    (outside / "b.png").write_bytes(b"SECRET")
    os.symlink(outside / "b.png", root / "real" / "b.png")
    store = storage.LocalStore(str(root))
    assert store.read("real/a.png") == b"inside"
    with pytest.raises(PathError, match="symbolic link"):
        store.read("real/b.png")
    # a folder swapped for a link to outside (and back) while reading: never the outside bytes
    stop = threading.Event()

    def flip():
        while not stop.is_set():
            os.rename(root / "real", root / "held")
            os.symlink(outside, root / "real")
            os.unlink(root / "real")
            os.rename(root / "held", root / "real")

    flipper = threading.Thread(target=flip)
    flipper.start()
    seen = set()
    deadline = time.monotonic() + 20
    try:  # read until both outcomes were met: the real file, and a refusal of the swapped folder
        while time.monotonic() < deadline and not (b"inside" in seen and "PathError" in seen):
            try:
                seen.add(store.read("real/a.png"))
            except (PathError, OSError) as err:
                seen.add(type(err).__name__)
    finally:
        stop.set()
        flipper.join()
    assert b"SECRET" not in seen and b"inside" in seen and "PathError" in seen, seen


def test_pixel_limit_checked_before_decoding(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    names = make_mixed_folder(src, 2)
    (src / "bomb.png").write_bytes(_png_header(100_000, 100_000))  # 10^10 px claimed in 100 bytes
    res = run_batch("warp", src, out, "--matrix", SHIFT, "--no-report")
    assert res.returncode == 1
    rec = {r["input"]: r for r in read_manifest(out / "manifest.jsonl")}
    assert "100000x100000" in rec["bomb.png"]["error"] and "--max-pixels 33554432" in rec["bomb.png"]["error"]
    assert all(rec[n]["status"] == "ok" for n in names)
    res = run_batch("warp", src, tmp_path / "o2", "--matrix", SHIFT, "--no-report", "--max-pixels", "1000")
    assert res.returncode == 1 and "0 ok, 3 failed" in res.stdout  # 64x64 = 4096 > 1000


def test_tiff_header_read_as_libtiff_reads_it():
    img = np.zeros((8, 6), np.uint8)
    data = bytearray(cv2.imencode(".tiff", img)[1].tobytes())
    assert probe.check(bytes(data), 100) == (8, 6)
    # append a second ImageWidth entry claiming 2^20: libtiff (and the probe) keep the first
    ifd = struct.unpack("<I", data[4:8])[0]
    (count,) = struct.unpack("<H", data[ifd:ifd + 2])
    entries = [data[ifd + 2 + 12 * k: ifd + 14 + 12 * k] for k in range(count)]
    entries.append(struct.pack("<HHII", 256, 4, 1, 1 << 20))
    entries.sort(key=lambda e: struct.unpack("<H", e[:2])[0])
    new_ifd = len(data)
    data += struct.pack("<H", len(entries)) + b"".join(entries) + b"\0\0\0\0"
    data[4:8] = struct.pack("<I", new_ifd)
    assert probe.check(bytes(data), 100) == (8, 6)
    got = cv2.imdecode(np.frombuffer(bytes(data), np.uint8), cv2.IMREAD_UNCHANGED)
    assert got is None or got.shape == (8, 6)  # OpenCV's libtiff agrees (or refuses the file)
    tiled = struct.pack("<2sHI", b"II", 42, 8) + struct.pack("<H", 4) + b"".join(
        struct.pack("<HHII", t, 4, 1, v) for t, v in ((256, 1), (257, 1), (322, 8192), (323, 8192))) + b"\0" * 4
    with pytest.raises(probe.ImageHeaderError, match="tile"):
        probe.check(tiled, 1 << 25)  # a 1x1 image with one 8192^2 tile: 2^26 px allocated


@contextlib.contextmanager
def _tiny_tmpfs(path, size):
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); ENOSPC not exercised")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_enospc_fails_the_images_it_hits_then_resume_recovers(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    names = make_mixed_folder(src, 40)
    with _tiny_tmpfs(out, "96k"):
        res = run_batch("warp", src, out, "--matrix", SHIFT, "--no-report", "--jobs", "1")
        assert res.returncode == 1, res.stdout + res.stderr
        summary = res.stdout.strip().splitlines()[-1]
        assert summary.startswith("warpsvc-batch warp:") and " failed" in summary and "of 40 images" in summary
        assert "No space left" in res.stderr
        ok_first = int(summary.split(": ")[1].split(" ok")[0])
        assert 0 < ok_first < len(names)
        subprocess.run(["mount", "-o", "remount,size=16m", str(out)], check=True)
        res = run_batch("warp", src, out, "--matrix", SHIFT, "--no-report", "--jobs", "1", "--resume")
        assert res.returncode == 0, res.stdout + res.stderr
        last = {r["input"]: r for r in read_manifest(out / "manifest.jsonl")}
        assert all(last[n]["status"] == "ok" for n in names)
        t = warpsvc.AffineTransform([[1, 0, 2], [0, 1, -1]])
        for n in names:
            if not n.endswith(".jpg"):
                np.testing.assert_array_equal(cv2.imread(str(out / n), cv2.IMREAD_UNCHANGED),
                                              warpsvc.warp(cv2.imread(str(src / n), cv2.IMREAD_UNCHANGED), t))
        assert set(all_files(out)) == set(names) | {"manifest.jsonl", ".warpsvc-batch.lock"}


MISSING = """
import sys
sys.modules[sys.argv[1]] = None  # as if the optional package were not installed
from warpsvc_client.batch import cli
sys.exit(cli.main(sys.argv[2:]))
"""


@pytest.mark.parametrize("module,args,extra", [
    ("distributed", ["--engine", "dask"], "warpsvc[dask]"),
    ("fsspec", [], "warpsvc[batch]"),
])
def test_optional_dependencies_missing_give_a_clear_usage_error(tmp_path, module, args, extra):
    import sys

    src = tmp_path / "in"
    make_mixed_folder(src, 1)
    target = ["memory://nowhere/out"] if module == "fsspec" else [str(tmp_path / "out")]
    res = subprocess.run([sys.executable, "-c", MISSING, module, "warp", str(src), *target, "--matrix", SHIFT,
                          "--no-progress", *args], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and extra in res.stderr and "Traceback" not in res.stderr, res.stderr
