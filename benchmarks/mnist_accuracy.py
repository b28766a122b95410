"""Held-out accuracy of a class-conditional MNIST model on the fixed 1,000-digit test split, with the library's API.

    python benchmarks/mnist_accuracy.py --model builtin:mnist --timesteps 25:1000:50
    # two processes on two cores: --shard 0/2 and --shard 1/2, then add the "correct" counts

Prints one JSON object: accuracy, images, calls per second, and the misclassified test indices.
"""

from __future__ import annotations

import argparse
import json
import time

from diffusion_classifier import DiffusionClassifier
from diffusion_classifier.core.schedules import Full, parse_timesteps
from diffusion_classifier.data.mnist import test_images


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="builtin:mnist")
    p.add_argument("--timesteps", default="25:1000:50", help="start:stop:step or a comma list (a Full schedule)")
    p.add_argument("--shard", default="0/1", help="K/N: every N-th test image starting at K")
    p.add_argument("--batch-size", type=int, default=250)
    args = p.parse_args()
    k, n = map(int, args.shard.split("/"))
    schedule = Full(parse_timesteps(args.timesteps, 1000))
    clf = DiffusionClassifier.from_pretrained(args.model, device="cpu")
    images, labels = test_images()
    began, correct, calls, wrong = time.perf_counter(), 0, 0, []
    for i in range(k, len(images), n):
        result = clf(images[i], schedule=schedule, batch_size=args.batch_size)
        calls += result.calls
        if result.prediction == labels[i]:
            correct += 1
        else:
            wrong.append([i, labels[i], result.prediction])
    seconds = time.perf_counter() - began
    count = len(range(k, len(images), n))
    summary = {"model": args.model, "timesteps": args.timesteps, "shard": args.shard, "images": count}
    summary.update(correct=correct, accuracy=correct / count, seconds=round(seconds, 1))
    summary.update(calls_per_s=round(calls / seconds), wrong=wrong)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
