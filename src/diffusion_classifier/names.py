"""Names the command line offers in --help and choices, importable without torch.

`--help` and argument errors must answer at once, before torch loads (about a second on a small machine),
so the names live here. Tuples are the registries' own (core/weighting.py and models/fast.py import theirs from here);
for registries that map a name to an object (schedules.SCHEDULES, models.random_weights.ARCHITECTURES),
tests/test_cli.py checks that these names are exactly the registry's keys.
"""

from __future__ import annotations

from .data.registry import published_schedule_names

#: schedules.SCHEDULES: the default, the published per-dataset ones (the dataset registry's), dit and racing
SCHEDULES: tuple[str, ...] = tuple(sorted(("default", "dit", "racing", *published_schedule_names())))

#: core/weighting.py: the named timestep weightings (a fitted weights JSON is the other kind)
WEIGHTINGS: tuple[str, ...] = ("uniform", "exp")

#: models/fast.py: torch.compile modes of the fast path
COMPILE_MODES: tuple[str, ...] = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

#: models.random_weights.ARCHITECTURES: published denoisers that `bench --random-weights` builds
ARCHITECTURES: tuple[str, ...] = ("sd2-base", "sd15", "dit-xl-2-256", "sdxl-base", "sd3-medium", "tiny")

#: models.class_conditional: which DiT network runs (the original facebookresearch/DiT, or diffusers' port)
DIT_NETWORKS: tuple[str, ...] = ("original", "diffusers")

#: data.images: the pixel cap of an image (PIL's own limit: twice its DecompressionBombWarning threshold)
DEFAULT_MAX_PIXELS = 2 * 89_478_485
