"""Reader rules on small files written here: Velox/Berkeley EMD variants, SER without ncempy."""

from __future__ import annotations

import json
import sys

import h5py
import numpy as np
import pytest

from emstream.errors import NotAnImage, UnreadableFile
from emstream.sources.readers import check_complete, read_frames


def _velox(path, *, unit="m", size="2e-10", detector_type="ScanningDetector", name="HAADF",
           frames=3, t=1_700_000_000):
    md = {
        "BinaryResult": {"Detector": name, "DetectorIndex": "0",
                         "PixelSize": {"width": size, "height": size},
                         "PixelUnitX": unit, "PixelUnitY": unit},
        "Detectors": {"Detector-0": {"DetectorName": name, "DetectorType": detector_type}},
        "Acquisition": {"AcquisitionDatetime": {"DateTime": str(t)}},
        "Instrument": {"InstrumentModel": "Test"},
        "Optics": {"NominalMagnification": "100000"},
    }
    raw = np.frombuffer(json.dumps(md).encode(), np.uint8)
    meta = np.zeros((60000, frames), np.uint8)
    meta[: raw.size, :] = raw[:, None]
    with h5py.File(path, "w") as h:
        h.create_group("Application")
        g = h.create_group("Data/Image/abc")
        g["Data"] = np.arange(20 * 30 * frames, dtype=np.uint16).reshape(20, 30, frames)
        g["Metadata"] = meta
    return path


def test_velox_stack(tmp_path):
    p = _velox(tmp_path / "v.emd")
    check_complete(p)
    frames = read_frames(p, start=1)
    assert [f.source_id for f in frames] == [f"{p}#1", f"{p}#2"]
    assert frames[0].shape == (20, 30)
    assert frames[0].calibration.nm_per_px == (pytest.approx(0.2), pytest.approx(0.2))
    assert frames[0].t_acq == 1_700_000_000
    assert frames[0].metadata["detector"] == "HAADF"


def test_velox_diffraction_and_eds_only(tmp_path):
    with pytest.raises(NotAnImage, match="reciprocal"):
        read_frames(_velox(tmp_path / "d.emd", unit="1/m", size="1e8"))
    with pytest.raises(NotAnImage, match="no detector image"):
        read_frames(_velox(tmp_path / "eds.emd", detector_type="AnalyticalDetector", name="SuperXG21"))


def _berkeley(path, data, dims):
    with h5py.File(path, "w") as h:
        h.attrs["version_major"] = 0
        h.attrs["version_minor"] = 2
        g = h.create_group("data/series")
        g.attrs["emd_group_type"] = 1
        g["data"] = data
        for k, (vec, unit) in enumerate(dims, start=1):
            d = g.create_dataset(f"dim{k}", data=np.asarray(vec, float))
            d.attrs["units"] = unit
    return path


def test_berkeley_time_series_and_volume(tmp_path):
    data = np.zeros((4, 10, 12), np.uint16)
    p = _berkeley(tmp_path / "t.emd", data, [(np.arange(4) * 0.5, "s"),
                                             (np.arange(10) * 0.3, "n_m"), (np.arange(12) * 0.3, "nm")])
    frames = read_frames(p)
    assert len(frames) == 4 and frames[0].shape == (10, 12)
    assert frames[0].calibration.nm_per_px == (pytest.approx(0.3), pytest.approx(0.3))
    vol = _berkeley(tmp_path / "v.emd", data, [(np.arange(4), "nm"), (np.arange(10), "nm"),
                                               (np.arange(12), "nm")])
    with pytest.raises(NotAnImage, match="volume"):
        read_frames(vol)
    si = _berkeley(tmp_path / "si.emd", data, [(np.arange(4), "eV"), (np.arange(10), "nm"),
                                               (np.arange(12), "nm")])
    with pytest.raises(NotAnImage, match="spectrum image"):
        read_frames(si)


def test_plain_hdf5_is_not_an_emd_image(tmp_path):
    p = tmp_path / "other.h5"
    with h5py.File(p, "w") as h:
        h["entry/data"] = np.zeros((5, 5))
    with pytest.raises(NotAnImage, match="without EMD"):
        read_frames(p)


def test_ser_without_ncempy_says_how_to_install(shared_data, monkeypatch):
    path = shared_data / "formats/rosettasciio/tia/old/64x64_TEM_images_acquire_1.ser"
    for mod in ("ncempy", "ncempy.io", "ncempy.io.ser"):
        monkeypatch.setitem(sys.modules, mod, None)
    check_complete(path)  # the completeness check needs no GPL library
    with pytest.raises(UnreadableFile, match=r"install emstream\[formats\].*TIA SER"):
        read_frames(path)


def test_format_report_lists_every_reader():
    from emstream.sources.readers import format_report

    rows = format_report()
    names = " ".join(r["name"] for r in rows)
    for word in ("TIFF", "MRC", "EMD", "DM3", "SER"):
        assert word in names
    assert all(isinstance(r["available"], bool) and r["detail"] for r in rows)
