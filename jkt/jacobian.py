"""Input Jacobians: the gradient of one selected output per sample, full Jacobians, random projections.

A note on BatchNorm. In train mode a BatchNorm layer normalises with the statistics of the batch,
so output ``b`` depends on every ``x[b']`` and the batched gradient ``d sum_b f_b / d x`` is not exactly
the per-sample gradient ``d f_b / d x_b``: it carries cross-sample terms (measured in
tests/test_jacobian.py and notebook 02). Each term ``d f_b / d x_b'`` shrinks like 1/batch size, but
their sum does not: it tends to a mean-field limit, about 0.3-0.8 of the per-sample gradient's norm
for a small VGG at batches 16 to 256. In eval mode the batched
gradient is exactly per sample. Teachers are always differentiated in eval mode; a student in
training is differentiated in train mode, as in the paper's implementation.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from .validate import check_choice, check_positive_int


def select_index(logits: torch.Tensor, index) -> torch.Tensor:
    """Which output to differentiate for each sample: a LongTensor of labels, ``"top1"`` (the arg-max
    of ``logits``: the label-free heuristic of Section 4), or an int (the same output for all)."""
    batch = logits.shape[0]
    if isinstance(index, str):
        check_choice("index", index, ["top1"])
        return logits.detach().argmax(dim=1)
    if isinstance(index, int) and not isinstance(index, bool):
        if not 0 <= index < logits.shape[1]:
            raise ValueError(f"index={index} is out of range; the model has {logits.shape[1]} outputs")
        return torch.full((batch,), index, dtype=torch.long, device=logits.device)
    if isinstance(index, torch.Tensor) and index.dtype == torch.long and index.shape == (batch,):
        return index.to(logits.device)
    raise ValueError(f"index must be a LongTensor of shape ({batch},), 'top1' or an int; got {index!r}")


def output_and_input_gradient(model: nn.Module, x: torch.Tensor, index, create_graph: bool = False):
    """One forward pass and one backward pass: ``(logits, grad, index)`` where ``grad[b]`` is the gradient
    of ``logits[b, index[b]]`` with respect to ``x[b]``.

    With ``create_graph=True`` (the student side) ``grad`` is differentiable with respect to the
    model's parameters, so a loss on it can be back-propagated (double backpropagation) and ``logits``
    can feed the other loss terms. With ``create_graph=False`` (the teacher side) nothing is kept.
    ``x`` is detached first: the gradient is taken with respect to ``x`` as a new leaf, so no gradient of any
    loss on these outputs flows back into whatever computed ``x`` (e.g. a differentiable augmentation).
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        index = select_index(logits, index)
        selected = logits.gather(1, index[:, None]).sum()
        (grad,) = torch.autograd.grad(selected, x, create_graph=create_graph)
    if not create_graph:
        logits = logits.detach()
    return logits, grad, index


def softmax_output_and_input_gradient(model: nn.Module, x: torch.Tensor, index, create_graph: bool = False):
    """Like :func:`output_and_input_gradient` for the softmax probability of the selected output (Eq. 2's
    ``S_s^c``): ``(logits, prob, grad, index)`` with ``prob[b] = softmax(logits[b])[index[b]]`` and ``grad[b]``
    its gradient with respect to ``x[b]``."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        index = select_index(logits, index)
        prob = logits.softmax(1).gather(1, index[:, None])[:, 0]
        (grad,) = torch.autograd.grad(prob.sum(), x, create_graph=create_graph)
    if not create_graph:
        logits, prob = logits.detach(), prob.detach()
    return logits, prob, grad, index


def input_gradient(model: nn.Module, x: torch.Tensor, index, create_graph: bool = False) -> torch.Tensor:
    """For every sample b, the gradient of ``model(x)[b, index[b]]`` with respect to ``x[b]`` (shape of x)."""
    return output_and_input_gradient(model, x, index, create_graph)[1]


@contextmanager
def eval_mode(model: nn.Module):
    """Temporarily put ``model`` in eval mode (BatchNorm uses its running statistics: exact per-sample maps)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def full_jacobian(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The exact per-sample Jacobian, shape ``(B, K, *x.shape[1:])``, by ``torch.func.jacrev`` under ``vmap``.

    The model is evaluated in eval mode (BatchNorm's running statistics), so each sample's Jacobian is
    its own; the model's mode is restored afterwards.
    """
    from torch.func import functional_call, jacrev, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def single(xi):
        return functional_call(model, (params, buffers), (xi.unsqueeze(0),))[0]

    with eval_mode(model):
        return vmap(jacrev(single))(x.detach())


def projected_gradient(model: nn.Module, x: torch.Tensor, v: torch.Tensor, create_graph: bool = False):
    """``(logits, v_b^T J_b)``: the gradient of ``sum_k v[b, k] * model(x)[b, k]`` with respect to ``x[b]``."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        (grad,) = torch.autograd.grad((logits * v).sum(), x, create_graph=create_graph)
    return (logits if create_graph else logits.detach()), grad


def projection_vectors(batch: int, num_outputs: int, projections: int, generator=None, device=None,
                       dtype=torch.float32) -> torch.Tensor:
    """``projections`` standard normal vectors per sample, shape ``(projections, batch, num_outputs)``."""
    check_positive_int("projections", projections)
    v = torch.randn(projections, batch, num_outputs, generator=generator, dtype=dtype,
                    device=generator.device if generator is not None else device)
    return v.to(device) if device is not None else v


def frobenius_sq_estimate(model: nn.Module, x: torch.Tensor, projections: int = 1, generator=None,
                          create_graph: bool = False) -> torch.Tensor:
    """Unbiased estimate of ``||J_b||_F^2`` per sample: the mean over ``projections`` Gaussian v of
    ``||v^T J_b||^2`` (E[v v^T] = I gives E||v^T J||^2 = trace(J J^T))."""
    with torch.no_grad(), eval_mode(model):  # a one-sample probe: never in train mode (BatchNorm)
        k = model(x[:1]).shape[1]
    vs = projection_vectors(x.shape[0], k, projections, generator, x.device, x.dtype)
    total = 0.0
    for v in vs:
        _, g = projected_gradient(model, x, v, create_graph)
        total = total + g.flatten(1).pow(2).sum(1)
    return total / projections


def jacobian_distance_sq_estimate(student: nn.Module, teacher: nn.Module, x: torch.Tensor,
                                  projections: int = 1, generator=None,
                                  create_graph: bool = False) -> torch.Tensor:
    """Unbiased estimate of ``||J_T(x_b) - J_S(x_b)||_F^2`` per sample (the sum over outputs of
    Proposition 1's Jacobian term): the same Gaussian v projects both Jacobians."""
    with torch.no_grad(), eval_mode(teacher):
        k = teacher(x[:1]).shape[1]
    vs = projection_vectors(x.shape[0], k, projections, generator, x.device, x.dtype)
    total = 0.0
    for v in vs:
        _, g_t = projected_gradient(teacher, x, v, create_graph=False)
        _, g_s = projected_gradient(student, x, v, create_graph)
        total = total + (g_t - g_s).flatten(1).pow(2).sum(1)
    return total / projections


FULL_JACOBIAN_METHODS = ("loop", "batched", "projection")


def full_jacobian_matching(student: nn.Module, x: torch.Tensor, teacher_jacobian: torch.Tensor,
                           method: str = "projection", projections: int = 1, generator=None):
    """``(logits, d)`` with ``d[b]`` the full-Jacobian term of Proposition 1, ``sum_k ||grad T^k(x_b) -
    grad S^k(x_b)||^2``, differentiable with respect to the student's parameters (double backpropagation).

    ``teacher_jacobian``: the teacher's Jacobians on ``x``, shape ``(B, K, *x.shape[1:])`` (cached once by
    jkt.teachers.teacher_targets, or :func:`full_jacobian`). One student forward pass serves every method:

    - ``"loop"``: exact, one input-gradient pass per output (K double backward passes);
    - ``"batched"``: exact, the K passes as one vmapped pass (``is_grads_batched``);
    - ``"projection"``: unbiased, ``mean_p ||v_p^T (J_T - J_S)||^2`` over ``projections`` Gaussian ``v_p``
      (E[v v^T] = I); costs ``projections`` passes instead of K.

    In train mode (BatchNorm with batch statistics) the student's gradients carry the cross-sample terms of
    the one-output case (see the module note); the estimator is then unbiased for a slightly different
    quantity than the loop (the cross-sample part of ``v``'s other rows); in eval mode all three agree.
    """
    check_choice("method", method, FULL_JACOBIAN_METHODS)
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = student(x)
        batch, k = logits.shape
        if tuple(teacher_jacobian.shape) != (batch, k, *x.shape[1:]):
            raise ValueError(f"teacher_jacobian has shape {tuple(teacher_jacobian.shape)}; expected "
                             f"{(batch, k, *x.shape[1:])} (batch, outputs, input shape)")
        if method == "loop":
            d = 0.0
            for i in range(k):
                (g,) = torch.autograd.grad(logits[:, i].sum(), x, create_graph=True, retain_graph=True)
                d = d + (g - teacher_jacobian[:, i]).flatten(1).pow(2).sum(1)
        elif method == "batched":
            eye = torch.eye(k, dtype=logits.dtype, device=logits.device)
            basis = eye[:, None, :].expand(k, batch, k)
            (g,) = torch.autograd.grad(logits, x, grad_outputs=basis, is_grads_batched=True, create_graph=True)
            d = (g.transpose(0, 1) - teacher_jacobian).flatten(2).pow(2).sum((1, 2))
        else:
            vs = projection_vectors(batch, k, projections, generator, x.device, x.dtype)
            d = 0.0
            for v in vs:
                (g,) = torch.autograd.grad((logits * v).sum(), x, create_graph=True, retain_graph=True)
                g_t = torch.einsum("bk,bk...->b...", v, teacher_jacobian)
                d = d + (g - g_t).flatten(1).pow(2).sum(1)
            d = d / projections
    return logits, d
