"""What an output leaves out of its input is said, not silent (found by a new-user test): a
multi-page TIFF's other pages (the decoder reads the first directory only) and a JPEG's EXIF
orientation, which the decoder does not apply (a TIFF's it does). The header probe counts the pages and reads the tag;
``warpsvc-batch`` records them as ``notes`` (manifest, stderr, report)."""

from __future__ import annotations

import io
import json

import cv2
import numpy as np
import tifffile
from PIL import Image
from skimage import data
from test_batch_helpers import read_manifest, run_batch

from warpsvc_api.image_probe import exif_orientation, probe_image


def _jpeg(orientation: int | None) -> bytes:
    im = Image.fromarray(data.chelsea())
    buf = io.BytesIO()
    if orientation is None:
        im.save(buf, "JPEG")
    else:
        exif = im.getexif()
        exif[0x0112] = orientation
        im.save(buf, "JPEG", exif=exif.tobytes())
    return buf.getvalue()


def _pages(n: int) -> bytes:
    buf = io.BytesIO()
    with tifffile.TiffWriter(buf) as w:
        for i in range(n):
            w.write(np.full((20, 30), 40 * i, np.uint8))
    return buf.getvalue()


def test_the_probe_counts_tiff_pages_and_reads_the_orientation():
    for n in (1, 2, 5):
        data_ = _pages(n)
        assert probe_image(data_).pages == n == len(tifffile.TiffFile(io.BytesIO(data_)).pages)
        first = cv2.imdecode(np.frombuffer(data_, np.uint8), cv2.IMREAD_UNCHANGED)
        assert first.shape == (20, 30) and (first == 0).all()  # what every engine decodes: page 1
    for o in range(1, 9):
        assert probe_image(_jpeg(o)).orientation == o
    assert probe_image(_jpeg(None)).orientation == 1
    buf = io.BytesIO()  # a TIFF's Orientation OpenCV applies itself: nothing to note
    tifffile.imwrite(buf, np.arange(20, dtype=np.uint8).reshape(4, 5), extratags=[(274, 3, 1, 6, True)])
    assert probe_image(buf.getvalue()).orientation == 1
    assert cv2.imdecode(np.frombuffer(buf.getvalue(), np.uint8), cv2.IMREAD_UNCHANGED).shape == (5, 4)
    jpeg = _jpeg(6)  # a JPEG's EXIF orientation imdecode(IMREAD_UNCHANGED) leaves as stored
    assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_UNCHANGED).shape == (300, 451, 3)
    for junk in (b"", b"II*\x00", b"II*\x00\xff\xff\xff\xff", b"MM\x00*\x00\x00\x00\x08\x00"):
        assert exif_orientation(junk) == 1  # a malformed EXIF block is ignored, as libjpeg does


def test_batch_records_and_prints_the_notes(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    (src / "turned.jpg").write_bytes(_jpeg(6))
    (src / "plain.jpg").write_bytes(_jpeg(None))
    (src / "stack.tif").write_bytes(_pages(3))
    res = run_batch("warp", src, out, "--matrix", "1,0,0,0,1,0")
    assert res.returncode == 0, res.stderr
    recs = {r["input"]: r for r in read_manifest(out / "manifest.jsonl")}
    assert "notes" not in recs["plain.jpg"]
    turned = ("orientation tag 6 (rotated 90 degrees clockwise for display) not applied: the work is on the "
              "pixels as stored, and the output carries no orientation tag")
    assert recs["turned.jpg"]["notes"] == [turned]
    assert recs["stack.tif"]["notes"] == ["TIFF with 3 directories (pages): only the first was read"]
    assert "NOTE turned.jpg: orientation tag 6" in res.stderr and "NOTE stack.tif: TIFF with 3" in res.stderr
    page = (out / "report.html").read_text()
    assert "only the first was read" in page and "orientation tag 6" in page
    assert json.loads((out / "manifest.jsonl").read_text().splitlines()[0])  # strict JSON lines
