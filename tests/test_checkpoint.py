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


# ---------------------------------------------------------------- pruned networks

@pytest.mark.parametrize("name,kw,steps", [
    ("resnet20", {}, [("l1_filter", 0.5)]),
    ("vgg11_bn", {"width_mult": 0.25}, [("bn_channel", 0.4), ("global_magnitude", 0.5)]),
    ("mobilenetv2", {"width_mult": 0.25}, [("l1_filter", 0.3), ("bn_channel", 0.3)]),
])
def test_pruned_round_trip(name, kw, steps, tmp_path):
    """A structurally pruned (smaller) net saved with save_checkpoint loads again through
    create(name, weights=...): the dense architecture is rebuilt to the recorded structure."""
    from prunecal.prune import get_masks, prune, sparsity_report

    m = models.create(name, **kw)
    for method, s in steps:
        m = prune(m, method, s)
    p = save_checkpoint(m, tmp_path / "pruned.pt")
    raw = torch.load(p, map_location="cpu", weights_only=True)  # plain types only
    assert raw["prune_info"]["method"] == steps[-1][0]
    back = models.create(name, weights=p, **kw)
    assert_same_state(m, back)
    assert back.prune_info == raw["prune_info"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(back(x), m.eval()(x))
    assert sparsity_report(back).dense_macs == sparsity_report(m).dense_macs
    for n, mask in get_masks(m).items():
        assert torch.equal(get_masks(back)[n], mask), n
    # loading into a net that already has the structure works too (no second surgery)
    assert_same_state(m, load_checkpoint(back, p))


def test_pruned_checkpoint_for_other_architecture_is_a_clear_error(tmp_path):
    from prunecal.prune import prune, restore_structure

    p = save_checkpoint(prune(models.create("resnet20"), "l1_filter", 0.5), tmp_path / "r20.pt")
    with pytest.raises(ValueError, match="missing keys.*unexpected keys"):  # other keys
        models.create("vgg11_bn", weights=p)
    r32 = models.create("resnet32")
    before = {k: v.clone() for k, v in r32.state_dict().items()}
    with pytest.raises(ValueError, match="does not fit"):  # same group names, other depth
        load_checkpoint(r32, p)
    # the failed load left it untouched (not half restructured)
    assert all(torch.equal(v, before[k]) for k, v in r32.state_dict().items())
    with pytest.raises(ValueError, match="structurally pruned.*'layer1.0.conv1' had 16 channels, "
                                         "model has 8"):
        models.create("resnet20", weights=p, widths=(8, 16, 32))
    with pytest.raises(TypeError, match="prune_info"):
        restore_structure(models.create("resnet20"), "l1_filter")
    # a dense checkpoint with the same keys still names the shape mismatch
    with pytest.raises(ValueError, match="shape mismatches"):
        load_checkpoint(models.create("resnet20"), save_checkpoint(
            prune(models.create("resnet20"), "l1_filter", 0.5), tmp_path / "bare.pt",
            prune_info={"kind": "unstructured"}))
