"""prunecal.models.checkpoint: layouts, mismatches, corrupt files, atomic saves, hashing."""
from __future__ import annotations

import hashlib
import os
import pickle
from collections import OrderedDict

import pytest
import torch

from prunecal import models
from prunecal.models import file_sha256, load_checkpoint, read_state_dict, save_checkpoint


@pytest.fixture
def net():
    m = models.create("resnet20")
    with torch.no_grad():  # make BN buffers non-default so a round trip is meaningful
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-1, 1)
                mod.running_var.uniform_(0.5, 2)
    return m


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_save_load_round_trip(net, tmp_path):
    p = save_checkpoint(net, tmp_path / "sub" / "ck.pt", epoch=3, note="hello")
    assert p.is_file()
    assert os.listdir(p.parent) == ["ck.pt"]  # no temp file left behind
    other = models.create("resnet20", weights=p)
    assert_same_state(net, other)
    raw = torch.load(p, map_location="cpu", weights_only=True)
    assert raw["epoch"] == 3 and raw["note"] == "hello"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), other(x))


def test_save_overwrites_atomically(net, tmp_path):
    p = tmp_path / "ck.pt"
    save_checkpoint(models.create("resnet20"), p)
    save_checkpoint(net, p)
    assert_same_state(net, load_checkpoint(models.create("resnet20"), p))
    assert sorted(os.listdir(tmp_path)) == ["ck.pt"]
    with pytest.raises(ValueError, match="state_dict"):
        save_checkpoint(net, p, state_dict=1)


@pytest.mark.parametrize("layout", ["raw", "state_dict", "model", "module_prefix", "no_bn_counters"])
def test_accepted_layouts(net, tmp_path, layout):
    sd = net.state_dict()
    if layout == "raw":
        obj = sd
    elif layout == "state_dict":
        obj = {"state_dict": sd, "best_prec1": 91.0}
    elif layout == "model":
        obj = {"model": sd, "optimizer": {"lr": 0.1}}
    elif layout == "module_prefix":
        obj = {"state_dict": OrderedDict((f"module.{k}", v) for k, v in sd.items())}
    else:
        obj = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    p = tmp_path / "ck.th"
    torch.save(obj, p)
    assert_same_state(net, models.create("resnet20", weights=p))


def test_pretrained_file_hash_and_keys(shared_data):
    p = shared_data / "weights" / "resnet20-12fca82f.th"
    sums = dict(line.split()[::-1] for line in (shared_data / "SHA256SUMS").read_text().splitlines())
    assert file_sha256(p) == sums["weights/resnet20-12fca82f.th"]
    sd = read_state_dict(p)
    assert "conv1.weight" in sd and not any(k.startswith("module.") for k in sd)


def test_file_sha256_matches_hashlib(tmp_path):
    p = tmp_path / "blob"
    data = os.urandom(3_000_000)
    p.write_bytes(data)
    assert file_sha256(p, chunk_size=4096) == hashlib.sha256(data).hexdigest()
    with pytest.raises(FileNotFoundError, match="nope"):
        file_sha256(tmp_path / "nope")


def test_mismatch_names_missing_keys(net, tmp_path):
    p = save_checkpoint(net, tmp_path / "r20.pt")
    with pytest.raises(ValueError) as e:
        models.create("resnet32", weights=p)
    msg = str(e.value)
    assert "missing keys" in msg and "layer1.3.conv1.weight" in msg and str(p) in msg
    assert "unexpected" not in msg


def test_mismatch_names_unexpected_keys(tmp_path):
    p = save_checkpoint(models.create("resnet32"), tmp_path / "r32.pt")
    with pytest.raises(ValueError, match=r"unexpected keys \(\d+\): .*layer1\.3\."):
        models.create("resnet20", weights=p)


def test_mismatch_names_shapes(net, tmp_path):
    p = save_checkpoint(net, tmp_path / "r20.pt")
    with pytest.raises(ValueError, match=r"shape mismatches.*linear\.weight: checkpoint \(10, 64\) vs model \(100, 64\)"):
        models.create("resnet20", weights=p, num_classes=100)


def test_other_architecture_rejected(tmp_path):
    p = save_checkpoint(models.create("vgg11_bn", width_mult=0.125), tmp_path / "vgg.pt")
    with pytest.raises(ValueError, match="missing keys.*unexpected keys"):
        models.create("resnet20", weights=p)


def test_nan_weights_rejected(net, tmp_path):
    sd = net.state_dict()
    sd["linear.weight"][0, 0] = float("nan")
    p = tmp_path / "nan.pt"
    torch.save(sd, p)
    with pytest.raises(ValueError, match="non-finite.*linear.weight"):
        load_checkpoint(models.create("resnet20"), p)


def test_missing_file(tmp_path):
    p = tmp_path / "absent.th"
    with pytest.raises(FileNotFoundError, match="absent.th"):
        models.create("resnet20", weights=p)


@pytest.mark.parametrize("cut", [0.5, 0.1])
def test_truncated_file(net, tmp_path, cut):
    p = save_checkpoint(net, tmp_path / "ck.pt")
    data = p.read_bytes()
    p.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(ValueError, match=f"could not read checkpoint {p}"):
        models.create("resnet20", weights=p)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", bytes(range(256)) * 10])
def test_garbage_file(tmp_path, content):
    p = tmp_path / "bad.pt"
    p.write_bytes(content)
    with pytest.raises(ValueError, match="could not read checkpoint"):
        load_checkpoint(models.create("resnet20"), p)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_hostile_pickle_not_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = tmp_path / "evil.pt"
    torch.save({"state_dict": {"x": _Evil()}}, p, pickle_module=pickle)
    with pytest.raises(ValueError, match="could not read checkpoint"):
        load_checkpoint(models.create("resnet20"), p)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("obj", [[1, 2, 3], {"state_dict": {"a": 1}}, {}, torch.zeros(3)])
def test_not_a_state_dict(tmp_path, obj):
    p = tmp_path / "odd.pt"
    torch.save(obj, p)
    with pytest.raises(ValueError, match="could not read checkpoint"):
        load_checkpoint(models.create("resnet20"), p)
