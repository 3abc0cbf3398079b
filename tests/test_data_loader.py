"""The tensor-resident loader and the dataset registry, on real Fashion-MNIST."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tscnet.data import (
    DataError, DataNotFoundError, TensorLoader, UnknownDatasetError, build_dataset, create_loaders,
    create_test_loader, crop_flip,
    list_datasets,
)

FMNIST = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.skipif(not FMNIST.is_dir(), reason="apt-get install dataset-fashion-mnist")


@pytest.fixture(scope="module")
def fmnist_test():
    return build_dataset("fashion-mnist", split="test")


def _loader(ds, n=1000, **kw) -> TensorLoader:
    # Labels replaced by sample ids, so batches tell which samples they hold.
    kw = {"pad": 2, "flip": True, "seed": 7, **kw}
    return TensorLoader(ds.images[:n], torch.arange(n), kw.pop("batch_size", 128), (0.286,), (0.353,), **kw)


def _epoch(loader, epoch=None):
    if epoch is not None:
        loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_same_seed_epoch_is_deterministic_and_epochs_differ(fmnist_test):
    a, b = _loader(fmnist_test, batch_size=250), _loader(fmnist_test, batch_size=250)
    e3a = _epoch(a, 3)
    for _ in range(4):  # b walks epochs 0..3 by itself: resuming at 3 must give the same batches
        e3b = _epoch(b)
    assert b.epoch == 3
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(e3a, e3b))
    e4 = _epoch(a)
    assert not torch.equal(e3a[0][1], e4[0][1])  # another permutation
    assert sorted(torch.cat([y for _, y in e4]).tolist()) == list(range(1000))
    other_seed = _epoch(_loader(fmnist_test, batch_size=250, seed=8), 3)
    assert not torch.equal(e3a[0][1], other_seed[0][1])


def test_augmentation_is_crop_and_flip_of_the_sample(fmnist_test):
    loader = _loader(fmnist_test, batch_size=64)
    x, ids = next(iter(loader))
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32
    index, offsets, flips = loader.epoch_plan(0)
    assert torch.equal(index[:64], ids)
    pixels = torch.round((x * 0.353 + 0.286) * 255).to(torch.uint8)
    for k in range(64):  # the per-sample reference: pad, crop, flip
        ref = F.pad(fmnist_test.images[ids[k]], (2, 2, 2, 2))[:, offsets[k, 0]:offsets[k, 0] + 28, offsets[k, 1]:offsets[k, 1] + 28]
        assert torch.equal(pixels[k], ref.flip(-1) if flips[k] else ref)
    assert 0 < int(flips.sum()) < len(flips) and len(set(map(tuple, offsets.tolist()))) > 10


def test_crop_flip_rgb_matches_reference():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 3, 32, 32), generator=g, dtype=torch.uint8)
    index, offsets, flips = torch.tensor([5, 0, 39, 5]), torch.tensor([[0, 8], [4, 4], [8, 0], [3, 7]]), torch.tensor([True, False, False, True])
    out = crop_flip(images, index, offsets, flips, pad=4)
    ref = [F.pad(images[i], (4,) * 4)[:, o[0]:o[0] + 32, o[1]:o[1] + 32] for i, o in zip(index, offsets)]
    assert torch.equal(out, torch.stack([r.flip(-1) if f else r for r, f in zip(ref, flips)]))


def test_no_augmentation_normalises_exactly(fmnist_test):
    x, ids = next(iter(_loader(fmnist_test, pad=0, flip=False, shuffle=False)))
    assert torch.equal(ids, torch.arange(128))
    expected = (fmnist_test.images[:128].float() / 255 - 0.286) / 0.353
    torch.testing.assert_close(x, expected)


def test_drop_last_and_len(fmnist_test):
    keep, drop = _loader(fmnist_test), _loader(fmnist_test, drop_last=True)
    assert (len(keep), len(drop)) == (8, 7)
    assert [len(y) for _, y in keep][-1] == 1000 - 7 * 128
    assert [len(y) for _, y in drop] == [128] * 7


def test_two_ranks_partition_the_epoch(fmnist_test):
    ranks = [_loader(fmnist_test, n=1001, rank=r, world_size=2, batch_size=100) for r in range(2)]
    ids = [torch.cat([y for _, y in _epoch(loader, 5)]) for loader in ranks]
    assert len(ranks[0]) == len(ranks[1]) == 5 and len(ids[0]) == len(ids[1]) == 500
    assert not set(ids[0].tolist()) & set(ids[1].tolist())
    full = _loader(fmnist_test, n=1001).epoch_plan(5)[0]
    assert torch.equal(torch.stack(ids, 1).flatten(), full[:1000])  # interleaved slices of one permutation
    # Evaluation shards keep every sample exactly once.
    evals = [_loader(fmnist_test, n=1001, rank=r, world_size=2, shuffle=False, equal_shards=False) for r in range(2)]
    assert sorted(torch.cat([y for e in evals for _, y in e]).tolist()) == list(range(1001))


def test_create_loaders_fashion_mnist_subset():
    train, test, info = create_loaders("fashion-mnist", batch_size=128, train_subset=1000, seed=1)
    assert info["num_classes"] == info.num_classes == 10
    assert (info.in_chans, info.image_size, info.num_train, info.num_test) == (1, 28, 1000, 10000)
    labels = torch.cat([y for _, y in train])
    assert len(labels) == 1000 and len(labels.unique()) == 10  # class-mixed
    again, _, _ = create_loaders("fashion-mnist", batch_size=128, train_subset=1000, seed=2)
    assert sorted(torch.cat([y for _, y in again]).tolist()) == sorted(labels.tolist())  # same subset
    assert len(test) == 79 and test.pad == 0 and not test.flip and not test.shuffle
    test.batch_size = 2500  # fewer, larger batches: same check, faster
    assert torch.equal(torch.cat([y for _, y in test]), build_dataset("fashion-mnist", split="test").labels)


def test_create_test_loader_is_create_loaders_test_loader():
    alone, info = create_test_loader("fashion-mnist", batch_size=300, test_subset=900)
    _, test, full = create_loaders("fashion-mnist", batch_size=64, eval_batch_size=300, test_subset=900, seed=5)
    assert (info.num_test, info.num_classes, info.in_chans) == (900, 10, 1) == (full.num_test, full.num_classes, 1)
    pairs = list(zip(alone, test))
    assert len(pairs) == 3 and all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in pairs)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as e:
        build_dataset("fashion-mnst")
    assert isinstance(e.value, UnknownDatasetError) and "did you mean fashion-mnist" in str(e.value)
    assert all(name in str(e.value) for name in list_datasets())


@pytest.mark.parametrize("name,hint", [("fashion-mnist", "apt-get install dataset-fashion-mnist"), ("mnist", "--data-dir"),
                                       ("cifar10", "cifar-10-python.tar.gz"), ("imagefolder", "train/<class>")])
def test_missing_data_is_one_clear_line(tmp_path, name, hint):
    with pytest.raises(FileNotFoundError) as e:
        create_loaders(name, tmp_path / "nowhere" if name != "cifar10" else tmp_path)
    assert isinstance(e.value, DataNotFoundError) and isinstance(e.value, DataError)
    assert "\n" not in str(e.value) and hint in str(e.value)


def test_mnist_needs_a_data_dir():
    with pytest.raises(DataNotFoundError, match="no data directory for mnist"):
        build_dataset("mnist")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_resident(fmnist_test):
    loader = _loader(fmnist_test, device="cuda")
    x, y = next(iter(loader))
    assert x.is_cuda and y.is_cuda and loader.images.is_cuda
    cpu = next(iter(_loader(fmnist_test)))
    assert torch.equal(y.cpu(), cpu[1]) and torch.allclose(x.cpu(), cpu[0])


def test_torchvision_layout_and_image_size_check(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in FMNIST.iterdir():
        (raw / f.name).symlink_to(f)
    ds = build_dataset("fashion-mnist", tmp_path, "test")
    assert ds.images.shape == (10000, 1, 28, 28) and ds.labels[:3].tolist() == [9, 2, 1]
    with pytest.raises(DataError, match="image_size only applies to imagefolder"):
        build_dataset("fashion-mnist", tmp_path, "test", image_size=32)
