"""Options shared by several commands (model, schedule, noise, batching) and their translation to API calls."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

from ..calibration import check_temperature
from ..data.images import DEFAULT_MAX_PIXELS, ImageOptions
from ..data.prompts import Candidates, read_labels_file, read_prompts_csv
from ..errors import UserInputError
from ..models.class_conditional import DIT_NETWORKS
from ..schedules import Full, Racing, Schedule, Staged, parse_timesteps, schedule_names
from ..timesteps import ORDERS
from ..weighting import WEIGHTINGS


def add_model_options(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", required=required, help="hub id, local folder, or builtin:NAME (e.g. builtin:mnist)")
    g.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None, help="weights dtype")
    g.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best available)")
    g.add_argument("--image-size", type=int, default=None, help="input size in pixels (default: the model's)")
    g.add_argument(
        "--fast",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the fast path: fp16, torch.compile, static shapes (default: on with CUDA, off on the CPU)",
    )
    g.add_argument(
        "--dit-network",
        choices=DIT_NETWORKS,
        default=None,
        help="DiT models: the original DiT network the published numbers come from (default), or diffusers' port",
    )


def add_image_options(p: argparse.ArgumentParser) -> None:
    """How image files are opened (data/images.py): every command that reads images takes these."""
    g = p.add_argument_group("images")
    g.add_argument(
        "--max-image-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        metavar="N",
        help=f"refuse images with more pixels, a decompression-bomb guard (default {DEFAULT_MAX_PIXELS:,})",
    )
    g.add_argument(
        "--exif-orientation",
        action="store_true",
        help="turn images by their EXIF Orientation tag (default: ignored, as the published code does)",
    )


def image_options_from_args(args: argparse.Namespace) -> ImageOptions:
    """The loader's options of add_image_options' flags (a bad --max-image-pixels is a UserInputError)."""
    return ImageOptions(max_pixels=args.max_image_pixels, exif_orientation=args.exif_orientation)


def load_each(items: Sequence[Hashable], load: Callable[[Any], Any]) -> dict[Any, Any]:
    """{item: image} of the items whose image loads; each one that does not is one line on stderr and is left
    out (the command goes on with the rest and exits 1); when none loads, a UserInputError (exit 2)."""
    images = {}
    for item in items:
        try:
            images[item] = load(item)
        except UserInputError as exc:
            print(f"diffusion-classifier: error: {exc}", file=sys.stderr)
    if not images:
        raise UserInputError(f"none of the {len(items)} images could be read")
    return images


def load_classifier(args: argparse.Namespace, device: str | None = None):
    """The diffusion classifier of add_model_options' flags: the one place the CLI loads one (--fast included)."""
    from ..pipeline import DiffusionClassifier

    clf = DiffusionClassifier.from_pretrained(
        args.model,
        torch_dtype=args.dtype,
        device=device or args.device,
        image_size=args.image_size,
        fast=args.fast,
        **({"dit_network": args.dit_network} if args.dit_network else {}),  # other families take no such option
    )
    if args.dit_network and getattr(clf.model, "network", None) is None:
        raise UserInputError(f"--dit-network applies to DiT models only; {args.model} is not one: leave it out")
    return clf


def add_label_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("labels")
    g.add_argument("--labels", nargs="+", default=None, help="candidate labels")
    g.add_argument("--labels-file", default=None, help="a file with one label per line")
    g.add_argument("--prompts-file", default=None, help="a CSV with columns prompt,classname[,classidx]")
    g.add_argument(
        "--template", default=None, help='prompt template with {} for the label (default "a photo of a {}.")'
    )


def add_schedule_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("schedule")
    g.add_argument("--schedule", default=None, help=f"a named schedule: {', '.join(schedule_names())}")
    g.add_argument("--to-keep", type=int, nargs="+", default=None, help="candidates kept after each stage")
    g.add_argument("--n-samples", type=int, nargs="+", default=None, help="timesteps per stage")
    g.add_argument("--timesteps", default=None, help="evaluate all labels on these: '11,311,611' or '0:1000:50'")
    g.add_argument("--loss", choices=["l2", "l1", "huber"], default=None, help="per-trial loss (default: schedule's)")
    g.add_argument("--seed", type=int, default=0, help="seed of the trial noise (default 0)")
    g.add_argument("--noise-file", default=None, help="a [N, C, h, w] noise tensor (.pt or .npy) instead of --seed")
    g.add_argument("--batch-size", type=batch_size_arg, default=32, help="(label, trial) pairs per model call, or auto")
    add_efficiency_options(p)


def add_efficiency_options(p: argparse.ArgumentParser) -> None:
    """Racing, timestep weighting, probabilities and CLIP shortlists (docs/efficiency.md)."""
    g = p.add_argument_group("fewer model calls (racing, weighting, shortlists) and probabilities")
    g.add_argument("--alpha", type=float, default=None, help="racing: level of the paired t-test (default 0.002)")
    g.add_argument("--max-trials", type=int, default=None, help="racing: trials per label at most (default 500)")
    g.add_argument("--timestep-order", choices=list(ORDERS), default=None, help="racing: order of the timesteps")
    g.add_argument("--antithetic", action="store_true", help="racing: trials in pairs with noise eps and -eps")
    g.add_argument(
        "--timestep-weighting", choices=list(WEIGHTINGS), default=None, help="weights of the mean error over t"
    )
    g.add_argument("--weights", default=None, metavar="FILE", help="timestep weights JSON (fitted on labelled data)")
    g.add_argument("--temperature", type=float, default=None, help="divides the probabilities' ELBO-scaled logits")
    g.add_argument("--shortlist", default=None, metavar="clip:MODEL", help="rank labels with CLIP first")
    g.add_argument("--shortlist-k", type=int, default=20, help="labels the shortlist keeps (default 20)")


def labels_from_args(args: argparse.Namespace) -> tuple[list[str] | None, Candidates | None]:
    """(labels, prompts) from --labels / --labels-file / --prompts-file; at most one may be given."""
    given = [x for x in (args.labels, args.labels_file, args.prompts_file) if x is not None]
    if len(given) > 1:
        raise UserInputError("give only one of --labels, --labels-file, --prompts-file")
    if args.prompts_file:
        return None, read_prompts_csv(args.prompts_file)
    if args.labels_file:
        return read_labels_file(args.labels_file), None
    return args.labels, None


def schedule_from_args(args: argparse.Namespace, T: int = 1000) -> str | Schedule | None:
    """A schedule name, a Staged or Full object, or None for the model's default."""
    chosen = [x for x in (args.schedule, args.timesteps, args.to_keep or args.n_samples) if x is not None and x != []]
    if len(chosen) > 1:
        raise UserInputError("give only one of --schedule, --timesteps, --to-keep/--n-samples")
    racing = racing_from_args(args)  # first: it rejects racing options mixed with another schedule
    if racing is not None:
        return racing
    if args.timesteps is not None:
        return Full(parse_timesteps(args.timesteps, T))
    if args.to_keep or args.n_samples:
        if not (args.to_keep and args.n_samples):
            raise UserInputError("--to-keep and --n-samples go together")
        return Staged(tuple(args.n_samples), tuple(args.to_keep))
    return args.schedule


def racing_from_args(args: argparse.Namespace) -> Racing | None:
    """A Racing schedule when any racing option is given (with --schedule racing or no schedule), else None."""
    opts = {
        "alpha": getattr(args, "alpha", None),
        "cap": getattr(args, "max_trials", None),
        "order": getattr(args, "timestep_order", None),
        "antithetic": getattr(args, "antithetic", False) or None,
    }
    opts = {k: v for k, v in opts.items() if v is not None}
    if not opts:
        return None
    if args.schedule not in (None, "racing") or args.timesteps is not None or args.to_keep or args.n_samples:
        raise UserInputError("--alpha, --max-trials, --timestep-order and --antithetic apply to --schedule racing only")
    return Racing(**opts)


def efficiency_kwargs(args: argparse.Namespace) -> dict:
    """Keyword arguments of DiffusionClassifier.__call__ from the efficiency options."""
    weighting, weights_file = getattr(args, "timestep_weighting", None), getattr(args, "weights", None)
    if weighting is not None and weights_file is not None:
        raise UserInputError("give only one of --timestep-weighting and --weights")
    if weights_file is not None and not Path(weights_file).is_file():
        raise UserInputError(f"weights file not found: {weights_file}")
    if getattr(args, "temperature", None) is not None:
        check_temperature(args.temperature)
    return {
        "weights": weights_file or weighting,
        "temperature": getattr(args, "temperature", None),
        "shortlist": getattr(args, "shortlist", None),
        "shortlist_k": getattr(args, "shortlist_k", 20),
    }


def batch_size_arg(value: str) -> int | None:
    """--batch-size: a number, or auto (None: the fast path's own size, which fills the card; else 32)."""
    if value == "auto":
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or auto, got {value!r}") from None


def check_batch_size(n: int | None) -> int | None:
    if n is not None and n < 1:
        raise UserInputError(f"--batch-size must be at least 1, got {n}")
    return n
