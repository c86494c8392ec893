"""Redraw a returned run folder's curves, confusion matrix and report from its own files.

    python benchmarks/redraw.py RUN_DIR [--note TEXT]

The device tool returns a few files per call, so a GPU run may come back as config.json,
metrics.jsonl and final.json only. This rebuilds curves.png, confusion.png and report.html from
exactly those; samples.png needs the weights and is not redrawn.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from alexnet_cifar10 import reporting
from alexnet_cifar10.evaluation import EvalResult


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--note", default="figures and report redrawn from config.json, metrics.jsonl and "
                        "final.json by benchmarks/redraw.py (samples.png needs the weights)")
    args = parser.parse_args()
    run = args.run_dir
    config = json.loads((run / "config.json").read_text())
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    final = json.loads((run / "final.json").read_text())
    result = EvalResult(split=final["split"], loss=final["loss"], accuracy=final["accuracy"],
                        confusion=np.array(final["confusion"]), predictions=torch.empty(0, dtype=torch.int64))
    reporting.plot_curves(history, run / "curves.png")
    reporting.plot_confusion(result, run / "confusion.png")
    reporting.write_report(run, config, history, result, extra={
        "final accuracy": f"{100 * result.accuracy:.2f}% on the {result.split} split ({final['images']} images)",
        "training time": f"{sum(h['seconds'] for h in history):.0f} s over {len(history)} epochs",
        "note": args.note,
    })


if __name__ == "__main__":
    main()
