"""Bad, half-written and unusual files: only UnreadableFile / IncompleteFile / NotAnImage escape."""

from __future__ import annotations

import json
import sys

import mrcfile
import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emstream.errors import IncompleteFile, NotAnImage, UnreadableFile
from emstream.sources.readers import check_complete, read_frames


def _tiff(path, arr=None, **kw):
    arr = np.arange(32 * 48, dtype=np.uint16).reshape(32, 48) if arr is None else arr
    tifffile.imwrite(path, arr, **kw)
    return path


def _mrc(path, nz=4, voxel=2.5, ispg=0):
    data = np.arange(nz * 8 * 12, dtype=np.float32).reshape(nz, 8, 12)
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(data)
        m.voxel_size = voxel
        m.header.ispg = ispg
    return path


# ------------------------------------------------------------------ TIFF calibration rules
def test_imagej_tiff_in_nm(tmp_path):
    p = _tiff(tmp_path / "ij.tif", imagej=True, resolution=(1 / 0.5, 1 / 0.5), metadata={"unit": "nm"})
    fr = read_frames(p)[0]
    assert fr.calibration.nm_per_px == (pytest.approx(0.5), pytest.approx(0.5))
    assert "ImageJ" in fr.calibration.detail


def test_imagej_escaped_angstrom_unit(tmp_path):
    p = _tiff(tmp_path / "ang.tif", imagej=True, resolution=(0.5, 0.25), metadata={"unit": "\\u00C5"})
    cal = read_frames(p)[0].calibration
    assert cal.nm_per_px == (pytest.approx(0.4), pytest.approx(0.2))  # y 4 Å, x 2 Å per pixel


def test_emstream_json_description(tmp_path):
    desc = json.dumps({"generator": "emstream", "nm_per_px": [0.25, 0.3], "t_acq": 1.7e9})
    fr = read_frames(_tiff(tmp_path / "sim.tif", description=desc))[0]
    assert fr.calibration.nm_per_px == (0.25, 0.3)
    assert fr.t_acq == 1.7e9 and "JSON" in fr.calibration.detail


def test_imagej_with_json_info(tmp_path):
    info = json.dumps({"generator": "emstream-simulate", "nm_per_px": 0.4, "t_acq": 1.5e9})
    p = _tiff(tmp_path / "ijj.tif", imagej=True, resolution=(2.5, 2.5),
              metadata={"unit": "nm", "Info": info})
    fr = read_frames(p)[0]
    assert fr.calibration.nm_per_px == (pytest.approx(0.4), pytest.approx(0.4))
    assert fr.t_acq == 1.5e9


def test_plain_resolution_tag_is_ignored(tmp_path):
    p = _tiff(tmp_path / "dpi.tif", resolution=(72, 72), resolutionunit="INCH")
    cal = read_frames(p)[0].calibration
    assert cal.nm_per_px is None and "ignored" in cal.detail
    p = _tiff(tmp_path / "cm.tif", resolution=(7e6, 7e6), resolutionunit="CENTIMETER")
    assert read_frames(p)[0].calibration.nm_per_px is None


def test_multipage_tiff_is_a_stack(tmp_path):
    arr = np.random.default_rng(0).integers(0, 999, (3, 20, 30), dtype=np.uint16)
    p = _tiff(tmp_path / "stack.tif", arr, photometric="minisblack")
    frames = read_frames(p, start=1)
    assert [f.source_id for f in frames] == [f"{p}#1", f"{p}#2"]
    np.testing.assert_array_equal(frames[1].pixels, arr[2])


def test_ome_and_imagej_stacks_from_start(tmp_path):
    a = np.random.default_rng(2).integers(0, 999, (5, 16, 24), dtype=np.uint16)
    ome = _tiff(tmp_path / "o.ome.tif", a, ome=True,
                metadata={"axes": "TYX", "PhysicalSizeX": 0.002, "PhysicalSizeY": 0.003})
    ij = _tiff(tmp_path / "ij.tif", a, imagej=True, resolution=(2, 2), metadata={"unit": "nm", "axes": "TYX"})
    for p, nm in ((ome, (3.0, 2.0)), (ij, (0.5, 0.5))):
        frames = read_frames(p, start=3)
        assert [f.source_id for f in frames] == [f"{p}#3", f"{p}#4"]
        np.testing.assert_array_equal(frames[1].pixels, a[4])
        assert frames[0].calibration.nm_per_px == (pytest.approx(nm[0]), pytest.approx(nm[1]))


def test_rgb_grey_and_colour(tmp_path):
    grey = np.random.default_rng(1).integers(0, 255, (16, 24), dtype=np.uint8)
    p = _tiff(tmp_path / "grey_rgb.tif", np.stack([grey] * 3, axis=-1), photometric="rgb")
    fr = read_frames(p)[0]
    np.testing.assert_array_equal(fr.pixels, grey)
    colour = np.stack([grey, grey // 2, 255 - grey], axis=-1)
    with pytest.raises(NotAnImage, match="colour"):
        read_frames(_tiff(tmp_path / "colour.tif", colour, photometric="rgb"))


def test_tiny_image_is_still_an_image(tmp_path):
    fr = read_frames(_tiff(tmp_path / "tiny.tif", np.ones((4, 16), np.uint8)))[0]
    assert fr.shape == (4, 16)
    with pytest.raises(NotAnImage, match="spectrum or line profile"):
        read_frames(_tiff(tmp_path / "line.tif", np.ones((1, 64), np.uint8)))


# ------------------------------------------------------------------ MRC rules
def test_mrc_growing_stack(tmp_path):
    p = _mrc(tmp_path / "grow.mrc", nz=5)
    raw = p.read_bytes()
    slice_bytes = 8 * 12 * 4
    # header already declares 5 slices, file holds 3.5 of them: writer still going
    p.write_bytes(raw[: 1024 + int(3.5 * slice_bytes)])
    with pytest.raises(IncompleteFile, match="declares 5"):
        check_complete(p)
    frames = read_frames(p)
    assert len(frames) == 3 and frames[-1].source_id == f"{p}#2"
    assert [f.source_id for f in read_frames(p, start=2)] == [f"{p}#2"]
    # a writer that updates nz after each appended slice: header covers the data -> complete
    hdr = bytearray(raw[:1024])
    hdr[8:12] = np.array([3], "<i4").tobytes()
    p.write_bytes(bytes(hdr) + raw[1024: 1024 + int(3.5 * slice_bytes)])
    check_complete(p)
    assert len(read_frames(p)) == 3


def test_mrc_calibration_and_sentinels(tmp_path):
    fr = read_frames(_mrc(tmp_path / "a.mrc", nz=1, voxel=4.0))[0]
    assert fr.calibration.nm_per_px == (pytest.approx(0.4), pytest.approx(0.4))
    assert fr.source_id == f"{tmp_path / 'a.mrc'}#0"  # MRC slices are always path#k
    for v in (0.0, -10.0):
        fr = read_frames(_mrc(tmp_path / f"s{v}.mrc", nz=2, voxel=v))[0]
        assert fr.calibration.nm_per_px is None and fr.calibration.source == "none"


def test_mrc_volume_is_not_an_image(tmp_path):
    with pytest.raises(NotAnImage, match="3-D density map"):
        read_frames(_mrc(tmp_path / "vol.map", nz=6, voxel=3.0, ispg=1))
    cube = tmp_path / "cube.mrc"
    with mrcfile.new(cube) as m:  # ispg 1, cubic cell: an EMDB-like map
        m.set_data(np.zeros((10, 10, 10), np.float32))
        m.voxel_size = 2.0
    with pytest.raises(NotAnImage, match="3-D density map"):
        read_frames(cube)


def test_mrcfile_default_stack_is_frames(tmp_path):
    """mrcfile writes ispg=1 on any 3-D array: a frame stack must not be mistaken for a map."""
    p = tmp_path / "stack.mrc"
    with mrcfile.new(p) as m:
        m.set_data(np.zeros((4, 32, 32), np.uint16))
        m.voxel_size = 5.0
    with mrcfile.open(p, header_only=True) as m:
        assert int(m.header.ispg) == 1
    frames = read_frames(p)
    assert len(frames) == 4 and frames[0].calibration.nm_per_px == (0.5, 0.5)


# ------------------------------------------------------------------ bad files
MAKERS = {"tif": lambda p: _tiff(p), "mrc": lambda p: _mrc(p, nz=3)}


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_zero_byte_and_truncated(tmp_path, kind):
    good = MAKERS[kind](tmp_path / f"good.{kind}")
    raw = good.read_bytes()
    empty = tmp_path / f"empty.{kind}"
    empty.write_bytes(b"")
    for fn in (check_complete, read_frames):
        with pytest.raises(IncompleteFile, match="0 bytes"):
            fn(empty)
    for cut in (4, 100, len(raw) // 2, len(raw) - 1):
        p = tmp_path / f"cut{cut}.{kind}"
        p.write_bytes(raw[:cut])
        with pytest.raises(UnreadableFile) as info:
            check_complete(p)
        assert info.value.reason
        try:
            frames = read_frames(p)
        except UnreadableFile as exc:
            assert exc.reason
        else:  # an MRC stack cut mid-way still yields its complete slices
            assert kind == "mrc" and 0 < len(frames) < 3


@pytest.mark.parametrize("suffix", [".tif", ".mrc", ".dm3", ".ser", ".emd", ".dm4"])
def test_garbage_with_image_suffix(tmp_path, suffix):
    p = tmp_path / f"garbage{suffix}"
    p.write_bytes(b"this is not an image file at all " * 64)
    with pytest.raises(UnreadableFile):
        read_frames(p)
    with pytest.raises(UnreadableFile):
        check_complete(p)


def test_truncated_vendor_files(shared_data, tmp_path):
    pytest.importorskip("ncempy")
    root = shared_data / "formats"
    for rel in ("ncempy/dmTest_float32_nonSquare_diffPixelSize.dm4", "ncempy/Acquisition_18.emd",
                "rosettasciio/tia/old/64x64x5_TEM_preview_1.ser",
                "rosettasciio/digitalmicrograph/2D/test_STEM_image.dm3"):
        raw = (root / rel).read_bytes()
        p = tmp_path / rel.replace("/", "_")
        p.write_bytes(raw[: len(raw) // 2])
        with pytest.raises(UnreadableFile) as info:
            check_complete(p)
        assert info.value.reason


def test_missing_optional_extra_message(shared_data, monkeypatch):
    for mod in ("ncempy", "ncempy.io", "ncempy.io.dm", "rsciio", "rsciio.digitalmicrograph"):
        monkeypatch.setitem(sys.modules, mod, None)
    with pytest.raises(UnreadableFile, match=r"install emstream\[formats\].*DM3/DM4"):
        read_frames(shared_data / "formats/rosettasciio/digitalmicrograph/2D/test_STEM_image.dm3")


def test_missing_file(tmp_path):
    with pytest.raises(UnreadableFile, match="not found"):
        read_frames(tmp_path / "nope.tif")


# ------------------------------------------------------------------ fuzzing
def _fuzz(raw: bytes, edits, cut):
    buf = bytearray(raw)
    for pos, val in edits:
        buf[pos % len(buf)] = val
    return bytes(buf[: max(0, len(buf) - cut)])


_edits = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=12)


@pytest.mark.parametrize("kind", sorted(MAKERS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=_edits, cut=st.integers(0, 2000), head_only=st.booleans())
def test_fuzzed_bytes_only_raise_reader_errors(tmp_path, kind, edits, cut, head_only):
    good = tmp_path / f"seed.{kind}"
    if not good.exists():
        MAKERS[kind](good)
    raw = good.read_bytes()
    if head_only:  # concentrate damage on the header / IFD where parsing decisions are made
        edits = [(pos % 1100, val) for pos, val in edits]
    p = tmp_path / f"fuzz.{kind}"
    p.write_bytes(_fuzz(raw, edits, cut))
    for fn in (check_complete, read_frames):
        try:
            out = fn(p)
        except UnreadableFile as exc:  # includes IncompleteFile, NotAnImage
            assert isinstance(exc.reason, str) and exc.reason
        else:
            if fn is read_frames:
                assert all(f.pixels.ndim == 2 for f in out)
