"""One DICOM image as a small PNG: decode a frame with pydicom (its decoders for compressed transfer syntaxes
come from the pylibjpeg packages), window it as the file says, shrink it, encode it.

Windowing follows the file: the Modality LUT or rescale slope and intercept first (`apply_modality_lut`), then
the VOI LUT or the first window centre and width (`apply_voi_lut`), the result spread over 0..255 from the
range that window can give; without a window, the frame's own minimum and maximum. MONOCHROME1 is inverted,
PALETTE COLOR goes through its palette, YBR becomes RGB (pydicom's default).
"""

from __future__ import annotations

import math
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array

MAX_SIDE = 256  # pixels, the longest side of a thumbnail


class NoImage(Exception):
    """The file holds no image, or one that cannot be decoded; the message says which, and why."""


def thumbnail_png(path: Path, max_side: int = MAX_SIDE) -> bytes:
    """A PNG of the file's middle frame, its longest side at most `max_side` pixels."""
    try:
        with warnings.catch_warnings():  # pydicom warns about oddities it reads past; they are not the user's
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            frames = int(ds.get("NumberOfFrames") or 1)
            # From the file, not the dataset: only the frame shown is read and decoded.
            frame = pixel_array(path, index=frames // 2 if frames > 1 else None)
            return encode_png(shrink(_displayable(frame, ds), max_side))
    except (InvalidDicomError, OSError) as exc:
        raise NoImage(f"{path.name} cannot be read: {_reason(exc)}") from exc
    except AttributeError as exc:
        if "no pixel data" in str(exc).lower():
            raise NoImage(f"{path.name} holds no pixel data") from exc
        raise NoImage(f"{path.name} cannot be decoded: {_reason(exc)}") from exc
    except Exception as exc:  # pydicom's decoders raise many kinds (ValueError, NotImplementedError, RuntimeError...)
        raise NoImage(f"{path.name} cannot be decoded: {_reason(exc)}") from exc


def _displayable(frame: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """uint8, (rows, columns) for grey or (rows, columns, 3) for colour."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric == "PALETTE COLOR":
        frame = apply_color_lut(frame, ds)
        bits = 16 if frame.dtype.itemsize > 1 else 8
        return (frame.astype(np.float64) / (2**bits - 1) * 255).round().astype(np.uint8)
    if frame.ndim == 3:  # RGB (pydicom converted YBR): scale the stored bits to 8
        bits = int(ds.get("BitsStored") or frame.dtype.itemsize * 8)
        top = float(2**bits - 1)
        return (np.clip(frame.astype(np.float64), 0, top) / top * 255).round().astype(np.uint8)
    values = apply_modality_lut(frame, ds).astype(np.float64)
    low, high = float(values.min()), float(values.max())
    if "VOILUTSequence" in ds or "WindowCenter" in ds:
        # The window's output range, from pydicom itself: the values it gives far below and far above it.
        ends = apply_voi_lut(np.array([low - 1e9, high + 1e9]), ds, index=0).astype(np.float64)
        windowed = apply_voi_lut(values, ds, index=0).astype(np.float64)
        if ends[1] > ends[0]:
            values, low, high = windowed, float(ends[0]), float(ends[1])
    scaled = np.zeros_like(values) if high <= low else (values - low) / (high - low) * 255
    grey = np.clip(scaled, 0, 255).round().astype(np.uint8)
    return 255 - grey if photometric == "MONOCHROME1" else grey


def shrink(image: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    """Average blocks of k x k pixels, k the smallest factor that brings the longest side to `max_side` or less
    (edges padded by repetition); an image small enough is returned as is."""
    rows, columns = image.shape[:2]
    k = math.ceil(max(rows, columns) / max_side)
    if k <= 1:
        return image
    pad = [(0, -rows % k), (0, -columns % k)] + [(0, 0)] * (image.ndim - 2)
    padded = np.pad(image.astype(np.float64), pad, mode="edge")
    r, c = padded.shape[0] // k, padded.shape[1] // k
    blocks = padded.reshape(r, k, c, k, *padded.shape[2:]).mean(axis=(1, 3))
    return blocks.round().astype(np.uint8)


def encode_png(image: np.ndarray) -> bytes:
    """An 8-bit greyscale or RGB PNG (no dependency beyond zlib)."""
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"expected uint8 grey or RGB, got {image.dtype} {image.shape}")
    rows, columns = image.shape[:2]
    colour_type = 0 if image.ndim == 2 else 2
    lines = np.ascontiguousarray(image).reshape(rows, -1)
    raw = np.hstack([np.zeros((rows, 1), np.uint8), lines]).tobytes()  # filter type 0 before each line
    header = struct.pack(">IIBBBBB", columns, rows, 8, colour_type, 0, 0, 0)
    chunks = _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 6)) + _chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:200] + "...") if len(text) > 200 else (text or type(exc).__name__)
