"""Reading chest X-ray DICOM files into 8-bit images, and writing them.

RSNA's files are 1024 x 1024, 1 sample per pixel, 8-bit MONOCHROME2, JPEG-baseline compressed.
`read_dicom_image` also accepts what other sources produce: MONOCHROME1 (inverted: high values are
dark), 12/16-bit data, uncompressed files, RGB secondary captures (turned to grayscale) and every
compression that pydicom's installed decoders read: JPEG baseline through Pillow, and JPEG
extended 12-bit, JPEG lossless, JPEG-LS and JPEG 2000 through `pylibjpeg` and its plugins
`pylibjpeg-libjpeg` and `pylibjpeg-openjpeg`. Grayscale values go through the file's Modality LUT
(Rescale Slope/Intercept) and VOI LUT (window) before they are mapped to 0..255. Anything it
cannot turn into one 2-D image raises `DicomReadError` naming the file.

`write_dicom_image` writes valid DICOM files in the RSNA layout; the synthetic data generator and
the tests use it.
"""

from __future__ import annotations

import io
import struct
import threading
import warnings
from pathlib import Path

import cv2
import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, get_frame
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGBaseline8Bit,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    SecondaryCaptureImageStorage,
    generate_uid,
)

try:  # header readers of the pylibjpeg decoders (requirements.txt); Pillow checks sizes itself
    from libjpeg import get_parameters as _jpeg_parameters
except ImportError:  # without pylibjpeg-libjpeg, no decoder needs the size check
    _jpeg_parameters = None
try:
    from openjpeg import get_parameters as _jpeg2000_parameters
except ImportError:  # without pylibjpeg-openjpeg, no decoder needs the size check
    _jpeg2000_parameters = None

__all__ = [
    "COMPRESSIONS",
    "PHOTOMETRICS",
    "DicomReadError",
    "read_dicom_header",
    "read_dicom_image",
    "write_dicom_image",
]

#: Pixel encodings `write_dicom_image` can produce.
COMPRESSIONS = ("jpeg", "none")
#: Grayscale photometric interpretations `write_dicom_image` can produce.
PHOTOMETRICS = ("MONOCHROME2", "MONOCHROME1")
_UINT8_MAX = 255
_RGB_SAMPLES = 3
_COLOR_ARRAY_NDIM = 3  # (rows, columns, samples)
#: What pydicom and NumPy raise on broken headers or pixel data (besides a missing decoder).
_BROKEN_DATA_ERRORS = (
    ValueError,
    TypeError,
    AttributeError,
    LookupError,
    NotImplementedError,
    ArithmeticError,
    EOFError,
    OSError,
    struct.error,
    BytesLengthException,
)
#: pydicom's names for the pylibjpeg and Pillow decoders, and the pip packages of pylibjpeg's
#: two plugins.
_PYLIBJPEG = "pylibjpeg"
_PILLOW = "pillow"
_OPENJPEG = "pylibjpeg-openjpeg"  # JPEG 2000
_LIBJPEG = "pylibjpeg-libjpeg"  # JPEG (all processes) and JPEG-LS
#: A LUT Descriptor's entry count of 0 means 2**16 entries (DICOM PS3.3 C.11.2.1.1).
_LUT_ENTRIES_FOR_ZERO = 2**16
#: pydicom 3.0 indexes an 8-bit VOI LUT with uint8, which wraps past 256 entries; such a LUT is
#: declared 16-bit instead (same values, wider index).
_BYTE_LUT_BITS, _WIDE_LUT_BITS, _BYTE_LUT_MAX_ENTRIES = 8, 16, 256
#: Input values probed to read the output range of a windowing operation.
_BELOW_AND_ABOVE_ANY_WINDOW = np.array([-np.inf, np.inf])


class DicomReadError(ValueError):
    """A file could not be read as a single 2-D image; the message names the file and the fix."""


def read_dicom_header(path: str | Path) -> Dataset:
    """Reads only the header (fast: no pixel decoding).

    Raises:
        DicomReadError: If the file is missing or not DICOM.
    """
    return _read_dataset(Path(path), stop_before_pixels=True)[0]


#: `warnings.catch_warnings` swaps process-wide state: two threads inside it at once (e.g.
#: `rejects.verify_dicoms`) can restore each other's handlers and let a warning escape to stderr.
#: Writers take it too. Parsing holds the GIL anyway; pixel decoding runs outside the lock.
_WARNINGS_LOCK = threading.Lock()


def _read_dataset(path: Path, stop_before_pixels: bool = False) -> tuple[Dataset, str]:
    """Reads a file. pydicom's warnings about it (e.g. a truncated file) are returned, not
    printed: `_check_single_image` puts them in its error if the image turns out unusable."""
    try:
        with _WARNINGS_LOCK, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            dataset = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except FileNotFoundError as error:
        raise DicomReadError(f"{path}: file not found.") from error
    except (InvalidDicomError, *_BROKEN_DATA_ERRORS) as error:
        raise DicomReadError(f"{path}: not a readable DICOM file ({error}).") from error
    return dataset, "; ".join(str(w.message) for w in caught)


def _pylibjpeg_plugin(syntax: UID) -> str | None:
    """The pylibjpeg plugin that decodes `syntax`; None for data pydicom decodes by itself."""
    if syntax in JPEG2000TransferSyntaxes:
        return _OPENJPEG
    if syntax in JPEGTransferSyntaxes or syntax in JPEGLSTransferSyntaxes:
        return _LIBJPEG
    return None


def _decoder_message(dataset: Dataset, path: Path, error: Exception) -> str:
    """Says why pydicom could not decode the pixel data, and which decoder to install."""
    syntax = UID(dataset.file_meta.get("TransferSyntaxUID", ""))
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:  # pydicom has no decoder at all for this transfer syntax
        return f"{path}: pydicom cannot decode {syntax.name} pixel data ({error})."
    installed = ", ".join(decoder.available_plugins) or "none"
    plugin = _pylibjpeg_plugin(syntax)
    if plugin is not None and _PYLIBJPEG not in decoder.available_plugins:
        return (
            f"{path}: cannot decode its {syntax.name} pixel data with the installed decoders "
            f"({installed}). Install a decoder: `pip install {_PYLIBJPEG} {plugin}`. "
            f"Details: {error}"
        )
    others = "; ".join(decoder.missing_dependencies) or "none known to pydicom"
    return (
        f"{path}: the installed decoders ({installed}) failed on its {syntax.name} pixel data: "
        f"the data is corrupt, or needs another decoder ({others}). Details: {error}"
    )


def _check_single_image(dataset: Dataset, path: Path, reading: str = "") -> None:
    """Refuses, before any decoding, a file without pixel data or with several frames.

    `reading` holds pydicom's warnings from reading the file, named in the error.
    """
    if "PixelData" not in dataset:
        if reading:  # e.g. a truncated download: the pixel data element never ended
            raise DicomReadError(
                f"{path}: no usable pixel data; the file looks truncated ({reading})."
            )
        raise DicomReadError(f"{path}: the DICOM file has no pixel data (not an image).")
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DicomReadError(f"{path}: has {frames} frames; a single X-ray image is expected.")


def _declared_pixels(dataset: Dataset) -> int | None:
    """Rows x columns that the compressed frame's own JPEG/JPEG 2000 header declares.

    None where there is nothing to check (uncompressed data, Pillow decoding, no pylibjpeg
    reader for the syntax) or the header cannot be parsed (the decoder then reports the
    damage).
    """
    if _pillow_decodes(dataset):
        return None
    plugin = _pylibjpeg_plugin(UID(dataset.file_meta.get("TransferSyntaxUID", "")))
    read_parameters = {_OPENJPEG: _jpeg2000_parameters, _LIBJPEG: _jpeg_parameters}.get(plugin)
    if read_parameters is None:
        return None
    try:
        parameters = read_parameters(get_frame(dataset.PixelData, 0, number_of_frames=1))
    except (RuntimeError, *_BROKEN_DATA_ERRORS):
        return None
    return int(parameters["rows"]) * int(parameters["columns"])


def _check_declared_size(dataset: Dataset, path: Path) -> None:
    """Refuses compressed data that declares more pixels than the header's Rows x Columns.

    The pylibjpeg decoders allocate whatever the codestream declares: one corrupt JPEG 2000
    header can ask for tens of gigabytes and get the whole process killed, not just this file.
    """
    declared = _declared_pixels(dataset)
    if declared is None:
        return
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    if declared > rows * columns:
        raise DicomReadError(
            f"{path}: corrupt pixel data: the compressed image declares {declared} pixels, the "
            f"header {rows} x {columns}."
        )


def _pillow_decodes(dataset: Dataset) -> bool:
    """JPEG baseline (every RSNA file) is decoded with Pillow when it is installed.

    pydicom would pick pylibjpeg when both are installed; Pillow (libjpeg-turbo) is about 5x
    faster here (4 against 21 ms for a 1024 x 1024 X-ray) and is what Colab has, so the pixels
    are the same everywhere (the two differ by 1 grey level on about 3 % of pixels). Pillow
    checks the declared image size itself.
    """
    syntax = UID(dataset.file_meta.get("TransferSyntaxUID", ""))
    return syntax == JPEGBaseline8Bit and _PILLOW in get_decoder(syntax).available_plugins


def _decode_pixels(dataset: Dataset, path: Path) -> np.ndarray:
    if _pillow_decodes(dataset):
        dataset.pixel_array_options(decoding_plugin=_PILLOW)
    try:
        return dataset.pixel_array
    except RuntimeError as error:  # no decoder plugin installed, or all of them failed
        raise DicomReadError(_decoder_message(dataset, path, error)) from error
    except _BROKEN_DATA_ERRORS as error:
        raise DicomReadError(f"{path}: broken or unsupported pixel data ({error}).") from error


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Rescales any integer or float image to 0..255 uint8 (min-max, unless already uint8)."""
    if pixels.dtype == np.uint8:
        return pixels
    pixels = pixels.astype(np.float32)
    low, high = float(pixels.min()), float(pixels.max())
    if high <= low:
        return np.zeros(pixels.shape, np.uint8)
    return np.round((pixels - low) * (_UINT8_MAX / (high - low))).astype(np.uint8)


def _range_to_uint8(values: np.ndarray, dark: float, bright: float) -> np.ndarray:
    """Maps `dark` to 0 and `bright` to 255 linearly; values beyond them are clipped."""
    if bright == dark:
        return np.zeros(values.shape, np.uint8)
    fraction = (values.astype(np.float64) - dark) / (bright - dark)
    return np.round(np.clip(fraction, 0.0, 1.0) * _UINT8_MAX).astype(np.uint8)


def _has_modality_transform(dataset: Dataset) -> bool:
    """True for a Modality LUT Sequence or a Rescale Slope/Intercept other than 1 and 0."""
    if dataset.get("ModalityLUTSequence"):
        return True
    if "RescaleSlope" not in dataset or "RescaleIntercept" not in dataset:
        return False
    return float(dataset.RescaleSlope) != 1 or float(dataset.RescaleIntercept) != 0


def _voi_lut_item(dataset: Dataset) -> Dataset | None:
    """The VOI LUT Sequence item that `apply_voi_lut` uses (it prefers it to the window)."""
    sequence = dataset.get("VOILUTSequence")
    if not sequence:
        return None
    item = sequence[0]
    if item.get("LUTDescriptor") is None or item.get("LUTData") is None:
        return None
    return item


def _has_window(dataset: Dataset) -> bool:
    return dataset.get("WindowCenter") is not None and dataset.get("WindowWidth") is not None


def _voi_to_uint8(values: np.ndarray, dataset: Dataset) -> np.ndarray:
    """Applies the VOI LUT or window, then maps its whole output range to 0..255.

    A window's output range is pydicom's (from Bits Stored, Pixel Representation and the
    Modality LUT), read by windowing values far below and above it; values outside the window
    end up at 0 or 255. A VOI LUT's output range is the range of its entries.
    """
    lut = _voi_lut_item(dataset)
    if lut is None:
        dark, bright = apply_voi_lut(_BELOW_AND_ABOVE_ANY_WINDOW.copy(), dataset)
        return _range_to_uint8(apply_voi_lut(values, dataset), dark, bright)
    entries = int(lut.LUTDescriptor[0]) or _LUT_ENTRIES_FOR_ZERO
    first_value, bits = int(lut.LUTDescriptor[1]), int(lut.LUTDescriptor[2])
    if bits == _BYTE_LUT_BITS and entries > _BYTE_LUT_MAX_ENTRIES:  # dataset read for this call
        lut.LUTDescriptor = [lut.LUTDescriptor[0], first_value, _WIDE_LUT_BITS]
    table = apply_voi_lut(np.arange(first_value, first_value + entries), dataset)
    windowed = apply_voi_lut(np.rint(values).astype(np.int64), dataset)  # LUT indices: integers
    return _range_to_uint8(windowed, float(table.min()), float(table.max()))


def _grayscale_to_uint8(pixels: np.ndarray, dataset: Dataset) -> np.ndarray:
    """Stored values -> Modality LUT -> VOI LUT or window -> 0..255 (bright = high value).

    Without VOI information the (modality) values are min-max scaled, and uint8 data without a
    modality transform is returned unchanged.
    """
    values = apply_modality_lut(pixels, dataset) if _has_modality_transform(dataset) else pixels
    if _voi_lut_item(dataset) is None and not _has_window(dataset):
        return _to_uint8(values)
    return _voi_to_uint8(values, dataset)


def _to_gray_image(pixels: np.ndarray, dataset: Dataset, path: Path) -> np.ndarray:
    """One decoded frame -> `(rows, columns)` uint8 image where bright means dense."""
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2"))
    samples = int(dataset.get("SamplesPerPixel", 1))
    if samples == _RGB_SAMPLES and pixels.ndim == _COLOR_ARRAY_NDIM:  # pydicom gives YBR as RGB
        return cv2.cvtColor(_to_uint8(pixels), cv2.COLOR_RGB2GRAY)
    if samples != 1 or pixels.ndim != 2:
        raise DicomReadError(
            f"{path}: pixel array of shape {pixels.shape} with {samples} samples per pixel is not "
            "a single grayscale image."
        )
    # The LUTs work on stored values, so MONOCHROME1 (0 is white) is inverted after them.
    image = _grayscale_to_uint8(pixels, dataset)
    return _UINT8_MAX - image if photometric == "MONOCHROME1" else image


def read_dicom_image(path: str | Path) -> np.ndarray:
    """Reads one DICOM file as an 8-bit grayscale image where bright means dense.

    Grayscale values pass through the Modality LUT (Rescale Slope/Intercept or Modality LUT
    Sequence) and then the VOI LUT (Window Center/Width or VOI LUT Sequence) where the file has
    them, with pydicom's `apply_modality_lut` and `apply_voi_lut`; the VOI output range becomes
    0..255. Without VOI information the values are min-max scaled (8-bit data without a modality
    transform is kept as stored). MONOCHROME1 is inverted last; RGB/YBR become grayscale.

    Args:
        path: Path to a `.dcm` file.

    Returns:
        `(rows, columns)` uint8 array.

    Raises:
        DicomReadError: For a missing, non-DICOM, non-image, multi-frame or undecodable file
            (the message names the decoder to install), or one with invalid image attributes.
    """
    path = Path(path)
    dataset, reading = _read_dataset(path)
    try:
        _check_single_image(dataset, path, reading)
        _check_declared_size(dataset, path)
        return _to_gray_image(_decode_pixels(dataset, path), dataset, path)
    except DicomReadError:
        raise
    except _BROKEN_DATA_ERRORS as error:
        raise DicomReadError(f"{path}: invalid image attributes or LUTs ({error}).") from error


def _base_dataset(patient_id: str, rows: int, columns: int, bits: int) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.StudyInstanceUID = generate_uid()
    dataset.SeriesInstanceUID = generate_uid()
    dataset.Modality = "CR"
    dataset.ConversionType = "WSD"
    dataset.PatientID = patient_id
    dataset.PatientName = patient_id
    dataset.BodyPartExamined = "CHEST"
    dataset.ViewPosition = "PA"
    dataset.SamplesPerPixel = 1
    dataset.Rows, dataset.Columns = rows, columns
    dataset.BitsAllocated = 8 if bits == 8 else 16
    dataset.BitsStored = bits
    dataset.HighBit = bits - 1
    dataset.PixelRepresentation = 0
    dataset.PixelSpacing = [0.143, 0.143]
    return dataset


def write_dicom_image(
    path: str | Path,
    pixels: np.ndarray,
    patient_id: str,
    compression: str = "jpeg",
    photometric: str = "MONOCHROME2",
    jpeg_quality: int = 90,
    patient_sex: str = "F",
    patient_age: int = 50,
) -> Path:
    """Writes a single-frame grayscale DICOM file in the RSNA layout.

    Args:
        path: Output path (parent folders are created).
        pixels: `(rows, columns)` uint8 image, or uint16 for 12/16-bit data (only with
            `compression="none"`; the bit depth is `pixels.max().bit_length()` rounded up to 12
            or 16). Values are stored as given; with `"MONOCHROME1"` the caller passes the
            already-inverted values.
        patient_id: Written to PatientID and PatientName, as in RSNA.
        compression: `"jpeg"` (JPEG baseline, like RSNA) or `"none"` (explicit VR little endian).
        photometric: `"MONOCHROME2"` (bright = dense) or `"MONOCHROME1"` (inverted).
        jpeg_quality: Pillow JPEG quality for `"jpeg"`.
        patient_sex: `"M"`, `"F"` or `"O"`.
        patient_age: Age in years.

    Returns:
        The path written.
    """
    path = Path(path)
    pixels = np.asarray(pixels)
    if pixels.ndim != 2 or pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(
            f"pixels must be a 2-D uint8 or uint16 array, got {pixels.dtype} {pixels.shape}."
        )
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}.")
    if photometric not in PHOTOMETRICS:
        raise ValueError(f"photometric must be one of {PHOTOMETRICS}, got {photometric!r}.")
    if pixels.dtype == np.uint16 and compression == "jpeg":
        raise ValueError("JPEG baseline holds 8-bit data only; use compression='none'.")
    bits = 8 if pixels.dtype == np.uint8 else (12 if int(pixels.max()) < 4096 else 16)
    dataset = _base_dataset(patient_id, *pixels.shape, bits=bits)
    dataset.PhotometricInterpretation = photometric
    dataset.PatientSex = patient_sex
    dataset.PatientAge = f"{int(patient_age):03d}Y"
    if compression == "jpeg":
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=jpeg_quality)
        dataset.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        dataset.PixelData = encapsulate([buffer.getvalue()])
        dataset["PixelData"].VR = "OB"
        dataset.LossyImageCompression = "01"
        dataset.LossyImageCompressionMethod = "ISO_10918_1"
    else:
        dataset.PixelData = pixels.tobytes()
        dataset["PixelData"].VR = "OB" if bits == 8 else "OW"
    path.parent.mkdir(parents=True, exist_ok=True)
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error")  # a malformed element must not pass silently
        dataset.save_as(path, enforce_file_format=True)
    return path
