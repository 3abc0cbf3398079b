"""Steps in the backbone of a real torchvision detector and segmenter: train on real images, fold to stock.

The ImageNet sample images (foolbox) get a box around their centre, where the photographed object
is, labelled with the image's ImageNet class (+1: class 0 is the background), or a mask of that
box for the segmenter. Small inputs and few proposals keep a training step to seconds on a CPU.
"""
from __future__ import annotations

import copy

import pytest
import torch

import tscnet

from conftest import sample_images
from stepping_utils import rel_err

SIZE = 96
BOX = [SIZE / 8, SIZE / 8, SIZE * 7 / 8, SIZE * 7 / 8]  # the central three quarters of the image


def _images() -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = sample_images("imagenet", size=SIZE)
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0, torch.from_numpy(labels)


def _train(model: torch.nn.Module, batches) -> list[float]:
    """A few SGD steps; returns the losses. ``batches`` yields ``(inputs, targets)``; the model returns losses."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    policy = tscnet.get_policy(model)
    before = [p.detach().clone() for p in policy.parameters()]
    losses = []
    model.train()
    for inputs, targets in batches:
        loss = model(inputs, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        assert all(p.grad is not None for p in policy.parameters())  # (zero at first behind the zero-init output)
        optimizer.step()
        losses.append(float(loss))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert all(not torch.equal(a, b) for a, b in zip(before, policy.parameters())), "the controller did not train"
    return losses


class _DetectionLoss(torch.nn.Module):
    """``detector(images, targets)`` as one loss (torchvision returns a dict of losses)."""

    def __init__(self, detector: torch.nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images, targets):
        return sum(self.detector(list(images), targets).values())


@pytest.mark.slow
def test_faster_rcnn_with_steps_in_its_backbone_trains_and_folds_to_the_stock_detector(one_thread):
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    torch.manual_seed(0)
    x, labels = _images()
    options = dict(weights=None, weights_backbone=None, num_classes=1001, min_size=SIZE, max_size=SIZE,
                   rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=100, rpn_pre_nms_top_n_test=300,
                   rpn_post_nms_top_n_test=100, rpn_batch_size_per_image=64, box_batch_size_per_image=32,
                   box_score_thresh=0.0, box_detections_per_img=10)
    detector = fasterrcnn_resnet50_fpn(**options)
    stock = fasterrcnn_resnet50_fpn(**options)
    tscnet.attach_steps(detector.backbone.body, "tsc")  # an IntermediateLayerGetter: it calls every child
    assert tscnet.stepping.policy_name(detector) == "backbone.body.layer1.0.bn3.step_policy"
    targets = [{"boxes": torch.tensor([BOX]), "labels": label.view(1) + 1} for label in labels]
    _train(_DetectionLoss(detector), [(x[i : i + 2], targets[i : i + 2]) for i in (0, 2, 4)])
    steps = torch.cat(tscnet.step_sizes(detector))
    assert (steps - 1).abs().max() > 1e-3  # the steps moved

    stock.load_state_dict(tscnet.fold_steps(detector).state_dict(), strict=True)
    detector.eval(), stock.eval()
    with torch.no_grad():
        images = list(x[16:20])
        for got, want in zip(stock(images), detector(images)):
            assert len(got["boxes"]) == len(want["boxes"]) > 0
            assert torch.equal(got["labels"], want["labels"])
            torch.testing.assert_close(got["boxes"], want["boxes"], rtol=1e-4, atol=1e-3)
            torch.testing.assert_close(got["scores"], want["scores"], rtol=1e-3, atol=1e-9)
        features = stock.backbone(x[16:20]), detector.backbone(x[16:20])
        for key in features[1]:
            assert rel_err(features[0][key], features[1][key]) < 1e-5


class _SegmentationLoss(torch.nn.Module):
    def __init__(self, segmenter: torch.nn.Module) -> None:
        super().__init__()
        self.segmenter = segmenter

    def forward(self, images, masks):
        return torch.nn.functional.cross_entropy(self.segmenter(images)["out"], masks)


@pytest.mark.slow
def test_deeplabv3_with_steps_in_its_backbone_trains_and_folds_to_the_stock_segmenter(one_thread):
    from torchvision.models.segmentation import deeplabv3_resnet50

    torch.manual_seed(0)
    x, _ = _images()
    masks = torch.zeros(len(x), SIZE, SIZE, dtype=torch.long)  # foreground: the central box
    lo, hi = int(BOX[0]), int(BOX[2])
    masks[:, lo:hi, lo:hi] = 1
    segmenter = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=2)
    stock = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=2)
    tscnet.attach_steps(segmenter.backbone, "tsc")  # an IntermediateLayerGetter around a dilated ResNet-50
    _train(_SegmentationLoss(segmenter), [(x[i : i + 2], masks[i : i + 2]) for i in (0, 2, 4)])

    stock.load_state_dict(tscnet.fold_steps(segmenter).state_dict(), strict=True)
    with torch.no_grad():
        got, want = stock.eval()(x[16:20])["out"], segmenter.eval()(x[16:20])["out"]
    assert rel_err(got, want) < 1e-5
    assert torch.equal(got.argmax(1), want.argmax(1))
