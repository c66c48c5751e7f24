"""The cards' keys and the contact sheet, without a server: what a person reads in the run's Artifacts tab."""
import io
import re

from PIL import Image

from flows.contact_sheet import LABEL_H, TILE_H, TILE_W, contact_sheet
from flows.report import CARDS, artifact_key
from s2v.settings import Settings


def test_card_keys_read_as_words_in_a_stable_order_one_set_per_output():
    keys = [artifact_key("s3://studio/videos/nightly", card) for card in CARDS]
    assert keys == sorted(keys)  # progress, ledger, videos, summary, whatever order the UI lists keys in
    assert all(re.fullmatch(r"[a-z0-9-]+", key) and "-videos-nightly-" in key for key in keys), keys
    assert keys[1].startswith("2-ledger-")
    # Two outputs that end alike keep their own cards.
    assert artifact_key("s3://other/videos/nightly", "ledger") != keys[1]


def test_a_failed_tile_of_the_contact_sheet_says_why():
    def tile(record: dict) -> Image.Image:
        sheet = Image.open(io.BytesIO(contact_sheet([record], Settings())))
        assert sheet.size == (TILE_W, TILE_H + LABEL_H)
        return sheet.crop((0, 0, TILE_W, TILE_H)).convert("L")

    with_reason = tile({"clip_id": "anna", "status": "failed", "error": "row 3: image='anna.jpg': not a decodable image"})
    without = tile({"clip_id": "anna", "status": "failed", "error": None})
    dark = lambda image: sum(1 for value in image.getdata() if value < 128)  # noqa: E731 (text pixels)
    assert dark(with_reason) > 3 * dark(without) > 0  # the reason is written on the tile, not a blank box
