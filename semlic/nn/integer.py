"""Integer networks: a chain of convolutions computed in exact integer arithmetic.

Balle, Johnston, Minnen, "Integer networks for data compression with latent-variable models",
ICLR 2019: whatever a decoder computes to choose a probability model must come out the same on
every machine, or the range decoder desynchronises and the image decodes to garbage. A float
network does not: another CPU's kernels, another thread count or a GPU sum in another order and
change the last bits. An integer network does: its weights, biases and activations are integers
and every operation is exact.

:func:`integer_chain` turns a trained ``nn.Sequential`` of ``Conv2d`` / ``ConvTranspose2d`` layers,
each optionally followed by ``ReLU``, into an :class:`IntegerChain` by post-training quantisation
computed from the weights alone (no calibration data, so the same on every machine):

* weights: per output channel, ``W = round(w / s_w)`` with ``s_w = max|w| / W_MAX`` (12-bit);
* biases: ``B = round(b / (s_in * s_w))``, at the accumulator's scale;
* activations: per tensor, 18-bit integers ``A`` with a scale ``s_a`` set from an interval bound
  of the layer's output (the input's bound times the sum of |W| of each output channel, plus
  |B|), so that no value can overflow whatever the input within its bound;
* between layers the accumulator is rescaled by an integer multiplier and a rounding shift,
  ``A' = (ACC * M + 2^(S-1)) >> S``, with ``M = round(s_in s_w / s_out * 2^S)``;
* the last layer's accumulator is returned as is, with its unit per channel, for integer
  comparisons against thresholds (:meth:`IntegerChain.thresholds`).

The convolutions run in float64 on integer-valued tensors on the CPU with oneDNN off (PyTorch's
own im2col/col2im and a double-precision GEMM). Every product and partial sum is an integer below
2^53 (the bounds above guarantee it), so float64 represents each exactly and the result is the
same integer whatever the summation order or the instruction set; a result that is not an
integer raises :class:`~semlic.errors.IntegerNetworkError` instead of returning another model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import IntegerNetworkError

W_MAX = 2 ** 11 - 1          # |W| (12-bit signed weights)
A_MAX = 2 ** 18 - 1          # |A| (18-bit activations)
SHIFT = 40                   # the rescaling multiplier's fractional bits
EXACT = 2 ** 53              # every float64 integer below this is exact


@dataclass
class IntegerLayer:
    kind: str                    # "conv" | "deconv"
    weight: torch.Tensor         # float64, integer-valued (out, in, k, k) for conv, (in, out, k, k) for deconv
    bias: torch.Tensor           # int64 (out,)
    stride: int
    padding: int
    output_padding: int
    relu: bool
    unit: torch.Tensor           # float64 (out,): the real value of one accumulator step (s_in * s_w)
    multiplier: torch.Tensor | None   # int64 (out,): rescaling to the next layer's activations (None: last)
    acc_bound: torch.Tensor      # int64 (out,): |accumulator| bound


class IntegerChain:
    """Integer layers; :meth:`__call__` maps integer inputs to the last layer's integer accumulator."""

    def __init__(self, layers: list[IntegerLayer], input_bound: int):
        self.layers = layers
        self.input_bound = int(input_bound)

    @property
    def unit(self) -> torch.Tensor:
        """(C,) float64: the real value of one step of the output accumulator, per channel."""
        return self.layers[-1].unit

    def thresholds(self, table: torch.Tensor, lower_bound: float) -> torch.Tensor:
        """(C, L-1) int64 T with ``max(ACC * unit, lower_bound) <= table[i]  <=>  ACC <= T[c, i]``.

        ``table``: the ascending float scale table of a Gaussian conditional; entries below
        ``lower_bound`` can never be reached from above (T = -2^62: the comparison is false).
        """
        table = table.detach().cpu().to(torch.float64).flatten()[:-1]
        t = torch.floor(table[None, :] / self.unit[:, None])
        t = torch.where(table[None, :] < float(lower_bound), torch.full_like(t, -2.0 ** 62), t)
        return t.clamp(-2.0 ** 62, 2.0 ** 62).to(torch.int64)

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) int64 inputs, clamped to the input bound -> int64 accumulator of the last layer."""
        a = inputs.cpu().to(torch.int64).clamp(-self.input_bound, self.input_bound)
        mkldnn = torch.backends.mkldnn.enabled
        torch.backends.mkldnn.enabled = False   # PyTorch's own im2col/col2im and a float64 GEMM
        try:
            for layer in self.layers:
                x = a.to(torch.float64)
                if layer.kind == "conv":
                    acc = F.conv2d(x, layer.weight, stride=layer.stride, padding=layer.padding)
                else:
                    acc = F.conv_transpose2d(x, layer.weight, stride=layer.stride, padding=layer.padding,
                                             output_padding=layer.output_padding)
                if not torch.equal(acc, torch.round(acc)):
                    raise IntegerNetworkError("an integer layer's float64 convolution was not exact on this machine "
                                              "(an inexact convolution algorithm): refusing to pick a probability "
                                              "model from it")
                acc = acc.to(torch.int64) + layer.bias.view(1, -1, 1, 1)
                if layer.relu:
                    acc = acc.clamp_(min=0)
                if layer.multiplier is None:
                    return acc
                a = (acc * layer.multiplier.view(1, -1, 1, 1) + (1 << (SHIFT - 1))) >> SHIFT
                a = a.clamp_(-A_MAX, A_MAX)
        finally:
            torch.backends.mkldnn.enabled = mkldnn
        raise IntegerNetworkError("an integer chain needs at least one layer")


def _quantise_weight(weight: torch.Tensor, out_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(integer-valued float64 weight, per-output-channel scale float64)."""
    w = weight.detach().cpu().to(torch.float64)
    dims = [d for d in range(w.dim()) if d != out_dim]
    peak = w.abs().amax(dim=dims)
    scale = torch.where(peak > 0, peak / W_MAX, torch.ones_like(peak))
    shape = [1] * w.dim()
    shape[out_dim] = -1
    return torch.round(w / scale.view(shape)), scale


def integer_chain(sequential: nn.Sequential, input_scale: float, input_bound: int) -> IntegerChain:
    """The :class:`IntegerChain` of ``sequential`` for inputs ``A * input_scale`` with ``|A| <= input_bound``."""
    modules = list(sequential)
    layers: list[IntegerLayer] = []
    s_in, bound = float(input_scale), int(input_bound)
    if not 0 < bound <= A_MAX:
        raise IntegerNetworkError(f"input bound {bound} outside 1..{A_MAX}")
    i = 0
    while i < len(modules):
        module = modules[i]
        if isinstance(module, nn.ConvTranspose2d):
            kind, out_dim = "deconv", 1
        elif isinstance(module, nn.Conv2d):
            kind, out_dim = "conv", 0
        else:
            raise IntegerNetworkError(f"integer networks take Conv2d, ConvTranspose2d and ReLU, not {type(module).__name__}")
        if module.groups != 1 or module.dilation != (1, 1) or module.stride[0] != module.stride[1] \
                or module.padding[0] != module.padding[1]:
            raise IntegerNetworkError(f"unsupported convolution {module}")
        relu = i + 1 < len(modules) and isinstance(modules[i + 1], nn.ReLU)
        weight, s_w = _quantise_weight(module.weight, out_dim)
        unit = s_in * s_w
        bias = module.bias.detach().cpu().to(torch.float64) if module.bias is not None else torch.zeros_like(s_w)
        bias_int = torch.round(bias / unit).to(torch.int64)
        sum_abs = weight.abs().sum(dim=[d for d in range(weight.dim()) if d != out_dim]).to(torch.int64)
        acc_bound = sum_abs * bound + bias_int.abs()
        if int(acc_bound.max()) >= EXACT // 2:
            raise IntegerNetworkError(f"layer {len(layers)}: accumulator bound {int(acc_bound.max())} is not exact "
                                      "in float64")
        last = not any(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in modules[i + 1:])
        multiplier = None
        if not last:
            real_bound = float((acc_bound.to(torch.float64) * unit).max())
            s_out = real_bound / A_MAX if real_bound > 0 else 1.0
            multiplier = torch.round(unit / s_out * 2.0 ** SHIFT).to(torch.int64)
            s_in, bound = s_out, A_MAX
        layers.append(IntegerLayer(kind, weight, bias_int, module.stride[0], module.padding[0],
                                   module.output_padding[0] if kind == "deconv" else 0, relu, unit, multiplier,
                                   acc_bound))
        i += 2 if relu else 1
    if not layers:
        raise IntegerNetworkError("an integer chain needs at least one convolution")
    return IntegerChain(layers, input_bound)
