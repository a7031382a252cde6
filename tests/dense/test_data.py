"""The built-in pennfudan set and the batches built from it."""

from __future__ import annotations

import torch
from helpers import needs_shared

from deltapatch.dense import load_dense_data
from deltapatch.dense.data import flipped, segmentation_batch
from deltapatch.dense.heads import IGNORE


@needs_shared
def test_pennfudan_split_boxes_and_masks_agree():
    data = load_dense_data("pennfudan")
    assert (len(data.train), len(data.test)) == (120, 50)
    assert sum(len(s.boxes) for s in data.train) == 300
    assert sum(len(s.boxes) for s in data.test) == 123
    assert data.class_names == ["background", "pedestrian"]
    for s in data.train[:20]:
        h, w = s.image.shape[-2:]
        assert max(h, w) <= 320 and s.mask.shape == (h, w)
        assert (s.boxes[:, :2] >= 0).all() and (s.boxes[:, 2] <= w).all()
        assert (s.boxes[:, 3] <= h).all() and (s.labels == 1).all()
        for x1, y1, x2, y2 in s.boxes.long().tolist():  # every box holds pedestrian pixels
            assert s.mask[y1:y2, x1:x2].any()
        f = flipped(s)
        assert torch.equal(flipped(f).boxes, s.boxes) and torch.equal(f.mask, s.mask.flip(-1))


@needs_shared
def test_segmentation_batch_pads_with_ignore():
    s = load_dense_data("pennfudan", max_train=1).train[0]
    x, y = segmentation_batch([s], 160)
    h, w = s.image.shape[-2:]
    nh, nw = round(h * 160 / max(h, w)), round(w * 160 / max(h, w))
    assert x.shape == (1, 3, 160, 160) and y.shape == (1, 160, 160)
    assert (y[0, nh:, :] == IGNORE).all() and (y[0, :, nw:] == IGNORE).all()
    assert set(y[0, :nh, :nw].unique().tolist()) == {0, 1}
