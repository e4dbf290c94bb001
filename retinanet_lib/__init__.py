"""retinanet_lib: the tested library behind "RetinaNet for pneumonia detection, step by step".

Modules, in the order the book meets them (import from the module you need, e.g.
`from retinanet_lib.anchors import generate_anchors`):

* `config`   frozen dataclasses and named constants; the single source of every setting
* `boxes`    box format conversion (`xyxy`, `xywh`, `center_xywh`), area, IoU, clipping
* `anchors`  anchor generation for any input size
* `encoding` anchor matching, box-delta encoding/decoding, `LabelEncoder`
* `viz`      matplotlib helpers (the only module importing matplotlib)

Importing the package has no side effects: it does not import TensorFlow, seed anything,
print or change warning filters.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
