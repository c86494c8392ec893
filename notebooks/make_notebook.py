"""Writes AlexNet_CIFAR10.ipynb from the cells below (run it after editing them)."""

from pathlib import Path

import nbformat as nbf

cells = [
    ("md", """# AlexNet on CIFAR-10

The original notebook's story, rebuilt on the `alexnet_cifar10` package: load CIFAR-10, train AlexNet
with Adam and cross-entropy for 20 epochs (the seed recipe), plot the curves, the confusion matrix and
sample predictions.

`QUICK = True` makes it a one-minute run (a 2,000-image subset, one epoch, a narrow model) to check
that everything works; `False` trains the real 20-epoch seed recipe (about 75 minutes on a 2-core CPU,
a few minutes on a GPU)."""),
    ("code", """import os

QUICK = os.environ.get("ALEXNET_CIFAR10_QUICK", "0") == "1"  # set True for a quick run
DATA = os.environ.get("ALEXNET_CIFAR10_DATA", "data")         # folder or archive; ./data is downloaded"""),
    ("code", """import matplotlib.pyplot as plt
import torch
from PIL import Image

from alexnet_cifar10 import CLASSES, Split, load_cifar10, load_model, make_config, predict, train
from alexnet_cifar10.evaluation import evaluate"""),
    ("md", """## The trained model, before any training

The package ships the `best` recipe's weights: `load_model("best")` needs no training and no network.
Here it classifies an image file of a ship (a validation image, saved as PNG) with its test-time
augmentation, as `alexnet-cifar10 predict --weights best ship.png` does."""),
    ("code", """data = load_cifar10(DATA)
best = load_model("best")
ship = int(torch.nonzero(data.val.labels == CLASSES.index("ship"))[0])
Image.fromarray(data.val.images[ship].permute(1, 2, 0).numpy()).save("ship.png")
for p in predict(best, ["ship.png"], top_k=3, tta=True, tta_shift=1):
    print(p.path, p.top)"""),
    ("md", """## The data

In the quick setting, a random 2,000 training and 500 validation images (every class in both)."""),
    ("code", """if QUICK:
    keep = torch.Generator().manual_seed(0)
    train_part = torch.randperm(len(data.train), generator=keep)[:2000]
    val_part = torch.randperm(len(data.val), generator=keep)[:500]
    data.train = Split(data.train.images[train_part], data.train.labels[train_part])
    data.val = Split(data.val.images[val_part], data.val.labels[val_part])
print(data.format, {name: None if s is None else len(s) for name, s in
                    [("train", data.train), ("val", data.val), ("test", data.test)]})"""),
    ("md", "## A look at the data"),
    ("code", """fig, axes = plt.subplots(2, 8, figsize=(12, 3.5))
for ax, i in zip(axes.flat, range(16), strict=True):
    ax.imshow(data.train.images[i].permute(1, 2, 0))
    ax.set_title(CLASSES[data.train.labels[i]], fontsize=8)
    ax.axis("off")
plt.show()"""),
    ("md", """## Train

The seed recipe: Adam, cross-entropy, 20 epochs, random crop (pad 4) and horizontal flip, inputs
normalised by the training mean and std (inside the model). Every setting is a keyword."""),
    ("code", """overrides = dict(epochs=1, model="alexnet_tiny", batch_size=64, progress=False) if QUICK else {}
config = make_config("seed", name="notebook-quick" if QUICK else "notebook", **overrides)
result = train(config, data=data)
print("run folder:", result.run_dir)"""),
    ("md", "## Curves"),
    ("code", """epochs = [h["epoch"] for h in result.history]
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
ax1.plot(epochs, [h["train_loss"] for h in result.history], label="train")
ax1.plot(epochs, [h["val_loss"] for h in result.history], label="val")
ax1.set(xlabel="epoch", ylabel="loss")
ax1.legend()
ax2.plot(epochs, [100 * h["train_acc"] for h in result.history], label="train")
ax2.plot(epochs, [100 * h["val_acc"] for h in result.history], label="val")
ax2.set(xlabel="epoch", ylabel="accuracy (%)")
ax2.legend()
plt.show()"""),
    ("md", "## Confusion matrix on the validation split"),
    ("code", """model = load_model(result.run_dir / "best.pt")
ev = evaluate(model, data.val.images, data.val.labels, split="val")
print(ev.table())
fig, ax = plt.subplots(figsize=(6, 5))
ax.imshow(ev.confusion, cmap="Blues")
ax.set_xticks(range(10), CLASSES, rotation=45, ha="right")
ax.set_yticks(range(10), CLASSES)
ax.set(xlabel="predicted", ylabel="true")
plt.show()"""),
    ("md", "## Sample predictions (mistakes in red)"),
    ("code", """x = data.val.images[:16].float() / 255
with torch.no_grad():
    pred = model(x).argmax(1)
fig, axes = plt.subplots(2, 8, figsize=(12, 3.8))
for ax, img, p, t in zip(axes.flat, data.val.images[:16], pred, data.val.labels[:16], strict=True):
    ax.imshow(img.permute(1, 2, 0))
    ax.axis("off")
    ax.set_title(f"{CLASSES[p]}", color="black" if p == t else "red", fontsize=8)
plt.show()"""),
    ("md", "## Predict on image files"),
    ("code", """Image.fromarray(data.val.images[0].permute(1, 2, 0).numpy()).save("example.png")
for p in predict(model, ["example.png"], top_k=3):
    print(p.path, p.top)"""),
]

nb = nbf.v4.new_notebook()
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
nb.cells = [nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src) for kind, src in cells]
for i, cell in enumerate(nb.cells):  # stable ids, so regenerating changes only what changed
    cell.id = f"cell-{i}"
nbf.write(nb, Path(__file__).with_name("AlexNet_CIFAR10.ipynb"))
