"""Jacobian matching in anyone's training loop: one loss module built from a teacher.

``loss = JacobianMatching(teacher)`` then, for any student ``nn.Module`` and any ``(x, y)`` batch of a
``DataLoader``, ``terms = loss(student, x, y)`` returns the unweighted terms and their weighted sum under
``"loss"``: backpropagate that. The teacher runs in eval mode, without a graph, on every batch (online):
its logits for activation matching (Proposition 1's zeroth-order term) and the input gradient of one of
its outputs for Jacobian matching (the first-order term). jkt's own training caches the teacher's side per
training subset (jkt.teachers.teacher_targets), which saves about half a cross-entropy step per step.
"""
from __future__ import annotations

import torch
from torch import nn

from .jacobian import eval_mode, output_and_input_gradient, softmax_output_and_input_gradient
from .losses import Objective, preset


class JacobianMatching(nn.Module):
    """``alpha CE + beta ||T(x) - S(x)||^2 + gamma ||grad_x T^c(x) - grad_x S^c(x)||^2`` against ``teacher``.

    ``method``: a row of the paper's tables (``"act+jac+ce"`` by default; ``"jac+ce"``, ``"act+jac"``, ...) or an
    :class:`jkt.losses.Objective`; ``options`` override its fields (``jacobian_loss="normalized"``,
    ``jacobian_output="top1"`` for unlabelled data, ``gamma=0.5``). The teacher's parameters are frozen.
    """

    def __init__(self, teacher: nn.Module, method: str | Objective = "act+jac+ce", **options):
        super().__init__()
        self.objective = preset(method, **options) if isinstance(method, str) else method
        if self.objective.jacobian_output == "all" or self.objective.noisy > 0 or self.objective.penalty > 0:
            raise ValueError("JacobianMatching matches one output's Jacobian online; for full Jacobians, noisy "
                             "inputs or a penalty use jkt.train.fit with a jkt.losses.Objective")
        self.teacher = teacher.requires_grad_(False)

    def teacher_side(self, x: torch.Tensor, y: torch.Tensor):
        """The teacher's logits, and (when matching Jacobians) the input gradient of the label's (or top-1)
        output and that output's index, in eval mode."""
        with eval_mode(self.teacher):
            if self.objective.gamma == 0:
                with torch.no_grad():
                    return self.teacher(x), None, None
            index = y if self.objective.jacobian_output == "target" else "top1"
            if self.objective.jacobian_loss == "ce":  # Eq. 2: gradients of the softmax probability
                logits, _, grad, index = softmax_output_and_input_gradient(self.teacher, x, index)
                return logits, grad, index
            return output_and_input_gradient(self.teacher, x, index)

    def forward(self, student: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        logits, grad, index = self.teacher_side(x, y)
        terms = self.objective.terms(student, x, y, teacher_logits=logits, teacher_grad=grad, teacher_index=index)
        return {**terms, "loss": self.objective.total(terms)}
