"""A student trained in full, shipped as a small delta: each weight's change from where it
started (its teacher's own kept layers). A matrix's change is stored in five levels, a
whole number in -2 … 2 times one fp16 scale per row (the row's root mean square times
CLIP / LEVELS: larger changes are clipped), three numbers to a byte; vectors (biases,
norms) in fp16; weights that did not move (the frozen vocabulary) are not stored. `rebuild`
adds the change back to the rebuilt start.

The student trains as it will be stored (`train_as_stored`): its forward pass sees each
matrix's start plus the change in its stored form, and the gradient passes straight
through the rounding (the straight-through estimator of quantization-aware training). So
the delta written after training rebuilds the student that was trained and validated
(its matrices to float rounding, its vectors to fp16), and early stopping chooses among students as
they will ship.

Why five levels: a 3-layer MiniLM student changes 5.7 M numbers; five levels three to a
byte store them in 1.9 MB, under the 2 MiB the repository allows a committed file (4 bits:
2.9 MB; 3 bits: 2.2 MB). On SST-2 they cost at most half a point beside the fp32 student,
within the noise of 872 sentences (models/README.md, "Compressed students").
Why not LoRA: on SST-2 a 3-layer student trained in full beat its best LoRA student
(rank 64, norms in full) by 1.5 points.

Hand-written (a few dozen lines): quantization libraries (torchao, bitsandbytes,
optimum-quanto) quantize weights for their own inference kernels; this is a storage format
for a change of weights, read back into plain PyTorch. The training side is torch's own
parametrizations.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.nn.utils import parametrize

DENSE_DELTA_FILE = "dense_delta.safetensors"
LEVELS = 2  # a number is -2 … 2 steps
BASE = 2 * LEVELS + 1  # stored as a digit 0 … 4 ...
PER_BYTE = 3  # ... three digits to a byte (5**3 = 125 values)
CLIP = 2.5  # a row's step: CLIP × its root mean square / LEVELS (models/README.md)
SCALE = ".scale"  # a matrix's per-row scales, beside its packed values
FORMAT = {"levels": str(LEVELS), "per_byte": str(PER_BYTE)}  # the file's metadata


def starting_point(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the weights before training: what the delta is measured from."""
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def quantized(change: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A matrix's change as stored: its levels (int8, -LEVELS … LEVELS) and per-row scales
    (fp16, so training and rebuilding multiply by the same number)."""
    rms = change.float().pow(2).mean(dim=1, keepdim=True).sqrt()
    scale = (CLIP * rms / LEVELS).half()
    step = scale.float().clamp(min=torch.finfo(torch.float32).tiny)  # a row that never moved
    levels = torch.round(change.float() / step).clamp(-LEVELS, LEVELS).to(torch.int8)
    return levels, scale


def dequantized(levels: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return levels.float() * scale.float()


class _TrainedAsStored(torch.nn.Module):
    """A matrix's value in the forward pass: its start plus its change as the delta stores
    it; the gradient reaches the latent weight unchanged (straight through the rounding)."""

    start: torch.Tensor

    def __init__(self, start: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("start", start.detach().clone(), persistent=False)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        change = weight - self.start
        stored = dequantized(*quantized(change.detach()))
        return weight + (stored - change).detach()


def train_as_stored(model: torch.nn.Module, start: dict[str, torch.Tensor]) -> None:
    """Every matrix that trains, seen through its stored form from now on (registered
    before the optimizer is made: the latent weights are what it updates)."""
    for name, parameter in list(model.named_parameters()):
        if parameter.requires_grad and parameter.dim() == 2:
            owner, _, attribute = name.rpartition(".")
            parametrize.register_parametrization(
                model.get_submodule(owner), attribute, _TrainedAsStored(start[name])
            )


def _latent_name(name: str) -> str:
    """A state-dict name of a matrix trained as stored (torch's `<module>.parametrizations.
    <attribute>.original`), as the plain model names it."""
    return name.replace(".parametrizations.", ".").removesuffix(".original")


def quantized_delta(
    model: torch.nn.Module, start: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The tensors of the delta file: each moved weight's change, matrices packed."""
    stored: dict[str, torch.Tensor] = {}
    for state_name, value in model.state_dict().items():
        name = _latent_name(state_name)
        change = value.detach().float() - start[name].float()
        if not torch.any(change):
            continue
        if change.dim() != 2:
            stored[name] = change.half()
            continue
        levels, stored[name + SCALE] = quantized(change)
        stored[name] = _packed(levels)
    return stored


def _packed(levels: torch.Tensor) -> torch.Tensor:
    """Each row's levels as base-BASE digits, PER_BYTE to a byte (a short last byte padded
    with zeros' digit)."""
    digits = (levels + LEVELS).to(torch.uint8)
    digits = torch.nn.functional.pad(digits, (0, -digits.shape[1] % PER_BYTE), value=LEVELS)
    digits = digits.reshape(digits.shape[0], -1, PER_BYTE)
    return sum(digits[:, :, i] * BASE**i for i in range(PER_BYTE)).to(torch.uint8)


def _unpacked(packed: torch.Tensor, columns: int) -> torch.Tensor:
    values = packed.long()
    digits = torch.stack([(values // BASE**i) % BASE for i in range(PER_BYTE)], dim=2)
    return digits.reshape(packed.shape[0], -1)[:, :columns] - LEVELS


def save_dense_delta(
    model: torch.nn.Module, start: dict[str, torch.Tensor], directory: Path
) -> Path:
    path = directory / DENSE_DELTA_FILE
    directory.mkdir(parents=True, exist_ok=True)
    save_file(quantized_delta(model, start), str(path), metadata=FORMAT)
    path.chmod(0o644)
    return path


def apply_dense_delta(model: torch.nn.Module, path: Path) -> torch.nn.Module:
    """`model` (the rebuilt start) with the stored changes added: the student as shipped."""
    with safe_open(str(path), "pt") as file:
        if file.metadata() != FORMAT:
            raise ValueError(f"{path}: written as {file.metadata()}, this version reads {FORMAT}")
        stored = {name: file.get_tensor(name) for name in file.keys()}  # noqa: SIM118
    weights = model.state_dict()
    unknown = sorted(
        name for name in stored if name.removesuffix(SCALE) not in weights or name == SCALE
    )
    if unknown:
        raise ValueError(f"{path}: weights the model does not have: {', '.join(unknown[:3])}")
    with torch.no_grad():
        for name, weight in weights.items():
            if name not in stored:
                continue
            change = stored[name]
            if weight.dim() == 2:
                change = dequantized(_unpacked(change, weight.shape[1]), stored[name + SCALE])
            if change.shape != weight.shape:
                raise ValueError(
                    f"{path}: {name} has shape {tuple(change.shape)}, not {tuple(weight.shape)}"
                )
            weight += change.to(weight.dtype)
    return model.eval()
