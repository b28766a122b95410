"""Options shared by several commands (model, schedule, noise, batching) and their translation to API calls."""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.timesteps import ORDERS
from ..data.prompts import Candidates, read_labels_file, read_prompts_csv
from ..errors import UserInputError
from ..names import DEFAULT_MAX_PIXELS, DIT_NETWORKS, SCHEDULES, WEIGHTINGS

if TYPE_CHECKING:  # torch-heavy: imported where a command runs, never while parsing
    from ..config import ClassifierConfig
    from ..core.estimator import Loss
    from ..core.schedules import Schedule
    from ..data.images import ImageOptions
    from ..pipeline import DiffusionClassifier

#: --seed takes 0..MAX_SEED: torch.Generator.manual_seed refuses negative seeds and seeds from 2**64 on;
#: a signed 64-bit range also survives every JSON reader and numpy's int64
MAX_SEED = 2**63 - 1
DEVICE_HELP = "cpu, cuda, cuda:N or mps (default: the best available)"
NOISE_FILE_HELP = "a [N, C, h, w] tensor of finite noise (.pt or .npy) instead of --seed"


def add_model_options(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", required=required, help="hub id, local folder, or builtin:NAME (e.g. builtin:mnist)")
    g.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None, help="weights dtype")
    g.add_argument("--device", type=device_arg, default=None, help=DEVICE_HELP)
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
    w = p.add_argument_group("own weights and model variants (docs/models.md)")
    w.add_argument("--unet", default=None, metavar="PATH", help="a fine-tuned UNet instead of the model's (SD, SDXL)")
    w.add_argument("--transformer", default=None, metavar="PATH", help="a fine-tuned transformer (SD3, PixArt, FLUX)")
    w.add_argument("--lora", default=None, metavar="PATH_OR_ID", help="LoRA weights fused into the model (needs peft)")
    w.add_argument("--lora-scale", type=float, default=None, metavar="S", help="the LoRA's scale (default 1.0)")
    w.add_argument("--no-t5", action="store_true", help="SD3: leave the T5 text encoder out (less memory)")
    w.add_argument("--flow-error", choices=["eps", "velocity"], default=None, help="SD3, FLUX: the error's space (eps)")


def model_kwargs(args: argparse.Namespace) -> dict:
    """The load options of add_model_options beyond model, dtype and device (None: not given)."""
    if args.lora_scale is not None and args.lora is None:
        raise UserInputError("--lora-scale needs --lora")
    return {
        "image_size": args.image_size,
        "unet": args.unet,
        "transformer": args.transformer,
        "lora": args.lora,
        "lora_scale": args.lora_scale,
        "no_t5": args.no_t5 or None,
        "flow_error": args.flow_error,
        "dit_network": args.dit_network,
    }


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
    from ..data.images import ImageOptions

    """The loader's options of add_image_options' flags (a bad --max-image-pixels is a UserInputError)."""
    return ImageOptions(max_pixels=args.max_image_pixels, exif_orientation=args.exif_orientation)


def load_classifier(args: argparse.Namespace, device: str | None = None) -> DiffusionClassifier:
    """The diffusion classifier of add_model_options' flags: the one place the CLI loads one (--fast included)."""
    from ..pipeline import DiffusionClassifier

    return DiffusionClassifier.from_pretrained(
        args.model, torch_dtype=args.dtype, device=device or args.device, fast=args.fast, **model_kwargs(args)
    )


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
    g.add_argument("--schedule", default=None, help=f"a named schedule: {', '.join(SCHEDULES)}")
    g.add_argument("--to-keep", type=int, nargs="+", default=None, help="candidates kept after each stage")
    g.add_argument("--n-samples", type=int, nargs="+", default=None, help="timesteps per stage")
    g.add_argument("--timesteps", default=None, help="evaluate all labels on these: '11,311,611' or '0:1000:50'")
    g.add_argument("--loss", choices=["l2", "l1", "huber"], default=None, help="per-trial loss (default: schedule's)")
    add_seed_option(g)
    g.add_argument("--noise-file", default=None, help=NOISE_FILE_HELP)
    add_batch_size_option(g)
    add_efficiency_options(p)


def add_efficiency_options(p: argparse.ArgumentParser) -> None:
    """Racing, timestep weighting, probabilities and CLIP shortlists (docs/efficiency.md)."""
    g = p.add_argument_group("fewer model calls (racing, weighting, shortlists) and probabilities")
    g.add_argument(
        "--alpha",
        type=float,
        default=None,
        help="racing: level of the paired t-test (default: the model's, else 0.002)",
    )
    g.add_argument(
        "--max-trials", type=int, default=None, help="racing: trials per label at most (default: the model's, else 500)"
    )
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


def schedule_from_args(args: argparse.Namespace, T: int | None = None) -> str | Schedule | None:
    """A schedule name, a Staged or Full object, or None for the default (racing flags: racing_from_args).

    T: the model's timesteps when known; None leaves the range check of --timesteps to ClassifierConfig.resolved.
    """
    from ..core.schedules import Full, Staged, parse_timesteps

    chosen = [x for x in (args.schedule, args.timesteps, args.to_keep or args.n_samples) if x is not None and x != []]
    if len(chosen) > 1:
        raise UserInputError("give only one of --schedule, --timesteps, --to-keep/--n-samples")
    racing_from_args(args)  # first: it rejects racing options mixed with another schedule
    if args.timesteps is not None:
        return Full(parse_timesteps(args.timesteps, T))
    if args.to_keep or args.n_samples:
        if not (args.to_keep and args.n_samples):
            raise UserInputError("--to-keep and --n-samples go together")
        return Staged(tuple(args.n_samples), tuple(args.to_keep))
    return args.schedule


def racing_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The racing fields the flags override ({} when none is given); config.resolve_schedule applies them
    to the racing schedule that runs, so the model's other racing defaults stay."""
    opts = {
        "alpha": getattr(args, "alpha", None),
        "cap": getattr(args, "max_trials", None),
        "order": getattr(args, "timestep_order", None),
        "antithetic": getattr(args, "antithetic", False) or None,
    }
    opts = {k: v for k, v in opts.items() if v is not None}
    if opts and (args.schedule not in (None, "racing") or args.timesteps is not None or args.to_keep or args.n_samples):
        raise UserInputError("--alpha, --max-trials, --timestep-order and --antithetic apply to --schedule racing only")
    return opts


def classifier_config_from_args(args: argparse.Namespace) -> ClassifierConfig:
    """The ClassifierConfig of add_schedule_options' flags (and the image options); every bad value fails
    here, before any model loads. Its schedule resolves against the model later (ClassifierConfig.resolved)."""
    from ..config import ClassifierConfig

    check_noise_file(args.noise_file)
    return ClassifierConfig(
        schedule=schedule_from_args(args),
        loss=args.loss,
        racing=racing_from_args(args),
        seed=args.seed,
        noise_file=args.noise_file,
        batch_size=args.batch_size,
        image_options=image_options_from_args(args),
        **efficiency_kwargs(args),
    )


def resolved_schedule(args: argparse.Namespace, clf: DiffusionClassifier) -> tuple[Schedule, Loss]:
    """The schedule and loss a command runs on this classifier's model: the flags', else its default."""
    config = classifier_config_from_args(args).resolved(clf.model)
    return config.schedule, config.loss


def efficiency_kwargs(args: argparse.Namespace) -> dict:
    """The weighting, temperature and shortlist settings of the efficiency options (ClassifierConfig fields)."""
    weighting, weights_file = getattr(args, "timestep_weighting", None), getattr(args, "weights", None)
    if weighting is not None and weights_file is not None:
        raise UserInputError("give only one of --timestep-weighting and --weights")
    if weights_file is not None and not Path(weights_file).is_file():
        raise UserInputError(f"weights file not found: {weights_file}")
    return {
        "weights": weights_file or weighting,
        "temperature": getattr(args, "temperature", None),
        "shortlist": getattr(args, "shortlist", None),
        "shortlist_k": getattr(args, "shortlist_k", 20),
    }


def device_arg(value: str) -> str:
    """--device: spelled as torch names a device this package runs on (whether this machine has it is checked
    when the model loads); a typo is an argument error before torch is imported."""
    if not re.fullmatch(r"cpu|mps|auto|cuda(:\d+)?", value):
        raise argparse.ArgumentTypeError(f"unknown device {value!r}; use cpu, cuda, cuda:N or mps")
    return value


def add_seed_option(g, default: int | None = 0, what: str = "seed of the trial noise") -> None:
    """--seed, the same for every command (seed_arg checks the range); default None reads as 0."""
    g.add_argument("--seed", type=seed_arg, default=default, help=f"{what}, 0..2**63-1 (default {default or 0})")


def seed_arg(value: str) -> int:
    """--seed: an integer in 0..MAX_SEED, the range every command accepts (argparse says so in one line)."""
    try:
        seed = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {value!r}") from None
    if not 0 <= seed <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"a seed lies in 0..2**63-1 ({MAX_SEED}), got {value}")
    return seed


def add_batch_size_option(g, default: int = 32) -> None:
    """--batch-size, the same for every command that calls the model on (candidate, trial) pairs."""
    g.add_argument(
        "--batch-size",
        type=batch_size_arg,
        default=default,
        help=f"(label, trial) pairs per model call, or auto: the fast path's own size, else 32 (default {default})",
    )


def batch_size_arg(value: str) -> int | None:
    """--batch-size: a positive number, or auto (None: the fast path's own size, which fills the card; else 32)."""
    if value == "auto":
        return None
    return positive_int(value)


def positive_int(value: str) -> int:
    """An argparse type: an integer of at least 1."""
    return int_in_range(value, 1, None, "a positive integer")


def non_negative_int(value: str) -> int:
    """An argparse type: an integer of at least 0."""
    return int_in_range(value, 0, None, "an integer of at least 0")


def int_in_range(value: str, low: int, high: int | None, what: str) -> int:
    """An integer in low..high (high None: no bound), else argparse's one-line error naming what was expected."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}") from None
    if n < low or (high is not None and n > high):
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    return n


def positive_float(value: str) -> float:
    """An argparse type: a finite number above 0 (NaN and infinities are refused)."""
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}") from None
    if not (math.isfinite(x) and x > 0):
        raise argparse.ArgumentTypeError(f"expected a finite positive number, got {value}")
    return x


def check_noise_file(path: str | None) -> None:
    """A missing, unreadable or non-finite --noise-file fails before any model loads."""
    if path is not None:
        from ..core.noise import load_noise_file

        load_noise_file(path)
