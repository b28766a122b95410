"""Options shared by several commands (model, schedule, noise, batching) and their translation to API calls."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..calibration import check_temperature
from ..data.prompts import Candidates, read_labels_file, read_prompts_csv
from ..errors import UserInputError
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
    w = p.add_argument_group("own weights and model variants (docs/models.md)")
    w.add_argument("--unet", default=None, metavar="PATH", help="a fine-tuned UNet instead of the model's (SD, SDXL)")
    w.add_argument("--transformer", default=None, metavar="PATH", help="a fine-tuned transformer instead (SD3)")
    w.add_argument("--lora", default=None, metavar="PATH_OR_ID", help="LoRA weights fused into the model (needs peft)")
    w.add_argument("--lora-scale", type=float, default=None, metavar="S", help="the LoRA's scale (default 1.0)")
    w.add_argument("--no-t5", action="store_true", help="SD3: leave the T5 text encoder out (less memory)")
    w.add_argument("--flow-error", choices=["eps", "velocity"], default=None, help="SD3: the error's space (eps)")


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
    }


def load_classifier(args: argparse.Namespace, device: str | None = None):
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
