"""Learning without Forgetting with Jacobians and attention, the pieces of the poster's transfer experiment:
a two-head student (one trunk, a target head and a source head), head surgery on jkt's VGGs and ResNets,
the stages whose attention maps pair up, the teacher's side computed once per training subset, and the
transfer objective (CE + LwF + Jacobian matching + attention transfer).

jkt.experiments.transfer plans and runs the experiment with these.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from . import data as jdata
from .batching import Batches
from . import models
from .jacobian import eval_mode, output_and_input_gradient
from .losses import attention_transfer, cross_entropy, jacobian_matching, lwf_distillation
from .train import HOLD_ON_DEVICE_BYTES, resolve_device
from .validate import check_choice, check_number, check_positive_number

LWF_FORMS = ("squared", "kl")
JACOBIAN_LOSSES = ("squared", "normalized")

# ---------------------------------------------------------------------------------------------------
# Models: the two-head student, views for jkt.jacobian, stage sizes and attention pairs

def _head_slot(model: nn.Module) -> tuple[nn.Module, str]:
    """Where the final linear layer of a jkt VGG (``classifier``) or ResNet (``net.fc``) lives."""
    return (model.net, "fc") if isinstance(model, models.ResNet) else (model, "classifier")


def _take_head(model: nn.Module) -> nn.Linear:
    """Replace the final linear layer of a jkt VGG or ResNet by the identity (so the model returns its
    globally pooled features) and return that layer."""
    owner, attr = _head_slot(model)
    head = getattr(owner, attr)
    if not isinstance(head, nn.Linear):
        raise TypeError(f"{type(model).__name__} has no linear head to take")
    setattr(owner, attr, nn.Identity())
    return head


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """``model`` (a jkt VGG or ResNet, in place) with a fresh linear head of ``num_classes`` outputs."""
    head = _take_head(model)
    owner, attr = _head_slot(model)
    setattr(owner, attr, nn.Linear(head.in_features, num_classes, bias=head.bias is not None))
    return model


class TwoHeadStudent(nn.Module):
    """One trunk, two linear heads on its pooled features: ``target_head`` (the new task, cross-entropy on the
    labels) and ``source_head`` (the teacher's task, matched to the teacher's outputs on target images: LwF).

    ``forward(x)`` returns the target logits, so evaluation sees a plain classifier; ``heads(x)`` returns
    ``(target_logits, source_logits, features)`` with the trunk's named stage features (for attention)."""

    def __init__(self, trunk: nn.Module, num_source: int):
        super().__init__()
        self.target_head = _take_head(trunk)
        self.trunk = trunk
        self.source_head = nn.Linear(self.target_head.in_features, num_source)

    def heads(self, x: torch.Tensor):
        pooled, features = self.trunk(x, taps=True)
        return self.target_head(pooled), self.source_head(pooled), features

    def forward(self, x: torch.Tensor, taps: bool = False):
        target, _, features = self.heads(x)
        return (target, features) if taps else target


def build_student(arch: str, in_channels: int, num_target: int, num_source: int, width: float) -> TwoHeadStudent:
    """A VGG student with a target head and a source head. With the same seed its trunk and target head
    start from the same weights as ``models.build(arch, in_channels, num_target, width)`` (the scratch row)."""
    return TwoHeadStudent(models.build(arch, in_channels, num_target, width), num_source)


class LogitsView(nn.Module):
    """``model`` seen as a function returning one set of logits (what jkt.jacobian differentiates), keeping the
    rest of the same forward pass in ``self.rest``: for a TwoHeadStudent the source logits, with
    ``(target_logits, features)`` kept; for a teacher its logits, with its stage features kept."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.rest = model, None

    def forward(self, x):
        if isinstance(self.model, TwoHeadStudent):
            target, source, features = self.model.heads(x)
            self.rest = (target, features)
            return source
        logits, features = self.model(x, taps=True)
        self.rest = features
        return logits


@torch.no_grad()
def stage_sizes(model: nn.Module, in_channels: int, image_size) -> "OrderedDict[str, tuple[int, int]]":
    """Spatial size (H, W) of each named stage of ``model`` on an image of ``image_size``, by a dry forward pass."""
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    param = next(model.parameters())
    with eval_mode(model):
        _, features = model(torch.zeros(1, in_channels, h, w, dtype=param.dtype, device=param.device), taps=True)
    return OrderedDict((k, tuple(v.shape[-2:])) for k, v in features.items())


def pair_stages(student_sizes: dict, teacher_sizes: dict) -> list[tuple[str, str]]:
    """Attention pairs ``(student_stage, teacher_stage)`` of equal spatial size: every student stage larger than
    1x1 (a 1x1 map's attention is the constant 1) with the first teacher stage of its size not yet taken."""
    pairs, taken = [], set()
    for s, size in student_sizes.items():
        if size[0] * size[1] <= 1:
            continue
        t = next((t for t, ts in teacher_sizes.items() if ts == size and t not in taken), None)
        if t is not None:
            pairs.append((s, t))
            taken.add(t)
    return pairs


def attention_pooled(feature: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """``(mean_c |feature|^p)^(1/p)``, one channel: a stand-in for a teacher feature map that costs one channel of
    memory and has exactly its attention map (``losses.attention_map`` of it is ``normalise(mean_c |feature|^p)``)."""
    return feature.detach().abs().pow(p).mean(1, keepdim=True).pow(1.0 / p)


# ---------------------------------------------------------------------------------------------------
# The teacher's side, computed once per training subset

class TeacherBatch(NamedTuple):
    logits: torch.Tensor      # the teacher's source-task outputs
    attention: dict           # teacher stage -> one-channel maps (attention_pooled)


@dataclass
class TransferTargets:
    """What the student matches, computed once on a fixed target training subset (teacher in eval mode) and
    gathered by row every step: source outputs, the differentiated output (the teacher's top-1: target images
    have no source label), its input gradient, and the teacher's attention maps. Held on ``device`` when
    small, else in CPU memory and moved per batch. ``take`` has the shape jkt.train.fit expects."""
    logits: torch.Tensor
    index: torch.Tensor
    grad: torch.Tensor | None = None
    attention: dict = field(default_factory=dict)
    device: torch.device = torch.device("cpu")

    def take(self, idx: torch.Tensor):
        idx = idx.to(self.logits.device)
        def move(t):
            return t[idx].to(self.device, non_blocking=True)

        batch = TeacherBatch(move(self.logits), {k: move(v) for k, v in self.attention.items()})
        return batch, None if self.grad is None else move(self.grad), move(self.index)


def transfer_targets(teacher: nn.Module, data: jdata.Dataset, split: jdata.Split, with_gradients: bool = True,
                     stages=(), p: float = 2.0, batch_size: int = 128, device="auto") -> TransferTargets:
    """The teacher's source outputs on every row of ``split`` (target images), the input gradient of its top-1
    output (``with_gradients``) and its attention maps at ``stages``, in eval mode (exact per-sample gradients)."""
    device = resolve_device(device)
    sizes = stage_sizes(teacher.to(device), data.in_channels, data.image_size) if stages else {}
    per_row = sum(math.prod(sizes[s]) for s in stages) + (data.in_channels * math.prod(data.image_size)
                                                           if with_gradients else 0)
    keep = device if len(split) * per_row * 4 <= HOLD_ON_DEVICE_BYTES else torch.device("cpu")
    logits, index, grads, maps = [], [], [], {s: [] for s in stages}
    view = LogitsView(teacher)
    with eval_mode(teacher.to(device)):
        for x, _, _ in Batches(split, data, batch_size, device, shuffle=False):
            if with_gradients:
                out, g, i = output_and_input_gradient(view, x, "top1")
                grads.append(g.to(keep))
            else:
                with torch.no_grad():
                    out = view(x)
                i = out.argmax(1)
            for s in stages:
                maps[s].append(attention_pooled(view.rest[s], p).to(keep))
            logits.append(out.detach().to(keep))
            index.append(i.to(keep))
    return TransferTargets(torch.cat(logits), torch.cat(index), torch.cat(grads) if grads else None,
                           {s: torch.cat(v) for s, v in maps.items()}, device)


# ---------------------------------------------------------------------------------------------------
# The objective

@dataclass(frozen=True)
class TransferObjective:
    """``alpha CE(target head) + lwf LwF(source head) + gamma Jacobians(source head) + attention AT``.

    LwF (jkt.losses.lwf_distillation): ``lwf_form="squared"`` is activation matching, the zeroth-order term of
    Proposition 1; ``"kl"`` is Li & Hoiem's temperature softmax (``temperature``). The Jacobian term
    (jkt.losses.jacobian_matching, Proposition 1's first-order term) compares the input gradients of the
    teacher's top-1 source output and the student's same output. Attention (jkt.losses.attention_transfer,
    p=2) pairs student and teacher stages of equal spatial size. With only ``alpha`` it is plain
    cross-entropy on any classifier (the scratch and fine-tuning rows).
    """
    alpha: float = 1.0
    lwf: float = 0.0
    lwf_form: str = "squared"
    temperature: float = 2.0
    gamma: float = 0.0
    jacobian_loss: str = "squared"
    attention: float = 0.0
    p: float = 2.0
    pairs: tuple = ()

    def __post_init__(self):
        for name in ("alpha", "lwf", "gamma", "attention"):
            check_number(name, getattr(self, name), minimum=0.0)
        check_choice("lwf_form", self.lwf_form, LWF_FORMS)
        check_choice("jacobian_loss", self.jacobian_loss, JACOBIAN_LOSSES)
        check_positive_number("temperature", self.temperature)
        check_positive_number("p", self.p)
        if self.attention > 0 and not self.pairs:
            raise ValueError("attention transfer needs at least one (student_stage, teacher_stage) pair")
        object.__setattr__(self, "pairs", tuple(tuple(pair) for pair in self.pairs))

    @property
    def needs_teacher(self) -> bool:
        return self.lwf > 0 or self.gamma > 0 or self.attention > 0

    def to_dict(self) -> dict:
        return asdict(self)

    def terms(self, student: nn.Module, x: torch.Tensor, y: torch.Tensor, teacher_batch: TeacherBatch | None = None,
              teacher_grad=None, teacher_index=None, teacher=None, generator=None) -> dict[str, torch.Tensor]:
        """The unweighted terms for one batch (the call jkt.train.fit makes; ``teacher_batch`` comes from
        TransferTargets.take). One forward pass serves all terms."""
        if not self.needs_teacher:
            return {"ce": cross_entropy(student(x), y)}
        if teacher_batch is None:
            raise ValueError("this objective matches a teacher: pass the teacher's batch (TransferTargets.take)")
        terms = {}
        if self.gamma > 0:
            view = LogitsView(student)
            source, s_grad, _ = output_and_input_gradient(view, x, teacher_index, create_graph=True)
            target, features = view.rest
            terms["jac"] = jacobian_matching(s_grad, teacher_grad, self.jacobian_loss == "normalized")
        else:
            target, source, features = student.heads(x)
        if self.alpha > 0:
            terms["ce"] = cross_entropy(target, y)
        if self.lwf > 0:
            terms["lwf"] = lwf_distillation(source, teacher_batch.logits, self.temperature, self.lwf_form)
        if self.attention > 0:
            terms["att"] = attention_transfer([features[s] for s, _ in self.pairs],
                                              [teacher_batch.attention[t] for _, t in self.pairs], self.p)
        return terms

    def weights(self) -> dict[str, float]:
        return {"ce": self.alpha, "lwf": self.lwf, "jac": self.gamma, "att": self.attention}

    def total(self, terms: dict) -> torch.Tensor:
        w = self.weights()
        return sum(w[k] * v for k, v in terms.items())
