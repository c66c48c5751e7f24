"""The portrait preflight: does the picture hold exactly one usable face? Checked before any GPU work.

S2V_FACE_CHECK decides what a failed check does: `refuse` fails the row up front, `warn` (the default)
runs it and keeps the reason in its record (`qc_portrait`), `off` does not look.
"""
from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from s2v.errors import InputError
from s2v.quality.faces import find_faces
from s2v.settings import Settings
from s2v.storage.fetch import FetchedInput


class PortraitCheck(BaseModel):
    """What the face check saw in one portrait; `problem` is None when it holds one usable face."""

    faces: int
    face_share: float | None = None  # the main face's box over the whole picture
    face_cut: bool | None = None  # the main face touches an edge of the picture
    problem: str | None = None

    def summary(self) -> str:
        """A few words for a table column: "1 face, 9%" (the main face's share), ", cut" when an edge cuts it."""
        if not self.faces:
            return "no face"
        cut = ", cut" if self.face_cut else ""
        return f"{self.faces} face{'s' if self.faces > 1 else ''}, {self.face_share:.0%}{cut}"


def check_portrait(path: Path) -> PortraitCheck:
    """Faces in the upright picture at `path`, the main face's share and whether an edge cuts it."""
    return check_picture(load_upright(path))


def check_picture(picture) -> PortraitCheck:
    height, width = picture.shape[:2]
    faces = find_faces(picture)
    if not faces:
        return PortraitCheck(faces=0, problem="no face found (a frontal face is needed; drawings and profiles are "
                                                "often not found)")
    main = faces[0]
    edges = main.cut_edges(width, height)
    problem = None
    if len(faces) > 1:
        problem = f"{len(faces)} faces found; the model animates one person"
    elif edges:
        problem = f"the face is cut by the {' and '.join(edges)} edge of the picture"
    return PortraitCheck(faces=len(faces), face_share=round(main.share_of(width, height), 4), face_cut=bool(edges),
                         problem=problem)


def preflight_portrait(fetched: FetchedInput, settings: Settings) -> PortraitCheck | None:
    """The portrait's check under S2V_FACE_CHECK: None when off; InputError on the image when `refuse`
    and the portrait has not exactly one usable face."""
    if settings.face_check == "off":
        return None
    result = check_portrait(fetched.path)
    if result.problem and settings.face_check == "refuse":
        raise InputError(fetched.field, fetched.source, f"{result.problem} (S2V_FACE_CHECK=refuse)")
    return result


def load_upright(path: Path, size: tuple[int, int] | None = None):
    """The picture as an RGB array, upright (EXIF), fitted to `size` (width, height) the way the
    model fits it (scale, then centre crop) when given."""
    import numpy as np
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        upright = ImageOps.exif_transpose(image).convert("RGB")
    if size is not None:
        upright = ImageOps.fit(upright, size, method=Image.Resampling.BILINEAR)
    return np.asarray(upright)
