"""Per-block work for all blocks at once: a fixed number of ops, whatever the depth.

A step policy touches one small tensor per residual block (the last BN's γ and β, the last conv's
filters). Done block by block, forward and backward cost a few ops per block, and on a GPU every
op is a kernel launch. The two autograd functions here do all blocks in one multi-tensor
(``torch._foreach_*``) op each way:

* :func:`scale_by_steps` — ``p_i ↦ p_i ⊙ Δt_{b(i)}`` for parameters ``p_i`` (γ, β or conv filters),
  with hand-written backward ``∂/∂p_i = g_i ⊙ Δt``, ``∂/∂Δt = Σ g_i ⊙ p_i`` (reduced to Δt's shape);
* :func:`filter_norms` — ``s_d[c] = ‖W_d[c]‖₂``, the controller's weight summary, computed per run of
  equally shaped filters and differentiated as ``∂s_d[c]/∂W_d[c] = W_d[c] / ‖W_d[c]‖``.

Autograd's generic foreach backward would loop over the tensors (one op per block); these don't.
Under ``torch.compile`` and ``torch.func`` transforms the same forward formulas run with plain
autograd instead (the compiler fuses them anyway).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def shape_groups(tensors: Sequence[Tensor]) -> list[list[int]]:
    """Indices of ``tensors`` grouped by shape, in first-seen order: ``[[0, 1, 2], [3, 4]]``.

    For a ResNet (shapes change stage by stage) these are the consecutive runs; a transformer's
    branches alternate (attention projection, MLP output), and grouping by shape keeps the number
    of groups, hence of ops, independent of depth where consecutive runs would not."""
    groups: dict[torch.Size, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault(t.shape, []).append(i)
    return list(groups.values())


# torch.fx symbolic tracing (older torch: is_fx_tracing, which newer torch also sets under torch.export).
_fx_tracing = getattr(torch.fx._symbolic_trace, "is_fx_symbolic_tracing", torch.fx._symbolic_trace.is_fx_tracing)


def _plain_autograd() -> bool:
    """Use the plain formulas (one op per block) instead of the fused functions?

    Yes under ``torch.compile``, which fuses them itself, under forward-mode AD or
    ``torch.func`` transforms, which would need a custom ``jvp`` that Dynamo cannot trace, while
    ``torch.fx`` traces symbolically (the graph then holds the forward ops, and autograd
    differentiates them when it runs), and under ``torch.onnx.export``, whose tracer cannot
    record an autograd function.
    """
    return (
        torch.compiler.is_compiling()
        or torch._C._are_functorch_transforms_active()
        or torch.autograd.forward_ad._current_level >= 0
        or _fx_tracing()
        or torch.onnx.is_in_onnx_export()
    )


def _mul(tensors: list[Tensor], factors: list[Tensor]) -> Sequence[Tensor]:
    """``[t ⊙ f for t, f in zip(tensors, factors)]``: one multi-tensor op, or one op per tensor under
    ``torch.onnx.export``, since ONNX has no multi-tensor (``aten._foreach_*``) operator. Index the
    result, don't iterate it: under ``torch.fx`` it is a proxy, which has no length."""
    if torch.onnx.is_in_onnx_export():
        return [t * f for t, f in zip(tensors, factors)]
    return torch._foreach_mul(tensors, factors)


def _reduce_to(products: list[Tensor], like: Sequence[Tensor]) -> list[Tensor]:
    """``products[i]`` summed down to the shape of ``like[i]`` (a Δt broadcast over it)."""
    if all(p.shape == t.shape for p, t in zip(products, like)):
        return products
    out: list[Tensor | None] = [None] * len(products)
    for group in shape_groups(products):  # one stack + sum per shape, whatever the depth
        first = group[0]
        dims = [d + 1 for d, n in enumerate(like[first].shape) if n == 1 and products[first].shape[d] != 1]
        for i, reduced in zip(group, torch.stack([products[i] for i in group]).sum(dims, keepdim=True).unbind(0)):
            out[i] = reduced
    return out  # type: ignore[return-value]  # no None left: the shape groups cover every index


class _ScaleBySteps(torch.autograd.Function):
    # inputs: n, then Δt_0..Δt_{n-1}, then k groups of n parameters each (e.g. all γ, then all β)
    @staticmethod
    def forward(n: int, *tensors: Tensor) -> tuple[Tensor, ...]:
        dts, params = list(tensors[:n]), list(tensors[n:])
        out = _mul(params, dts * (len(params) // n))
        return tuple(out[i] for i in range(len(params)))  # indexed, not iterated: a torch.fx proxy has no length

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.n = inputs[0]
        ctx.save_for_backward(*inputs[1:])

    @staticmethod
    def backward(ctx, *grads: Tensor):
        n = ctx.n
        saved = ctx.saved_tensors
        dts, params = list(saved[:n]), list(saved[n:])
        grads_list = list(grads)
        groups = len(params) // n
        grad_params: list[Tensor | None] = [None] * len(params)
        if any(ctx.needs_input_grad[1 + n :]):
            grad_params = list(torch._foreach_mul(grads_list, dts * groups))
        grad_dts: Sequence[Tensor | None] = [None] * n
        if any(ctx.needs_input_grad[1 : 1 + n]):
            acc = list(torch._foreach_mul(grads_list[:n], params[:n]))
            for k in range(1, groups):
                torch._foreach_addcmul_(acc, grads_list[k * n : (k + 1) * n], params[k * n : (k + 1) * n])
            grad_dts = _reduce_to(acc, dts)
        return (None, *grad_dts, *grad_params)


def scale_by_steps(dts: Sequence[Tensor], *params: Sequence[Tensor]) -> list[list[Tensor]]:
    """``[[p ⊙ Δt_d for p, Δt_d in zip(group, dts)] for group in params]`` in one op each way.

    ``dts[d]`` broadcasts against ``group[d]`` (``(C,)`` for γ and β, ``(C, 1, 1, 1)`` for
    conv filters); every group has one tensor per block.
    """
    n = len(dts)
    if any(len(group) != n for group in params):
        raise ValueError("scale_by_steps: every parameter group needs one tensor per step")
    scale = _ScaleBySteps.forward if _plain_autograd() else _ScaleBySteps.apply
    flat = scale(n, *dts, *(p for group in params for p in group))
    return [list(flat[k * n : (k + 1) * n]) for k in range(len(params))]


class _FilterNorms(torch.autograd.Function):
    @staticmethod
    def forward(groups: list[list[int]], order: Tensor | None, *weights: Tensor) -> Tensor:
        flat = torch.cat(
            [torch.linalg.vector_norm(torch.stack([weights[i] for i in g]).flatten(2), dim=2).view(-1) for g in groups]
        )
        return flat if order is None else flat[order]  # back to block order (one op)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(output, *inputs[2:])

    @staticmethod
    def backward(ctx, grad: Tensor):
        norms, *weights = ctx.saved_tensors
        # ∂‖w‖/∂w = w/‖w‖; an all-zero filter gets 0 (like torch.linalg.vector_norm's backward).
        coef = grad / norms.clamp_min(torch.finfo(norms.dtype).tiny)
        dims = {w.dim() for w in weights}
        if len(dims) == 1:  # one view for all blocks (all convs, or all linears)
            coefs = list(coef.view((-1,) + (1,) * (dims.pop() - 1)).split([w.shape[0] for w in weights]))
        else:
            coefs = [
                c.view((-1,) + (1,) * (w.dim() - 1)) for c, w in zip(coef.split([w.shape[0] for w in weights]), weights)
            ]
        return (None, None, *torch._foreach_mul(weights, coefs))


_ORDERS: dict[tuple, Tensor] = {}


def _block_order(groups: list[list[int]], rows: list[int], device: torch.device) -> Tensor | None:
    """The permutation from shape-group order to block order of the flat norms (``None``: the same),
    cached per layout: a forward pass creates no tensor for it."""
    flat_groups = [i for g in groups for i in g]
    if flat_groups == sorted(flat_groups):
        return None
    key = (tuple(map(tuple, groups)), tuple(rows), str(device))
    if key not in _ORDERS:
        start = {}
        offset = 0
        for i in flat_groups:
            start[i] = offset
            offset += rows[i]
        _ORDERS[key] = torch.cat([torch.arange(start[i], start[i] + rows[i]) for i in range(len(rows))]).to(device)
    return _ORDERS[key]


def filter_norms(weights: Sequence[Tensor]) -> Tensor:
    """``cat_d [‖W_d[c]‖₂ for c]``: the L2 norm of every output filter of conv weights (``C × C_in × k × k``)
    or every output row of Linear weights (``C × C_in``)."""
    if any(w.dim() < 2 for w in weights):
        raise ValueError("filter_norms expects conv or linear weights (2-D or more)")
    groups = shape_groups(weights)
    order = _block_order(groups, [w.shape[0] for w in weights], weights[0].device)
    norms = _FilterNorms.forward if _plain_autograd() else _FilterNorms.apply
    return norms(groups, order, *weights)
