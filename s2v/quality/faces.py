"""Finding faces in pictures with OpenCV's bundled Haar cascade: its weights ship inside the package,
so nothing is fetched at run time, and no torch is needed.

The cascade and its parameters were chosen on real photographs that ship with scikit-image and on the
example portraits (README, "Quality checks"): `frontalface_alt2` found exactly the faces there were and
never a false one at any setting tried, where `frontalface_default` found a second, false face in the
astronaut at several settings.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

CASCADE_FILE = "haarcascade_frontalface_alt2.xml"
WORKING_SIDE = 480  # pictures are scaled down to this long side first: faster, and the measured setting
SCALE_STEP = 1.1
MIN_NEIGHBORS = 5
MIN_FACE_FRACTION = 1 / 8  # of the short side: a smaller face is no talking head
EDGE_MARGIN = 0.1  # of the face box: a box closer than this to an edge is a face cut by the frame

_local = threading.local()
_import_lock = threading.Lock()


@dataclass(frozen=True)
class Face:
    """A face box in the picture's own pixels."""

    x: float
    y: float
    width: float
    height: float

    @property
    def centre(self) -> tuple[float, float]:
        return self.x + self.width / 2, self.y + self.height / 2

    def share_of(self, picture_width: int, picture_height: int) -> float:
        return self.width * self.height / (picture_width * picture_height)

    def cut_edges(self, picture_width: int, picture_height: int) -> list[str]:
        """The picture's edges that this face touches (within EDGE_MARGIN of its size)."""
        margin_x, margin_y = EDGE_MARGIN * self.width, EDGE_MARGIN * self.height
        edges = {
            "left": self.x < margin_x,
            "top": self.y < margin_y,
            "right": self.x + self.width > picture_width - margin_x,
            "bottom": self.y + self.height > picture_height - margin_y,
        }
        return [edge for edge, touches in edges.items() if touches]


def find_faces(picture: np.ndarray) -> list[Face]:
    """The faces in an RGB (H, W, 3) or grey (H, W) uint8 picture, largest first."""
    cv2 = _opencv()
    grey = picture if picture.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(picture), cv2.COLOR_RGB2GRAY)
    scale = min(1.0, WORKING_SIDE / max(grey.shape))
    if scale < 1.0:
        grey = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    smallest = max(20, int(min(grey.shape) * MIN_FACE_FRACTION))
    boxes = _cascade().detectMultiScale(cv2.equalizeHist(grey), scaleFactor=SCALE_STEP, minNeighbors=MIN_NEIGHBORS,
                                        minSize=(smallest, smallest))
    faces = [Face(*(float(value) / scale for value in box)) for box in boxes]
    return sorted(faces, key=lambda face: face.width * face.height, reverse=True)


def _cascade():
    """One classifier per thread: OpenCV does not promise that one may be shared across threads."""
    cv2 = _opencv()
    if getattr(_local, "cascade", None) is None:
        # The check runs beside a generation on the worker's CPU: one thread keeps it out of the way.
        cv2.setNumThreads(1)
        cascade = cv2.CascadeClassifier(cv2.data.haarcascades + CASCADE_FILE)
        if cascade.empty():
            raise RuntimeError(f"OpenCV's {CASCADE_FILE} did not load from {cv2.data.haarcascades}")
        _local.cascade = cascade
    return _local.cascade


def _opencv():
    """cv2, imported under a lock: two rows' downloads importing it at once saw a half-loaded module
    ("module 'cv2' has no attribute 'data'"); OpenCV's loader swaps modules during its import."""
    with _import_lock:
        import cv2
    return cv2
