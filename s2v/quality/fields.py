"""The quality checks' results as the `qc_*` fields of a ledger record (records/ledger.py declares them)."""
from __future__ import annotations

from s2v.quality.clip import ClipCheck
from s2v.quality.portrait import PortraitCheck


def qc_fields(portrait: PortraitCheck | None, clip: ClipCheck | None, seconds: float | None = None,
              error: str | None = None) -> dict:
    """Only what was checked: a row whose checks did not run keeps its qc_* fields empty."""
    fields: dict = {}
    if portrait is not None:
        fields.update(qc_portrait_faces=portrait.faces, qc_portrait_face_share=portrait.face_share,
                      qc_portrait_face_cut=portrait.face_cut, qc_portrait=portrait.problem)
    if clip is not None:
        fields.update(qc_face_frames=clip.face_frames, qc_face_drift=clip.face_drift,
                      qc_face_size_change=clip.face_size_change, qc_mouth_sync=clip.mouth_sync,
                      qc_mouth_lag_s=clip.mouth_lag_s, qc_flags=clip.problem())
    if seconds is not None:
        fields["qc_s"] = round(seconds, 3)
    if error is not None:
        fields["qc_error"] = error
    return fields


def qc_flag_text(record: dict) -> str:
    """What the quality checks found in one record (a dict of its fields), in one line; empty when nothing."""
    found = [f"portrait: {record['qc_portrait']}"] if record.get("qc_portrait") else []
    found += [record["qc_flags"]] if record.get("qc_flags") else []
    found += [f"clip check did not run: {record['qc_error']}"] if record.get("qc_error") else []
    return "; ".join(found)
