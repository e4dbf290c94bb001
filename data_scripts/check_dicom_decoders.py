"""Count which of pydicom's own test DICOMs `read_dicom_image` reads, refuses or crashes on.

    python data_scripts/check_dicom_decoders.py
    python data_scripts/check_dicom_decoders.py --verbose     # also list every refused file

Every regular file pydicom ships in `pydicom/data/test_files/` that holds Pixel Data is read; a
refusal is a `DicomReadError` (grouped by reason), a crash is any other exception and should
never happen (exit status 1). A missing decoder plugin shows up as refusals that say
"Install a decoder".
"""

from __future__ import annotations

import argparse
import collections
import warnings
from pathlib import Path

import pydicom
import pydicom.data

from retinanet_lib.dicom_io import DicomReadError, read_dicom_image

_REASON_CHARS = 140


def files_with_pixel_data() -> list[Path]:
    """The regular files of pydicom's test data that hold Pixel Data (read leniently)."""
    found = []
    shipped = Path(pydicom.data.__file__).parent / "test_files"  # no download of extra data
    for path in sorted(shipped.rglob("*")):
        if not path.is_file():
            continue
        try:
            dataset = pydicom.dcmread(path, force=True, defer_size=64)
        except Exception:  # not DICOM at all: not counted
            continue
        if "PixelData" in dataset:
            found.append(path)
    return found


def reason(error: DicomReadError, path: Path) -> str:
    """The error message without the file name and the decoder's details."""
    text = str(error).removeprefix(f"{path}: ").split(" Details:")[0]
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 3] + "..."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--verbose", action="store_true", help="list every refused file")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")  # pydicom comments on its deliberately odd test files
    files = files_with_pixel_data()
    read, refused, crashed = [], collections.defaultdict(list), []
    for path in files:
        try:
            read_dicom_image(path)
            read.append(path)
        except DicomReadError as error:
            refused[reason(error, path)].append(path.name)
        except Exception as error:  # exactly what this script counts
            crashed.append(f"{path.name}: {type(error).__name__}: {error}")
    print(f"files with pixel data: {len(files)}")
    print(f"read:    {len(read)}")
    print(f"refused: {sum(len(names) for names in refused.values())}")
    for text, names in sorted(refused.items(), key=lambda item: -len(item[1])):
        print(f"  {len(names):3d}  {text}" + (f"  [{', '.join(names)}]" if args.verbose else ""))
    print(f"crashed: {len(crashed)}")
    for line in crashed:
        print(f"  {line}")
    return 1 if crashed else 0


if __name__ == "__main__":
    raise SystemExit(main())
