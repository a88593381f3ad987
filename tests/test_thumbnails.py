"""Thumbnails: `GET /thumbnails/{seriesInstanceUid}.png` over files ingested by the real `dicom-ingest`, and
api.images over pydicom's own files (compressed transfer syntaxes included).

Files written here hold known pixel values and windows, so that the grey each should become is known: the PNGs
are decoded back (tests/png.py) and their pixels compared.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from api_helpers import Api, ingest_into, serve
from conftest import TEST_FILES, fresh_postgres_database, run_ingest
from png import read_png
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from dicom_db.api.auth import parse_tokens
from dicom_db.api.images import NoImage, encode_png, shrink, thumbnail_png

UID_ROOT = "1.2.826.0.1.3680043.8.498."
FULL, DEID = "thumbnail-full-token-0123456789", "thumbnail-deid-token-0123456789"


def uid(name: str) -> str:
    return generate_uid(prefix=UID_ROOT, entropy_srcs=[name])


def write_image(path: Path, series: str, number: int, pixels: np.ndarray, **attrs: object) -> None:
    """A CT instance of `series` holding `pixels` (uint16 or int16, one frame) and `attrs` (window, rescale...)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = uid(f"{series}-{number}")
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = uid(f"{series}-{number}")
    ds.PatientID, ds.PatientName = "THUMB-1", "Thumb^Nail"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid("thumb-study"), uid(series)
    ds.Modality, ds.InstanceNumber = "CT", number
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    ds.PixelData = pixels.tobytes()
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def uniform(value: int, shape: tuple[int, int] = (32, 32), dtype: type = np.uint16) -> np.ndarray:
    return np.full(shape, value, dtype=dtype)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("thumbnails")
    out = root / "files"
    window = {"WindowCenter": 100, "WindowWidth": 201}
    # Three slices, written in an order unlike their InstanceNumber: the middle one (2) holds 100 -> grey 128.
    for number, value in ((3, 200), (1, 0), (2, 100)):
        write_image(out / f"stack-{number}.dcm", "stack", number, uniform(value), **window)
    # Rescale before the window: 2 * 550 - 1000 = 100 -> 128.
    write_image(out / "rescaled.dcm", "rescaled", 1, uniform(550), RescaleSlope=2, RescaleIntercept=-1000, **window)
    # MONOCHROME1: values below the window are white.
    write_image(
        out / "mono1.dcm",
        "mono1",
        1,
        uniform(0),
        PhotometricInterpretation="MONOCHROME1",
        WindowCenter=200,
        WindowWidth=201,
    )
    # No window: the frame's own range, a ramp from black to white; 600 x 300 shrinks to 200 x 100.
    ramp = np.tile(np.arange(300, dtype=np.uint16) * 10, (600, 1))
    write_image(out / "ramp.dcm", "ramp", 1, ramp)
    # Pixel data shorter than Rows x Columns say: cannot be decoded.
    write_image(out / "short.dcm", "short", 1, uniform(1, (8, 8)), Rows=64, Columns=64)
    # A file name that is not UTF-8 (stored escaped by the ingest).
    write_image(Path(os.fsdecode(bytes(out) + b"/caf\xe9.dcm")), "latin1", 1, uniform(100), **window)
    # A file that is deleted after the ingest.
    write_image(out / "gone.dcm", "gone", 1, uniform(1))
    # pydicom's JPEG 2000 CT and a structured report (no pixels).
    for name in ("JPEG2000.dcm", "test-SR.dcm"):
        shutil.copy(TEST_FILES / name, out / name)
    ingest_into(root, root / "thumbs.db", out)
    (out / "gone.dcm").unlink()
    return root


@pytest.fixture(scope="module")
def api(files: Path) -> Iterator[Api]:
    yield from serve(f"sqlite:///{files / 'thumbs.db'}")


def thumbnail(api: Api, series: str) -> np.ndarray:
    response = api.client.get(f"/thumbnails/{series}.png")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return read_png(response.content)


def error(api: Api, path: str, status: int) -> tuple[str, str]:
    response = api.client.get(path)
    assert response.status_code == status, response.text
    body = response.json()["errors"][0]
    return body["extensions"]["code"], body["message"]


def test_the_middle_slice_windowed_as_the_file_says(api: Api) -> None:
    stack = thumbnail(api, uid("stack"))
    assert stack.shape == (32, 32) and set(np.unique(stack)) == {128}
    assert set(np.unique(thumbnail(api, uid("rescaled")))) == {128}
    assert set(np.unique(thumbnail(api, uid("mono1")))) == {255}
    assert set(np.unique(thumbnail(api, uid("latin1")))) == {128}


def test_without_a_window_the_frame_range_and_at_most_256_pixels(api: Api) -> None:
    ramp = thumbnail(api, uid("ramp"))
    assert ramp.shape == (200, 100)  # 600 x 300 in blocks of 3
    assert ramp[0, 0] <= 1 and ramp[0, -1] >= 254  # blocks of 3 columns averaged
    assert (np.diff(ramp[0].astype(int)) >= 0).all()


def test_a_compressed_file_is_decoded(api: Api) -> None:
    series = pydicom.dcmread(TEST_FILES / "JPEG2000.dcm", stop_before_pixels=True).SeriesInstanceUID
    image = thumbnail(api, series)
    assert max(image.shape) <= 256 and image.std() > 10  # an image, not a blank


def test_no_image_is_a_404_that_says_why(api: Api) -> None:
    sr = pydicom.dcmread(TEST_FILES / "test-SR.dcm", stop_before_pixels=True).SeriesInstanceUID
    code, message = error(api, f"/thumbnails/{sr}.png", 404)
    assert code == "NO_IMAGE" and "test-SR.dcm holds no pixel data" in message
    code, message = error(api, f"/thumbnails/{uid('short')}.png", 404)
    assert code == "NO_IMAGE" and "short.dcm cannot be decoded" in message
    code, message = error(api, f"/thumbnails/{uid('gone')}.png", 404)
    assert code == "NOT_FOUND" and "is gone" in message
    code, message = error(api, "/thumbnails/1.2.3.4.png", 404)
    assert (code, message) == ("NOT_FOUND", "No series 1.2.3.4 with an ingested file.")


def test_results_are_cached_until_the_file_changes(files: Path) -> None:
    for api in serve(f"sqlite:///{files / 'thumbs.db'}"):
        thumbnails = next(r.app for r in api.client.app.routes if getattr(r, "path", "").startswith("/thumbnails"))
        while not hasattr(thumbnails, "decoded"):  # under the wrappers (one Authorization header, tokens)
            thumbnails = thumbnails.app
        first = api.client.get(f"/thumbnails/{uid('ramp')}.png")
        again = api.client.get(f"/thumbnails/{uid('ramp')}.png", headers={"if-none-match": first.headers["etag"]})
        assert again.status_code == 304 and thumbnails.decoded == 1
        api.client.get(f"/thumbnails/{uid('short')}.png")
        api.client.get(f"/thumbnails/{uid('short')}.png")
        assert thumbnails.decoded == 2  # a file that cannot be decoded is not tried again either
        path = files / "files" / "ramp.dcm"
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000_000))
        changed = api.client.get(f"/thumbnails/{uid('ramp')}.png", headers={"if-none-match": first.headers["etag"]})
        assert changed.status_code == 200 and changed.headers["etag"] != first.headers["etag"]
        assert thumbnails.decoded == 3


def test_full_access_only(files: Path) -> None:
    tokens = tuple(parse_tokens(f"{FULL}:full:alice,{DEID}:deidentified:pipeline"))
    for api in serve(f"sqlite:///{files / 'thumbs.db'}", tokens=tokens):
        path = f"/thumbnails/{uid('stack')}.png"
        assert api.client.get(path).status_code == 401
        refused = api.client.get(path, headers={"Authorization": f"Bearer {DEID}"})
        assert refused.status_code == 403 and refused.json()["errors"][0]["extensions"]["code"] == "FORBIDDEN"
        allowed = api.client.get(path, headers={"Authorization": f"Bearer {FULL}"})
        assert allowed.status_code == 200 and allowed.headers["content-type"] == "image/png"


# api.images on pydicom's files: every lossless encoding of MR_small gives the same thumbnail.


@pytest.mark.parametrize(
    "name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_bigendian.dcm"]
)
def test_lossless_encodings_decode_to_the_same_thumbnail(name: str) -> None:
    assert thumbnail_png(TEST_FILES / name) == thumbnail_png(TEST_FILES / "MR_small.dcm")


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("SC_rgb_jpeg_dcmd.dcm", (256, 256, 3)),  # JPEG baseline, YBR -> RGB
        ("examples_palette.dcm", (88, 200, 3)),  # PALETTE COLOR through its palette (350 x 800 in blocks of 4)
        ("SC_rgb_rle_2frame.dcm", (100, 100, 3)),  # two frames: the second (the middle one)
        ("CT_small.dcm", (128, 128)),
    ],
)
def test_pydicom_files(name: str, shape: tuple[int, ...]) -> None:
    image = read_png(thumbnail_png(TEST_FILES / name))
    assert image.shape == shape


def test_rgb_colours_survive() -> None:
    image = read_png(thumbnail_png(TEST_FILES / "SC_rgb_rle.dcm"))
    # pydicom's SC_rgb files: bands of red, green, blue, ... from top to bottom; the first band is pure red.
    assert tuple(image[2, 50]) == (255, 0, 0)


def test_not_an_image() -> None:
    with pytest.raises(NoImage, match="rtplan.dcm holds no pixel data"):
        thumbnail_png(TEST_FILES / "rtplan.dcm")
    with pytest.raises(NoImage, match="cannot be read"):
        thumbnail_png(TEST_FILES / "no_meta.dcm")


def test_shrink_and_png_round_trip() -> None:
    image = np.arange(700 * 90, dtype=np.uint32).reshape(700, 90) % 256
    small = shrink(image.astype(np.uint8))
    assert small.shape == (234, 30)  # blocks of 3, the last row padded
    assert (read_png(encode_png(small)) == small).all()
    rgb = np.zeros((5, 7, 3), np.uint8)
    rgb[..., 1] = 200
    assert (read_png(encode_png(rgb)) == rgb).all()


def test_the_same_thumbnails_from_postgresql(files: Path, api: Api) -> None:
    with fresh_postgres_database(f"dicom_thumbnails_test_{os.getpid()}") as url:
        run_ingest(files / "files", "--db", url, "--jobs", "1", "--quiet", check=0)
        for pg in serve(url):
            for series in ("stack", "rescaled", "ramp"):
                path = f"/thumbnails/{uid(series)}.png"
                assert pg.client.get(path).content == api.client.get(path).content, series
            assert error(pg, f"/thumbnails/{uid('short')}.png", 404) == error(
                api, f"/thumbnails/{uid('short')}.png", 404
            )
            assert error(pg, "/thumbnails/1.2.3.4.png", 404)[0] == "NOT_FOUND"
