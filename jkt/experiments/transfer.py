"""Transfer learning (the poster's transfer table): a teacher trained on a source task helps a student of
another architecture learn a target task from few labels, with LwF, Jacobians and attention.

Rows (keys of jkt.paper.TRANSFER_MIT67): ``scratch`` (no transfer), ``finetune`` (the oracle: the
teacher's own architecture and weights, a fresh target head), ``lwf`` (Li & Hoiem: a second, source
head on the student matches the teacher's source outputs on the *target* images), ``lwf+jac`` (plus
Jacobian matching of that head: Proposition 1), ``lwf+att`` (plus attention transfer, Zagoruyko &
Komodakis), ``lwf+att+jac``.

Two settings. ``offline``: one dataset split by classes (Fashion-MNIST 0-4 -> 5-9 in the cpu profile);
the teacher is a VGG-9 trained on the source classes. ``paper``: an ImageNet-pretrained torchvision
ResNet teacher (weights from the TORCH_HOME cache) and MIT Indoor 67 (``data/mit-indoor-67``), or
CIFAR-10, as the target; the student is a VGG-9.

Like jkt.experiments: a plan is validated completely when it is made (ValueError naming the
parameter), before any training and before any file is written; each run is one record keyed by its
full config, and finished runs are loaded, not redone.
"""
from __future__ import annotations

import copy
import math
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, fields, replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from . import data as jdata
from . import models, paper, store
from .experiments import records_frame, run_metrics
from .jacobian import eval_mode, output_and_input_gradient
from .losses import (attention_transfer, cross_entropy, jacobian_matching, lwf_distillation)
from .report import fmt, mean_std
from .teachers import get_teacher, teacher_config
from .train import (HOLD_ON_DEVICE_BYTES, accuracy, fit, progress_bar, reset_peak_memory,
                    resolve_device,
                    seed_everything)
from .validate import (as_list, check_choice, check_choices, check_number, check_positive_int, check_positive_number,
                       check_seeds)

METHODS = tuple(paper.TRANSFER_MIT67["rows"])  # the poster's row order
METHOD_LABELS = {
    "scratch": "No transfer",
    "finetune": "Fine-tuning oracle",
    "lwf": "LwF",
    "lwf+jac": "LwF + Jacobians",
    "lwf+att": "LwF + attention",
    "lwf+att+jac": "LwF + attention + Jacobians",
}
SETTINGS = ("offline", "paper")
LWF_FORMS = ("squared", "kl")
JACOBIAN_LOSSES = ("squared", "normalized")
PAPER_DATASETS = ("cifar10", "cifar100")  # besides image folders: the ImageNet teacher needs RGB images
MIT67 = "imagefolder:mit-indoor-67"


# ---------------------------------------------------------------------------------------------------
# Recipes: what each profile means for this experiment, per setting

@dataclass(frozen=True)
class Recipe:
    """The transfer experiment's sizes and schedule for one profile and setting.

    source_classes/target_classes: the offline split of ``dataset`` (None in the paper setting: the
    source task is ImageNet and every class of the dataset is a target class). image_size: None keeps
    the dataset's size; otherwise images are resized to image_size x image_size. teacher_width/epochs/
    batch_size: the offline VGG teacher's training (unused by the pretrained ResNet). student_epochs, or
    (when None) enough epochs for student_steps optimisation steps. finetune_lr: the oracle's Adam rate.
    """
    dataset: str
    source_classes: tuple | None
    target_classes: tuple | None
    image_size: int | None
    teacher_arch: str
    teacher_width: float
    teacher_epochs: int
    teacher_batch_size: int
    student_arch: str
    student_width: float
    student_steps: int | None
    student_epochs: int | None
    batch_size: int
    per_class: object
    seeds: tuple
    finetune_lr: float
    lr: float = 1e-3
    anneal_at: float = 0.8

    def epochs_for(self, n_train: int) -> int:
        if self.student_epochs is not None:
            return self.student_epochs
        return max(1, math.ceil(self.student_steps / math.ceil(n_train / self.batch_size)))


_HALVES = dict(source_classes=(0, 1, 2, 3, 4), target_classes=(5, 6, 7, 8, 9))
# Fashion-MNIST's source task: T-shirt/top, Trouser, Coat, Sandal, Bag; its target task: Pullover, Dress, Shirt,
# Sneaker, Ankle boot. Every target class has a relative among the source classes (the poster's third condition
# for LwF: source and target close). With 0-4 -> 5-9 (all clothes -> mostly shoes) the teacher's features did not
# help: on seed 0 at 10 per class even the fine-tuning oracle stayed below training from scratch (81.6 vs 83.5).
_FASHION = dict(source_classes=(0, 1, 4, 5, 8), target_classes=(2, 3, 6, 7, 9))
# Keyed by profile name, then setting. The paper setting: ResNet-34 (the poster says "ResNet-32", which
# is a CIFAR architecture with no ImageNet weights in torchvision; ResNet-34 is the nearest), 224x224
# inputs for teacher and student alike, batches of 32 (a VGG-9 at 224 with double backpropagation).
RECIPES = {
    "smoke": {
        "offline": Recipe("digits", **_HALVES, image_size=None, teacher_arch="vgg9", teacher_width=1 / 16,
                          teacher_epochs=2, teacher_batch_size=128, student_arch="vgg4", student_width=1 / 8,
                          student_steps=12, student_epochs=None, batch_size=64, per_class=5, seeds=(0,),
                          finetune_lr=1e-3),
        "paper": Recipe(MIT67, None, None, image_size=32, teacher_arch="resnet18", teacher_width=1.0,
                        teacher_epochs=0, teacher_batch_size=32, student_arch="vgg9", student_width=1 / 16,
                        student_steps=12, student_epochs=None, batch_size=32, per_class=5, seeds=(0,),
                        finetune_lr=1e-4),
    },
    "cpu": {
        "offline": Recipe("fashion-mnist", **_FASHION, image_size=None, teacher_arch="vgg9", teacher_width=1 / 8,
                          teacher_epochs=3, teacher_batch_size=128, student_arch="vgg4", student_width=1 / 4,
                          student_steps=150, student_epochs=None, batch_size=128, per_class=10,
                          seeds=(0, 1, 2), finetune_lr=1e-3),
        "paper": Recipe(MIT67, None, None, image_size=112, teacher_arch="resnet34", teacher_width=1.0,
                        teacher_epochs=0, teacher_batch_size=32, student_arch="vgg9", student_width=1 / 4,
                        student_steps=300, student_epochs=None, batch_size=32, per_class=25, seeds=(0, 1, 2),
                        finetune_lr=1e-4),
    },
    "paper": {
        "offline": Recipe("fashion-mnist", **_FASHION, image_size=None, teacher_arch="vgg9", teacher_width=1.0,
                          teacher_epochs=500, teacher_batch_size=128, student_arch="vgg4", student_width=1.0,
                          student_steps=None, student_epochs=500, batch_size=128, per_class=25,
                          seeds=(0, 1, 2), finetune_lr=1e-4),
        "paper": Recipe(MIT67, None, None, image_size=224, teacher_arch="resnet34", teacher_width=1.0,
                        teacher_epochs=0, teacher_batch_size=32, student_arch="vgg9", student_width=1.0,
                        student_steps=None, student_epochs=500, batch_size=32, per_class=25, seeds=(0, 1, 2),
                        finetune_lr=1e-4),
    },
}


def recipe(profile: str, setting: str, **overrides) -> Recipe:
    """The recipe of ``profile`` (smoke, cpu, paper) in ``setting`` (offline, paper), with field overrides."""
    check_choice("profile", profile, RECIPES)
    check_choice("setting", setting, SETTINGS)
    known = {f.name for f in fields(Recipe)}
    for key in overrides:
        if key not in known:
            raise ValueError(f"{key!r} is not a recipe field; allowed: {sorted(known)}")
    return replace(RECIPES[profile][setting], **overrides)


# ---------------------------------------------------------------------------------------------------
# Data: class-restricted datasets, resizing on the device

def restrict_classes(data: jdata.Dataset, classes, name: str = "classes") -> jdata.Dataset:
    """The images of ``classes`` only (both splits), relabelled 0..k-1 in the given order, with their names.

    ``name`` is the parameter named in errors (e.g. ``source_classes``)."""
    classes = _as_list(name, classes)
    if isinstance(classes, str) or not hasattr(classes, "__iter__"):
        raise ValueError(f"{name}={classes!r} must be a list of class labels, e.g. [0, 1, 2, 3, 4]")
    classes = list(classes)
    allowed = f"integers from 0 to {data.num_classes - 1} ({data.name} has {data.num_classes} classes)"
    if len(classes) < 2:
        raise ValueError(f"{name}={classes!r} needs at least 2 classes; give distinct {allowed}")
    for c in classes:
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < data.num_classes:
            raise ValueError(f"{name} entry {c!r} is not allowed; entries must be {allowed}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"{name}={classes!r} repeats a class")
    relabel = torch.full((data.num_classes,), -1, dtype=torch.long)
    relabel[torch.tensor(classes)] = torch.arange(len(classes))

    def keep(split: jdata.Split) -> jdata.Split:
        new = relabel[split.y.cpu()]
        rows = (new >= 0).nonzero().flatten()
        return jdata.Split(split.x[rows.to(split.x.device)], new[rows].to(split.y.device))

    out = copy.copy(data)  # keeps the class (and a resize) of ``data``
    out.name = f"{data.name}[{','.join(map(str, classes))}]"
    out.train, out.test = keep(data.train), keep(data.test)
    out.classes = [data.classes[c] for c in classes]
    out._stats = {}
    return out


@dataclass
class ResizedDataset(jdata.Dataset):
    """A dataset stored at its own size and resized on the device, batch by batch, when normalised
    (bilinear): CIFAR-10 at 224x224 for an ImageNet teacher without 7 GB of upsampled copies in memory."""
    size: int = 0

    def normalize(self, x_uint8: torch.Tensor) -> torch.Tensor:
        x = super().normalize(x_uint8)
        if tuple(x.shape[-2:]) == (self.size, self.size):
            return x
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)

    @property
    def image_size(self) -> tuple[int, int]:
        return (self.size, self.size)


def _paper_data(dataset: str, image_size: int, root) -> jdata.Dataset:
    """The paper setting's target data, normalised with ImageNet's statistics (the teacher's): image
    folders are read at image_size (resized, aspect ratio not kept, no crop); CIFAR is resized on the device."""
    try:
        if dataset.startswith("imagefolder:"):
            return jdata.load(dataset, root=root, image_size=image_size)
        data = jdata.load(dataset, root=root)
    except FileNotFoundError as e:
        if dataset != MIT67:
            raise
        raise FileNotFoundError(
            f"{e}\nMIT Indoor 67 is never downloaded by jkt: fetch indoorCVPR_09.tar and the two split files "
            f"TrainImages.txt and TestImages.txt from the dataset's page, and unpack them so that "
            f"{jdata.data_root(root)}/mit-indoor-67/Images/<class>/*.jpg, .../mit-indoor-67/TrainImages.txt and "
            f".../mit-indoor-67/TestImages.txt exist (see data/README.md). Without MIT Indoor 67, use "
            f"dataset='cifar10'.") from None
    mean, std = jdata.STATS["imagenet"]
    return ResizedDataset(data.name, data.train, data.test, list(data.classes), mean, std, size=image_size)


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


class _LogitsView(nn.Module):
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
        move = lambda t: t[idx].to(self.device, non_blocking=True)  # noqa: E731
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
    view = _LogitsView(teacher)
    with eval_mode(teacher.to(device)):
        for x, _, _ in jdata.Batches(split, data, batch_size, device, shuffle=False):
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
            view = _LogitsView(student)
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


# The supplementary: "all regularization constants are 1".
PRESETS = {
    "scratch": dict(),
    "finetune": dict(),
    "lwf": dict(lwf=1.0),
    "lwf+jac": dict(lwf=1.0, gamma=1.0),
    "lwf+att": dict(lwf=1.0, attention=1.0),
    "lwf+att+jac": dict(lwf=1.0, attention=1.0, gamma=1.0),
}


def method_objective(method: str, lwf_form="squared", temperature=2.0, jacobian_loss="squared", pairs=(),
                     p=2.0, lwf_weight=1.0, jacobian_weight=1.0, attention_weight=1.0) -> TransferObjective:
    """The objective of a row, carrying only the options that row uses (so an unused option never changes a
    run's key and finished runs are reused)."""
    check_choice("method", method, PRESETS)
    base = PRESETS[method]
    options = {}
    if base.get("lwf"):
        options.update(lwf=lwf_weight, lwf_form=lwf_form)
        if lwf_form == "kl":
            options.update(temperature=temperature)
    if base.get("gamma"):
        options.update(gamma=jacobian_weight, jacobian_loss=jacobian_loss)
    if base.get("attention"):
        options.update(attention=attention_weight, pairs=tuple(pairs), p=p)
    return TransferObjective(**options)


# ---------------------------------------------------------------------------------------------------
# The plan

@dataclass
class TransferPlan:
    """One transfer experiment: one setting, dataset and per_class; the rows (methods) x seeds."""
    profile: str
    setting: str
    recipe: Recipe
    dataset: str
    per_class: object
    methods: list
    seeds: list
    lwf_form: str
    temperature: float
    jacobian_loss: str
    attention_pairs: list
    weights: dict
    teacher_pretrained: bool
    device: torch.device
    data: jdata.Dataset = field(repr=False)               # the target task
    source_data: jdata.Dataset | None = field(repr=False)  # offline: the source task (None: ImageNet)
    results: object = None
    progress: bool = True
    data_root: object = None
    _teacher: tuple | None = field(default=None, repr=False)

    # ---- configs (what makes each result; hashed into its key) -------------------------------------
    @property
    def num_source(self) -> int:
        return self.source_data.num_classes if self.source_data is not None else 1000

    def teacher_config(self) -> dict:
        r = self.recipe
        if self.setting == "offline":
            base = teacher_config(self.dataset, r.teacher_arch, r.teacher_width, r.teacher_epochs,
                                  r.teacher_batch_size, seed=0, lr=r.lr)
            extra = {} if r.image_size is None else {"image_size": r.image_size}
            return dict(base, source_classes=list(r.source_classes), **extra)
        return {"kind": "teacher", "arch": r.teacher_arch, "source": "imagenet",
                "weights": _weights_name(r.teacher_arch) if self.teacher_pretrained else "random init, seed 0"}

    def train_split(self, seed: int) -> jdata.Split:
        return jdata.subset(self.data.train, self.per_class, seed)

    def objective(self, method: str) -> TransferObjective:
        return method_objective(method, self.lwf_form, self.temperature, self.jacobian_loss, self.attention_pairs,
                                lwf_weight=self.weights["lwf"], jacobian_weight=self.weights["jacobian"],
                                attention_weight=self.weights["attention"])

    def run_config(self, method: str, seed: int) -> dict:
        r = self.recipe
        n_train = len(self.data.train) if self.per_class == "full" else self.per_class * self.data.num_classes
        finetune = method == "finetune"
        return {"kind": "transfer", "profile": self.profile, "setting": self.setting, "dataset": self.dataset,
                "source_classes": None if r.source_classes is None else list(r.source_classes),
                "target_classes": None if r.target_classes is None else list(r.target_classes),
                "image_size": list(self.data.image_size), "per_class": self.per_class, "method": method,
                "seed": seed, "objective": self.objective(method).to_dict(),
                "model": r.teacher_arch if finetune else r.student_arch,
                "width": r.teacher_width if finetune else r.student_width,
                "heads": "target" if method in ("scratch", "finetune") else "target+source",
                "epochs": r.epochs_for(n_train), "batch_size": r.batch_size,
                "lr": r.finetune_lr if finetune else r.lr, "anneal_at": r.anneal_at,
                "teacher": store.config_hash(self.teacher_config())}

    def pending(self) -> list[tuple[str, int]]:
        return [(m, s) for s in self.seeds for m in self.methods
                if store.load_record(self.run_config(m, s), self.results) is None]

    def describe(self) -> str:
        r = self.recipe
        teacher = (f"{r.teacher_arch} (width {r.teacher_width:g}) trained on classes {list(r.source_classes)}"
                   if self.setting == "offline" else
                   f"{r.teacher_arch}, {'ImageNet weights' if self.teacher_pretrained else 'random weights (test)'}")
        pairs = ", ".join(f"{s}<-{t}" for s, t in self.attention_pairs) or "none"
        return (f"{self.profile} profile, {self.setting} setting: {self.data.name}, {self.data.num_classes} target "
                f"classes, {len(self.data.train)} training / {len(self.data.test)} test images at "
                f"{self.data.image_size[0]}x{self.data.image_size[1]}\n"
                f"teacher: {teacher}; student: {r.student_arch} (width {r.student_width:g}); per_class={self.per_class}\n"
                f"attention pairs (student<-teacher): {pairs}\n"
                f"{len(self.methods)} methods x {len(self.seeds)} seeds on {self.device}; "
                f"{len(self.pending())} runs to do")

    # ---- work ---------------------------------------------------------------------------------------------
    def teacher(self) -> tuple[nn.Module, dict]:
        """``(teacher in eval mode, meta)``. Offline: the VGG teacher of the source classes, trained once and then
        loaded from data/checkpoints. Paper: the ImageNet ResNet (loaded when the plan was made)."""
        if self._teacher is None:
            self._teacher = get_teacher(self.source_data, self.source_data.train, self.teacher_config(), self.device,
                                        root=self.data_root, progress=self.progress)
        return self._teacher

    def run(self) -> "pandas.DataFrame":  # noqa: F821
        """Run every pending (method, seed), one record each; returns this plan's records as a DataFrame."""
        todo = self.pending()
        if todo:
            teacher, meta = self.teacher()
            cache = {}
            bar = progress_bar(todo, self.progress, desc=f"{self.data.name} per_class={self.per_class}")
            for method, seed in bar:
                bar.set_postfix(method=method, seed=seed)
                self._run_one(method, seed, teacher, meta, cache, todo)
        return self.records()

    def _targets(self, teacher, seed, train, todo, cache) -> TransferTargets:
        if seed not in cache:
            cache.clear()
            wanted = [self.objective(m) for m, s in todo if s == seed]
            cache[seed] = transfer_targets(
                teacher, self.data, train, with_gradients=any(o.gamma > 0 for o in wanted),
                stages=sorted({t for o in wanted for _, t in o.pairs}),
                p=next((o.p for o in wanted if o.attention > 0), 2.0), batch_size=self.recipe.batch_size,
                device=self.device)
        return cache[seed]

    def _run_one(self, method, seed, teacher, teacher_meta, cache, todo):
        config, r = self.run_config(method, seed), self.recipe
        objective = self.objective(method)
        start = time.perf_counter()
        reset_peak_memory(self.device)
        train = self.train_split(seed)
        targets = self._targets(teacher, seed, train, todo, cache) if objective.needs_teacher else None
        seed_everything(seed)
        if method == "finetune":
            model = replace_head(copy.deepcopy(teacher), self.data.num_classes)
        elif method == "scratch":
            model = models.build(r.student_arch, self.data.in_channels, self.data.num_classes, r.student_width)
        else:
            model = build_student(r.student_arch, self.data.in_channels, self.data.num_classes, self.num_source,
                                  r.student_width)
        history = fit(model, self.data, train, objective, config["epochs"], r.batch_size, seed=seed, lr=config["lr"],
                      anneal_at=r.anneal_at, device=self.device, teacher_targets=targets, progress=self.progress,
                      desc=f"{method} seed {seed}")
        test_acc = accuracy(model, self.data, self.data.test, batch_size=max(r.batch_size, 256), device=self.device)
        metrics = run_metrics(history, start, len(train), self.device, test_accuracy=test_acc,
                              teacher_source_accuracy=teacher_meta.get("test_accuracy"))
        store.save_record(config, metrics, self.results)
        return metrics

    def records(self):
        """This plan's finished runs as a DataFrame (one row per run)."""
        return records_frame(self.run_config, self.methods, self.seeds, self.results)

    def table(self, records=None):
        """Test accuracy, mean ± std over seeds, in the poster's row order; the poster's number beside it in
        the paper setting (on MIT Indoor 67, at per_class 25, 50 or full)."""
        return transfer_table(self.records() if records is None else records, self.methods, self.setting,
                              self.per_class, self.data.num_classes)


@torch.no_grad()
def attention_examples(plan: TransferPlan, n: int = 4, p: float = 2.0):
    """What attention transfer hands the student: ``(images, maps)`` for the first ``n`` target test images, the
    images as (n, H, W, C) floats in [0, 1] and, per attention pair ``"student<-teacher"``, the teacher's
    attention maps (n, h, w) (``losses.attention_map`` reshaped)."""
    from .losses import attention_map

    check_positive_int("n", n)
    teacher, _ = plan.teacher()
    split = jdata.Split(plan.data.test.x[:n], plan.data.test.y[:n])
    x, _, _ = next(iter(jdata.Batches(split, plan.data, n, plan.device, shuffle=False)))
    with eval_mode(teacher):
        _, features = teacher(x, taps=True)
    maps = {f"{s}<-{t}": attention_map(features[t], p).view(len(x), *features[t].shape[-2:]).cpu()
            for s, t in plan.attention_pairs}
    mean = torch.tensor(plan.data.mean).view(1, -1, 1, 1)
    std = torch.tensor(plan.data.std).view(1, -1, 1, 1)
    images = (x.cpu() * std + mean).clamp(0, 1).permute(0, 2, 3, 1)
    return images, maps


def paired_gains(records, base: str = "scratch"):
    """Each method's accuracy minus ``base``'s, seed by seed (a seed draws the training subset that all rows of
    that seed share, so the paired difference removes the subset's luck): mean, std over seeds, the seed count
    and on how many seeds the method won. Indexed by method in the poster's order, ``base`` left out."""
    import pandas as pd

    acc = records.pivot_table(index="seed", columns="method", values="test_accuracy")
    rows = []
    for m in [m for m in METHODS if m in acc.columns and m != base] if base in acc.columns else []:
        diff = (acc[m] - acc[base]).dropna()
        mean, std, n = mean_std(diff)
        rows.append({"method": m, "gain": mean, "std": std, "seeds": n, "wins": int((diff > 0).sum())})
    return pd.DataFrame(rows, columns=["method", "gain", "std", "seeds", "wins"]).set_index("method")


def poster_number(method: str, per_class) -> float | None:
    """The poster's MIT Indoor 67 accuracy for ``method`` at ``per_class`` (None where it has no cell)."""
    table = paper.TRANSFER_MIT67
    if method not in table["rows"] or per_class not in table["per_class"]:
        return None
    return table["rows"][method][table["per_class"].index(per_class)]


def transfer_table(records, methods, setting: str, per_class, num_classes: int | None = None):
    """One row per method in the poster's order: mean ± std of the test accuracy over seeds and the seed count;
    in the paper setting a ``poster`` column (its number when the target has MIT Indoor's 67 classes)."""
    import pandas as pd

    rows = []
    for m in sorted(methods, key=METHODS.index):
        acc = records.loc[records["method"] == m, "test_accuracy"] if len(records) else []
        row = {"method": m, "description": METHOD_LABELS[m]}
        if len(acc):
            mean, std, n = mean_std(acc)
            row.update({"accuracy": fmt(mean, std, n), "mean": mean, "std": std, "seeds": n})
        else:
            row.update({"accuracy": "not run", "mean": float("nan"), "std": float("nan"), "seeds": 0})
        if setting == "paper":
            row["poster"] = poster_number(m, per_class) if num_classes == 67 else None
        rows.append(row)
    return pd.DataFrame(rows).set_index("method")


# ---------------------------------------------------------------------------------------------------
# Validation and plan construction

def _as_list(name: str, value):
    """Lists arrive as text from ``papermill -p name '[...]'``: read back a string that looks like a list
    (other strings, such as attention_layers="auto", pass through)."""
    if isinstance(value, str) and value.strip().startswith("["):
        return as_list(name, value, "['a', 'b'] or [0, 1]")
    return value


def _weights_name(arch: str) -> str:
    import torchvision

    return str(torchvision.models.get_model_weights(arch).DEFAULT)


def _check_attention_layers(value, student_sizes, teacher_sizes) -> list[tuple[str, str]]:
    """``"auto"`` (pair_stages) or a list of ``"student_stage:teacher_stage"`` of equal spatial size."""
    sizes = lambda d: ", ".join(f"{k} {v[0]}x{v[1]}" for k, v in d.items())  # noqa: E731
    where = f"student stages: {sizes(student_sizes)}; teacher stages: {sizes(teacher_sizes)}"
    if value == "auto":
        return pair_stages(student_sizes, teacher_sizes)
    value = _as_list("attention_layers", value)
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"attention_layers={value!r} is not allowed; give 'auto' or a non-empty list of "
                         f"'student_stage:teacher_stage' pairs of equal spatial size ({where})")
    pairs = []
    for item in value:
        parts = item.split(":") if isinstance(item, str) else []
        if len(parts) != 2 or parts[0] not in student_sizes or parts[1] not in teacher_sizes:
            raise ValueError(f"attention_layers entry {item!r} is not allowed; write 'student_stage:teacher_stage' "
                             f"with stages of the two networks ({where})")
        if student_sizes[parts[0]] != teacher_sizes[parts[1]]:
            raise ValueError(f"attention_layers entry {item!r} pairs maps of different spatial size "
                             f"({student_sizes[parts[0]]} and {teacher_sizes[parts[1]]}); pair equal sizes ({where})")
        pairs.append((parts[0], parts[1]))
    if len(set(pairs)) != len(pairs):
        raise ValueError(f"attention_layers={value!r} repeats a pair")
    return pairs


def plan_transfer(profile: str = "cpu", setting: str = "offline", dataset: str | None = None, per_class=None,
                  methods=METHODS, seeds=None, temperature: float = 2.0, lwf_form: str = "squared",
                  jacobian_loss: str = "squared", attention_layers="auto", device="auto", image_size=None,
                  source_classes=None, target_classes=None, teacher_arch=None, teacher_pretrained: bool = True,
                  lwf_weight: float = 1.0, jacobian_weight: float = 1.0, attention_weight: float = 1.0,
                  results=None, data_root=None, progress: bool = True) -> TransferPlan:
    """Validate every parameter (ValueError naming it), find the teacher's weights and the data (FileNotFoundError
    saying where to put them), and return the plan. Nothing is trained or written here.

    None means the recipe's value (jkt.transfer.RECIPES[profile][setting]): dataset, per_class, seeds,
    image_size, source/target classes (offline), teacher_arch. ``attention_layers``: "auto" (student and
    teacher stages of equal spatial size, by a dry forward pass) or ["student_stage:teacher_stage", ...].
    ``teacher_pretrained=False`` (tests only) gives the paper setting a randomly initialised ResNet.
    """
    # 1. values, before anything is loaded
    r = recipe(profile, setting)
    dataset = r.dataset if dataset is None else dataset
    is_folder = isinstance(dataset, str) and dataset.startswith("imagefolder:") and len(dataset) > len("imagefolder:")
    allowed = list(jdata.DATASETS) if setting == "offline" else list(PAPER_DATASETS)
    if not (is_folder or (isinstance(dataset, str) and dataset in allowed)):
        why = "" if setting == "offline" else " (the paper setting's ImageNet teacher needs RGB images)"
        raise ValueError(f"dataset={dataset!r} is not allowed in the {setting} setting{why}; choose one of "
                         f"{allowed} or 'imagefolder:PATH'")
    methods = check_choices("methods", _as_list("methods", methods), METHODS)
    methods = sorted(methods, key=METHODS.index)
    seeds = check_seeds("seeds", list(r.seeds) if seeds is None else _as_list("seeds", seeds))
    per_class = r.per_class if per_class is None else per_class
    if not (per_class == "full" or (isinstance(per_class, int) and not isinstance(per_class, bool) and per_class >= 1)):
        raise ValueError(f"per_class={per_class!r} is not allowed; it must be an integer >= 1 or 'full'")
    check_positive_number("temperature", temperature)
    check_choice("lwf_form", lwf_form, LWF_FORMS)
    check_choice("jacobian_loss", jacobian_loss, JACOBIAN_LOSSES)
    weights = {"lwf": check_positive_number("lwf_weight", lwf_weight),
               "jacobian": check_positive_number("jacobian_weight", jacobian_weight),
               "attention": check_positive_number("attention_weight", attention_weight)}
    if not (attention_layers == "auto" or isinstance(_as_list("attention_layers", attention_layers), (list, tuple))):
        raise ValueError(f"attention_layers={attention_layers!r} is not allowed; give 'auto' or a list of "
                         f"'student_stage:teacher_stage' pairs, e.g. ['stage1:stage1']")
    if image_size is not None:
        check_positive_int("image_size", image_size)
        if image_size < 8:
            raise ValueError(f"image_size={image_size} is not allowed; it must be an integer >= 8 (the VGGs pool "
                             f"down to 1x1 by then)")
    overrides = {"dataset": dataset, "per_class": per_class, "seeds": tuple(seeds)}
    if image_size is not None:
        overrides["image_size"] = image_size
    if teacher_arch is not None:
        arches = list(models.VGG_CONFIGS) if setting == "offline" else list(models.RESNETS)
        overrides["teacher_arch"] = check_choice("teacher_arch", teacher_arch, arches)
    if setting == "offline":
        for name, value in (("source_classes", source_classes), ("target_classes", target_classes)):
            if value is not None:
                value = _as_list(name, value)
                if isinstance(value, str) or not isinstance(value, (list, tuple)):
                    raise ValueError(f"{name}={value!r} must be a list of class labels, e.g. [0, 1, 2, 3, 4]")
                overrides[name] = tuple(value)
    elif source_classes is not None or target_classes is not None:
        raise ValueError("source_classes and target_classes are for the offline setting; in the paper setting the "
                         "source task is ImageNet and every class of the dataset is a target class")
    if not isinstance(teacher_pretrained, bool):
        raise ValueError(f"teacher_pretrained={teacher_pretrained!r} must be True or False")
    r = replace(r, **overrides)
    if setting == "offline" and set(r.source_classes) & set(r.target_classes):
        raise ValueError(f"source_classes={list(r.source_classes)} and target_classes={list(r.target_classes)} "
                         f"overlap; the target task must be new classes")
    device = resolve_device(device)

    # 2. the teacher's weights (paper), then the data
    teacher = None
    if setting == "paper":
        if teacher_pretrained:
            teacher = models.build_resnet(r.teacher_arch, 3, 1000, pretrained=True)  # FileNotFoundError: where to put them
        else:
            seed_everything(0)
            teacher = models.build_resnet(r.teacher_arch, 3, 1000, pretrained=False)
        teacher = teacher.to(device).eval()
        data, source_data = _paper_data(dataset, r.image_size, data_root), None
        if data.in_channels != 3:
            raise ValueError(f"dataset={dataset!r} has {data.in_channels} channel(s); the ImageNet teacher needs RGB")
    else:
        full = jdata.load(dataset, root=data_root)
        if r.image_size is not None and (r.image_size, r.image_size) != full.image_size:
            full = ResizedDataset(full.name, full.train, full.test, list(full.classes), full.mean, full.std,
                                  size=r.image_size)
        source_data = restrict_classes(full, r.source_classes, "source_classes")
        data = restrict_classes(full, r.target_classes, "target_classes")
    jdata.subset_indices(data.train, per_class, 0)  # raises ValueError naming per_class and its range

    # 3. attention pairs, by a dry forward pass of architecture twins
    student_twin = models.build(r.student_arch, data.in_channels, 2, r.student_width)
    teacher_twin = teacher if teacher is not None else models.build(
        r.teacher_arch, data.in_channels, source_data.num_classes, r.teacher_width)
    s_sizes = stage_sizes(student_twin, data.in_channels, data.image_size)
    t_sizes = stage_sizes(teacher_twin, data.in_channels, data.image_size)
    pairs = _check_attention_layers(attention_layers, s_sizes, t_sizes)
    if not pairs and any(PRESETS[m].get("attention") for m in methods):
        raise ValueError(f"attention_layers='auto' found no student and teacher stages of equal spatial size "
                         f"(student: {dict(s_sizes)}, teacher: {dict(t_sizes)}); give attention_layers explicitly "
                         f"or leave out the attention rows")
    plan = TransferPlan(profile, setting, r, dataset, per_class, methods, seeds, lwf_form, float(temperature),
                        jacobian_loss, pairs, weights, teacher_pretrained, device, data, source_data, results,
                        progress, data_root)
    if teacher is not None:
        plan._teacher = (teacher, {"test_accuracy": None, "cached": True, "arch": r.teacher_arch})
    return plan
