"""The paper's published numbers, as tables (test accuracy in percent).

Tables 1-3 are from the workshop paper (Srinivas & Fleuret, "Local Affine Approximators for Improving
Knowledge Transfer", Section 5 and the supplementary); the transfer table from the ICML 2018 poster of
"Knowledge Transfer with Jacobian Matching". Keys of the distillation tables are the method presets of jkt.losses.
"""
from __future__ import annotations

# Table 1: CIFAR-10, VGG-9 teacher (90.94%) -> VGG-4 student. per_class 5000 is the full set.
TABLE1_CIFAR10 = {
    "per_class": (5, 10, 50, 100, 500, 1000, "full"),
    "teacher": 90.94,
    "rows": {
        "ce": (28.92, 33.8, 53.6, 61.05, 76.01, 77.63, 84.56),
        "act+ce": (35.8, 40.79, 59.98, 67.22, 80.55, 81.77, 87.65),
        "jac+ce": (34.47, 39.43, 58.18, 65.05, 76.82, 78.21, 84.76),
        "act+jac+ce": (39.78, 43.4, 62.17, 69.15, 80.28, 82.23, 87.29),
        "act": (36.73, 41.61, 60.71, 68.32, 82.19, 84.00, 88.64),
        "act+jac": (41.43, 46.03, 63.5, 70.17, 80.98, 82.75, 85.56),
    },
}

# Table 2: CIFAR-100, VGG-9 teacher (64.78%) -> VGG-4 student. per_class 500 is the full set.
TABLE2_CIFAR100 = {
    "per_class": (1, 5, 10, 50, 100, "full"),
    "teacher": 64.78,
    "rows": {
        "ce": (5.69, 13.9, 20.03, 37.6, 44.92, 54.28),
        "act+ce": (12.13, 26.97, 33.92, 46.47, 50.92, 56.65),
        "jac+ce": (6.78, 23.94, 32.03, 45.71, 51.47, 53.44),
        "act+jac+ce": (13.78, 33.39, 39.55, 49.49, 52.43, 54.57),
        "act": (10.73, 28.56, 33.6, 45.73, 50.15, 56.59),
        "act+jac": (13.09, 33.31, 38.16, 47.79, 50.06, 51.33),
    },
}

DISTILLATION = {"cifar10": TABLE1_CIFAR10, "cifar100": TABLE2_CIFAR100}

# Table 3: VGG-9 on CIFAR-100 trained with the Jacobian-norm penalty; accuracy under Gaussian noise on
# the normalised test images: (mean, std over noise draws); sigma 0 has no std in the paper.
TABLE3_ROBUSTNESS = {
    "sigmas": (0.0, 0.1, 0.2, 0.3, 0.4),
    "rows": {
        0.0: ((64.78, None), (61.9, 0.07), (47.53, 0.23), (29.63, 0.16), (17.69, 0.17)),
        0.01: ((64.67, None), (61.85, 0.15), (49.47, 0.07), (32.24, 0.28), (19.63, 0.17)),
        0.1: ((65.62, None), (63.36, 0.18), (53.57, 0.23), (37.38, 0.18), (23.99, 0.19)),
        0.5: ((64.26, None), (62.85, 0.05), (56.57, 0.21), (44.99, 0.28), (31.97, 0.15)),
        1.0: ((63.59, None), (62.66, 0.13), (57.53, 0.17), (47.48, 0.14), (35.43, 0.11)),
    },
}

# The poster's transfer table: ImageNet-pretrained ResNet teacher -> VGG-9 student on MIT Indoor 67.
TRANSFER_MIT67 = {
    "per_class": (25, 50, "full"),
    "rows": {
        "scratch": (35.19, 46.38, 59.33),
        "finetune": (57.65, 64.18, 71.42),
        "lwf": (45.08, 55.22, 65.22),
        "lwf+jac": (45.26, 56.49, 66.04),
        "lwf+att": (46.01, 57.80, 67.24),
        "lwf+att+jac": (47.31, 58.35, 67.31),
    },
}


def distillation_number(dataset: str, method: str, per_class) -> float | None:
    """The paper's accuracy for (dataset, method, per_class), or None where the paper has no such cell."""
    table = DISTILLATION.get(dataset)
    if table is None or method not in table["rows"] or per_class not in table["per_class"]:
        return None
    return table["rows"][method][table["per_class"].index(per_class)]
