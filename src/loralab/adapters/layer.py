"""The one adapter layer every method is built from.

A method is a *chain of factors* added to a frozen linear map::

    h = W x + scaling * F_n( ... F_2(F_1(dropout(x))) )

where each factor is either a matrix (applied as ``F.linear``) or a diagonal (an elementwise scale).
LoRA is ``[A, B]``; LoRA-Mini is ``[A_aux, A_train, B_train, B_aux]`` with the outer two frozen; Tied-LoRA and
VeRA are ``[A, diag(u), B, diag(v)]`` with A and B tied across layers; AdaLoRA is ``[Q, diag(lambda), P]``.
Tied factors live once in an :class:`AdapterBank` registered on the model root, so they appear once in the
state dict, once in the optimizer and once in the parameter count.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D


@dataclass(frozen=True)
class Factor:
    """One factor of an adapter chain, in the order it is applied to the input.

    ``kind="matrix"``: a weight of shape ``(out_dim, in_dim)`` applied as ``F.linear``.
    ``kind="diag"``: a vector of size ``in_dim == out_dim`` multiplied elementwise.
    ``tie``: factors with the same key (across modules) are one tensor, created by the first module.
    ``rows``: the block ``[start, stop)`` of a tied tensor's output rows this module uses (e.g. the q, k or v
    block of a fused-QKV factor); ``out_dim`` is then the full tensor's size and the module sees
    ``stop - start`` outputs. ``cols``: likewise a block of a matrix's input columns (VeRA's shared A, sliced to
    each module's input size).
    ``init``: ``kaiming_uniform`` (a = sqrt 5: U(+-1/sqrt(fan_in))), ``kaiming_uniform_relu`` (gain sqrt 2:
    U(+-sqrt(6/fan_in)), torch's ``kaiming_uniform_`` defaults), ``zeros``, ``ones``, ``normal`` (standard),
    ``normal:<std>`` or ``const:<value>``.
    ``seed``: draw the initial values from a generator with this seed, so a frozen random factor can be
    regenerated exactly.
    """

    name: str
    kind: str
    in_dim: int
    out_dim: int
    init: str = "kaiming_uniform"
    trainable: bool = True
    tie: str | None = None
    rows: tuple[int, int] | None = None
    cols: tuple[int, int] | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("matrix", "diag"):
            raise ValueError(f"factor {self.name!r}: kind must be 'matrix' or 'diag', got {self.kind!r}")
        if self.kind == "diag" and self.in_dim != self.out_dim:
            raise ValueError(f"factor {self.name!r}: a diagonal needs in_dim == out_dim")
        if min(self.in_dim, self.out_dim) < 1:
            raise ValueError(f"factor {self.name!r}: dimensions must be >= 1, got {self.in_dim}x{self.out_dim}")
        if _initializer(self.init) is None:
            raise ValueError(
                f"factor {self.name!r}: unknown init {self.init!r}; choose from {sorted(INITS)}, 'const:<value>' "
                "or 'normal:<std>'"
            )
        if self.rows is not None and not 0 <= self.rows[0] < self.rows[1] <= self.out_dim:
            raise ValueError(f"factor {self.name!r}: rows {self.rows} outside 0..{self.out_dim}")
        if self.cols is not None and (self.kind == "diag" or not 0 <= self.cols[0] < self.cols[1] <= self.in_dim):
            raise ValueError(f"factor {self.name!r}: cols {self.cols} need a matrix and must lie in 0..{self.in_dim}")

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the stored tensor."""
        return (self.out_dim,) if self.kind == "diag" else (self.out_dim, self.in_dim)

    @property
    def used_out(self) -> int:
        """Output size this module sees (a block of the rows for a sliced tied factor)."""
        return self.out_dim if self.rows is None else self.rows[1] - self.rows[0]

    @property
    def used_in(self) -> int:
        if self.kind == "diag":
            return self.used_out
        return self.in_dim if self.cols is None else self.cols[1] - self.cols[0]


def _kaiming_uniform(t: torch.Tensor, generator: torch.Generator | None) -> None:
    # nn.Linear's default (and LoRA's A): kaiming_uniform_(a=sqrt(5)), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    bound = 1.0 / math.sqrt(t.shape[-1])
    t.uniform_(-bound, bound, generator=generator)


def _kaiming_uniform_relu(t: torch.Tensor, generator: torch.Generator | None) -> None:
    # kaiming_uniform_ with its defaults (gain sqrt(2)): U(-sqrt(6/fan_in), sqrt(6/fan_in)); peft's VeRA A and B
    bound = math.sqrt(6.0 / t.shape[-1])
    t.uniform_(-bound, bound, generator=generator)


INITS = {
    "kaiming_uniform": _kaiming_uniform,
    "kaiming_uniform_relu": _kaiming_uniform_relu,
    "zeros": lambda t, g: t.zero_(),
    "ones": lambda t, g: t.fill_(1.0),
    "normal": lambda t, g: t.normal_(generator=g),
}


def _initializer(init: str) -> Callable[[torch.Tensor, torch.Generator | None], object] | None:
    """The function an init name stands for: a name in ``INITS``, ``const:<value>`` or ``normal:<std>``."""
    if init in INITS:
        return INITS[init]
    kind, _, number = init.partition(":")
    try:
        value = float(number)
    except ValueError:
        return None
    if not math.isfinite(value) or kind not in ("const", "normal"):
        return None
    return (lambda t, g: t.fill_(value)) if kind == "const" else (lambda t, g: t.normal_(0.0, value, generator=g))


def new_factor_tensor(factor: Factor, device: torch.device | str | None = None) -> nn.Parameter:
    """A freshly initialised parameter for ``factor`` (float32, ``requires_grad`` = ``factor.trainable``)."""
    if str(device) == "meta":
        return nn.Parameter(torch.empty(factor.shape, device="meta"), requires_grad=factor.trainable)
    t = torch.empty(factor.shape, dtype=torch.float32)
    generator = None if factor.seed is None else torch.Generator().manual_seed(factor.seed)
    with torch.no_grad():
        _initializer(factor.init)(t, generator)
    return nn.Parameter(t.to(device), requires_grad=factor.trainable)


class AdapterBank(nn.Module):
    """Holds the tied factors of a model: one parameter per tie key."""

    def __init__(self) -> None:
        super().__init__()
        self.tensors = nn.ParameterDict()
        self.specs: dict[str, Factor] = {}

    @staticmethod
    def _key(tie: str) -> str:
        return tie.replace(".", "__")

    def get_or_create(self, factor: Factor, device: torch.device | str | None) -> nn.Parameter:
        key = self._key(factor.tie)
        if key in self.tensors:
            known = self.specs[key]
            if (known.kind, known.shape, known.trainable, known.init) != (
                factor.kind,
                factor.shape,
                factor.trainable,
                factor.init,
            ):
                raise ValueError(f"tied factor {factor.tie!r} requested with two shapes: {known} vs {factor}")
            return self.tensors[key]
        self.specs[key] = factor
        self.tensors[key] = new_factor_tensor(factor, device)
        return self.tensors[key]

    def get(self, factor: Factor) -> nn.Parameter:
        return self.tensors[self._key(factor.tie)]


def base_dims(base: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of a linear layer (``nn.Linear`` or GPT-2's transposed ``Conv1D``)."""
    if isinstance(base, nn.Linear):
        return base.in_features, base.out_features
    if isinstance(base, Conv1D):
        return base.weight.shape[0], base.nf
    raise TypeError(f"adapters attach to nn.Linear or Conv1D modules, not {type(base).__name__}")


def _product(chain: Sequence[tuple[Factor, torch.Tensor]]) -> torch.Tensor:
    """``F_n ... F_1`` of a (sub)chain as one ``(out, in)`` matrix."""
    m: torch.Tensor | None = None
    for f, t in chain:
        if f.kind == "diag":
            m = torch.diag(t) if m is None else t[:, None] * m
        else:
            m = t if m is None else t @ m
    return m


def _product_t(chain: Sequence[tuple[Factor, torch.Tensor]]) -> torch.Tensor:
    """``(F_n ... F_1)^T`` of a (sub)chain as one ``(in, out)`` matrix, multiplied from the input side.

    Meant for the right side of a cut, whose input is narrow (LoRA-Mini's ``B_aux B_train``: r -> b -> d_out): each
    matmul then has the narrow size as its rows, ``(r, b) @ (b, d_out)``, and so do the gradient matmuls, where
    :func:`_product` gives ``(d_out, b) @ (b, r)``, a shape CPU BLAS (MKL) runs 2-3x slower. On the CPU the first
    factor is transposed into a contiguous copy (a few KiB), without which MKL computes its gradient in the slow
    shape again; on a GPU, where the step is bound by kernel launches, the copy would be one more kernel each way.
    """
    m: torch.Tensor | None = None
    for f, t in chain:
        if f.kind == "diag":
            m = torch.diag(t) if m is None else m * t
        elif m is None:
            m = t.t().contiguous() if t.device.type == "cpu" else t.t()
        else:
            m = m @ t.t()
    return m


class LinearWrapper(nn.Module):
    """A module standing in for the linear layer ``self.base``; model code that reads the layer's ``weight`` or
    ``bias`` (e.g. T5's feed-forward checks ``wo.weight.dtype``) gets the base layer's."""

    base: nn.Module

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias


class AdapterLinear(LinearWrapper):
    """A frozen linear layer plus a chain of adapter factors (see module docstring)."""

    def __init__(
        self,
        base: nn.Module,
        factors: Sequence[Factor],
        scaling: float,
        dropout: float = 0.0,
        bank: AdapterBank | None = None,
    ) -> None:
        super().__init__()
        self.base = base
        self.in_features, self.out_features = base_dims(base)
        self.fan_in_fan_out = isinstance(base, Conv1D)
        self.specs = tuple(factors)
        self.scaling = float(scaling)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self._tied_weight: tuple[nn.Parameter] | None = None  # a shared base weight while merged (see merge)
        self._check_chain()
        self._split = self._plan_split()
        device = base.weight.device
        self.factors = nn.ParameterDict()
        self._bank = (bank,)  # a tuple, so the bank is not registered (and counted) once per layer
        for f in self.specs:
            if f.tie is None:
                self.factors[f.name] = new_factor_tensor(f, device)
            elif bank is None:
                raise ValueError(f"factor {f.name!r} is tied ({f.tie!r}) but no AdapterBank was given")
            else:
                bank.get_or_create(f, device)

    def _check_chain(self) -> None:
        if not self.specs:
            raise ValueError("an adapter needs at least one factor")
        dim = self.in_features
        for f in self.specs:
            if f.used_in != dim:
                raise ValueError(
                    f"impossible adapter shape: factor {f.name!r} expects input size {f.used_in} but receives "
                    f"{dim} (layer {self.in_features} -> {self.out_features}; chain {[x.name for x in self.specs]})"
                )
            dim = f.used_out
        if dim != self.out_features:
            raise ValueError(
                f"impossible adapter shape: the chain ends with size {dim}, the layer outputs {self.out_features}"
            )

    def tensor(self, factor: Factor) -> torch.Tensor:
        """The tensor this module uses for ``factor`` (a row block of it, for a sliced tied factor)."""
        t = self.factors[factor.name] if factor.tie is None else self._bank[0].get(factor)
        if factor.rows is not None:
            t = t[factor.rows[0] : factor.rows[1]]
        return t if factor.cols is None else t[:, factor.cols[0] : factor.cols[1]]

    def chain(self) -> Iterator[tuple[Factor, torch.Tensor]]:
        for f in self.specs:
            yield f, self.tensor(f)

    def _plan_split(self) -> int | None:
        """Where to cut the chain so each side is multiplied out once per step, or None to apply it factor by
        factor.

        Applied factor by factor, the chain costs ``sum(in * out)`` multiply-adds per token; cut at its narrowest
        point ``m`` and with each side multiplied out first (a cost independent of the number of tokens), it costs
        ``d_in * m + m * d_out`` per token, LoRA's cost at rank m. LoRA-Mini (d -> a -> r -> b -> k) is cut at r.
        """
        if len(self.specs) < 3:
            return None
        dims = [self.in_features] + [f.used_out for f in self.specs]
        per_token = sum(f.used_out if f.kind == "diag" else f.used_in * f.used_out for f in self.specs)
        cut = min(range(1, len(dims) - 1), key=dims.__getitem__)
        collapsed = dims[0] * dims[cut] + dims[cut] * dims[-1]
        return cut if collapsed < 0.75 * per_token else None

    def _narrow(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The chain without its last matrix, applied to ``dropout(x)``, and that matrix as its ``(m, out)``
        transpose; or, for a chain ending with a diagonal, the whole chain's output and None (no scaling yet)."""
        h = self.dropout(x)
        chain = list(self.chain())
        # under autocast the matmuls pick their own dtype: casting activations to the factors' float32 first would
        # only add two casts per factor; without autocast, activations follow the factors' dtype
        autocast = torch.is_autocast_enabled(h.device.type)
        if self._split is not None:
            # left (m, in) as F.linear's weight, right as its (m, out) transpose: both are then the layouts in which
            # the per-token matmuls and the products run fastest (see _product_t)
            left, right_t = _product(chain[: self._split]), _product_t(chain[self._split :])
            return F.linear(h if autocast else h.to(left.dtype), left), right_t
        # the last matrix, with a diagonal after it folded into its rows (VeRA's, Tied-LoRA's diag(v) B: a
        # (out, m) product per step instead of a (tokens, out) one per call)
        kinds = [f.kind for f, _ in chain]
        if kinds[-1] == "matrix":
            last, last_t = len(chain) - 1, chain[-1][1].t()
        elif kinds[-2:] == ["matrix", "diag"]:
            last, last_t = len(chain) - 2, (chain[-2][1] * chain[-1][1][:, None]).t()
        else:
            last, last_t = len(chain), None
        for f, t in chain[:last]:
            if f.kind == "diag":
                h = h * t.to(h.dtype)
            else:
                h = F.linear(h if autocast else h.to(t.dtype), t)
        return h, last_t

    def adapter_output(self, x: torch.Tensor) -> torch.Tensor:
        """``scaling * F_n(...F_1(dropout(x)))``: the adapter's contribution, without the base layer."""
        h, last_t = self._narrow(x)
        if last_t is not None:
            h = h @ last_t.to(h.dtype)
        return h * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base(x)
        # in place (as peft's AdaLoRA): the base layer's backward does not need its output, and a fresh
        # (tokens, out_features) tensor per adapted layer raised the peak resident memory on the CPU by ~10%. A chain
        # ending with a matrix (or a matrix and a diagonal, folded into it) adds its last product and the scaling in
        # one BLAS call, out += scaling * h @ last^T (addmm: no (tokens, out_features) temporaries), on the base
        # output as a 2-D (tokens, out) tensor of its own (an in-place update of a view would make autograd copy the
        # gradient in backward). Same outputs and gradients up to float rounding: tests/test_speed.py
        h, last_t = self._narrow(x)
        if last_t is None:
            out = self.base(x)
            return out.add_(h.to(out.dtype), alpha=self.scaling)
        out = self.base(x.reshape(-1, x.shape[-1]))
        out.addmm_(h.reshape(-1, h.shape[-1]).to(out.dtype), last_t.to(out.dtype), alpha=self.scaling)
        return out.view(*x.shape[:-1], out.shape[-1])

    def delta_weight(self) -> torch.Tensor:
        """The exact update ``scaling * F_n ... F_1`` as an ``(out_features, in_features)`` matrix."""
        return _product(list(self.chain())) * self.scaling

    @torch.no_grad()
    def merge(self, shared: bool = False) -> None:
        """Add the update into the base weight; the forward pass then skips the adapter.

        ``shared``: the base weight is also another module's (tied embeddings: T5's ``lm_head`` and ``shared``,
        GPT-2's and Llama's ``lm_head`` and input embeddings). The merged weight is then a new tensor and the shared
        one stays untouched (and is put back by :meth:`unmerge`); otherwise the update is added in place.
        :func:`loralab.adapters.merge_adapters` finds out which weights are shared.
        """
        if self.merged:
            return
        delta = self.delta_weight()
        w = self.base.weight
        if shared:
            self._tied_weight = (w,)  # a tuple, so the original is not registered twice
            self.base.weight = nn.Parameter(w + self._oriented(delta).to(w.dtype), requires_grad=False)
        else:
            w.add_(self._oriented(delta).to(w.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the merged update out again: a shared weight is restored exactly (its untouched original is put
        back), an own weight up to float rounding (the update is subtracted)."""
        if not self.merged:
            return
        if self._tied_weight is not None:
            self.base.weight, self._tied_weight = self._tied_weight[0], None
        else:
            w = self.base.weight
            w.sub_(self._oriented(self.delta_weight()).to(w.dtype))
        self.merged = False

    def _oriented(self, delta: torch.Tensor) -> torch.Tensor:
        """An ``(out, in)`` update in the base weight's layout (GPT-2's Conv1D stores ``(in, out)``)."""
        return delta.T if self.fan_in_fan_out else delta

    def extra_repr(self) -> str:
        chain = ", ".join(f"{f.name}{'' if f.trainable else '(frozen)'}{'[tied]' if f.tie else ''}" for f in self.specs)
        return f"scaling={self.scaling:g}, chain=[{chain}]"
