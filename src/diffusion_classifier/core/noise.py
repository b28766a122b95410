"""Trial noise eps: seeded (identical on every run and machine) or read from a file, indexed by trial."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import UserInputError

_BLOCK = 64  # noise is drawn in seeded blocks so any trial index can be reached without drawing all before it


class NoiseBank:
    """eps[i] for trial i of the evaluation order, shared by every candidate.

    Seeded noise is drawn on the CPU in float32 from a generator seeded per block of trials, so the
    values depend only on (seed, index, shape): never on the device, batch size or schedule.
    """

    def __init__(
        self, shape: tuple[int, ...], seed: int = 0, table: torch.Tensor | None = None, antithetic: bool = False
    ):
        self.shape = tuple(shape)
        self.seed = seed
        self.table = table
        self.antithetic = antithetic  # trial 2k uses eps_k and trial 2k+1 uses -eps_k (variance reduction)
        self._blocks: dict[int, torch.Tensor] = {}
        if table is not None and tuple(table.shape[1:]) != self.shape:
            raise UserInputError(
                f"noise file has trials of shape {tuple(table.shape[1:])}, the model needs {self.shape}"
            )

    @classmethod
    def from_file(cls, path: str | Path, shape: tuple[int, ...]) -> NoiseBank:
        return cls(shape, table=load_noise_file(path))

    def __len__(self) -> int:
        n = len(self.table) if self.table is not None else 2**31
        return 2 * n if self.antithetic else n

    def __getitem__(self, indices: list[int]) -> torch.Tensor:
        """Noise for the given trial indices, float32 on the CPU, shape (len(indices), *shape)."""
        if self.antithetic:
            sign = torch.tensor([1.0 - 2.0 * (i % 2) for i in indices]).view(-1, *([1] * len(self.shape)))
            return self._draw([i // 2 for i in indices]) * sign
        return self._draw(indices)

    def _draw(self, indices: list[int]) -> torch.Tensor:
        """eps_i for each index: a row of the table, or seeded."""
        if self.table is not None:
            if indices and max(indices) >= len(self.table):
                raise UserInputError(
                    f"noise file holds {len(self.table)} trials but the schedule needs trial {max(indices)}; "
                    "use a larger noise file or a shorter schedule"
                )
            return self.table[indices]
        return torch.stack([self._block(i // _BLOCK)[i % _BLOCK] for i in indices])

    def _block(self, b: int) -> torch.Tensor:
        if b not in self._blocks:
            # mod 2**64: manual_seed's range; the same seeds as before wherever those fitted in it
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + b) % 2**64)
            self._blocks[b] = torch.randn((_BLOCK, *self.shape), generator=gen)
        return self._blocks[b]


def load_noise_file(path: str | Path) -> torch.Tensor:
    """A [N, C, h, w] noise tensor from a .npy or a torch .pt file (tensors only: nothing is unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"noise file not found: {path}")
    try:
        if path.suffix == ".npy":
            table = torch.from_numpy(np.load(path, allow_pickle=False))
        else:
            with warnings.catch_warnings():  # torch's note on a pickle protocol is noise; a refusal raises below
                warnings.simplefilter("ignore")
                table = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any parse failure is the user's file, not our bug
        raise UserInputError(f"cannot read noise file {path}: {exc.__class__.__name__}") from None
    if not isinstance(table, torch.Tensor) or table.ndim < 2:
        raise UserInputError(f"noise file {path} must hold one tensor of shape [N, C, h, w]")
    if not table.dtype.is_floating_point:
        raise UserInputError(
            f"noise file {path} holds {str(table.dtype).removeprefix('torch.')} values; noise is float"
        )
    table = table.float().contiguous()
    if not torch.isfinite(table).all():  # NaN or inf noise would make every score NaN
        bad = int((~torch.isfinite(table)).sum())
        raise UserInputError(f"noise file {path} holds {bad} NaN or infinite values (in float32); use finite noise")
    return table
