"""Build a tiny ImageNet-style image folder, OUT/train/<class>/*.png and OUT/val/<class>/*.png, from
a folder of photos, for trying `tscnet study` or `tscnet train --data imagefolder` on images of your own.

The classes need no labels: every photo appears once in each of three renderings, `colour` (as it
is), `grey` (grey scale) and `negative` (inverted colours), a difference every crop shows, so that a
small network learns it in a few epochs. The last --val photos go to val/.

    python examples/make_image_folder.py --out /tmp/photos                # foolbox's 20 ImageNet photos
    python examples/make_image_folder.py --images DIR --out /tmp/photos   # your own .jpg / .png photos
"""
import argparse
import importlib.util
from pathlib import Path

from PIL import Image, ImageOps

CLASSES = {"colour": lambda photo: photo, "grey": lambda photo: ImageOps.grayscale(photo).convert("RGB"),
           "negative": ImageOps.invert}

parser = argparse.ArgumentParser(description="a tiny train/ val/ image folder of three classes made from photos")
parser.add_argument("--out", required=True, help="folder to create (must not hold anything yet)")
parser.add_argument("--images", help="folder of photos (default: foolbox's ImageNet samples, "
                    "pip install --no-deps foolbox==3.3.4)")
parser.add_argument("--size", type=int, default=64, help="side of the saved square images (default 64)")
parser.add_argument("--val", type=int, default=4, help="photos held out for val/ (default 4)")
args = parser.parse_args()

pattern = "*"
if args.images is None:  # foolbox ships 20 ImageNet photos (and digits); it is located, not imported
    found = importlib.util.find_spec("foolbox")
    if found is None:
        parser.error("pass --images DIR (or pip install --no-deps foolbox==3.3.4 for its sample photos)")
    args.images, pattern = Path(list(found.submodule_search_locations)[0]) / "data", "imagenet_*"
photos = sorted(p for p in Path(args.images).glob(pattern) if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
if not 0 < args.val < len(photos):
    parser.error(f"{args.images} holds {len(photos)} photos: --val must be between 1 and {len(photos) - 1}")
out = Path(args.out)
if out.exists() and any(out.iterdir()):
    parser.error(f"{out} is not empty")

for index, path in enumerate(photos):
    split = "val" if index >= len(photos) - args.val else "train"
    photo = Image.open(path).convert("RGB").resize((args.size, args.size), Image.BILINEAR)
    for label, render in CLASSES.items():
        folder = out / split / label
        folder.mkdir(parents=True, exist_ok=True)
        render(photo).save(folder / f"{path.stem}.png")
print(f"{out}: {len(photos) - args.val} photos x {len(CLASSES)} classes in train/, "
      f"{args.val} x {len(CLASSES)} in val/ ({', '.join(CLASSES)})")
