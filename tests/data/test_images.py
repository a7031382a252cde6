"""Image files: every PIL mode to 8-bit RGB by meaning, mixed sizes, tiny images, bombs."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import deltapatch as dp
from deltapatch.data import images as images_mod
from deltapatch.data import load_data
from deltapatch.data.images import decode_image
from deltapatch.data.sets import to_image_tensor


def _png(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def test_16bit_grey_png_is_scaled_not_clipped():
    a = np.array([[0, 257 * 100], [257 * 200, 65535]], dtype=np.uint16)
    im = Image.fromarray(a)
    assert im.mode.startswith("I")
    out = decode_image(_png(im), "g16.png")
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert out[..., 0].tolist() == [[0, 100], [200, 255]]
    assert (out[..., 0] == out[..., 2]).all()


def test_mode_I_is_read_as_16_bit():
    im = Image.fromarray(np.array([[0, 65535], [257, 514]], dtype=np.int32), mode="I")
    assert decode_image(_png(im, "TIFF"), "i.tif")[..., 1].tolist() == [[0, 255], [1, 2]]


def test_float_grey_in_unit_range_is_scaled_by_255():
    im = Image.fromarray(np.array([[0.0, 0.5], [1.0, 0.2]], dtype=np.float32), mode="F")
    out = decode_image(_png(im, "TIFF"), "f.tif")
    assert out[..., 0].tolist() == [[0, 128], [255, 51]]


def test_palette_transparency_and_grey_alpha_become_white():
    p = Image.new("P", (2, 2))
    p.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    p.putdata([0, 1, 1, 0])
    p.info["transparency"] = 0
    out = decode_image(_png(p, transparency=0), "p.png")
    assert out[0, 0].tolist() == [255, 255, 255] and out[0, 1].tolist() == [0, 0, 255]
    la = Image.fromarray(np.array([[[10, 0], [10, 255]]] * 2, dtype=np.uint8), mode="LA")
    out = decode_image(_png(la), "la.png")
    assert out[0, 0].tolist() == [255, 255, 255] and out[0, 1].tolist() == [10, 10, 10]


def test_cmyk_and_palette_without_alpha():
    cmyk = Image.new("CMYK", (4, 4), (0, 0, 0, 0))
    assert decode_image(_png(cmyk, "JPEG"), "c.jpg").shape == (4, 4, 3)
    p = Image.new("P", (3, 3))
    p.putpalette([0, 200, 0] * 256)
    assert decode_image(_png(p), "p.png")[1, 1].tolist() == [0, 200, 0]


def test_unreadable_and_unsupported_formats_name_the_file():
    with pytest.raises(dp.DataError, match=r"cannot read image x\.png"):
        decode_image(b"not an image", "x.png")
    with pytest.raises(dp.DataError, match=r"cannot read image doc\.eps"):
        decode_image(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "doc.eps")


def test_pixel_limit_is_ours_and_names_the_file(monkeypatch):
    monkeypatch.setattr(images_mod, "MAX_IMAGE_PIXELS", 10)
    with pytest.raises(dp.DataError, match=r"big\.png has 16 pixels, more than the limit 10"):
        decode_image(_png(Image.new("RGB", (4, 4))), "big.png")


def _huge_png(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header then claims ``width`` x ``height``."""
    data = bytearray(_png(Image.new("L", (1, 1))))
    ihdr = 8 + 8  # signature, then IHDR length + type
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4:ihdr + 13]))
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def test_decompression_bomb_header_is_refused_before_decoding():
    with pytest.raises(dp.DataError, match=r"bomb\.png .*pixels"):
        decode_image(_huge_png(30_000, 30_000), "bomb.png")  # 900 MP: PIL's own error
    with pytest.raises(dp.DataError, match=r"bomb\.png has 81,000,000 pixels, more than the limit"):
        decode_image(_huge_png(9_000, 9_000), "bomb.png")  # 81 MP: under PIL's limit, over ours


def test_pil_bomb_error_and_warning_become_data_errors(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4)
    with pytest.raises(dp.DataError, match=r"b\.png is too large"):
        decode_image(_png(Image.new("RGB", (4, 4))), "b.png")  # 16 > 2 x 4: error
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(dp.DataError, match=r"w\.png is too large"):
            decode_image(_png(Image.new("RGB", (3, 2))), "w.png")  # 6 > 4: a warning


def test_a_one_pixel_image_is_refused_with_its_name():
    with pytest.raises(dp.DataError, match=r"dot\.png is 1x1 pixels"):
        decode_image(_png(Image.new("RGB", (1, 1))), "dot.png")
    with pytest.raises(dp.DataError, match=r"line\.png is 40x1"):
        decode_image(_png(Image.new("RGB", (40, 1))), "line.png")


def _folder(root, sizes):
    rng = np.random.default_rng(0)
    arrays = {}
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i, (h, w) in enumerate(sizes):
            a = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            Image.fromarray(a).save(root / cls / f"{i}.png")
            arrays[f"{cls}/{i}.png"] = a
    return arrays


def test_mixed_sizes_are_each_resized_to_the_target_not_to_the_smallest(tmp_path):
    arrays = _folder(tmp_path / "imgs", [(40, 40)] * 4 + [(4, 5)])
    d = load_data(str(tmp_path / "imgs"), 24, val_fraction=0.2)
    allset = torch.cat([d.train.images, d.val.images, d.test.images])
    assert allset.shape == (10, 3, 24, 24)
    # every 40x40 image has exactly the pixels it would get alone (not squeezed through 3x3)
    alone = {tuple(to_image_tensor(a[None], 24)[0].flatten()[:64].tolist()) for a in arrays.values()}
    got = {tuple(im.flatten()[:64].tolist()) for im in allset}
    assert got == alone


def test_a_one_pixel_image_in_a_folder_names_the_file(tmp_path):
    _folder(tmp_path / "imgs", [(12, 12)] * 3)
    Image.new("RGB", (1, 1)).save(tmp_path / "imgs" / "a" / "tiny.png")
    with pytest.raises(dp.DataError, match=r"a/tiny\.png is 1x1 pixels"):
        load_data(str(tmp_path / "imgs"), 16)
