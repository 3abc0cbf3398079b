"""Step sizes in the backbone of a torchvision Faster R-CNN: attach a policy to the ResNet-50 inside
the FPN, train the detector as usual, fold the steps away, and load the result into a fresh stock
detector.

The task is synthetic so that it needs no annotations: two coloured boxes (class 1 red, class 2
blue) drawn at random places on real photos.

    python examples/detector_backbone.py                  # foolbox's ImageNet sample photos, if installed
    python examples/detector_backbone.py --images DIR     # your own .jpg / .png photos
"""
import argparse
import importlib.util
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.models.detection import fasterrcnn_resnet50_fpn

import tscnet

parser = argparse.ArgumentParser(description="TSC in the backbone of a torchvision Faster R-CNN")
parser.add_argument("--images", help="folder of photos (default: foolbox's ImageNet samples, "
                    "pip install --no-deps foolbox==3.3.4)")
parser.add_argument("--size", type=int, default=128, help="image side in pixels (default 128: seconds per step)")
parser.add_argument("--steps", type=int, default=20, help="training steps, 2 images each (default 20)")
parser.add_argument("--policy", default="tsc", help="step policy (default tsc; see tscnet list policies)")
args = parser.parse_args()
torch.manual_seed(0)

pattern = "*"
if args.images is None:  # foolbox ships 20 ImageNet photos (and digits); it is located, not imported
    found = importlib.util.find_spec("foolbox")
    if found is None:
        parser.error("pass --images DIR (or pip install --no-deps foolbox==3.3.4 for its sample photos)")
    args.images, pattern = Path(list(found.submodule_search_locations)[0]) / "data", "imagenet_*"
files = sorted(p for p in Path(args.images).glob(pattern) if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
if len(files) < 4:
    parser.error(f"{args.images} holds {len(files)} photos; at least 4 are needed")


def photo_with_boxes(path: Path, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
    """A photo (3×size×size in [0, 1]) with a red box in its left half and a blue one in its right."""
    image = torch.from_numpy(np.array(Image.open(path).convert("RGB").resize((args.size, args.size))))
    image = image.permute(2, 0, 1).float() / 255
    boxes = []
    for label, colour in ((1, (1.0, 0.0, 0.0)), (2, (0.0, 0.0, 1.0))):
        w, h = (int(v) for v in torch.randint(args.size // 5, args.size // 2 - 4, (2,), generator=generator))
        x0 = int(torch.randint(0, args.size // 2 - w, (1,), generator=generator)) + (label - 1) * args.size // 2
        y0 = int(torch.randint(0, args.size - h, (1,), generator=generator))
        image[:, y0:y0 + h, x0:x0 + w] = torch.tensor(colour).view(3, 1, 1)
        boxes.append([x0, y0, x0 + w, y0 + h])
    return image, {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor([1, 2])}


generator = torch.Generator().manual_seed(0)
images, targets = zip(*(photo_with_boxes(path, generator) for path in files))
train, test = list(range(len(files) - 2)), [len(files) - 2, len(files) - 1]  # the last two photos: held out

# A detector from scratch (weights="DEFAULT" would fetch COCO weights: attach after loading them).
# box_score_thresh=0 keeps the untrained detector's boxes, so there is something to compare below.
options = dict(weights=None, weights_backbone=None, num_classes=3, min_size=args.size, max_size=args.size,
               box_score_thresh=0.0, box_detections_per_img=10)
detector = fasterrcnn_resnet50_fpn(**options)
# detector.backbone.body is the ResNet-50 (torchvision's IntermediateLayerGetter): every bottleneck
# block becomes y + Δt ⊙ F(y). The FPN, the RPN and the heads are untouched.
tscnet.attach_steps(detector.backbone.body, args.policy)
print(f"steps in {tscnet.stepping.policy_name(detector)}; T = {tscnet.evolution_time(detector):.3f} "
      f"over {len(tscnet.step_sizes(detector))} blocks")

# The optimizer after attaching: it must hold the policy's parameters.
optimizer = torch.optim.SGD(tscnet.param_groups(detector, weight_decay=1e-4), lr=0.01, momentum=0.9)
detector.train()
for step in range(args.steps):
    batch = [train[(2 * step + i) % len(train)] for i in range(2)]
    losses = detector([images[i] for i in batch], [targets[i] for i in batch])  # a dict of losses
    loss = sum(losses.values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    print(f"step {step + 1:3d}  loss {loss.item():.3f}  T = {tscnet.evolution_time(detector):.3f}")

# Fold the steps into the backbone's BNs: the result is a plain Faster R-CNN, which a fresh one
# loads with strict=True. In eval mode both give the same detections.
stock = fasterrcnn_resnet50_fpn(**options)
stock.load_state_dict(tscnet.fold_steps(detector).state_dict(), strict=True)
detector.eval(), stock.eval()
with torch.no_grad():
    held_out = [images[i] for i in test]
    folded, stepped = stock(held_out), detector(held_out)
for got, want in zip(folded, stepped):
    assert torch.equal(got["labels"], want["labels"])
    torch.testing.assert_close(got["boxes"], want["boxes"], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(got["scores"], want["scores"], rtol=1e-3, atol=1e-6)
print(f"folded: a stock fasterrcnn_resnet50_fpn loads it (strict=True) and gives the same "
      f"{' and '.join(str(len(d['boxes'])) for d in stepped)} detections on the held-out photos")
