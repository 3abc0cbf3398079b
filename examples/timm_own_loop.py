"""Train a timm ResNet-18 with the paper's step controller (TSC) in a plain PyTorch loop, then fold
the steps away and load the result into a stock timm model.

    python examples/timm_own_loop.py                      # Debian's Fashion-MNIST; a few minutes on a CPU
    python examples/timm_own_loop.py --data-dir ~/data    # the four IDX files there (or in ~/data/FashionMNIST/raw)
    python examples/timm_own_loop.py --data-dir ~/data --download   # without them: fetched there first
"""
import argparse

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import tscnet
from tscnet.data import create_loaders

parser = argparse.ArgumentParser(description="TSC on a timm ResNet-18 in your own training loop")
parser.add_argument("--data-dir", help="Fashion-MNIST IDX files (default: Debian's dataset-fashion-mnist)")
parser.add_argument("--download", action="store_true", help="fetch Fashion-MNIST into --data-dir if it is not there")
parser.add_argument("--train-subset", type=int, default=10000, help="train on N images (default 10000)")
parser.add_argument("--test-subset", type=int, help="evaluate on N test images (default: all 10000)")
parser.add_argument("--steps", type=int, default=300, help="optimizer steps (default 300)")
parser.add_argument("--batch-size", type=int, default=64)
parser.add_argument("--log-every", type=int, default=25, help="print loss, T and the mean Δt every N steps")
parser.add_argument("--out", default="resnet18-tsc.safetensors", help="where the folded weights go")
args = parser.parse_args()
torch.manual_seed(0)

# Fashion-MNIST: 28×28 gray images, 10 classes. The loaders hold the images as tensors and yield
# normalised, randomly cropped and flipped batches; each pass over train_loader is a new epoch.
train_loader, test_loader, info = create_loaders("fashion-mnist", args.data_dir, batch_size=args.batch_size,
                                                 train_subset=args.train_subset, test_subset=args.test_subset,
                                                 download=args.download)

# A stock timm model. zero_init_last=False: timm starts the last BN of every block at γ = 0, and a
# step multiplying a zero branch would get no gradient (dL/dΔt = 0) at the start.
model = timm.create_model("resnet18", num_classes=10, in_chans=1, zero_init_last=False)
# Every residual block becomes y + Δt ⊙ F(y), one Δt per channel, computed by the LSTM controller
# from the block's weights and the previous steps. It starts at Δt ≡ 1: the plain ResNet.
tscnet.attach_steps(model, "tsc")

# The optimizer comes AFTER attach_steps, or it never sees the controller's parameters (tscnet
# warns if they get gradients but never change). param_groups applies each policy's weight decay.
optimizer = torch.optim.SGD(tscnet.param_groups(model, weight_decay=5e-4), lr=0.05, momentum=0.9)
schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.05, total_steps=args.steps)

step = 0
model.train()
while step < args.steps:
    for x, y in train_loader:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        step += 1
        if step % args.log_every == 0 or step == args.steps:
            mean_dt = " ".join(f"{dt.mean():.3f}" for dt in tscnet.step_sizes(model))  # one per block
            print(f"step {step:4d}  loss {loss.item():.3f}  T = {tscnet.evolution_time(model):.3f}  mean Δt: {mean_dt}")
        if step == args.steps:
            break

model.eval()  # folding is exact in eval mode (BN uses its running statistics)
with torch.no_grad():
    correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in test_loader)
    x, _ = next(iter(test_loader))
    stepped = model(x)
print(f"test error {100 - 100 * correct / info.num_test:.2f} % on {info.num_test} images")

# Fold: every Δt is multiplied into the last BN of its block (γ·Δt, β·Δt) and the controller is
# dropped. The result is a plain timm ResNet-18: same keys, parameters and FLOPs.
save_file(tscnet.fold_steps(model).state_dict(), args.out)
stock = timm.create_model("resnet18", num_classes=10, in_chans=1)
stock.load_state_dict(load_file(args.out), strict=True)
with torch.no_grad():
    difference = (stock.eval()(x) - stepped).abs().max().item()
torch.testing.assert_close(stock(x), stepped, rtol=1e-4, atol=1e-4)
print(f"saved {args.out}: a stock timm resnet18 loads it (strict=True) and gives the stepped model's "
      f"outputs (max difference {difference:.1e})")
