"""The read-out's edge: a batch with no answered rows (every group failed) packs to an empty
int32 tensor and reads out as no answers."""

from __future__ import annotations

import torch

from deltapatch.serve.readout import pack, read_out, unpack


def test_no_rows_pack_to_an_empty_int32_tensor_and_read_out_as_nothing():
    packed = pack([])
    assert packed.data.dtype == torch.int32 and packed.data.numel() == 0
    assert packed.groups == [] and packed.rows == 0
    assert unpack(packed, packed.data.cpu()) == [] and read_out([]) == []
