"""Profiles: one word picks a whole recipe, so that every notebook and the batch agree.

``smoke``: scikit-learn's digits, the narrowest nets, a few steps (CI: seconds per notebook).
``cpu``: Fashion-MNIST (the embedded default), narrow VGGs, minutes on 2 cores.
``paper``: CIFAR-10/100 at the paper's widths, 500 epochs, Adam 1e-3 -> 1e-4 at 400 (one GPU or more).

Everything a profile decides is one :class:`Profile` in :data:`PROFILES`: the distillation recipe
(notebook 03, Tables 1-2), the robustness recipe (notebook 04, Table 3), the transfer recipes per
setting (notebook 05), the sizes of notebooks 01 and 02, and the batch reproduction's grid.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields, replace

from .validate import check_choice


def epochs_for(n_train: int, batch_size: int, epochs: int | None, steps: int | None) -> int:
    """Epochs of a run on ``n_train`` images: ``epochs`` when given, else enough epochs for ``steps``
    optimisation steps of ``batch_size`` (so small and large subsets get the same number of updates)."""
    if epochs is not None:
        return epochs
    return max(1, math.ceil(steps / math.ceil(n_train / batch_size)))


@dataclass(frozen=True)
class TransferSetting:
    """What the transfer experiment (notebook 05) changes from its profile in one setting; None: the profile's
    value (teacher and student architecture, width and epochs, steps, batch size, per_class).

    source_classes/target_classes: the offline split of the dataset (None in the paper setting: the source
    task is ImageNet and every class of the dataset is a target class). image_size: None keeps the dataset's
    size, else images are resized to image_size x image_size. finetune_lr: the fine-tuning oracle's Adam rate.
    """
    dataset: str | None = None
    source_classes: tuple | None = None
    target_classes: tuple | None = None
    image_size: int | None = None
    teacher_arch: str | None = None
    teacher_width: float | None = None
    teacher_epochs: int | None = None
    student_arch: str | None = None
    student_width: float | None = None
    student_steps: int | None = None
    student_epochs: int | None = None
    batch_size: int | None = None
    per_class: object = None
    finetune_lr: float = 1e-3


@dataclass(frozen=True)
class Recipe:
    """A transfer setting resolved against its profile: every field set (what jkt.experiments.transfer reads)."""
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
    lr: float
    anneal_at: float

    def epochs_for(self, n_train: int) -> int:
        return epochs_for(n_train, self.batch_size, self.student_epochs, self.student_steps)


@dataclass(frozen=True)
class Profile:
    name: str
    dataset: str                      # the default dataset of the experiment notebooks
    datasets: tuple                   # the datasets of the batch reproduction's distillation grid
    # teacher (VGG-9 on the full training set)
    teacher_arch: str
    teacher_width: float
    teacher_epochs: int
    teacher_batch_size: int
    # student (VGG-4 on a per-class subset)
    student_arch: str
    student_width: float
    student_epochs: int | None        # None: derived from student_steps and the subset size
    student_steps: object             # optimisation steps per student run when epochs is None: an int, or
                                      # {per_class: steps} (the levelled-off points of the learning curves)
    batch_size: int
    per_class: int                    # the default per-class size of notebook 03
    per_class_grid: dict              # dataset -> the per-class sizes of the batch reproduction
    seeds: tuple
    # noise robustness (Table 3)
    robust_width: float
    robust_epochs: int
    robust_per_class: object          # "full" or an int: the training set of the Table 3 networks
    noise_draws: int
    # transfer (the poster's table): setting -> what differs from the fields above
    transfer: dict = field(default_factory=dict)
    transfer_grid: tuple = ("offline", None)  # the batch's (setting, per-class sizes); None: the setting's per_class
    # notebooks 01 and 02: sample counts and sizes
    sizes: dict = field(default_factory=dict)
    # the mechanism metrics of every student (jkt.mechanism): test images, noise sigmas and draws
    # (2 noise draws per image: every student sees the same draws, so they cancel in the paired comparisons)
    mechanism: dict = field(default_factory=lambda: {"images": 1000, "sigmas": (0.1, 0.3), "draws": 2})
    robust_test_per_class: object = "full"  # the test images of Table 3 ("full": the official test split)
    robust_strengths: tuple = (0.0, 0.01, 0.1, 0.5, 1.0)  # Table 3's rows (the paper's five)
    lr: float = 1e-3
    anneal_at: float = 0.8
    # the distillation students' validation pool: images per class of the training split that no subset uses
    # (jkt.data.holdout); 0: none
    validation_per_class: int = 0
    jacobian_steps: object = None     # steps of the methods with a Jacobian or noise term (like student_steps);
                                      # None: student_steps
    # the batch's distillation grid: the methods at every per_class, those added per per_class (the Jacobian
    # losses side by side, the practitioner's comparison), and the seeds per per_class (None: the profile's)
    grid_methods: tuple = ("ce", "act+ce", "jac+ce", "act+jac+ce", "act", "act+jac")
    extra_methods: dict = field(default_factory=dict)
    grid_seeds: dict | None = None
    seeds_per_job: dict = field(default_factory=dict)  # per_class -> seeds per batch job (default 1): small cells
                                                       # share one notebook's start-up (kernel, teacher, data)
    # the learning curves that check the students' steps: these methods and seeds also trained for each factor
    # times the profile's steps at every per_class of the grid (validation accuracy against steps)
    curves: dict = field(default_factory=dict)

    def steps_for(self, per_class, first_order: bool = False) -> int | None:
        """The student's optimisation steps at ``per_class`` (``first_order``: of a method with a Jacobian or noise
        term, jkt.losses.Objective.first_order, which has its own ``jacobian_steps`` when set): the number itself,
        or the entry of the nearest listed size (on a log scale; "full" counts as the largest)."""
        steps = self.jacobian_steps if first_order and self.jacobian_steps is not None else self.student_steps
        if not isinstance(steps, dict):
            return steps
        if per_class in steps:
            return steps[per_class]
        size = lambda v: math.inf if v == "full" else math.log(float(v))
        return steps[min(steps, key=lambda k: abs(size(k) - size(per_class)) if size(per_class) < math.inf
                         else -size(k))]

    def student_epochs_for(self, n_train: int, batch_size: int | None = None, per_class=None,
                           steps: int | None = None, first_order: bool = False) -> int:
        """Epochs of a student run on ``n_train`` images (:func:`epochs_for` with the profile's schedule):
        ``steps`` when given, else the profile's steps at ``per_class``."""
        return epochs_for(n_train, batch_size or self.batch_size, self.student_epochs,
                          steps if steps is not None else self.steps_for(per_class, first_order))

    def seeds_for(self, per_class) -> tuple:
        """The batch grid's seeds at ``per_class``: 0..n-1 from ``grid_seeds``, else the profile's seeds."""
        n = (self.grid_seeds or {}).get(per_class)
        return tuple(range(n)) if n else self.seeds

    def methods_for(self, per_class) -> tuple:
        """The batch grid's distillation methods at ``per_class``."""
        return tuple(self.grid_methods) + tuple(self.extra_methods.get(per_class, ()))

    def transfer_recipe(self, setting: str) -> Recipe:
        """The transfer recipe of ``setting`` (offline, paper): the setting's fields, the profile's elsewhere."""
        check_choice("setting", setting, self.transfer)
        s = self.transfer[setting]
        pick = lambda name, default: default if getattr(s, name) is None else getattr(s, name)
        steps, epochs = ((s.student_steps, s.student_epochs) if s.student_steps or s.student_epochs
                         else (self.steps_for(pick("per_class", self.per_class)), self.student_epochs))
        return Recipe(dataset=pick("dataset", self.dataset), source_classes=s.source_classes,
                      target_classes=s.target_classes, image_size=s.image_size,
                      teacher_arch=pick("teacher_arch", self.teacher_arch),
                      teacher_width=pick("teacher_width", self.teacher_width),
                      teacher_epochs=pick("teacher_epochs", self.teacher_epochs),
                      teacher_batch_size=pick("batch_size", self.teacher_batch_size),
                      student_arch=pick("student_arch", self.student_arch),
                      student_width=pick("student_width", self.student_width),
                      student_steps=steps, student_epochs=epochs, batch_size=pick("batch_size", self.batch_size),
                      per_class=pick("per_class", self.per_class), seeds=self.seeds, finetune_lr=s.finetune_lr,
                      lr=self.lr, anneal_at=self.anneal_at)

    def to_dict(self) -> dict:
        return asdict(self)

    def recipe_hash(self) -> str:
        """A short hash of everything this profile decides: the identity that every record of it carries."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


# Notebooks 01 and 02 (cpu sizes; the other profiles change a few)
_SIZES = dict(
    # notebook 01: the Taylor checks on small float64 MLPs over 8x8 digits
    points=8,                      # test points per network
    draws=32_000,                  # antithetic noise pairs per point, in orthogonal blocks (shared by all sigmas)
    chunk_rows=48_000,             # rows per forward pass in the Monte Carlo (bounds memory)
    sigmas=(1 / 256, 1 / 128, 1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2),
    teacher_hidden=(32, 32), student_hidden=(16,),
    teacher_epochs=8, student_epochs=40, student_per_class=20,
    affine_epochs=3, affine_points=64, widget_draws=4_000,
    # notebook 02: Jacobians of the profile's VGG-9 teacher and VGG-4 student
    fd_points=4, fd_directions=3,
    timing_batch=64, timing_repeats=5, timing_warmup=1, timing_min_seconds=0.2,
    bn_batch_sizes=(8, 32, 128), bn_rows=8,
    student_steps=60, gradient_examples=5, cosine_points=None,    # None: the whole test set
    estimator_points=8, estimator_repeats=16, estimator_sigmas=(0.01, 0.1),
)

# Transfer, offline: Fashion-MNIST's source task T-shirt/top, Trouser, Coat, Sandal, Bag; its target task Pullover,
# Dress, Shirt, Sneaker, Ankle boot. Every target class has a relative among the source classes (the poster's
# third condition for LwF: source and target close). With 0-4 -> 5-9 (all clothes -> mostly shoes) the teacher's
# features did not help: on seed 0 at 10 per class even the fine-tuning oracle stayed below training from scratch
# (81.6 vs 83.5). Transfer, paper: ResNet-34 (the poster says "ResNet-32", a CIFAR architecture with no ImageNet
# weights in torchvision; ResNet-34 is the nearest), the same input size for teacher and student, batches of 32
# (a VGG-9 at 224 with double backpropagation).
_HALVES = dict(source_classes=(0, 1, 2, 3, 4), target_classes=(5, 6, 7, 8, 9))
_FASHION = dict(source_classes=(0, 1, 4, 5, 8), target_classes=(2, 3, 6, 7, 9))
MIT67 = "imagefolder:mit-indoor-67"
_RESNET_TEACHER = dict(dataset=MIT67, teacher_arch="resnet34", teacher_epochs=0, student_arch="vgg9", batch_size=32,
                       finetune_lr=1e-4)

PROFILES = {
    "smoke": Profile(
        name="smoke", dataset="digits", datasets=("digits",),
        teacher_arch="vgg9", teacher_width=1 / 16, teacher_epochs=3, teacher_batch_size=64,
        student_arch="vgg4", student_width=1 / 8, student_epochs=None, student_steps=12, batch_size=64,
        per_class=5, per_class_grid={"digits": (5,)}, seeds=(0,),
        robust_width=1 / 8, robust_epochs=10, robust_per_class=20, noise_draws=2,
        transfer={"offline": TransferSetting(**_HALVES, teacher_epochs=2),
                  "paper": TransferSetting(**dict(_RESNET_TEACHER, teacher_arch="resnet18"), image_size=32,
                                           teacher_width=1.0, student_width=1 / 16)},
        sizes=dict(_SIZES, points=3, draws=8_000, chunk_rows=24_000, teacher_epochs=4, student_epochs=20,
                   affine_epochs=2, affine_points=16, widget_draws=1_000,
                   fd_points=2, fd_directions=2, timing_batch=32, timing_repeats=3, timing_min_seconds=0.02,
                   bn_batch_sizes=(8, 32), bn_rows=4,
                   student_steps=40, gradient_examples=3, estimator_points=6, estimator_repeats=8),
        mechanism={"images": 200, "sigmas": (0.1, 0.3), "draws": 2}, validation_per_class=20,
        extra_methods={5: ("act+jacn", "soft+softjac", "noisy", "hinton")},
        curves={"methods": ("act",), "factors": (2,), "seeds": (0,)}),
    "cpu": Profile(
        name="cpu", dataset="fashion-mnist", datasets=("fashion-mnist",),
        teacher_arch="vgg9", teacher_width=1 / 8, teacher_epochs=3, teacher_batch_size=128,
        student_arch="vgg4", student_width=1 / 4, student_epochs=None, batch_size=128,
        # steps where the pilot learning curves of 2026-12-05 (seed 0, validation pool) level off or the budget
        # ends: outputs-only methods level off within 200-400 steps at 1-10 per class; the Jacobian and noise
        # terms fit slowly (act+jac at 5 per class: 66.4, 67.2, 67.8, 69.3 at 200, 400, 800, 1600 steps)
        student_steps={1: 200, 5: 200, 10: 400, 100: 800}, jacobian_steps={1: 800, 5: 800, 10: 1600, 100: 800},
        per_class=10, per_class_grid={"fashion-mnist": (1, 5, 10, 100)}, seeds=(0, 1, 2),
        grid_seeds={1: 6, 5: 3, 10: 3, 100: 2}, seeds_per_job={1: 3},
        extra_methods={1: ("act+jacn", "soft+softjac", "noisy", "hinton"),
                       5: ("act+jacn", "soft+softjac", "noisy", "hinton"), 10: ("noisy", "hinton")},
        curves={"methods": ("act", "act+jac"), "factors": (0.5, 2), "seeds": (0,)},
        robust_width=1 / 8, robust_epochs=16, robust_per_class=500, noise_draws=2, robust_strengths=(0.0, 0.1, 1.0),
        transfer={"offline": TransferSetting(**_FASHION, student_steps=150),
                  "paper": TransferSetting(**_RESNET_TEACHER, image_size=112, teacher_width=1.0, student_width=1 / 4,
                                           student_steps=300, per_class=25)},
        sizes=_SIZES, validation_per_class=500),
    "paper": Profile(
        name="paper", dataset="cifar100", datasets=("cifar10", "cifar100"),
        teacher_arch="vgg9", teacher_width=1.0, teacher_epochs=500, teacher_batch_size=128,
        student_arch="vgg4", student_width=1.0, student_epochs=500, student_steps=None, batch_size=128,
        per_class=10,
        per_class_grid={"cifar10": (5, 10, 50, 100, 500, 1000, "full"), "cifar100": (1, 5, 10, 50, 100, "full")},
        seeds=(0, 1, 2), robust_width=1.0, robust_epochs=500, robust_per_class="full", noise_draws=5,
        transfer={"offline": TransferSetting(dataset="fashion-mnist", **_FASHION, per_class=25, finetune_lr=1e-4),
                  "paper": TransferSetting(**_RESNET_TEACHER, image_size=224, teacher_width=1.0, per_class=25)},
        transfer_grid=("paper", (25, 50, "full")),
        sizes=dict(_SIZES, points=12, draws=128_000, timing_batch=128, timing_repeats=5, bn_rows=16,
                   student_steps=400, estimator_repeats=48), validation_per_class=50),
}

# The supplementary: normalised Jacobian matching on CIFAR-10, plain squared error on CIFAR-100.
PAPER_JACOBIAN_LOSS = {"cifar10": "normalized"}


def get(name: str, **overrides) -> Profile:
    """The profile called ``name`` (smoke, cpu, paper), with optional field overrides."""
    check_choice("profile", name, PROFILES)
    if overrides:
        known = {f.name for f in fields(Profile)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"{unknown} are not profile fields; allowed: {sorted(known)}")
        return replace(PROFILES[name], **overrides)
    return PROFILES[name]


def from_env(profile: str) -> str:
    """``$JKT_PROFILE`` when set (CI runs every notebook with JKT_PROFILE=smoke), else ``profile``."""
    override = os.environ.get("JKT_PROFILE")
    if override and override != profile:
        print(f"JKT_PROFILE={override} overrides profile={profile!r}")
        return check_choice("JKT_PROFILE", override, PROFILES)
    return check_choice("profile", profile, PROFILES)


def default_jacobian_loss(dataset: str) -> str:
    """The paper's choice per dataset: "normalized" for CIFAR-10, "squared" otherwise (the theory's form)."""
    return PAPER_JACOBIAN_LOSS.get(dataset, "squared")
