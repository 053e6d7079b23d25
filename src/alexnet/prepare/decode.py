"""Turning one encoded image into the stored form: RGB uint8, shorter side scaled to S, centre S x S.

Every path that reads a photo (prepare, predict) goes through `load_image` or `decode_image`, so a store
and a single prediction see identical pixels.

What happens, in order:
- A JPEG that carries no EXIF, XMP or multi-picture segment (most photos: 238 of the 250 ILSVRC samples)
  is decoded straight away by the fast path below, its size and colour space read from libjpeg-turbo's
  header parse: nothing in such a file can rotate it or make it more than one picture, so Pillow's header
  parse (0.1 ms a photo, written in Python) would add nothing. Any other file, and any such JPEG that the
  fast path declines, goes on to Pillow.
- Pillow opens the bytes (headers only); the format comes from the content, not the file name (a PNG
  named .JPEG works).
- Images over MAX_PIXELS are refused as decompression bombs (Pillow's own warning counts as an error).
- Fast path, for the common photo: a JPEG that Pillow reads as RGB or grey (YCbCr or greyscale, baseline
  or progressive) and whose EXIF orientation is absent or 1 is decoded by simplejpeg, which calls
  libjpeg-turbo directly. It gives exactly Pillow's pixels (same library, same settings: accurate integer
  IDCT, smooth chroma upsampling) but skips Pillow's block-by-block decoding into its own image memory
  and the copies into numpy, about 1.5x faster per photo. It uses the same DCT-domain scale as Pillow's
  draft mode below (1/2, 1/4 or 1/8, the largest that keeps both sides >= S), so its output is the
  Pillow path's output, bit for bit. libjpeg-turbo's other factors (M/8, e.g. 6/8 for a 500 x 375 photo
  at S = 256) are not used: their IDCT has no SIMD version and decodes slower than full size does.
  Anything the fast decoder rejects (damaged data, anything libjpeg only warns about) goes the Pillow
  way, which then decodes it or says why not.
- Otherwise (CMYK JPEG, EXIF-rotated, PNG, 16-bit, palette...): JPEG draft mode (libjpeg decodes at 1/2,
  1/4 or 1/8 scale when the result still has both sides >= S, which makes large photos several times
  cheaper to decode and never drops below S); EXIF orientation is applied (ImageOps.exif_transpose);
  any mode becomes RGB. Alpha is dropped (the colour channels are kept as they are, as torchvision's
  default loader does), grey is replicated, CMYK/YCbCr/palette use Pillow's conversions, 16-bit grey
  is scaled by 255/65535 (Pillow would clip it at 255 instead).
- The shorter side is scaled to S (the longer one to int(S * long / short), torchvision's rule) with
  antialiased bilinear interpolation from torch's uint8 kernel, which agrees with Pillow's BILINEAR to
  within 2 levels and is about 3x faster; then the centre S x S is cut out (torchvision's centre_crop
  rounding). Extremely elongated images use Pillow's resize of just the needed box so that the scaled
  long side is never materialised.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from pathlib import Path

import numpy as np
import simplejpeg
from PIL import Image, ImageOps, UnidentifiedImageError

# Pillow's default pixel limit (about 89 megapixels, e.g. 9459 x 9459): far above any photo in ImageNet.
MAX_PIXELS = 89_478_485
# EXIF tag 0x0112: 1 (or absent) means the stored pixels are already upright.
_ORIENTATION = 0x0112
# Beyond this ratio of scaled long side to S, scaling the whole image would allocate a huge strip.
_ELONGATED = 4


class SkipImage(Exception):
    """This file cannot become an image; the message is the reason written into the manifest."""


# An encoded photo is at most a few tens of MB (a 100-megapixel JPEG is about 50 MB); a file far larger is not one
# of the images meant, and reading it whole could exhaust memory.
MAX_IMAGE_FILE_BYTES = 256 << 20


def read_bytes(path: str | Path) -> bytes:
    """The whole file, or SkipImage saying why it cannot be read.

    Only regular files are read: a FIFO would block the reader forever, and a link to a device (/dev/zero)
    would be read until memory runs out. The file is opened non-blocking (O_NONBLOCK: opening a FIFO does not
    wait for a writer) and checked on the open descriptor, so a file swapped between a check and the open
    cannot slip through."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except PermissionError:
        raise SkipImage("unreadable: permission denied") from None
    except IsADirectoryError:
        raise SkipImage("unreadable: is a directory") from None
    except OSError as exc:
        raise SkipImage(f"unreadable: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise SkipImage("unreadable: is a directory")
        if not stat.S_ISREG(info.st_mode):
            raise SkipImage("not a regular file (a FIFO, device, socket or folder): refused")
        if info.st_size > MAX_IMAGE_FILE_BYTES:
            raise SkipImage(f"{info.st_size} bytes: larger than any image this reads ({MAX_IMAGE_FILE_BYTES})")
        with os.fdopen(fd, "rb") as f:
            fd = -1
            return f.read(MAX_IMAGE_FILE_BYTES + 1)
    except OSError as exc:
        raise SkipImage(f"unreadable: {exc.strerror or exc}") from None
    finally:
        if fd >= 0:
            os.close(fd)


def load_image(source: str | Path | bytes, size: int) -> np.ndarray:
    """Decode a file (path) or encoded bytes to uint8 (size, size, 3) RGB; SkipImage if it is not usable."""
    data = source if isinstance(source, bytes | bytearray | memoryview) else read_bytes(source)
    return np.ascontiguousarray(decode_image(bytes(data), size))


def decode_image(data: bytes, size: int) -> np.ndarray:
    """Encoded image bytes -> uint8 (size, size, 3) RGB, shorter side scaled to size, centre crop.

    May return a strided view (see resize_center_crop); load_image returns a contiguous array."""
    if len(data) == 0:
        raise SkipImage("empty file (0 bytes)")
    pixels = bare_jpeg_pixels(data, size)
    if pixels is not None:
        return resize_center_crop(pixels, size)
    with warnings.catch_warnings():
        # Pillow warns between 1x and 2x its limit and raises above; both mean "refuse".
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise SkipImage(f"decompression bomb: more than {MAX_PIXELS} pixels") from None
        except UnidentifiedImageError:
            raise SkipImage("not an image (Pillow does not recognise the format)") from None
        except Exception as exc:  # a damaged header can raise almost anything inside a format plugin
            raise SkipImage(f"truncated or corrupt image header ({_describe(exc)})") from None
        width, height = img.size
        if width * height > MAX_PIXELS:
            raise SkipImage(f"decompression bomb: {width} x {height} is more than {MAX_PIXELS} pixels")
        if width < 1 or height < 1:
            raise SkipImage(f"empty image ({width} x {height})")
        pixels = plain_jpeg_pixels(img, data, size)
        if pixels is not None:
            return resize_center_crop(pixels, size)
        img.draft("RGB", (size, size))  # JPEG only: DCT-domain downscale, both sides stay >= size
        try:
            ImageOps.exif_transpose(img, in_place=True)
            pixels = _to_rgb_array(img)
        except SkipImage:
            raise
        except Exception as exc:  # truncated data, bad EXIF, broken palette...: the file, not our code
            raise SkipImage(f"truncated or corrupt image data ({_describe(exc)})") from None
    return resize_center_crop(pixels, size)


def draft_scale(width: int, height: int, size: int) -> int:
    """Pillow's JPEG draft rule: the largest of 8, 4, 2, 1 that divides both sides to at least size."""
    fits = min(width // size, height // size)
    return next((scale for scale in (8, 4, 2) if fits >= scale), 1)


def plain_jpeg_pixels(img: Image.Image, data: bytes, size: int) -> np.ndarray | None:
    """The photo decoded by libjpeg-turbo at Pillow's draft scale, or None when it must go the Pillow way.

    Only for JPEGs that Pillow would decode to RGB or grey and that need no EXIF rotation, so the two
    ways give the same pixels; CMYK, rotated, damaged or unusual files return None."""
    if img.format != "JPEG" or img.mode not in ("RGB", "L"):
        return None
    try:
        if img.getexif().get(_ORIENTATION, 1) in range(2, 9):  # as exif_transpose: other values mean upright
            return None
    except Exception:  # damaged EXIF: the Pillow way reports it
        return None
    return _draft_scale_pixels(data, *img.size, size)


def bare_jpeg_pixels(data: bytes, size: int) -> np.ndarray | None:
    """plain_jpeg_pixels without Pillow, for a JPEG with no EXIF, XMP or MPF segment; None for anything else.

    Such a file needs no rotation (the orientation Pillow reads lives in EXIF or XMP) and is one picture,
    so libjpeg-turbo's header (size, colour space) says everything Pillow's would: 1 or 3 components of
    grey, YCbCr or RGB are Pillow's modes "L" and "RGB". Over-large, damaged or CMYK files return None and
    go the Pillow way, which refuses, reports or converts them as before."""
    if not data.startswith(b"\xff\xd8\xff") or not _segments_are_plain(data):
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except Exception:  # a header libjpeg-turbo cannot read: Pillow says what is wrong
        return None
    if colorspace not in ("Gray", "YCbCr", "RGB") or not 0 < width * height <= MAX_PIXELS:
        return None
    return _draft_scale_pixels(data, width, height, size)


# APP segments that Pillow reads for orientation (EXIF, XMP) or for more pictures in the file (MPF)
_METADATA = ((0xE1, b"Exif\0\0"), (0xE1, b"http://ns.adobe.com/xap/1.0/\x00"), (0xE2, b"MPF\0"))


def _segments_are_plain(data: bytes) -> bool:
    """True when the marker segments before the scan hold none of _METADATA and are well formed."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return False
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker == 0xDA:  # start of scan: no metadata segment comes after it
            return True
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if length < 2:
            return False
        if any(marker == m and data.startswith(tag, i + 4) for m, tag in _METADATA):
            return False
        i += 2 + length
    return False


def _draft_scale_pixels(data: bytes, width: int, height: int, size: int) -> np.ndarray | None:
    """libjpeg-turbo's decode at Pillow's draft scale, or None where it fails or would not match Pillow."""
    scale = draft_scale(width, height, size)
    # The smallest M/8 scale giving at least ceil(side / scale) is exactly 1/scale (scale is 1, 2, 4 or 8).
    min_width, min_height = -(-width // scale), -(-height // scale)
    try:
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=min_width, min_height=min_height)
    except Exception:  # anything libjpeg-turbo rejects or warns about: Pillow decides what it is
        return None
    if pixels.shape != (min_height, min_width, 3):  # not the scale Pillow would use: keep the ways identical
        return None
    return pixels


def _describe(exc: Exception) -> str:
    text = " ".join(str(exc).split())  # one line whatever the library put in the message
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    """Any Pillow mode -> contiguous uint8 (H, W, 3)."""
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img)
    if mode.startswith("I;16") or mode == "I":
        # 16-bit grey (PNG, TIFF): scale to 8 bits; 32-bit "I" is read as 16-bit data too.
        grey = np.clip(np.asarray(img).astype(np.float32), 0, 65535) * (255.0 / 65535.0)
        grey = np.rint(grey).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    # Alpha is dropped by convert("RGB") (RGBA, LA, PA, palette transparency), as in torchvision's loader.
    try:
        return np.asarray(img.convert("RGB"))
    except ValueError:
        pass
    try:  # modes with no direct route to RGB (e.g. premultiplied "La") go through RGBA
        return np.asarray(img.convert("RGBA").convert("RGB"))
    except ValueError as exc:
        raise SkipImage(f"cannot convert colour mode {mode} to RGB ({exc})") from None


def output_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(new_width, new_height) with the shorter side equal to size: torchvision's Resize(size) rule."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def crop_origin(new_width: int, new_height: int, size: int) -> tuple[int, int]:
    """(left, top) of the centre size x size window: torchvision's center_crop rounding."""
    return int(round((new_width - size) / 2.0)), int(round((new_height - size) / 2.0))


def resize_center_crop(pixels: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (size, size, 3): shorter side to size, then the centre square.

    The result may be a strided view; np.ascontiguousarray it before handing it to code that needs
    contiguous memory."""
    height, width = pixels.shape[:2]
    new_width, new_height = output_size(width, height, size)
    left, top = crop_origin(new_width, new_height, size)
    if (new_width, new_height) == (width, height):
        return pixels[top : top + size, left : left + size]
    if max(new_width, new_height) > _ELONGATED * size:
        scale_x, scale_y = width / new_width, height / new_height
        box = (left * scale_x, top * scale_y, (left + size) * scale_x, (top + size) * scale_y)
        out = Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR, box=box)
        return np.asarray(out)
    import torch
    import torch.nn.functional as F

    with warnings.catch_warnings():  # Pillow's arrays are read-only; torch only reads this one
        warnings.simplefilter("ignore", UserWarning)
        # (1, C, H, W) over HWC memory with a proper batch stride: torch sees channels_last and returns
        # channels_last, so the crop below is a cheap row copy rather than a planar-to-interleaved one.
        batch = torch.from_numpy(np.ascontiguousarray(pixels)).unsqueeze(0).permute(0, 3, 1, 2)
    scaled = F.interpolate(batch, size=(new_height, new_width), mode="bilinear", antialias=True,
                           align_corners=False)
    # A strided view: whoever stores it (a row of the store, np.array) makes the one copy needed.
    return scaled[0, :, top : top + size, left : left + size].permute(1, 2, 0).numpy()
