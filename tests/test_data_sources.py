"""Decoding one image (alexnet.prepare.decode) and finding images in each layout (alexnet.prepare.sources)."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from datagen import add_bytes, centre, encode, make_devkit, make_tar_of_tars, pattern, png_bomb, write
from PIL import Image

from alexnet.data import classnames
from alexnet.errors import UserError
from alexnet.prepare import ilsvrc
from alexnet.prepare.decode import SkipImage, bare_jpeg_pixels, decode_image, load_image, plain_jpeg_pixels
from alexnet.prepare.sources import find_source, item_pixels, split_off_validation, unsafe_member_name

# ------------------------------------------------------------------------------------------- decoding


def test_image_of_size_s_is_stored_unchanged():
    array = pattern(16, 16, seed=1)
    assert np.array_equal(load_image(encode(array), 16), array)


@pytest.mark.parametrize("shape", [(16, 40), (40, 16), (16, 17)])
def test_shorter_side_s_is_only_centre_cropped(shape):
    array = pattern(*shape, seed=2)
    # torchvision's center_crop rounding: top = round((h - S) / 2), left = round((w - S) / 2)
    assert np.array_equal(load_image(encode(array), 16), centre(array, 16))


@pytest.mark.parametrize("shape", [(60, 90), (90, 61), (7, 5)])
def test_resize_matches_torchvision_resize_and_centre_crop(shape):
    array = pattern(*shape, seed=3)
    expected = np.asarray(TF.center_crop(TF.resize(Image.fromarray(array), 24), 24))
    got = load_image(encode(array), 24)
    assert got.shape == (24, 24, 3) and got.dtype == np.uint8
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 2


def test_small_constant_image_is_upscaled_exactly():
    array = np.empty((3, 5, 3), np.uint8)
    array[...] = (10, 200, 77)
    got = load_image(encode(array), 32)
    assert got.shape == (32, 32, 3)
    assert (got == np.array([10, 200, 77], np.uint8)).all()


def test_large_jpeg_uses_draft_mode_but_keeps_quality():
    y, x = np.mgrid[0:900, 0:1200]
    array = np.stack([x * 255 // 1199, y * 255 // 899, (x + y) * 255 // 2098], axis=2).astype(np.uint8)
    data = encode(array, "JPEG", quality=95)
    img = Image.open(io.BytesIO(data))
    img.draft("RGB", (64, 64))
    assert img.size == (150, 113)  # 1/8 scale is the largest that keeps both sides >= 64
    full = np.asarray(TF.center_crop(TF.resize(Image.open(io.BytesIO(data)).convert("RGB"), 64), 64))
    got = load_image(data, 64)
    assert np.abs(got.astype(int) - full.astype(int)).mean() < 2.0


def test_png_data_under_a_jpeg_name_is_decoded(tmp_path):
    array = pattern(20, 20, seed=4)
    path = write(tmp_path / "n02105855_2933.JPEG", encode(array, "PNG"))
    assert np.array_equal(load_image(path, 20), array)


def test_exif_orientation_is_applied():
    array = pattern(20, 30, seed=5)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = encode(array, "PNG", exif=exif.tobytes())
    assert np.array_equal(load_image(data, 20), centre(np.rot90(array, k=-1), 20))


def test_grayscale_is_replicated_to_three_channels():
    grey = pattern(20, 20, seed=6)[:, :, 0]
    got = load_image(encode(grey), 20)
    assert np.array_equal(got, np.repeat(grey[:, :, None], 3, axis=2))


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_dropped_keeping_the_colour_values(mode):
    rgba = pattern(20, 20, seed=7)
    alpha = np.arange(400, dtype=np.uint8).reshape(20, 20)
    if mode == "RGBA":
        img, expected = Image.fromarray(np.dstack([rgba, alpha]), "RGBA"), rgba
    else:
        img = Image.fromarray(np.dstack([rgba[:, :, 0], alpha]), "LA")
        expected = np.repeat(rgba[:, :, :1], 3, axis=2)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    assert np.array_equal(load_image(buf.getvalue(), 20), expected)


def test_palette_png_becomes_its_colours():
    palette_colours = np.array([[255, 0, 0], [0, 128, 255], [3, 4, 5]], np.uint8)
    indices = (np.arange(400).reshape(20, 20) % 3).astype(np.uint8)
    img = Image.fromarray(indices, "P")
    img.putpalette(palette_colours.ravel().tolist())
    buf = io.BytesIO()
    img.save(buf, "PNG", transparency=0)
    assert np.array_equal(load_image(buf.getvalue(), 20), palette_colours[indices])


def test_sixteen_bit_grey_is_scaled_not_clipped():
    values = np.array([[0, 257, 32896, 65535]], np.uint16).repeat(4, axis=0)
    buf = io.BytesIO()
    img = Image.fromarray(values)
    assert img.mode == "I;16"
    img.save(buf, "PNG")
    got = load_image(buf.getvalue(), 4)
    # 65535 -> 255 (Pillow's own convert would clip 257 and above to 255)
    assert got[0, :, 0].tolist() == [0, 1, 128, 255]


def test_cmyk_jpeg_matches_pillows_conversion():
    cmyk = Image.fromarray(pattern(24, 24, seed=8)).convert("CMYK")
    buf = io.BytesIO()
    cmyk.save(buf, "JPEG", quality=95)
    expected = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    assert np.array_equal(load_image(buf.getvalue(), 24), expected)


def test_one_bit_image_becomes_black_and_white():
    bits = (pattern(8, 8, seed=9)[:, :, 0] > 127)
    buf = io.BytesIO()
    Image.fromarray(bits).save(buf, "PNG")
    assert np.array_equal(load_image(buf.getvalue(), 8)[:, :, 1], np.where(bits, 255, 0))


# --- the libjpeg-turbo path for plain JPEGs (RGB or grey, upright) and the files that must avoid it


def _photo_like(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth gradients plus mild noise: compresses like a photo, unlike pattern()'s pure noise."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    noise = np.random.default_rng(seed).normal(0, 6, (height, width, 3))
    base = np.stack([255 * x / width, 255 * y / height, 128 + 100 * np.sin(x / 23 + y / 31)], axis=2)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _quadrants(height: int, width: int) -> np.ndarray:
    """Top-left red, top-right green, bottom-left blue, bottom-right white."""
    array = np.zeros((height, width, 3), np.uint8)
    array[: height // 2, : width // 2] = (255, 0, 0)
    array[: height // 2, width // 2 :] = (0, 255, 0)
    array[height // 2 :, : width // 2] = (0, 0, 255)
    array[height // 2 :, width // 2 :] = (255, 255, 255)
    return array


def _quadrant_colours(image: np.ndarray) -> list[tuple[int, ...]]:
    """The colour at the middle of each quadrant (TL, TR, BL, BR), rounded to 0 or 255."""
    h, w = image.shape[:2]
    points = [(h // 4, w // 4), (h // 4, 3 * w // 4), (3 * h // 4, w // 4), (3 * h // 4, 3 * w // 4)]
    return [tuple(int(v > 127) * 255 for v in image[y, x]) for y, x in points]


def _torchvision_of_pillow_decode(data: bytes, size: int, draft: bool = False) -> np.ndarray:
    """Pillow's decode (optionally its draft mode), then torchvision's antialiased resize and centre crop."""
    img = Image.open(io.BytesIO(data))
    if draft:
        img.draft("RGB", (size, size))
    tensor = torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)
    return TF.center_crop(TF.resize(tensor, size, antialias=True), size).permute(1, 2, 0).numpy()


@pytest.mark.parametrize("progressive", [False, True], ids=["baseline", "progressive"])
def test_plain_jpeg_takes_the_fast_path_and_matches_pillow(progressive):
    data = encode(_photo_like(375, 500, seed=20), "JPEG", quality=90, progressive=progressive)
    img = Image.open(io.BytesIO(data))
    fast = plain_jpeg_pixels(img, data, 256)
    # the fast decoder returns exactly Pillow's pixels (same libjpeg-turbo, same IDCT and upsampling)
    assert fast is not None and np.array_equal(fast, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    got = load_image(data, 256)
    assert got.shape == (256, 256, 3) and got.dtype == np.uint8
    # torch's uint8 kernel rounds slightly differently for channels-last and planar input: within 2 levels
    assert np.abs(got.astype(int) - _torchvision_of_pillow_decode(data, 256).astype(int)).max() <= 2
    # and a peer resize: Pillow's own BILINEAR (antialiased) on the same photo, within 2 grey levels on average
    pil = Image.open(io.BytesIO(data)).convert("RGB").resize((341, 256), Image.Resampling.BILINEAR)
    expected = np.asarray(pil)[:, 42:298]  # torchvision's rule: width int(256 * 500 / 375) = 341, left 42
    assert np.abs(got.astype(int) - expected.astype(int)).mean() < 2.0


def test_large_plain_jpeg_uses_the_draft_scale_on_the_fast_path():
    data = encode(_photo_like(600, 1100, seed=21), "JPEG", quality=90)
    fast = plain_jpeg_pixels(Image.open(io.BytesIO(data)), data, 128)
    assert fast is not None and fast.shape == (150, 275, 3)  # 1/4: the largest keeping both sides >= 128
    expected = _torchvision_of_pillow_decode(data, 128, draft=True)
    assert np.abs(load_image(data, 128).astype(int) - expected.astype(int)).max() <= 2


@pytest.mark.parametrize("shape", [(300, 400), (400, 300)], ids=["landscape", "portrait"])
def test_fast_path_keeps_orientation_and_colour_order(shape):
    data = encode(_quadrants(*shape), "JPEG", quality=95)
    assert plain_jpeg_pixels(Image.open(io.BytesIO(data)), data, 96) is not None
    got = load_image(data, 96)
    assert got.shape == (96, 96, 3)
    assert _quadrant_colours(got) == [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]


def test_grey_jpeg_takes_the_fast_path_and_is_replicated():
    grey = _photo_like(120, 160, seed=22)[:, :, 0]
    data = encode(grey, "JPEG", quality=90)
    assert plain_jpeg_pixels(Image.open(io.BytesIO(data)), data, 120) is not None
    got = load_image(data, 120)
    decoded = np.asarray(Image.open(io.BytesIO(data)))  # Pillow's "L" decode, no resize needed (120 = S)
    assert np.array_equal(got, np.repeat(decoded[:, 20:140, None], 3, axis=2))


def test_upright_exif_orientation_still_takes_the_fast_path():
    exif = Image.Exif()
    exif[0x0112] = 1
    data = encode(_quadrants(300, 400), "JPEG", quality=95, exif=exif.tobytes())
    assert plain_jpeg_pixels(Image.open(io.BytesIO(data)), data, 96) is not None
    assert _quadrant_colours(load_image(data, 96)) == [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]


def test_exif_rotated_jpeg_goes_the_pillow_way_and_is_rotated():
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the top-left (red) quadrant ends up top-right
    data = encode(_quadrants(300, 400), "JPEG", quality=95, exif=exif.tobytes())
    assert plain_jpeg_pixels(Image.open(io.BytesIO(data)), data, 96) is None
    got = load_image(data, 96)
    assert got.shape == (96, 96, 3)
    assert _quadrant_colours(got) == [(0, 0, 255), (255, 0, 0), (255, 255, 255), (0, 255, 0)]


def test_cmyk_jpeg_and_png_go_the_pillow_way():
    cmyk = Image.fromarray(_photo_like(60, 80, seed=23)).convert("CMYK")
    buf = io.BytesIO()
    cmyk.save(buf, "JPEG", quality=95)
    png = encode(_photo_like(60, 80, seed=23), "PNG")
    for data in (buf.getvalue(), png):
        assert plain_jpeg_pixels(Image.open(io.BytesIO(data)), data, 60) is None
        assert bare_jpeg_pixels(data, 60) is None
    expected = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))[:, 10:70]
    assert np.array_equal(load_image(buf.getvalue(), 60), expected)


@pytest.mark.parametrize("shape, size", [((375, 500), 256), ((600, 1100), 128), ((120, 160), 120)],
                         ids=["photo", "draft-scale", "grey"])
def test_jpeg_without_metadata_skips_pillow_and_gives_its_pixels(shape, size):
    """No EXIF, XMP or MPF segment: decoded without Pillow's header parse, to Pillow's own draft-mode pixels."""
    array = _photo_like(*shape, seed=25)
    data = encode(array[:, :, 0] if size == 120 else array, "JPEG", quality=90)
    bare = bare_jpeg_pixels(data, size)
    img = Image.open(io.BytesIO(data))
    img.draft("RGB", (size, size))
    assert bare is not None and np.array_equal(bare, np.asarray(img.convert("RGB")))


def _xmp_jpeg(array: np.ndarray, orientation: int) -> bytes:
    """A JPEG whose only orientation is in an XMP packet (APP1), which Pillow also honours."""
    packet = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description tiff:Orientation="'
              + str(orientation).encode() + b'"/></rdf:RDF></x:xmpmeta>')
    body = b"http://ns.adobe.com/xap/1.0/\x00" + packet
    data = encode(array, "JPEG", quality=95)
    return data[:2] + b"\xff\xe1" + (len(body) + 2).to_bytes(2, "big") + body + data[2:]


def test_jpegs_with_orientation_metadata_or_several_pictures_go_through_pillow():
    """EXIF (even upright), XMP and MPO files are not decoded without Pillow; XMP orientation is applied."""
    exif = Image.Exif()
    exif[0x0112] = 1
    quadrants = _quadrants(300, 400)
    second = io.BytesIO()
    Image.fromarray(quadrants).save(second, "MPO", save_all=True, append_images=[Image.fromarray(quadrants[::-1])])
    xmp = _xmp_jpeg(quadrants, 6)
    for data in (encode(quadrants, "JPEG", exif=exif.tobytes()), xmp, second.getvalue()):
        assert bare_jpeg_pixels(data, 96) is None
    assert Image.open(io.BytesIO(second.getvalue())).format == "MPO"
    # Pillow reads the XMP orientation 6 ("rotate 90 CW to display"): the red quadrant ends up top-right
    assert _quadrant_colours(load_image(xmp, 96)) == [(0, 0, 255), (255, 0, 0), (255, 255, 255), (0, 255, 0)]
    assert _quadrant_colours(load_image(second.getvalue(), 96)) == [(255, 0, 0), (0, 255, 0), (0, 0, 255),
                                                                    (255, 255, 255)]


def test_damaged_jpeg_is_left_to_pillow():
    data = encode(_photo_like(120, 160, seed=24), "JPEG", quality=90)
    cut = data[: len(data) // 2]
    assert plain_jpeg_pixels(Image.open(io.BytesIO(cut)), cut, 64) is None
    assert bare_jpeg_pixels(cut, 64) is None
    with pytest.raises(SkipImage, match="truncated or corrupt image data"):
        load_image(cut, 64)


_JPEG = encode(pattern(64, 64, seed=10), "JPEG")
_PNG = encode(pattern(64, 64, seed=10), "PNG")


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty file"),
        (b"just some text, not pixels\n" * 10, "not an image"),
        (png_bomb(30000, 30000), "decompression bomb"),  # over 2x Pillow's limit: Pillow raises
        (png_bomb(10000, 10000), "decompression bomb"),  # between 1x and 2x: Pillow only warns
        (_JPEG[:400], "truncated or corrupt image header"),
        (_JPEG[: len(_JPEG) // 2], "truncated or corrupt image data"),
        (_PNG[: len(_PNG) // 2], "truncated or corrupt image data"),
    ],
    ids=["zero-bytes", "text", "bomb", "bomb-warning", "jpeg-cut-in-header", "jpeg-cut-in-data", "png-cut-in-data"],
)
def test_unusable_data_is_refused_with_its_reason(data, reason):
    with pytest.raises(SkipImage, match=reason):
        decode_image(data, 16)


def test_missing_file_is_unreadable(tmp_path):
    with pytest.raises(SkipImage, match="unreadable"):
        load_image(tmp_path / "nothing.jpg", 16)


# ------------------------------------------------------------------------------------------ layouts


def _folder(root, spec: dict[str, int], size=8):
    for c, (name, count) in enumerate(spec.items()):
        for i in range(count):
            write(root / name / f"{i}.png", encode(pattern(size, size, seed=100 * c + i)))


def test_imagefolder_classes_are_sorted_and_labels_follow(tmp_path):
    _folder(tmp_path / "src", {"zebra": 2, "apple": 3, "mango": 1})
    write(tmp_path / "src" / "apple" / ".DS_Store", b"hidden")
    write(tmp_path / "src" / "apple" / "deeper" / "x.png", encode(pattern(8, 8, seed=1)))
    source = find_source(tmp_path / "src")
    assert source.layout == "imagefolder"
    assert source.classes == ["apple", "mango", "zebra"]
    listing = source.splits["train"]
    assert [(it.name, it.label) for it in listing.items] == [
        ("apple/0.png", 0), ("apple/1.png", 0), ("apple/2.png", 0), ("apple/deeper/x.png", 0),
        ("mango/0.png", 1), ("zebra/0.png", 2), ("zebra/1.png", 2)]


def test_train_val_folders_become_two_splits(tmp_path):
    _folder(tmp_path / "src" / "train", {"a": 2, "b": 2})
    _folder(tmp_path / "src" / "val", {"a": 1, "b": 1})
    source = find_source(tmp_path / "src")
    assert source.layout == "imagefolder-train-val"
    assert [len(source.splits[s].items) for s in ("train", "val")] == [4, 2]
    assert source.splits["val"].items[1].name == "val/b/0.png"


def test_train_val_class_mismatch_names_the_difference(tmp_path):
    _folder(tmp_path / "src" / "train", {"a": 1, "b": 1, "c": 1})
    _folder(tmp_path / "src" / "val", {"a": 1, "b": 1, "d": 1})
    with pytest.raises(UserError, match="only in train: c; only in val: d"):
        find_source(tmp_path / "src")


@pytest.mark.parametrize("case", ["one-class", "empty-dir", "missing", "empty-class"])
def test_unusable_folders_are_user_errors(tmp_path, case):
    src = tmp_path / "src"
    if case == "one-class":
        _folder(src, {"only": 3})
        expected = "at least 2"
    elif case == "empty-dir":
        src.mkdir()
        expected = "is empty"
    elif case == "missing":
        expected = "does not exist"
    else:
        _folder(src, {"a": 2, "b": 1})
        (src / "c").mkdir()
        expected = "no files: c"
    with pytest.raises(UserError, match=expected):
        find_source(src)


def test_flat_validation_folder_needs_labels(tmp_path):
    write(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG", encode(pattern(8, 8, 1)))
    with pytest.raises(UserError, match="--labels LOC_val_solution.csv or --devkit"):
        find_source(tmp_path / "val")


def test_flat_validation_folder_with_loc_val_solution(tmp_path):
    stems = {1: "n03000000", 2: "n01000000", 3: "n02000000", 4: "n01000000"}
    for n in stems:
        write(tmp_path / "val" / f"ILSVRC2012_val_{n:08d}.JPEG", encode(pattern(8, 8, n)))
    write(tmp_path / "val" / "ILSVRC2012_val_00000009.JPEG", encode(pattern(8, 8, 9)))  # not in the csv
    csv_text = "ImageId,PredictionString\n" + "".join(
        f"ILSVRC2012_val_{n:08d},{w} 1 2 30 40 {w} 5 6 7 8\n" for n, w in stems.items())
    labels = ilsvrc.read_val_solution(write(tmp_path / "LOC_val_solution.csv", csv_text.encode()))
    source = find_source(tmp_path / "val", labels)
    assert source.layout == "ilsvrc-val-folder"
    assert source.classes == ["n01000000", "n02000000", "n03000000"]
    assert [it.label for it in source.splits["train"].items] == [2, 0, 1, 0]
    assert source.splits["train"].skipped == [
        ("ILSVRC2012_val_00000009.JPEG", "no label for ILSVRC2012_val_00000009 in LOC_val_solution.csv")]


def test_devkit_ground_truth_maps_ilsvrc_ids_to_sorted_wnid_indices(tmp_path):
    # IDs deliberately not in wnid order, plus an inner node (num_children > 0) that is not a class
    synsets = [(1, "n04000000", "tractor", 0), (2, "n01751748", "sea snake", 0), (3, "n02000000", "bird, fowl", 0),
               (4, "n00001740", "entity", 3), (5, "n03000000", "dog", 0)]
    truth = [2, 5, 1, 3, 2]
    make_devkit(tmp_path / "devkit.tar.gz", synsets, truth)
    labels = ilsvrc.read_devkit(tmp_path / "devkit.tar.gz")
    sorted_wnids = sorted(["n04000000", "n01751748", "n02000000", "n03000000"])
    assert labels.classes == sorted_wnids
    wnid_of = {1: "n04000000", 2: "n01751748", 3: "n02000000", 5: "n03000000"}
    expected = [sorted_wnids.index(wnid_of[i]) for i in truth]
    for n in range(1, 6):
        write(tmp_path / "val" / f"ILSVRC2012_val_{n:08d}.JPEG", encode(pattern(8, 8, n)))
    source = find_source(tmp_path / "val", labels, labels.words)
    assert [it.label for it in source.splits["train"].items] == expected == [0, 2, 3, 1, 0]
    assert labels.words["n02000000"] == "bird, fowl"


def test_tar_of_per_class_tars_is_indexed_in_place(tmp_path):
    arrays = {"n02000000": [pattern(8, 8, 1), pattern(8, 8, 2)], "n01000000": [pattern(8, 8, 3)]}
    make_tar_of_tars(tmp_path / "train.tar", arrays)
    source = find_source(tmp_path / "train.tar")
    assert source.layout == "ilsvrc-train-tar" and source.classes == ["n01000000", "n02000000"]
    items = source.splits["train"].items
    assert [(it.name, it.label) for it in items] == [
        ("n02000000.tar/n02000000_0.JPEG", 1), ("n02000000.tar/n02000000_1.JPEG", 1),
        ("n01000000.tar/n01000000_0.JPEG", 0)]
    assert np.array_equal(item_pixels(items[2], 8), arrays["n01000000"][0])
    assert list(tmp_path.iterdir()) == [tmp_path / "train.tar"]  # nothing extracted


def test_archive_members_leaving_the_folder_are_refused(tmp_path):
    with tarfile.open(tmp_path / "val.tar", "w") as tar:
        add_bytes(tar, "ILSVRC2012_val_00000001.JPEG", encode(pattern(8, 8, 1)))
        add_bytes(tar, "../ILSVRC2012_val_00000002.JPEG", encode(pattern(8, 8, 2)))
        add_bytes(tar, "/tmp/ILSVRC2012_val_00000003.JPEG", encode(pattern(8, 8, 3)))
    labels = ilsvrc.Labels({f"ILSVRC2012_val_{n:08d}": "n01000000" for n in (1, 2, 3)}, ["n01000000"],
                           origin="labels.csv")
    source = find_source(tmp_path / "val.tar", labels)
    assert source.layout == "ilsvrc-val-tar"
    assert [it.name for it in source.splits["train"].items] == ["ILSVRC2012_val_00000001.JPEG"]
    refused = dict(source.splits["train"].skipped)
    assert set(refused) == {"../ILSVRC2012_val_00000002.JPEG", "/tmp/ILSVRC2012_val_00000003.JPEG"}
    assert all("unsafe path" in reason for reason in refused.values())
    assert not (tmp_path.parent / "ILSVRC2012_val_00000002.JPEG").exists()


@pytest.mark.parametrize("name, unsafe", [("a/b.JPEG", False), ("../x", True), ("a/../../x", True),
                                          ("/etc/passwd", True), ("C:/x", True), ("a..b/c", False)])
def test_unsafe_member_names(name, unsafe):
    assert unsafe_member_name(name) is unsafe


def test_compressed_image_archive_is_a_user_error(tmp_path):
    with tarfile.open(tmp_path / "imgs.tar.gz", "w:gz") as tar:
        add_bytes(tar, "a/1.png", encode(pattern(8, 8, 1)))
    with pytest.raises(UserError, match="decompress it"):
        find_source(tmp_path / "imgs.tar.gz")


def test_validation_fraction_is_stratified_and_deterministic(tmp_path):
    _folder(tmp_path / "src", {"a": 10, "b": 5, "c": 2})
    first, second = find_source(tmp_path / "src"), find_source(tmp_path / "src")
    split_off_validation(first, 0.2, seed=3)
    split_off_validation(second, 0.2, seed=3)
    val_labels = [it.label for it in first.splits["val"].items]
    # round(0.2 * n) per class, at least one when a class has two or more images
    assert [val_labels.count(c) for c in range(3)] == [2, 1, 1]
    assert first.splits["val"].items == second.splits["val"].items
    names = {it.name for s in ("train", "val") for it in first.splits[s].items}
    assert len(names) == 17 and not {it.name for it in first.splits["val"].items} & {
        it.name for it in first.splits["train"].items}


# ------------------------------------------------------------------------------------------ names


def test_shipped_imagenet_names_are_torchvisions():
    from torchvision.models import AlexNet_Weights

    assert list(classnames.imagenet_categories()) == AlexNet_Weights.IMAGENET1K_V1.meta["categories"]
    wnids = classnames.ilsvrc2012_wnids()
    assert len(set(wnids)) == 1000 and list(wnids) == sorted(wnids)
    assert wnids.index("n01751748") == 65  # SPEC: val image 1 (ILSVRC2012_ID 490) has sorted index 65


def test_class_names_for_wnids_devkit_words_and_folders():
    assert classnames.class_names(["n01440764", "n15075141"]) == ["tench", "toilet tissue"]
    assert classnames.class_names(["n01440764"], {"n01440764": "tench, Tinca tinca"}) == ["tench"]
    assert classnames.class_names(["cat", "dog"]) == ["cat", "dog"]
