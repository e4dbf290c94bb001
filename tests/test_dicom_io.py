import os
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.uid import (
    JPEG2000,
    JPEG2000Lossless,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
)

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
    """Every regular file pydicom ships for its tests (DICOMDIR members and non-DICOM included).

    Read from the installed package: `get_testdata_files()` would also try to download
    pydicom's external test data, which is slow offline and changes what is tested.
    """
    shipped = Path(pydicom.data.__file__).parent / "test_files"
    return sorted(path for path in shipped.rglob("*") if path.is_file())


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom comments on odd test files
def test_every_pydicom_test_file_loads_or_fails_clearly():
    """Real-world DICOMs of all kinds: a 2-D uint8 image or a DicomReadError naming the file."""
    files = _pydicom_test_files()
    assert len(files) > 50
    loaded, refusals = 0, []
    for path in files:
        try:
            image = read_dicom_image(path)
        except DicomReadError as error:  # any other exception fails the test
            assert os.fspath(path) in str(error)
            refusals.append(str(error))
            continue
        assert image.ndim == 2 and image.dtype == np.uint8 and image.size > 0, path.name
        loaded += 1
    assert loaded >= 80 and refusals  # the set holds both kinds
    # With the decoders of requirements.txt installed, no file lacks one.
    assert not [text for text in refusals if "Install a decoder" in text]


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


# --- Compressed transfer syntaxes (decoders: pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg) ---

#: pydicom's single-frame test files of the compressed syntaxes: (file, its transfer syntax,
#: a lossless source of the same pixels or None). pydicom ships no grayscale JPEG lossless SV1
#: file, so its RGB one stands in (compared with the RLE file of the same image).
COMPRESSED_FILES = [
    ("MR_small_jpeg_ls_lossless.dcm", JPEGLSLossless, "MR_small.dcm"),
    ("JPEGLSNearLossless_08.dcm", JPEGLSNearLossless, None),
    ("JPEGLSNearLossless_16.dcm", JPEGLSNearLossless, None),
    ("MR_small_jp2klossless.dcm", JPEG2000Lossless, "MR_small.dcm"),
    ("J2K_pixelrep_mismatch.dcm", JPEG2000Lossless, None),
    ("693_J2KI.dcm", JPEG2000, None),
    ("JPEG2000.dcm", JPEG2000, None),
    ("SC_rgb_jpeg_gdcm.dcm", JPEGLosslessSV1, "SC_rgb_rle.dcm"),
    ("JPGExtended.dcm", JPEGExtended12Bit, None),
]


@pytest.mark.parametrize(("name", "syntax", "reference"), COMPRESSED_FILES)
def test_compressed_pydicom_files_decode(name, syntax, reference):
    path = get_testdata_file(name)
    header = pydicom.dcmread(path, stop_before_pixels=True)
    assert header.file_meta.TransferSyntaxUID == syntax
    image = read_dicom_image(path)
    assert image.dtype == np.uint8 and image.shape == (header.Rows, header.Columns)
    assert len(np.unique(image)) > 1  # not a blank decode
    if reference is not None:  # lossless: the very pixels of the uncompressed/RLE source
        np.testing.assert_array_equal(image, read_dicom_image(get_testdata_file(reference)))
        np.testing.assert_array_equal(
            pydicom.dcmread(path).pixel_array,
            pydicom.dcmread(get_testdata_file(reference)).pixel_array,
        )


@pytest.mark.parametrize("name", ["JPEGLSNearLossless_08.dcm", "JPEGLSNearLossless_16.dcm"])
def test_jpeg_ls_near_lossless_files_show_their_bands(name):
    """Both files hold horizontal bands, from white at the top down to black at the bottom."""
    image = read_dicom_image(get_testdata_file(name)).astype(int)
    assert (image == image[:, :1]).all()  # every row is one value
    assert (np.diff(image[:, 0]) <= 0).all() and image[0, 0] == 255 and image[-1, 0] == 0


@pytest.mark.parametrize("name", ["SC_rgb_jls_lossy_line.dcm", "SC_rgb_jls_lossy_sample.dcm"])
def test_lossy_jpeg_ls_stays_within_its_error_bound(name):
    lossy = read_dicom_image(get_testdata_file(name)).astype(int)
    lossless = read_dicom_image(get_testdata_file("SC_rgb_rle.dcm")).astype(int)
    difference = np.abs(lossy - lossless)
    assert 0 < difference.max() <= 3  # near-lossless: NEAR=2 per sample, plus gray rounding


def test_jpeg_2000_and_12_bit_jpeg_files_show_the_same_scene():
    jpeg_2000 = read_dicom_image(get_testdata_file("JPEG2000.dcm")).astype(float)
    jpeg_12_bit = read_dicom_image(get_testdata_file("JPGExtended.dcm")).astype(float)
    assert np.corrcoef(jpeg_2000.ravel(), jpeg_12_bit.ravel())[0, 1] > 0.9


@pytest.mark.parametrize(
    ("name", "package", "kept"),
    [
        ("MR_small_jpeg_ls_lossless.dcm", "pylibjpeg-libjpeg", "pillow"),  # Pillow: no JPEG-LS
        ("JPGExtended.dcm", "pylibjpeg-libjpeg", "pillow"),  # Pillow: 8-bit JPEG only
        ("JPEG2000.dcm", "pylibjpeg-openjpeg", None),  # no decoder at all
    ],
)
def test_a_missing_decoder_is_named(monkeypatch, name, package, kept):
    path = get_testdata_file(name)
    decoder = get_decoder(
        pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    )
    usable = {label: plugin for label, plugin in decoder._available.items() if label == kept}
    monkeypatch.setattr(decoder, "_available", usable)  # as if pylibjpeg were not installed
    with pytest.raises(DicomReadError, match="Install a decoder") as caught:
        read_dicom_image(path)
    assert path in str(caught.value) and f"`pip install pylibjpeg {package}`" in str(caught.value)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_data_the_decoders_fail_on_is_refused_as_corrupt():
    """pydicom's broken JPEG/JPEG 2000 files: the decoders are there, the data is bad."""
    for name in ["JPEG-lossy.dcm", "JPEG2000-embedded-sequence-delimiter.dcm"]:
        with pytest.raises(DicomReadError, match=r"installed decoders \(.*\) failed"):
            read_dicom_image(get_testdata_file(name))


# --- Modality LUT and VOI LUT / window, computed by hand ---

#: Rescale to modality values x = 2 * stored - 1000. The window, center 628 and width 256, is
#: DICOM's LINEAR one: x <= 500 -> darkest, x > 755 -> brightest, in between (x - 500) / 255 of
#: the output range, so on 0..255 the expected value is simply clip(x - 500, 0, 255).
SLOPE, INTERCEPT, CENTER, WIDTH = 2, -1000, 628, 256
#: stored value -> modality value -> expected 8-bit value, below, inside and above the window.
RAMP = {0: 0, 700: 0, 750: 0, 751: 2, 800: 100, 877: 254, 878: 255, 4095: 255}
#: Only inside the window: a min-max of the windowed image would give 0..255 instead.
INSIDE = {760: 20, 800: 100, 850: 200}


def _write_16_bit(tmp_path, stored, photometric="MONOCHROME2", **tags) -> Path:
    """A 12-bit file whose rows are `stored`, with extra header `tags`."""
    pixels = np.tile(np.array(stored, np.uint16), (6, 1))
    path = write_dicom_image(
        tmp_path / "lut.dcm", pixels, "p", compression="none", photometric=photometric
    )
    dataset = pydicom.dcmread(path)
    for keyword, value in tags.items():
        setattr(dataset, keyword, value)
    dataset.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("table", [RAMP, INSIDE], ids=["ramp", "inside-window"])
def test_rescale_then_window_by_hand(tmp_path, table):
    path = _write_16_bit(
        tmp_path,
        list(table),
        RescaleSlope=SLOPE,
        RescaleIntercept=INTERCEPT,
        WindowCenter=CENTER,
        WindowWidth=WIDTH,
    )
    expected = np.tile(np.array(list(table.values()), np.uint8), (6, 1))
    np.testing.assert_array_equal(read_dicom_image(path), expected)


def test_monochrome1_is_windowed_on_stored_values_then_inverted(tmp_path):
    """MONOCHROME1 stores dense as low: the window works on those values, the inversion after."""
    path = _write_16_bit(
        tmp_path,
        list(RAMP),
        photometric="MONOCHROME1",
        RescaleSlope=SLOPE,
        RescaleIntercept=INTERCEPT,
        WindowCenter=CENTER,
        WindowWidth=WIDTH,
    )
    expected = 255 - np.tile(np.array(list(RAMP.values()), np.uint8), (6, 1))
    np.testing.assert_array_equal(read_dicom_image(path), expected)


def test_voi_lut_sequence_output_range_becomes_0_to_255(tmp_path):
    """A 4-entry VOI LUT from stored value 10: <=10 -> 100, 11 -> 200, 12 -> 300, >=13 -> 400."""
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [4, 10, 16])
    item.add_new("LUTData", "US", [100, 200, 300, 400])
    path = _write_16_bit(tmp_path, [0, 10, 11, 12, 13, 4095], VOILUTSequence=[item])
    expected = np.tile(np.array([0, 0, 85, 170, 255, 255], np.uint8), (6, 1))
    np.testing.assert_array_equal(read_dicom_image(path), expected)


def test_rescale_without_window_keeps_the_min_max_scaling(tmp_path):
    stored = [800, 900, 1000, 1300]  # min-max: (s - 800) / 500 * 255
    path = _write_16_bit(tmp_path, stored, RescaleSlope=SLOPE, RescaleIntercept=INTERCEPT)
    expected = np.tile(np.array([0, 51, 102, 255], np.uint8), (6, 1))
    np.testing.assert_array_equal(read_dicom_image(path), expected)


def test_8_bit_file_without_luts_is_unchanged(tmp_path):
    """RSNA-like 8-bit MONOCHROME2 data keeps its stored values: no stretch, no window."""
    stored = np.array([[10, 20, 30, 40], [50, 60, 70, 80]], np.uint8)  # a narrow range
    path = write_dicom_image(tmp_path / "8.dcm", stored, "p", compression="none")
    header = read_dicom_header(path)
    assert "WindowCenter" not in header and "RescaleSlope" not in header
    np.testing.assert_array_equal(read_dicom_image(path), stored)
    # Identity LUTs, as many 8-bit files carry, change nothing either.
    dataset = pydicom.dcmread(path)
    dataset.RescaleSlope, dataset.RescaleIntercept = 1, 0
    dataset.WindowCenter, dataset.WindowWidth = 128, 256
    dataset.save_as(path, enforce_file_format=True)
    np.testing.assert_array_equal(read_dicom_image(path), stored)


def test_invalid_window_is_a_dicom_read_error(tmp_path):
    path = _write_16_bit(tmp_path, [0, 100], WindowCenter=50, WindowWidth=0)  # LINEAR needs >= 1
    with pytest.raises(DicomReadError, match="lut.dcm"):
        read_dicom_image(path)


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "MR_small_jpeg_ls_lossless.dcm"])
def test_codestream_larger_than_the_header_is_refused_before_decoding(tmp_path, name):
    """A corrupt JPEG 2000 header once declared 512 x 7,799,296 pixels: the decoder would have
    allocated ~16 GB. Here the header is made smaller than the codestream instead."""
    dataset = pydicom.dcmread(get_testdata_file(name))
    dataset.Rows //= 2
    dataset.save_as(tmp_path / "corrupt.dcm", enforce_file_format=True)
    with pytest.raises(DicomReadError, match=r"corrupt.dcm: corrupt pixel data: .* declares"):
        read_dicom_image(tmp_path / "corrupt.dcm")


def test_8_bit_voi_lut_with_more_than_256_entries(tmp_path):
    """LUT(v) = min(v, 255) over 300 entries: values past entry 255 must not wrap around."""
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [300, 0, 8])
    item.add_new("LUTData", "US", [min(value, 255) for value in range(300)])
    path = _write_16_bit(tmp_path, [10, 200, 260, 299, 4095], VOILUTSequence=[item])
    expected = np.tile(np.array([10, 200, 255, 255, 255], np.uint8), (6, 1))
    np.testing.assert_array_equal(read_dicom_image(path), expected)


def test_a_truncated_file_is_named_as_such_without_printing_warnings(tmp_path, recwarn):
    source = tmp_path / "whole.dcm"
    write_dicom_image(source, np.full((64, 64), 100, np.uint8), "p", compression="jpeg")
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(source.read_bytes()[:600])
    with pytest.raises(DicomReadError, match="truncated"):
        read_dicom_image(truncated)
    assert not [w for w in recwarn if "End of file" in str(w.message)]
