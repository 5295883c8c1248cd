"""Every loss term of the paper and its baselines, and the named method presets (the rows of Tables 1-2).

Conventions: a term is a mean over the batch of a per-sample quantity; per-sample quantities are
sums (over classes, over input pixels), as in the paper's formulas. ``T`` is the teacher, ``S`` the
student, ``_s`` a softmax output. Equation numbers refer to the workshop paper (Srinivas & Fleuret, "Local
Affine Approximators for Improving Knowledge Transfer", Sections 3-4).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import nn

from .jacobian import (frobenius_sq_estimate, full_jacobian_matching,
                       output_and_input_gradient, softmax_output_and_input_gradient)
from .validate import (check_choice, check_nonnegative_int, check_number, check_positive_int,
                       check_positive_number, check_sigma)


def _per_sample_sq(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).pow(2).sum(1)


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CE with the ground-truth labels (the alpha term of the supplementary's loss)."""
    return F.cross_entropy(logits, y)


def activation_matching(s_logits: torch.Tensor, t_logits: torch.Tensor) -> torch.Tensor:
    """Squared error on pre-softmax outputs, summed over classes: the zeroth-order term of Proposition 1
    (the beta term; Ba & Caruana's logit matching)."""
    return _per_sample_sq(s_logits - t_logits).mean()


def _unit(g: torch.Tensor, eps: float) -> torch.Tensor:
    """``g / ||g||`` per sample, smooth and finite at g = 0 (the norm is ``sqrt(||g||^2 + eps^2)``)."""
    norm = (_per_sample_sq(g) + eps * eps).sqrt()
    return g / norm.view(-1, *([1] * (g.dim() - 1)))


def jacobian_matching(s_grad: torch.Tensor, t_grad: torch.Tensor, normalized: bool = False,
                      eps: float = 1e-6) -> torch.Tensor:
    """The first-order term of Proposition 1 for the selected output: ``||grad T^i - grad S^i||^2``
    (the supplementary's CIFAR-100 form); ``normalized=True`` compares unit vectors
    ``||grad T^i/||grad T^i|| - grad S^i/||grad S^i|| ||^2`` (its CIFAR-10 form), safe at zero gradients."""
    if normalized:
        s_grad, t_grad = _unit(s_grad, eps), _unit(t_grad, eps)
    return _per_sample_sq(s_grad - t_grad).mean()


def jacobian_norm_penalty(s_grad: torch.Tensor) -> torch.Tensor:
    """Proposition 2's regulariser ``||grad S^i(x)||^2`` for the selected output (sigma^2 is the strength)."""
    return _per_sample_sq(s_grad).mean()


class SoftmaxOutput(nn.Module):
    """``model`` followed by a softmax (or log-softmax) at temperature ``temperature``: ``S_s`` of Eqs. 2-3."""

    def __init__(self, model: nn.Module, temperature: float = 1.0, log: bool = False):
        super().__init__()
        self.model, self.temperature, self.log = model, temperature, log

    def forward(self, x):
        z = self.model(x) / self.temperature
        return F.log_softmax(z, 1) if self.log else F.softmax(z, 1)


def jacobian_norm_penalty_ce(student: nn.Module, x: torch.Tensor, y: torch.Tensor,
                             create_graph: bool = True) -> torch.Tensor:
    """Eq. 3's regulariser for one-hot targets: ``sum_i y^i ||grad S_s^i||^2 / (S_s^i)^2 = ||grad log S_s^y||^2``.

    (The exact second-order expansion has, besides this, a factor 1/2 and a Hessian term that Eq. 3
    drops; notebook 01 measures both.)"""
    _, g, _ = output_and_input_gradient(SoftmaxOutput(student, log=True), x, y, create_graph)
    return _per_sample_sq(g).mean()


def jacobian_matching_ce(s_prob_grad: torch.Tensor, t_prob_grad: torch.Tensor,
                         s_prob: torch.Tensor) -> torch.Tensor:
    """Eq. 2's Jacobian term for the selected softmax output i: ``-(grad T_s^i . grad S_s^i) / S_s^i``.

    ``s_prob_grad``, ``t_prob_grad``: input gradients of the selected softmax outputs (shape of x);
    ``s_prob``: the student's selected softmax output, shape (B,)."""
    dot = (s_prob_grad * t_prob_grad).flatten(1).sum(1)
    return -(dot / s_prob).mean()


def noisy_distillation(student: nn.Module, teacher: nn.Module, x: torch.Tensor, sigma: float,
                       samples: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
    """The left side of Proposition 1 by Monte Carlo: activation matching at ``x + xi``, xi ~ N(0, sigma^2 I),
    averaged over ``samples`` draws (the teacher runs online on the noisy inputs, without a graph)."""
    check_sigma("sigma", sigma)
    check_positive_int("samples", samples)
    total = 0.0
    for _ in range(samples):
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        xn = x + sigma * noise
        with torch.no_grad():
            t = teacher(xn)
        total = total + activation_matching(student(xn), t)
    return total / samples


def soft_target_distillation(s_logits: torch.Tensor, t_logits: torch.Tensor,
                             temperature: float = 4.0) -> torch.Tensor:
    """Hinton et al.'s distillation: ``T^2 KL(softmax(t/T) || softmax(s/T))`` (T^2 keeps gradients comparable across T)."""
    log_p_t = F.log_softmax(t_logits / temperature, 1)
    log_p_s = F.log_softmax(s_logits / temperature, 1)
    return temperature ** 2 * (log_p_t.exp() * (log_p_t - log_p_s)).sum(1).mean()


def lwf_distillation(s_logits: torch.Tensor, t_logits: torch.Tensor, temperature: float = 2.0,
                     form: str = "kl") -> torch.Tensor:
    """Learning without Forgetting's old-task term (Li & Hoiem): the student's source head against the
    teacher's outputs on target images. ``form="kl"``: cross-entropy between temperature softmaxes
    (LwF's own, T=2), up to the teacher's entropy; ``form="squared"``: activation matching (Proposition 1)."""
    check_choice("form", form, ["kl", "squared"])
    if form == "squared":
        return activation_matching(s_logits, t_logits)
    return soft_target_distillation(s_logits, t_logits, temperature) / temperature ** 2


def attention_map(feature: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Zagoruyko & Komodakis's attention map: channel mean of ``|feature|^p``, flattened and L2-normalised per sample."""
    a = feature.abs().pow(p).mean(1).flatten(1)
    return F.normalize(a, dim=1, eps=1e-12)


def attention_transfer(s_features, t_features, p: float = 2.0) -> torch.Tensor:
    """Sum over matched layers of ``||Q_S/||Q_S|| - Q_T/||Q_T|| ||^2`` (per sample, batch mean).
    Feature maps are paired in order and must have equal spatial sizes (channels may differ)."""
    s_features, t_features = list(s_features), list(t_features)
    if len(s_features) != len(t_features) or not s_features:
        raise ValueError(f"attention transfer needs the same positive number of student and teacher "
                         f"feature maps; got {len(s_features)} and {len(t_features)}")
    total = 0.0
    for i, (fs, ft) in enumerate(zip(s_features, t_features)):
        if fs.shape[-2:] != ft.shape[-2:]:
            raise ValueError(f"attention pair {i}: student map {tuple(fs.shape[-2:])} and teacher map "
                             f"{tuple(ft.shape[-2:])} differ in spatial size; pair layers of equal size")
        total = total + (attention_map(fs, p) - attention_map(ft.detach(), p)).pow(2).sum(1).mean()
    return total


# ---------------------------------------------------------------------------------------------------
# The combined objective and the presets

JACOBIAN_OUTPUTS = ("target", "top1", "all")
JACOBIAN_LOSSES = ("squared", "normalized", "ce")


@dataclass(frozen=True)
class Objective:
    """``alpha*CE + beta*activations + gamma*Jacobians`` (the supplementary's loss) plus optional extras.

    jacobian_output: differentiate the label's output ("target"), the teacher's arg-max ("top1", label-free),
    or match the full Jacobian ("all": the sum over outputs of Proposition 1; the teacher's Jacobians are
    cached, ``projections`` >= 1 Gaussian projections give an unbiased estimate at the cost of one output
    each, ``projections=0`` the exact loop over outputs).
    jacobian_loss: "squared" (CIFAR-100 form), "normalized" (CIFAR-10 form; one output only), or "ce": Eq. 2's
    cross-entropy form, ``-(grad T_s^c . grad S_s^c) / S_s^c`` on the selected output's softmax probability (the
    teacher's cached gradients are then of its softmax probability; one output only).
    hinton/temperature: Hinton soft-target distillation. noisy/sigma/samples: Monte-Carlo noisy-input
    distillation (Proposition 1's left side). penalty/projections: Proposition 2's Jacobian-norm penalty,
    on the selected output (projections=0) or the full Jacobian by random projections (projections>=1).
    input_noise: train on inputs with Gaussian noise of this sigma (the other side of Proposition 2).
    """
    alpha: float = 1.0
    beta: float = 0.0
    gamma: float = 0.0
    jacobian_output: str = "target"
    jacobian_loss: str = "squared"
    hinton: float = 0.0
    temperature: float = 4.0
    noisy: float = 0.0
    sigma: float = 0.1
    samples: int = 1
    penalty: float = 0.0
    projections: int = 0
    input_noise: float = 0.0

    def __post_init__(self):
        for name in ("alpha", "beta", "gamma", "hinton", "noisy", "penalty"):
            check_number(name, getattr(self, name), minimum=0.0)
        check_choice("jacobian_output", self.jacobian_output, JACOBIAN_OUTPUTS)
        check_choice("jacobian_loss", self.jacobian_loss, JACOBIAN_LOSSES)
        check_positive_number("temperature", self.temperature)
        check_sigma("sigma", self.sigma)
        check_sigma("input_noise", self.input_noise)
        check_positive_int("samples", self.samples)
        check_nonnegative_int("projections", self.projections)
        if self.jacobian_output == "all" and self.jacobian_loss != "squared":
            raise ValueError("jacobian_output='all' matches full Jacobians with the squared loss; "
                             "use jacobian_loss='squared' (the normalized and ce forms are defined for one output)")
        if self.jacobian_loss == "ce" and self.penalty > 0:
            raise ValueError("jacobian_loss='ce' matches softmax-probability gradients; the penalty is on logits: "
                             "use one of them per objective")
        if self.jacobian_output == "all" and self.penalty > 0 and self.projections == 0:
            raise ValueError("penalty with projections=0 penalises one output, the label's; with "
                             "jacobian_output='all' set projections >= 1 (both terms then use full Jacobians)")

    @property
    def first_order(self) -> bool:
        """Whether the objective has a first-order term of Proposition 1: Jacobian matching, analytic (gamma) or by
        Monte Carlo on noisy inputs (noisy). These terms fit slowly: the cpu profile gives them more steps."""
        return self.gamma > 0 or self.noisy > 0

    @property
    def needs_teacher(self) -> bool:
        return self.beta > 0 or self.gamma > 0 or self.hinton > 0 or self.noisy > 0

    def to_dict(self) -> dict:
        return asdict(self)

    def terms(self, student: nn.Module, x: torch.Tensor, y: torch.Tensor, teacher_logits=None,
              teacher_grad=None, teacher_index=None, teacher: nn.Module | None = None,
              generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """The unweighted terms for one batch. ``teacher_logits``/``teacher_grad``/``teacher_index``: the
        teacher's outputs, input gradients and differentiated outputs on ``x`` (cached or online);
        ``teacher`` is needed only for the noisy term. With ``jacobian_output="all"``, ``teacher_grad`` holds
        the teacher's full Jacobians, shape ``(B, K, *x.shape[1:])``."""
        if self.needs_teacher and teacher_logits is None:
            raise ValueError("this objective matches a teacher: pass teacher_logits (and teacher_grad)")
        if self.input_noise > 0:
            x = x + self.input_noise * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        terms = {}
        one_output_penalty = self.penalty > 0 and self.projections == 0
        if self.gamma > 0 and self.jacobian_output == "all":
            method = "projection" if self.projections > 0 else "loop"
            logits, d = full_jacobian_matching(student, x, teacher_grad, method, self.projections, generator)
            terms["jac"] = d.mean()
        elif self.gamma > 0 or one_output_penalty:
            if self.gamma > 0:
                index = teacher_index
            else:
                index = y if self.jacobian_output == "target" else "top1"
            if self.gamma > 0 and self.jacobian_loss == "ce":
                logits, s_prob, s_grad, _ = softmax_output_and_input_gradient(student, x, index, create_graph=True)
                terms["jac"] = jacobian_matching_ce(s_grad, teacher_grad, s_prob)
            else:
                logits, s_grad, _ = output_and_input_gradient(student, x, index, create_graph=True)
            if self.gamma > 0 and self.jacobian_loss != "ce":
                terms["jac"] = jacobian_matching(s_grad, teacher_grad, self.jacobian_loss == "normalized")
            if one_output_penalty:
                terms["penalty"] = jacobian_norm_penalty(s_grad)
        else:
            logits = student(x)
        if self.penalty > 0 and self.projections > 0:
            terms["penalty"] = frobenius_sq_estimate(student, x, self.projections, generator,
                                                     create_graph=True).mean()
        if self.alpha > 0:
            terms["ce"] = cross_entropy(logits, y)
        if self.beta > 0:
            terms["act"] = activation_matching(logits, teacher_logits)
        if self.hinton > 0:
            terms["hinton"] = soft_target_distillation(logits, teacher_logits, self.temperature)
        if self.noisy > 0:
            if teacher is None:
                raise ValueError("the noisy-input term runs the teacher online: pass teacher=")
            terms["noisy"] = noisy_distillation(student, teacher, x, self.sigma, self.samples, generator)
        return terms

    def weights(self) -> dict[str, float]:
        return {"ce": self.alpha, "act": self.beta, "jac": self.gamma, "hinton": self.hinton,
                "noisy": self.noisy, "penalty": self.penalty}

    def total(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        w = self.weights()
        return sum(w[k] * v for k, v in terms.items())


# The six rows of Tables 1-2; the supplementary: "alpha, beta, gamma are either set to 1 or 0".
PAPER_METHODS = ("ce", "act+ce", "jac+ce", "act+jac+ce", "act", "act+jac")
PRESETS = {
    "ce": dict(alpha=1.0),
    "act+ce": dict(alpha=1.0, beta=1.0),
    "jac+ce": dict(alpha=1.0, gamma=1.0),
    "act+jac+ce": dict(alpha=1.0, beta=1.0, gamma=1.0),
    "act": dict(alpha=0.0, beta=1.0),
    "act+jac": dict(alpha=0.0, beta=1.0, gamma=1.0),
    # The paper's two Jacobian losses side by side: the normalised form (its CIFAR-10 choice) as methods of their
    # own, and Eq. 2's cross-entropy form (soft targets at temperature 1 and their Jacobian term, label-free).
    "act+jacn": dict(alpha=0.0, beta=1.0, gamma=1.0, jacobian_loss="normalized"),
    "act+jacn+ce": dict(alpha=1.0, beta=1.0, gamma=1.0, jacobian_loss="normalized"),
    "soft+softjac": dict(alpha=0.0, hinton=1.0, temperature=1.0, gamma=1.0, jacobian_loss="ce"),
    # Beyond the paper: Proposition 1 used directly, and Hinton's soft targets.
    "noisy+ce": dict(alpha=1.0, noisy=1.0),
    "noisy": dict(alpha=0.0, noisy=1.0),
    "hinton+ce": dict(alpha=1.0, hinton=1.0),
    "hinton": dict(alpha=0.0, hinton=1.0),
}
METHOD_LABELS = {
    "ce": "Regular Cross-Entropy (CE) training",
    "act+ce": "Match Activations + CE",
    "jac+ce": "Match Jacobians + CE",
    "act+jac+ce": "Match {Activations + Jacobians} + CE",
    "act": "Match Activations only",
    "act+jac": "Match {Activations + Jacobians}",
    "act+jacn": "Match {Activations + normalised Jacobians}",
    "act+jacn+ce": "Match {Activations + normalised Jacobians} + CE",
    "soft+softjac": "Match {softmax outputs + their Jacobians} by cross-entropy (Eq. 2)",
    "noisy+ce": "Match Activations under input noise (Monte Carlo) + CE",
    "noisy": "Match Activations under input noise (Monte Carlo)",
    "hinton+ce": "Hinton soft targets + CE",
    "hinton": "Hinton soft targets",
}


def preset(method: str, **overrides) -> Objective:
    """The objective of a named method (a row of Tables 1-2 or a beyond-the-paper baseline), with overrides
    for the options (e.g. ``jacobian_loss="normalized"``, ``sigma=0.2``)."""
    check_choice("method", method, PRESETS)
    known = {f.name for f in fields(Objective)}
    for key in overrides:
        if key not in known:
            raise ValueError(f"{key!r} is not an objective option; allowed: {sorted(known)}")
    return replace(Objective(**PRESETS[method]), **overrides)
