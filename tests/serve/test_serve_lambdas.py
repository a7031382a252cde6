"""``POST /v1/predict`` with ``"return_lambdas": true`` (issue 26, item 2): Λ per Δ-stage of the
image, computed on the batcher's worker thread, equal to ``model.lambdas`` on that image; absent
for fan-out tasks without Δ-stages, refused for one such task; other answers unchanged."""

from __future__ import annotations

import base64
import threading

import torch
from conftest import png, save_patch
from fastapi.testclient import TestClient

import deltapatch as dp
from deltapatch.data.sets import to_image_tensor
from deltapatch.data.sources import decode_image
from deltapatch.serve.app import create_app
from deltapatch.serve.patchset import PatchSet


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def library_lambdas(model: dp.PatchedModel, image: bytes, patch: str) -> dict[str, list]:
    x = to_image_tensor(decode_image(image, "t")[None], model.preprocess.size)
    with torch.inference_mode():
        lam = model.lambdas(model.preprocess.normalize(x), patch=patch)
    return {str(s): t.tolist() for s, t in lam.items()}


def test_lambdas_equal_the_library_and_are_absent_where_there_are_none(backbone, patch_dir,
                                                                          library):
    save_patch(backbone, patch_dir, "h", 4, [], method="linear")  # head-only: no Δ-stage
    patchset = PatchSet(dp.PatchedModel(backbone).eval())
    assert patchset.load_dir(patch_dir) == ["a", "b", "h"]
    threads = []
    lambdas = patchset.model.lambdas

    def spy(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return lambdas(*args, **kwargs)

    patchset.model.lambdas = spy
    image = png(5)
    names = patchset.model.stage_names
    with TestClient(create_app(patchset), raise_server_exceptions=False) as c:
        plain = c.post("/v1/predict", json={"image": b64(image), "patch": "b"}).json()
        one = c.post("/v1/predict", json={"image": b64(image), "patch": "b",
                                          "return_lambdas": True})
        assert one.status_code == 200, one.text
        one = one.json()
        assert one["lambdas"] == library_lambdas(library, image, "b")
        assert list(one["lambdas"]) == ["0", "2"]  # b patches stages 0 and 2
        assert one["lambda_stages"] == {"0": {"name": names[0], "k": 3},
                                        "2": {"name": names[2], "k": 3}}
        assert all(len(rows) == 1 and len(rows[0]) == 6 and all(0 <= v <= 1 for v in rows[0])
                   for rows in one["lambdas"].values())
        assert {k: v for k, v in one.items() if not k.startswith("lambda")} == plain

        fan = c.post("/v1/predict", files={"image": ("x.png", image)},
                     data={"patches": "a,h,__base__,b", "return_lambdas": "true", "top_k": "2"})
        assert fan.status_code == 200, fan.text
        results = fan.json()["results"]
        for name in ("a", "b"):
            assert results[name]["lambdas"] == library_lambdas(library, image, name)
        assert list(results["a"]["lambdas"]) == [str(len(names) - 1)]
        for name in ("h", "__base__"):
            assert set(results[name]) == {"top_k"}, name  # no Λ: nothing added

        for name, words in (("h", "method linear"), ("__base__", "base task")):
            r = c.post("/v1/predict", json={"image": b64(image), "patch": name,
                                            "return_lambdas": True})
            assert r.status_code == 422 and words in r.json()["error"], r.text
        assert set(c.post("/v1/predict", json={"image": b64(image), "patch": "a",
                                              "return_lambdas": False}).json()) == {"patch",
                                                                                     "top_k"}
    assert threads and all(t.startswith("deltapatch-device") for t in threads), threads
