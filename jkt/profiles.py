"""Profiles: one word picks a whole recipe, so that every notebook and the batch agree.

``smoke``: scikit-learn's digits, the narrowest nets, a few steps (CI: seconds per notebook).
``cpu``: Fashion-MNIST (the embedded default), narrow VGGs, minutes on 2 cores.
``paper``: CIFAR-10/100 at the paper's widths, 500 epochs, Adam 1e-3 -> 1e-4 at 400 (one GPU or more).
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, replace

from .validate import check_choice


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
    student_steps: int | None         # optimisation steps per student run when epochs is None
    batch_size: int
    per_class: int                    # the default per-class size of notebook 03
    per_class_grid: dict              # dataset -> the per-class sizes of the batch reproduction
    seeds: tuple
    # noise robustness (Table 3)
    robust_width: float
    robust_epochs: int
    robust_per_class: object          # "full" or an int: the training set of the Table 3 networks
    noise_draws: int
    robust_test_per_class: object = "full"  # the test images of Table 3 ("full": the official test split)
    lr: float = 1e-3
    anneal_at: float = 0.8

    def student_epochs_for(self, n_train: int, batch_size: int | None = None) -> int:
        """Epochs of a student run on ``n_train`` images: the profile's epochs, or enough epochs for
        ``student_steps`` optimisation steps (so small and large subsets get the same number of updates)."""
        if self.student_epochs is not None:
            return self.student_epochs
        per_epoch = math.ceil(n_train / (batch_size or self.batch_size))
        return max(1, math.ceil(self.student_steps / per_epoch))

    def to_dict(self) -> dict:
        return asdict(self)


PROFILES = {
    "smoke": Profile(
        name="smoke", dataset="digits", datasets=("digits",),
        teacher_arch="vgg9", teacher_width=1 / 16, teacher_epochs=3, teacher_batch_size=64,
        student_arch="vgg4", student_width=1 / 8, student_epochs=None, student_steps=12, batch_size=64,
        per_class=5, per_class_grid={"digits": (5,)}, seeds=(0,),
        robust_width=1 / 8, robust_epochs=10, robust_per_class=20, noise_draws=2),
    "cpu": Profile(
        name="cpu", dataset="fashion-mnist", datasets=("fashion-mnist",),
        teacher_arch="vgg9", teacher_width=1 / 8, teacher_epochs=3, teacher_batch_size=128,
        student_arch="vgg4", student_width=1 / 4, student_epochs=None, student_steps=200, batch_size=128,
        per_class=10, per_class_grid={"fashion-mnist": (1, 5, 10, 50, 100)}, seeds=(0, 1, 2),
        robust_width=1 / 8, robust_epochs=2, robust_per_class=500, noise_draws=3),
    "paper": Profile(
        name="paper", dataset="cifar100", datasets=("cifar10", "cifar100"),
        teacher_arch="vgg9", teacher_width=1.0, teacher_epochs=500, teacher_batch_size=128,
        student_arch="vgg4", student_width=1.0, student_epochs=500, student_steps=None, batch_size=128,
        per_class=10,
        per_class_grid={"cifar10": (5, 10, 50, 100, 500, 1000, "full"), "cifar100": (1, 5, 10, 50, 100, "full")}, seeds=(0, 1, 2),
        robust_width=1.0, robust_epochs=500, robust_per_class="full", noise_draws=5),
}

# The supplementary: normalised Jacobian matching on CIFAR-10, plain squared error on CIFAR-100.
PAPER_JACOBIAN_LOSS = {"cifar10": "normalized"}


def get(name: str, **overrides) -> Profile:
    """The profile called ``name`` (smoke, cpu, paper), with optional field overrides."""
    check_choice("profile", name, PROFILES)
    return replace(PROFILES[name], **overrides) if overrides else PROFILES[name]


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
