"""Every file in ../shared/data/formats read, checked against the table in its SOURCE.md."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from emstream.errors import NotAnImage
from emstream.sources.readers import check_complete, is_supported, read_frames

# (relative path, optional library, frames, (h, w), (y_nm, x_nm) | None, dtype | None)
IMAGES = [
    ("ncempy/16_STOimage_1.ser", "ncempy", 1, (1024, 1024), (0.010013, 0.010013), "uint16"),
    ("rosettasciio/tia/new/128x128-TEM_search_1.ser", "ncempy", 1, (128, 128), (5.261214, 5.261214), "int32"),
    ("rosettasciio/tia/old/64x64_TEM_images_acquire_1.ser", "ncempy", 1, (64, 64), (6.281834, 6.281834), None),
    ("rosettasciio/tia/old/64x64x5_TEM_preview_1.ser", "ncempy", 5, (64, 64), (6.281834, 6.281834), None),
    ("ncempy/Camera Ceta Imaging Micro.emd", None, 1, (512, 512), (3.138837, 3.138837), "int16"),
    ("ncempy/STEM HAADF Diffraction Micro.emd", None, 1, (128, 128), (87.3708, 87.3708), "uint16"),
    ("rosettasciio/emd/fei_example_tem_stack.emd", None, 2, (3, 3), (0.008172883, 0.008172883), "int16"),
    ("rosettasciio/emd/Test SI 16x16 215 kx.emd", None, 2, (16, 16), (3.599249, 3.599249), "uint16"),
    ("rosettasciio/emd/Test SI 16x16 ReducedData 215 kx.emd", None, 1, (16, 16), (3.599249, 3.599249), "uint16"),
    ("ncempy/Acquisition_18.emd", None, 1, (1024, 1024), (0.0122465, 0.0122465), "uint16"),
    ("rosettasciio/emd/example_image.emd", None, 1, (3, 3), None, "int32"),
    ("rosettasciio/digitalmicrograph/2D/test_STEM_image.dm3", "ncempy", 1, (68, 68), (0.248538, 0.248538), "uint32"),
    ("rosettasciio/digitalmicrograph/Fei HAADF-UK_location.dm3", "ncempy", 1, (4, 16), (5.506, 5.506), None),
    ("rosettasciio/digitalmicrograph/test_stackbuilder_imagestack.dm3", "ncempy", 3, (2, 16), (59.983, 59.983), None),
    ("rosettasciio/digitalmicrograph/2D/test-1.dm4", "ncempy", 1, (2, 2), None, "int16"),
    ("ncempy/dmTest_float32_nonSquare_diffPixelSize.dm3", "ncempy", 1, (64, 128), (0.2, 1.0), "float32"),
    ("ncempy/dmTest_float32_nonSquare_diffPixelSize.dm4", "ncempy", 1, (64, 128), (0.2, 1.0), "float32"),
    ("rosettasciio/tiff/test_dm_image_um_unit.dm3", "ncempy", 1, (68, 68), (168.675, 168.675), None),
    ("rosettasciio/mrc/HAADFscan.mrc", None, 1, (16, 16), (5.679, 5.679), "uint16"),
    ("rosettasciio/mrc/20241021_00405_movie.mrc", None, 32, (4, 8), None, "uint16"),
    ("rosettasciio/mrc/Custom_movie.mrc", None, 30, (16, 16), None, "uint16"),
    ("ncempy/temp.mrc", None, 3, (128, 128), (0.2, 0.2), "float32"),
    ("rosettasciio/tiff/FEI-Helios-Ebeam-8bits.tif", None, 1, (471, 512), (3372.4, 3372.4), "uint8"),
    ("rosettasciio/tiff/FEI-Helios-Ebeam-16bits.tif", None, 1, (471, 512), (3372.4, 3372.4), "uint16"),
    ("rosettasciio/tiff/FEI-Helios-navcam.tif", None, 1, (551, 768), None, "uint8"),
    ("rosettasciio/tiff/FEI-Helios-navcam-with-no-IRBeam.tif", None, 1, (551, 768), None, "uint8"),
    ("rosettasciio/tiff/FEI-Helios-navcam-with-no-IRBeam-bad-floats.tif", None, 1, (551, 768), None, "uint8"),
    ("rosettasciio/tiff/JEOL-SightX-TEM-mag-dummy.tif", "rsciio", 1, (556, 556), (1.820789, 1.820789), "uint16"),
    ("rosettasciio/tiff/TVIPS_bin4.tif", None, 1, (1024, 1024), (1.4208, 1.4208), "uint8"),
    ("rosettasciio/tiff/test_loading_image_saved_with_DM.tif", None, 1, (68, 68), (168.675, 168.675), "int32"),
    ("rosettasciio/tiff/test_loading_image_saved_with_imageJ.tif", None, 1, (68, 68), (168.675, 168.675), "float32"),
    ("rosettasciio/tiff/olympus_SIS.tif", None, 1, (101, 112), None, None),
]

NOT_IMAGES = [
    ("ncempy/08_carbon.dm3", "ncempy", "spectrum"),
    ("rosettasciio/digitalmicrograph/2D/test_diffraction_pattern.dm3", "ncempy", "reciprocal"),
    ("mrcfile/EMD-3197.map", None, "3-D density map"),
    ("ncempy/emd_type1_stringDims.h5", None, "4-D"),
    ("ncempy/16_STOimage.emi", None, "metadata only"),
    ("rosettasciio/tia/new/128x128-TEM_search.emi", None, "metadata only"),
]


def _need(lib):
    if lib:
        pytest.importorskip(lib)


@pytest.mark.parametrize(("rel", "lib", "n", "shape", "nm", "dtype"), IMAGES, ids=[r[0] for r in IMAGES])
def test_shared_image_files(shared_data, rel, lib, n, shape, nm, dtype):
    _need(lib)
    path = shared_data / "formats" / rel
    check_complete(path)
    frames = read_frames(path, t_arrival=123.0)
    assert len(frames) == n
    for k, fr in enumerate(frames):
        assert fr.shape == shape
        assert fr.pixels.ndim == 2
        if dtype:
            assert fr.pixels.dtype == np.dtype(dtype)
        assert fr.t_arrival == 123.0 and math.isfinite(fr.t_acq) and fr.t_acq > 0
        stack = n > 1 or path.suffix == ".mrc"  # MRC slices are always path#k
        assert fr.source_id == (f"{path}#{k}" if stack else str(path))
        json.dumps(fr.metadata)  # small and JSON-able
        assert len(json.dumps(fr.metadata)) < 4000
        assert fr.metadata["calibration_tag"] == fr.calibration.detail
        if nm is None:
            assert fr.calibration.nm_per_px is None and fr.calibration.source == "none"
            assert fr.calibration.detail  # says why
        else:
            assert fr.calibration.source == "file" and fr.calibration.detail
            assert fr.calibration.nm_per_px == (pytest.approx(nm[0], rel=1e-4),
                                                pytest.approx(nm[1], rel=1e-4))


@pytest.mark.parametrize(("rel", "lib", "reason"), NOT_IMAGES, ids=[r[0] for r in NOT_IMAGES])
def test_shared_non_images(shared_data, rel, lib, reason):
    _need(lib)
    with pytest.raises(NotAnImage, match=reason) as info:
        read_frames(shared_data / "formats" / rel)
    assert info.value.reason


def test_every_shared_data_file_is_covered(shared_data):
    covered = {r[0] for r in IMAGES} | {r[0] for r in NOT_IMAGES}
    root = shared_data / "formats"
    data_files = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()
                  and p.suffix.lower() not in (".txt", ".md") and p.name not in ("LICENSE",)}
    assert data_files - covered <= {"rosettasciio/tia/old/64x64x5_TEM_preview.emi",
                                    "rosettasciio/tia/old/64x64_TEM_images_acquire.emi"}


def test_stack_start_skips_processed_slices(shared_data):
    path = shared_data / "formats" / "rosettasciio/mrc/Custom_movie.mrc"
    all_frames = read_frames(path)
    tail = read_frames(path, start=28)
    assert [f.source_id for f in tail] == [f"{path}#28", f"{path}#29"]
    np.testing.assert_array_equal(tail[0].pixels, all_frames[28].pixels)
    assert read_frames(path, start=30) == []


def test_fei_resolution_tag_is_not_calibration(shared_data):
    """FEI writes 64 dpi in the TIFF resolution tag; only [Scan] PixelWidth counts."""
    fr = read_frames(shared_data / "formats/rosettasciio/tiff/FEI-Helios-Ebeam-8bits.tif")[0]
    assert "[Scan]" in fr.calibration.detail
    nav = read_frames(shared_data / "formats/rosettasciio/tiff/FEI-Helios-navcam.tif")[0]
    assert "resolution tag" in nav.calibration.detail and "ignored" in nav.calibration.detail


def test_non_square_pixels_are_flagged_not_averaged(shared_data):
    pytest.importorskip("ncempy")
    fr = read_frames(shared_data / "formats/ncempy/dmTest_float32_nonSquare_diffPixelSize.dm3")[0]
    assert not fr.calibration.square
    assert any("non-square" in w for w in fr.metadata["warnings"])


def test_suffixes():
    for name in ("a.tif", "b.TIFF", "c.mrc", "d.mrcs", "e.dm3", "f.DM4", "g_1.ser", "h.emd"):
        assert is_supported(name), name
    for name in ("x.emi", "y.txt", "z.tif.tmp", "w.h5", "v.part"):
        assert not is_supported(name), name
