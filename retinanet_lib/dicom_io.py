"""Reading chest X-ray DICOM files into 8-bit images, and writing them.

RSNA's files are 1024 x 1024, 1 sample per pixel, 8-bit MONOCHROME2, JPEG-baseline compressed.
`read_dicom_image` also accepts what other sources produce: MONOCHROME1 (inverted: high values are
dark), 12/16-bit data (rescaled to 8-bit), uncompressed files and RGB secondary captures (turned
to grayscale). Anything it cannot turn into one 2-D image raises `DicomReadError` naming the file.

`write_dicom_image` writes valid DICOM files in the RSNA layout; the synthetic data generator and
the tests use it.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import cv2
import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    SecondaryCaptureImageStorage,
    generate_uid,
)

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


class DicomReadError(ValueError):
    """A file could not be read as a single 2-D image; the message names the file and the fix."""


def read_dicom_header(path: str | Path) -> Dataset:
    """Reads only the header (fast: no pixel decoding).

    Raises:
        DicomReadError: If the file is missing or not DICOM.
    """
    path = Path(path)
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except FileNotFoundError as error:
        raise DicomReadError(f"{path}: file not found.") from error
    except (InvalidDicomError, OSError, ValueError) as error:
        raise DicomReadError(f"{path}: not a readable DICOM file ({error}).") from error


def _decode_pixels(dataset: Dataset, path: Path) -> np.ndarray:
    if "PixelData" not in dataset:
        raise DicomReadError(f"{path}: the DICOM file has no pixel data (not an image).")
    try:
        return dataset.pixel_array
    except RuntimeError as error:  # missing decoder plugin
        raise DicomReadError(
            f"{path}: cannot decode its pixel data ({dataset.file_meta.TransferSyntaxUID.name}). "
            "Install a decoder: `pip install pillow` (JPEG baseline) or "
            f"`pip install pylibjpeg pylibjpeg-libjpeg`. Details: {error}"
        ) from error
    except (ValueError, AttributeError, KeyError, NotImplementedError) as error:
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


def read_dicom_image(path: str | Path) -> np.ndarray:
    """Reads one DICOM file as an 8-bit grayscale image where bright means dense.

    Args:
        path: Path to a `.dcm` file.

    Returns:
        `(rows, columns)` uint8 array.

    Raises:
        DicomReadError: For a missing, non-DICOM, non-image, multi-frame or undecodable file.
    """
    path = Path(path)
    try:
        dataset = pydicom.dcmread(path)
    except FileNotFoundError as error:
        raise DicomReadError(f"{path}: file not found.") from error
    except (InvalidDicomError, OSError, ValueError, EOFError) as error:
        raise DicomReadError(f"{path}: not a readable DICOM file ({error}).") from error
    pixels = _decode_pixels(dataset, path)
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2"))
    samples = int(dataset.get("SamplesPerPixel", 1))
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DicomReadError(f"{path}: has {frames} frames; a single X-ray image is expected.")
    if samples == 3 and pixels.ndim == 3:  # pydicom converts YBR to RGB by default
        pixels = cv2.cvtColor(_to_uint8(pixels), cv2.COLOR_RGB2GRAY)
    elif samples != 1 or pixels.ndim != 2:
        raise DicomReadError(
            f"{path}: pixel array of shape {pixels.shape} with {samples} samples per pixel is not "
            "a single grayscale image."
        )
    pixels = _to_uint8(pixels)
    if photometric == "MONOCHROME1":  # 0 is white: invert so that bright means dense
        pixels = _UINT8_MAX - pixels
    return pixels


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
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a malformed element must not pass silently
        dataset.save_as(path, enforce_file_format=True)
    return path
