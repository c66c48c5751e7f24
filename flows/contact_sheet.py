"""The pictures of a batch's cards: each row's poster as a thumbnail, and the contact sheet of the whole batch.

The sheet is read at 100 % in the browser: labels in a TrueType size, not the 11 px bitmap font, and a
failed tile says why it failed instead of being a grey box.
"""
from __future__ import annotations

import base64
import io
import textwrap
from collections.abc import Sequence

from records.ledger import LedgerRecord
from s2v.settings import Settings
from s2v.storage.outputs import filesystem

THUMB_WIDTH = 240
TILE_W, TILE_H, LABEL_H = 320, 240, 52
STATUS_COLOURS = {"succeeded": (0, 110, 0), "skipped": (0, 80, 160)}  # anything else: red


def contact_sheet(records: Sequence[dict], settings: Settings, columns: int = 4) -> bytes:
    """A JPEG with one frame per clip (its poster) labelled with its clip id and status; a failed clip's
    tile holds its error instead."""
    from PIL import Image, ImageDraw, ImageFont

    label, small = ImageFont.load_default(size=18), ImageFont.load_default(size=14)
    rows = -(-len(records) // columns)
    sheet = Image.new("RGB", (TILE_W * min(columns, len(records)), (TILE_H + LABEL_H) * rows), "white")
    draw = ImageDraw.Draw(sheet)
    for n, record in enumerate(records):
        x, y = (n % columns) * TILE_W, (n // columns) * (TILE_H + LABEL_H)
        poster = poster_bytes(record, settings)
        if poster is not None:
            with Image.open(io.BytesIO(poster)) as image:
                image.thumbnail((TILE_W - 8, TILE_H - 8))
                sheet.paste(image, (x + (TILE_W - image.width) // 2, y + (TILE_H - image.height) // 2))
        else:
            draw.rectangle((x + 4, y + 4, x + TILE_W - 4, y + TILE_H - 4), fill=(235, 225, 225))
            reason = " ".join((record.get("error") or "no picture").split())
            lines = textwrap.wrap(reason, width=34)[:9]
            draw.multiline_text((x + 12, y + 12), "\n".join(lines), fill=(90, 0, 0), font=small, spacing=4)
        colour = STATUS_COLOURS.get(record["status"], (170, 0, 0))
        draw.text((x + 8, y + TILE_H + 4), record["clip_id"][:28], fill="black", font=label)
        draw.text((x + 8, y + TILE_H + 28), record["status"], fill=colour, font=small)
    buffer = io.BytesIO()
    sheet.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def picture_source(record: LedgerRecord, settings: Settings) -> str | None:
    """Where the UI can load the row's picture: its poster's URL, or the poster itself inlined."""
    if record.poster_url and record.poster_url.startswith(("http://", "https://")):
        return record.poster_url
    poster = poster_bytes(record.model_dump(), settings)
    if poster is None:
        return None
    return "data:image/jpeg;base64," + base64.b64encode(thumbnail(poster)).decode()


def poster_bytes(record: dict, settings: Settings) -> bytes | None:
    """The row's poster, read where it is stored beside its video; None when it has none."""
    video = record.get("output_uri")
    if not video or "." not in video or record["status"] not in ("succeeded", "skipped"):
        return None
    fs, path = filesystem(f"{video.rsplit('.', 1)[0]}.poster.jpg", settings)
    try:
        return fs.cat_file(path)
    except Exception:  # no poster (older videos), or storage trouble: the card shows the rest
        return None


def thumbnail(data: bytes) -> bytes:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.thumbnail((THUMB_WIDTH, THUMB_WIDTH))
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()
