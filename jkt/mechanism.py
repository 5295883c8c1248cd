"""Is the mechanism at work? How close a trained student's input Jacobians, outputs, and outputs under input
noise are to its teacher's, on a fixed, seeded set of test images, both networks in eval mode (so every
gradient is exactly per sample).

Proposition 1 says matching activations and Jacobians is, to second order, matching the teacher's outputs on
noisy inputs. If a Jacobian-matching student gains nothing, these numbers tell whether its Jacobians moved
towards the teacher's at all (the term did nothing) or moved and did not help (the claim fails). Recorded
with every student run, as scalars prefixed ``mech_``:

- ``grad_cos_label``, ``grad_cos_top1``: the mean cosine between the student's and the teacher's input gradients
  of the label's output, and of the teacher's top-1 output;
- ``grad_rse_label``, ``grad_rse_top1``: the relative squared error ``sum ||g_S - g_T||^2 / sum ||g_T||^2``;
- ``top1_agreement``: the percentage of images on which the two networks' arg-max agree;
- ``act_error``: the activation-matching error ``mean ||T(x) - S(x)||^2`` (Proposition 1's zeroth-order term);
- ``noisy_error_<sigma>``: Proposition 1's left side ``E ||T(x + xi) - S(x + xi)||^2``, xi ~ N(0, sigma^2 I), by
  Monte Carlo with the same noise draws for every student.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from . import data as jdata
from .batching import Batches
from .jacobian import eval_mode, output_and_input_gradient
from .train import resolve_device


@dataclass
class Reference:
    """The teacher's side on the fixed images, computed once and shared by every student of a plan."""
    x: torch.Tensor                  # normalised images
    y: torch.Tensor                  # labels (None-like when there are no usable labels: label=False)
    logits: torch.Tensor
    grads: dict                      # "label" / "top1" -> the teacher's input gradients
    top1: torch.Tensor
    noisy: dict                      # sigma -> teacher logits on each noise draw, (draws, n, K)
    sigmas: tuple
    z: torch.Tensor                  # standard normal noise, (draws, *x.shape): the same for every network
    batch_size: int = 250


def _chunks(n: int, size: int):
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def reference(teacher: nn.Module, dataset: jdata.Dataset, split: jdata.Split, images: int = 1000, sigmas=(0.1,),
              draws: int = 4, seed: int = 0, label: bool = True, device="auto") -> Reference:
    """The teacher's logits, input gradients (label's output when ``label``, top-1) and noisy logits on ``images``
    images of ``split`` drawn with ``seed``."""
    device = resolve_device(device)
    n = min(images, len(split))
    rows = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    part = jdata.Split(split.x[rows], split.y[rows])
    x, y, _ = next(iter(Batches(part, dataset, n, device, shuffle=False)))
    x = x.to(next(teacher.parameters()).dtype)  # float64 networks get float64 images
    gen = torch.Generator(device=x.device).manual_seed(seed + 1)
    z = torch.randn((draws, *x.shape), generator=gen, device=x.device, dtype=x.dtype)
    ref = Reference(x, y, None, {}, None, {}, tuple(float(s) for s in sigmas), z)
    logits, grads = [], {"label": [], "top1": []} if label else {"top1": []}
    with eval_mode(teacher.to(device)):
        for r in _chunks(n, ref.batch_size):
            if label:
                out, g, _ = output_and_input_gradient(teacher, x[r], y[r])
                grads["label"].append(g)
            out, g, _ = output_and_input_gradient(teacher, x[r], "top1")
            grads["top1"].append(g)
            logits.append(out)
        ref.logits = torch.cat(logits)
        ref.grads = {k: torch.cat(v) for k, v in grads.items()}
        ref.top1 = ref.logits.argmax(1)
        with torch.no_grad():
            for sigma in ref.sigmas:
                ref.noisy[sigma] = torch.stack([torch.cat([teacher(x[r] + sigma * z[d, r])
                                                           for r in _chunks(n, ref.batch_size)])
                                                for d in range(draws)])
    return ref


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.flatten(1), b.flatten(1)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-30)


def metrics(student: nn.Module, ref: Reference) -> dict:
    """The ``mech_`` metrics of ``student`` against the teacher's :class:`Reference` (see the module docstring)."""
    x, n = ref.x, len(ref.x)
    grads = {k: [] for k in ref.grads}
    logits = []
    noisy = {sigma: 0.0 for sigma in ref.sigmas}
    with eval_mode(student.to(x.device)):
        for r in _chunks(n, ref.batch_size):
            for kind in ref.grads:
                out, g, _ = output_and_input_gradient(student, x[r], ref.y[r] if kind == "label" else ref.top1[r])
                grads[kind].append(g)
            logits.append(out)
            with torch.no_grad():
                for sigma in ref.sigmas:
                    for d in range(len(ref.z)):
                        diff = student(x[r] + sigma * ref.z[d, r]) - ref.noisy[sigma][d, r]
                        noisy[sigma] += float(diff.pow(2).sum())
    logits = torch.cat(logits)
    out = {"mech_images": n,
           "mech_top1_agreement": 100.0 * float((logits.argmax(1) == ref.top1).double().mean()),
           "mech_act_error": float((logits - ref.logits).pow(2).sum(1).mean())}
    for kind, parts in grads.items():
        g, t = torch.cat(parts), ref.grads[kind]
        out[f"mech_grad_cos_{kind}"] = float(_cosine(g, t).mean())
        out[f"mech_grad_rse_{kind}"] = float((g - t).pow(2).sum() / t.pow(2).sum().clamp_min(1e-30))
    for sigma in ref.sigmas:
        out[f"mech_noisy_error_{sigma:g}"] = noisy[sigma] / (n * len(ref.z))
    return out
