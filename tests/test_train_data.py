"""Reading a user's crop folders and split CSV for train and evaluate: bad input is one line
and exit 2, and no crop is counted twice, under the wrong label or as the wrong pixels."""

from __future__ import annotations

import logging
import re
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.cli_helpers import run_cli
from tests.train_helpers import write_synthetic_crops, write_tiny_card
from wsi_atm.errors import BadInputError
from wsi_atm.train.data import AMIBR_CSV, load_dataset


def _evaluate(data: Path, tmp_path: Path) -> int:
    card = write_tiny_card(tmp_path / "c")  # untrained: refused later, after the data
    return run_cli(["evaluate", "--model", str(card), "--data", str(data), "--json"])


def test_a_split_csv_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    # Regression: Excel's UTF-8 BOM made the first column "\ufeffslide": "missing columns"
    data = write_synthetic_crops(tmp_path / "d", n_atypical=3, n_normal=3)
    csv_path = data / AMIBR_CSV
    csv_path.write_text("\ufeff" + csv_path.read_text(), encoding="utf-8")
    assert load_dataset(data).groups is not None


@pytest.mark.parametrize(("damage", "words"), [
    (lambda t: t.replace("N0.png", "N\xe90.png").encode("latin-1"), "is not UTF-8 text"),
    (lambda t: (t + "s0.tiff,Normal\n").encode(), "line 8 has fewer cells"),
    (lambda t: (t + '"s0.tiff,Normal,N0.png\ns1.tiff,Normal,N1.png\n').encode(),
     "line 9 has fewer cells"),
    (lambda t: (t + "s0.tiff,Normal,N0.png,extra\n").encode(), "line 8 has more cells"),
    (lambda t: (t + f's0.tiff,Normal,"{"x" * 200_000}"\n').encode(), "unreadable table"),
    (lambda t: t.partition("\n")[0].encode() + b"\n", "no rows below the header"),
], ids=["latin-1", "short-row", "open-quote", "extra-cell", "over-long-cell", "header-only"])
def test_a_damaged_split_csv_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          damage: Callable[[str], bytes], words: str) -> None:
    # Regression: each was an internal error (exit 1), or a listed crop silently misread
    data = write_synthetic_crops(tmp_path / "d", n_atypical=3, n_normal=3)
    csv_path = data / AMIBR_CSV
    csv_path.write_bytes(damage(csv_path.read_text()))
    with pytest.raises(BadInputError, match=words):
        load_dataset(data)
    assert _evaluate(data, tmp_path) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1


def _add_row(data: Path, row: str) -> None:
    with open(data / AMIBR_CSV, "a", newline="") as fh:
        fh.write(row + "\n")


@pytest.mark.parametrize(("row", "words"), [
    ("s0.tiff,Unsure,U0.png", "final_label 'Unsure' (of 'U0.png') is not one of"),
    ("s0.tiff,Normal,../Atypical/A0.png", "'../Atypical/A0.png' is not a file name"),
    ("s0.tiff,Normal,N1.png", "Normal/N1.png is listed twice"),
], ids=["label-of-an-extra-folder", "name-into-the-other-class", "row-twice"])
def test_split_csv_rows_that_would_mislabel_or_repeat_a_crop_are_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], row: str, words: str) -> None:
    # Regression: an Unsure/ crop was trained on as normal, an atypical crop reached through
    # "../" was labelled normal, and a row listed twice was a crop counted twice in the metrics
    data = write_synthetic_crops(tmp_path / "d", n_atypical=3, n_normal=3)
    (data / "Unsure").mkdir()
    (data / "Unsure" / "U0.png").write_bytes((data / "Atypical" / "A0.png").read_bytes())
    _add_row(data, row)
    with pytest.raises(BadInputError, match=re.escape(words)):
        load_dataset(data)
    assert _evaluate(data, tmp_path) == 2
    assert words in capsys.readouterr().err


@pytest.mark.parametrize("cv", ["kfold", "none"])
def test_training_on_one_class_is_refused_before_the_run_folder(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], cv: str) -> None:
    # Regression: exit 0 with a run folder and a card whose metrics were all NaN
    data = write_synthetic_crops(tmp_path / "d", n_atypical=0, n_normal=12)
    card = write_tiny_card(tmp_path / "c")
    out = tmp_path / "run"
    assert run_cli(["train", "--data", str(data), "--model", str(card), "--out", str(out),
                    "--cv", cv, "--folds", "2", "--epochs", "1", "--threads", "1",
                    "--quiet"]) == 2
    assert "every crop is normal" in capsys.readouterr().err
    assert not out.exists()


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` × ``height`` RGB pixels and holds none."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2,
                                                               0, 0, 0)) + chunk(b"IEND", b""))


def test_a_crop_whose_header_declares_a_huge_image_is_bad_input(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Regression: Pillow's DecompressionBombError, raised at open, was an internal error
    data = write_synthetic_crops(tmp_path / "d", n_atypical=3, n_normal=3)
    (data / "Normal" / "N1.png").write_bytes(_png_header(30_000, 30_000))
    assert _evaluate(data, tmp_path) == 2
    err = capsys.readouterr().err
    assert "N1.png: cannot read image" in err and len(err.strip().splitlines()) == 1


def test_a_crop_that_is_not_square_is_refused(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    # Regression: it was stretched to the card's square crop, distorting the mitosis, silently
    data = write_synthetic_crops(tmp_path / "d", n_atypical=3, n_normal=3)
    crop = data / "Normal" / "N1.png"
    Image.open(crop).crop((0, 0, 32, 20)).save(crop)
    with pytest.raises(BadInputError, match=r"N1\.png: a crop must be square, found 32×20"):
        load_dataset(data, size=32)
    assert _evaluate(data, tmp_path) == 2
    err = capsys.readouterr().err
    assert "a crop must be square" in err and len(err.strip().splitlines()) == 1


def test_16_bit_grey_crops_are_scaled_and_wider_samples_refused(tmp_path: Path) -> None:
    # Regression: 16-bit grey crops (PNG or TIFF) were read as pure white
    data = write_synthetic_crops(tmp_path / "d", n_atypical=3, n_normal=3)
    (data / AMIBR_CSV).unlink()
    greys = {}
    for name, saved in (("N0.png", "N0.png"), ("N1.png", "N1.tif")):
        greys[saved] = np.asarray(Image.open(data / "Normal" / name).convert("L"))
        (data / "Normal" / name).unlink()
        Image.fromarray(greys[saved].astype(np.uint16) * 257).save(data / "Normal" / saved)
    crops = load_dataset(data)
    for saved, grey in greys.items():
        assert np.array_equal(crops.images[crops.names.index(f"Normal/{saved}")][0].numpy(), grey)
    # a Pillow that opens 16-bit grey as 32-bit "I" (PNG, or a TIFF saying 16 bits)
    real_open = Image.open

    def open_as_i(path: Path) -> Image.Image:
        im = real_open(path)
        if not im.mode.startswith("I;16"):
            return im
        wide = im.convert("I")
        wide.format = im.format
        wide.tag_v2 = getattr(im, "tag_v2", None)  # type: ignore[attr-defined]
        return wide

    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(Image, "open", open_as_i)
        crops = load_dataset(data)
    for saved, grey in greys.items():
        assert np.array_equal(crops.images[crops.names.index(f"Normal/{saved}")][0].numpy(), grey)
    Image.fromarray(greys["N1.tif"].astype(np.int32)).save(data / "Normal" / "N1.tif")
    with pytest.raises(BadInputError, match=r"N1\.tif: 32-bit integer samples"):
        load_dataset(data)
    Image.fromarray(greys["N1.tif"].astype(np.float32)).save(data / "Normal" / "N1.tif")
    with pytest.raises(BadInputError, match=r"N1\.tif: floating-point samples"):
        load_dataset(data)


APPLE_DOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(64)


@pytest.mark.parametrize("with_csv", [False, True])
def test_hidden_files_in_the_class_folders_are_not_crops(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, with_csv: bool) -> None:
    # Regression: macOS's ._A0.png stopped a folder dataset ("cannot read image") and was
    # counted among the crops the split CSV leaves out
    data = write_synthetic_crops(tmp_path / "d", n_atypical=3, n_normal=3)
    if not with_csv:
        (data / AMIBR_CSV).unlink()
    (data / "Atypical" / "._A0.png").write_bytes(APPLE_DOUBLE)
    (data / "Normal" / ".N0.png").write_bytes((data / "Normal" / "N0.png").read_bytes())
    with caplog.at_level(logging.WARNING, logger="wsi_atm.train"):
        assert len(load_dataset(data)) == 6
    assert "left out" not in caplog.text


def test_a_crop_under_both_labels_is_refused(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    # Regression: one crop with two answers was trained on and scored under both labels
    data = write_synthetic_crops(tmp_path / "d", n_atypical=3, n_normal=3)
    (data / AMIBR_CSV).unlink()
    (data / "Normal" / "copy.png").write_bytes((data / "Atypical" / "A1.png").read_bytes())
    assert _evaluate(data, tmp_path) == 2
    err = capsys.readouterr().err
    assert "Normal/copy.png and Atypical/A1.png are the same crop under both labels" in err


@pytest.mark.parametrize("link", [False, True], ids=["copy", "symlink"])
def test_a_crop_there_twice_under_one_label_is_used_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, link: bool) -> None:
    # Regression: a copy or link in the same folder was counted twice and landed in two folds
    data = write_synthetic_crops(tmp_path / "d", n_atypical=3, n_normal=3)
    (data / AMIBR_CSV).unlink()
    copy = data / "Atypical" / "A9.png"
    if link:
        copy.symlink_to(data / "Atypical" / "A1.png")
    else:
        copy.write_bytes((data / "Atypical" / "A1.png").read_bytes())
    with caplog.at_level(logging.WARNING, logger="wsi_atm.train"):
        crops = load_dataset(data)
    assert len(crops) == 6 and "Atypical/A9.png" not in crops.names
    assert "1 crops are copies of another crop of their class (first: Atypical/A9.png)" in \
        caplog.text


def _with_votes(data: Path, vote_of_n0: str) -> None:
    path = data / AMIBR_CSV
    lines = path.read_text().splitlines()
    rows = [lines[0] + ",expert1_atypical,expert2_atypical,expert3_atypical"]
    for line in lines[1:]:
        votes = "True,True,False" if ",Atypical," in line else "False,False,False"
        rows.append(f"{line},{vote_of_n0},False,False" if line.endswith(",N0.png")
                    else f"{line},{votes}")
    path.write_text("\n".join(rows) + "\n")


def test_expert_votes_must_be_true_or_false(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    # Regression: a blank (or "Y") vote was silently a vote for normal
    data = write_synthetic_crops(tmp_path / "d", n_atypical=3, n_normal=3)
    _with_votes(data, "1.0")
    assert sorted(load_dataset(data).soft.tolist()) == pytest.approx(  # type: ignore[union-attr]
        [0, 0, 1 / 3, 2 / 3, 2 / 3, 2 / 3])
    for cell in ("", "Y"):
        data = write_synthetic_crops(tmp_path / f"d{cell}", n_atypical=3, n_normal=3)
        _with_votes(data, cell)
        assert load_dataset(data).soft is None  # no soft labels from unreadable votes
        out = tmp_path / f"run{cell}"
        assert run_cli(["train", "--data", str(data), "--model",
                        str(write_tiny_card(tmp_path / f"c{cell}")), "--out", str(out),
                        "--soft-labels", "--folds", "2", "--epochs", "1", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"expert1_atypical of N0.png is '{cell}', not true or false" in err
        assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_soft_labels_without_votes_are_refused_before_the_run_folder(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Regression: exit 0, trained on the majority labels, the card saying soft_labels = true
    data = write_synthetic_crops(tmp_path / "d", n_atypical=4, n_normal=4)
    card = write_tiny_card(tmp_path / "c")
    out = tmp_path / "run"
    assert run_cli(["train", "--data", str(data), "--model", str(card), "--out", str(out),
                    "--soft-labels", "--folds", "2", "--epochs", "1", "--quiet"]) == 2
    assert "--soft-labels needs the experts' votes" in capsys.readouterr().err
    assert not out.exists()
