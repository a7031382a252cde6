"""Records name the machine: the CPU line stays as every existing record has it, and a GPU run's
line and facts name the GPU, its memory, CUDA, cuDNN and the precision (the CUDA branch runs
here with torch.cuda's answers faked)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from deltapatch import hardware
from deltapatch.devices import DeviceError


@pytest.fixture
def fake_gpu(monkeypatch):
    """torch as it answers on a machine with one H200, cuDNN 9.1.0 and CUDA 12.8."""
    props = SimpleNamespace(name="NVIDIA H200", total_memory=150_121_545_728, major=9, minor=0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 90100)


def test_describe_without_a_device_is_the_cpu_line():
    line = hardware.describe()
    assert line.startswith(hardware.cpu_model()) and f"torch {torch.__version__}" in line
    assert "GPU" not in line and hardware.describe("cpu") == line
    assert hardware.describe("cpu", "bf16") == line + "; precision bf16"


def test_cpu_facts_are_json_and_name_no_gpu():
    facts = hardware.device_facts("cpu", "fp32")
    assert json.loads(json.dumps(facts)) == facts
    assert facts["device"] == "cpu" and facts["precision"] == "fp32" and "gpu" not in facts


def test_gpu_facts_name_the_gpu_memory_cuda_cudnn_and_precision(fake_gpu):
    facts = hardware.device_facts("cuda", "bf16")
    assert facts["device"] == "cuda:0" and facts["gpu"] == "NVIDIA H200"
    assert facts["gpu_memory_gib"] == 139.8 and facts["compute_capability"] == "9.0"
    assert facts["cuda"] == "12.8" and facts["cudnn"] == "9.1.0"
    assert facts["precision"] == "bf16" and isinstance(facts["tf32_cudnn"], bool)
    line = hardware.describe("cuda", "bf16")
    assert "GPU NVIDIA H200 (139.8 GiB, sm 9.0), CUDA 12.8, cuDNN 9.1.0" in line
    assert line.endswith("; precision bf16") and line.startswith(hardware.describe())


def test_cudnn_8_versions_read_as_such(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 8902)
    assert hardware.cudnn_version() == "8.9.2"


def test_a_device_that_is_not_there_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="not there"):
        hardware.device_facts("cuda:1")
