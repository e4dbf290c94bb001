import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from retinanet_lib.dicom_io import (
    COMPRESSIONS,
    DicomReadError,
    read_dicom_header,
    read_dicom_image,
    write_dicom_image,
)


@pytest.fixture
def gradient() -> np.ndarray:
    """A 64 x 80 uint8 image with known values (rows: 0..252 in steps of 4)."""
    return np.tile((np.arange(64, dtype=np.uint8) * 4)[:, None], (1, 80))


def test_uncompressed_monochrome2_round_trip_is_exact(tmp_path, gradient):
    path = write_dicom_image(tmp_path / "a.dcm", gradient, "patient-1", compression="none")
    np.testing.assert_array_equal(read_dicom_image(path), gradient)
    header = read_dicom_header(path)
    assert header.PatientID == "patient-1" and header.Rows == 64 and header.Columns == 80
    assert header.PhotometricInterpretation == "MONOCHROME2" and header.BitsStored == 8


def test_jpeg_round_trip_is_close_and_has_the_rsna_layout(tmp_path, gradient):
    path = write_dicom_image(tmp_path / "j.dcm", gradient, "p", compression="jpeg")
    dataset = pydicom.dcmread(path)
    assert dataset.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"  # JPEG baseline
    assert dataset.SamplesPerPixel == 1 and dataset.BitsAllocated == 8
    assert dataset.LossyImageCompression == "01"
    image = read_dicom_image(path)
    assert image.dtype == np.uint8 and image.shape == gradient.shape
    assert np.abs(image.astype(int) - gradient).max() <= 4  # lossy, but close


def test_monochrome1_is_inverted(tmp_path, gradient):
    stored = 255 - gradient  # MONOCHROME1 stores 0 as white
    path = write_dicom_image(
        tmp_path / "m1.dcm", stored, "p", compression="none", photometric="MONOCHROME1"
    )
    np.testing.assert_array_equal(read_dicom_image(path), gradient)


@pytest.mark.parametrize("max_value", [4095, 65535])
def test_high_bit_depth_is_rescaled_to_8_bit(tmp_path, max_value):
    values = np.linspace(0, max_value, 64 * 64).reshape(64, 64).astype(np.uint16)
    path = write_dicom_image(tmp_path / "16.dcm", values, "p", compression="none")
    assert read_dicom_header(path).BitsStored == (12 if max_value == 4095 else 16)
    image = read_dicom_image(path)
    assert image.dtype == np.uint8 and image.min() == 0 and image.max() == 255
    expected = np.round(values.astype(np.float64) / max_value * 255)
    assert np.abs(image.astype(float) - expected).max() <= 1


def test_writer_rejects_bad_input(tmp_path, gradient):
    with pytest.raises(ValueError, match="JPEG"):
        write_dicom_image(tmp_path / "x.dcm", gradient.astype(np.uint16), "p", compression="jpeg")
    with pytest.raises(ValueError, match="compression"):
        write_dicom_image(tmp_path / "x.dcm", gradient, "p", compression="png")
    with pytest.raises(ValueError, match="photometric"):
        write_dicom_image(tmp_path / "x.dcm", gradient, "p", photometric="RGB")
    with pytest.raises(ValueError, match="2-D"):
        write_dicom_image(tmp_path / "x.dcm", np.zeros((2, 2, 2), np.uint8), "p")
    assert set(COMPRESSIONS) == {"jpeg", "none"}


def test_missing_and_non_dicom_files_name_the_file(tmp_path):
    with pytest.raises(DicomReadError, match="not found"):
        read_dicom_image(tmp_path / "absent.dcm")
    text_file = tmp_path / "notes.dcm"
    text_file.write_text("not a dicom file at all")
    with pytest.raises(DicomReadError, match="notes.dcm"):
        read_dicom_image(text_file)


def test_dicom_without_pixels_is_refused(tmp_path, gradient):
    path = write_dicom_image(tmp_path / "a.dcm", gradient, "p", compression="none")
    dataset = pydicom.dcmread(path)
    del dataset.PixelData
    dataset.save_as(tmp_path / "nopix.dcm", enforce_file_format=True)
    with pytest.raises(DicomReadError, match="no pixel data"):
        read_dicom_image(tmp_path / "nopix.dcm")


def _pydicom_test_files() -> list[Path]:
    folder = Path(get_testdata_file("CT_small.dcm")).parent
    return sorted(p for p in folder.iterdir() if p.suffix == ".dcm")


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom comments on odd test files
def test_every_pydicom_test_file_loads_or_fails_clearly():
    """Real-world DICOMs of all kinds: a 2-D uint8 image or a DicomReadError naming the file."""
    files = _pydicom_test_files()
    assert len(files) > 50
    loaded = refused = 0
    for path in files:
        try:
            image = read_dicom_image(path)
        except DicomReadError as error:
            assert os.fspath(path) in str(error)
            refused += 1
            continue
        assert image.ndim == 2 and image.dtype == np.uint8 and image.size > 0, path.name
        loaded += 1
    assert loaded > 20 and refused > 0  # the set holds both kinds


def test_known_pydicom_files_decode_to_their_content():
    # CT_small: 16-bit signed CT, rescaled to the full 8-bit range.
    ct = read_dicom_image(get_testdata_file("CT_small.dcm"))
    assert ct.shape == (128, 128) and ct.min() == 0 and ct.max() == 255
    raw = pydicom.dcmread(get_testdata_file("CT_small.dcm")).pixel_array.astype(float)
    correlation = np.corrcoef(raw.ravel(), ct.astype(float).ravel())[0, 1]
    assert correlation > 0.999
    # An RGB JPEG secondary capture becomes one grayscale image.
    rgb = read_dicom_image(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
    assert rgb.ndim == 2
