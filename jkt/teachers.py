"""Teachers are trained once and then loaded; their outputs and input gradients on a fixed subset are computed once.

A checkpoint is keyed by everything that made it (dataset, architecture, width, schedule, seed),
written atomically with a sha256 sidecar, loaded with ``weights_only=True``, and a corrupt one is
reported and retrained, never silently used.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import torch
from torch import nn

from . import models
from .batching import batches
from .data import Dataset, Split, data_root
from .jacobian import eval_mode, full_jacobian, output_and_input_gradient, softmax_output_and_input_gradient
from .losses import preset
from .store import CorruptCheckpoint, config_hash, load_checkpoint, save_checkpoint
from .train import HOLD_ON_DEVICE_BYTES, TeacherTargets, accuracy, fit, resolve_device, seed_everything


def checkpoint_dir(root=None) -> Path:
    """``<data root>/checkpoints`` (``data/`` or ``$JKT_DATA``)."""
    return data_root(root) / "checkpoints"


def teacher_config(dataset: str, arch: str, width: float, epochs: int, batch_size: int, seed: int = 0,
                   train_per_class="full", lr: float = 1e-3, objective: dict | None = None) -> dict:
    """Everything that determines a teacher's weights: its checkpoint key."""
    return {"kind": "teacher", "dataset": dataset, "arch": arch, "width": width, "epochs": epochs,
            "batch_size": batch_size, "seed": seed, "train_per_class": train_per_class, "lr": lr,
            "schedule": "adam, /10 at 80%", "objective": objective or {"method": "ce"}}


def profile_teacher_config(profile, dataset: str) -> dict:
    """The config of ``profile``'s VGG teacher on ``dataset`` (a jkt.profiles.Profile): notebooks 02 and 03 share
    its checkpoint."""
    return teacher_config(dataset, profile.teacher_arch, profile.teacher_width, profile.teacher_epochs,
                          profile.teacher_batch_size, seed=0, lr=profile.lr)


def get_teacher(data: Dataset, train: Split, config: dict, device="auto", root=None, progress: bool = True,
                objective=None) -> tuple[nn.Module, dict]:
    """Load the teacher of ``config`` from the cache, or train it on ``train`` and cache it.

    Returns ``(model in eval mode, meta)``; ``meta`` has the test accuracy, the training time and
    whether it was loaded from the cache. ``objective`` (default plain CE) is how it is trained.
    """
    device = resolve_device(device)
    key = config_hash(config)
    path = checkpoint_dir(root) / f"{config['dataset'].replace(':', '_').replace('/', '_')}-{config['arch']}-{key}.pt"
    model = models.build(config["arch"], data.in_channels, data.num_classes, config["width"])
    if path.exists():
        try:
            state, meta = load_checkpoint(path)
            model.load_state_dict(state)
            return model.to(device).eval(), dict(meta, cached=True, path=str(path))
        except (CorruptCheckpoint, RuntimeError) as e:
            warnings.warn(f"teacher checkpoint {path} is unusable ({e}); retraining it")
    seed_everything(config["seed"])
    model = models.build(config["arch"], data.in_channels, data.num_classes, config["width"])
    objective = objective or preset("ce")
    history = fit(model, data, train, objective, config["epochs"], config["batch_size"], seed=config["seed"],
                  lr=config["lr"], device=device, progress=progress, desc=f"teacher {config['arch']}")
    test_acc = accuracy(model, data, data.test, device=device)
    meta = {"config": config, "key": key, "test_accuracy": test_acc, "train_seconds": history.seconds,
            "final_loss": history.loss[-1] if history.loss else None, "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    save_checkpoint(path, model.state_dict(), meta)
    return model.eval(), dict(meta, cached=False, path=str(path))


def teacher_targets(teacher: nn.Module, data: Dataset | None, split, jacobian_output: str = "target",
                    with_gradients: bool = True, batch_size: int = 256, device="auto",
                    softmax: bool = False) -> TeacherTargets:
    """The teacher's logits on every row of ``split`` and, with ``with_gradients``, the input gradient of
    the output that the student will match (the label for "target", the teacher's arg-max for "top1"),
    in eval mode (exact per-sample gradients), held on ``device`` for the whole training run.
    ``jacobian_output="all"`` caches the full Jacobians (K times the memory of one gradient). ``softmax``: the
    gradients of the selected output's softmax probability instead of its logit (Eq. 2, ``jacobian_loss="ce"``).
    ``split``: a jkt ``Split`` of ``data``, or a ``torch.utils.data.Dataset``/``DataLoader`` of ``(x, y)``
    tensors (``data`` None) whose items do not change between epochs (no random augmentation): row i of the
    cache is item i. Pass the same object to :func:`jkt.train.fit`."""
    device = resolve_device(device)
    if with_gradients and jacobian_output == "all" and isinstance(split, Split):
        need = len(split) * data.num_classes * data.in_channels * data.image_size[0] * data.image_size[1] * 4
        if need > 4 * HOLD_ON_DEVICE_BYTES:
            raise ValueError(f"the teacher's full Jacobians on {len(split)} images would take {need / 2 ** 30:.1f} GiB; "
                             f"full-Jacobian matching caches them: use a smaller subset (per_class) or "
                             f"jacobian_output='target'")
    logits, grads, index = [], [], []
    with eval_mode(teacher.to(device)):
        for x, y, _ in batches(split, data, batch_size, device, shuffle=False):
            which = y if jacobian_output == "target" else "top1"
            if with_gradients and jacobian_output == "all":
                with torch.no_grad():
                    out = teacher(x)
                grads.append(full_jacobian(teacher, x))
                i = y
            elif with_gradients and softmax:
                out, _, g, i = softmax_output_and_input_gradient(teacher, x, which)
                grads.append(g)
            elif with_gradients:
                out, g, i = output_and_input_gradient(teacher, x, which)
                grads.append(g)
            else:
                with torch.no_grad():
                    out = teacher(x)
                i = out.argmax(1) if jacobian_output == "top1" else y
            logits.append(out)
            index.append(i)
    return TeacherTargets(torch.cat(logits), torch.cat(index), torch.cat(grads) if grads else None)
