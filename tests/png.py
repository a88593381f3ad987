"""Read the PNGs api.images writes (8-bit grey or RGB, no interlace) back into arrays, for tests; any filter
type is undone, so a PNG from elsewhere (a browser screenshot) reads as well when it is 8-bit grey, RGB or RGBA."""

from __future__ import annotations

import struct
import zlib

import numpy as np

CHANNELS = {0: 1, 2: 3, 6: 4}


def read_png(data: bytes) -> np.ndarray:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, b""
    width = height = colour = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and colour in CHANNELS and interlace == 0, (depth, colour, interlace)
        elif kind == b"IDAT":
            idat += body
    channels = CHANNELS[colour]
    stride = width * channels
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, stride + 1)
    out = np.zeros((height, stride), np.int32)
    for y in range(height):
        kind, line = raw[y, 0], raw[y, 1:].astype(np.int32)
        prior = out[y - 1] if y else np.zeros(stride, np.int32)
        if kind == 0:
            out[y] = line
        elif kind == 2:
            out[y] = (line + prior) % 256
        else:  # 1 (sub), 3 (average), 4 (Paeth) depend on the pixel to the left: pixel by pixel
            row = np.zeros(stride, np.int32)
            for x in range(stride):
                left = row[x - channels] if x >= channels else 0
                up, corner = prior[x], (prior[x - channels] if x >= channels else 0)
                if kind == 1:
                    predicted = left
                elif kind == 3:
                    predicted = (left + up) // 2
                else:
                    p = left + up - corner
                    pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                    predicted = left if pa <= pb and pa <= pc else (up if pb <= pc else corner)
                row[x] = (line[x] + predicted) % 256
            out[y] = row
    image = out.astype(np.uint8).reshape(height, width, channels)
    return image[..., 0] if channels == 1 else image
