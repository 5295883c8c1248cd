"""The training loop, evaluation, and evaluation under input noise.

Adam at 1e-3, annealed once to 1e-4 at 80% of the epochs (the paper: 500 epochs, annealed at 400).
The same seed and config on the same CPU give bit-identical weights and metrics.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from .batching import Batches
from .batching import batches as jdata_batches
from .data import Dataset, Split, add_noise
from .losses import Objective
from .validate import check_nonnegative_int, check_number, check_positive_int, check_sigma


def resolve_device(device="auto") -> torch.device:
    """``"auto"``: the current CUDA device when one exists, else the CPU; otherwise ``torch.device(device)``."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} asks for CUDA but torch sees no GPU; use device='auto' or 'cpu'")
    return device


def seed_everything(seed: int) -> None:
    """Seed torch's generators and make cuDNN deterministic (CPU kernels here already are)."""
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def progress_enabled(progress: bool = True) -> bool:
    """Progress bars are on unless ``progress=False`` or ``JKT_PROGRESS=0``."""
    return bool(progress) and os.environ.get("JKT_PROGRESS", "1") not in ("0", "false", "False", "")


def progress_bar(iterable=None, progress: bool = True, **kw):
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=not progress_enabled(progress), leave=False, dynamic_ncols=True, **kw)


@dataclass
class TeacherTargets:
    """What the student matches, computed once on a fixed training subset and gathered by row index every
    epoch: the teacher's logits, the differentiated output per sample, and its input gradient (or, for
    full-Jacobian matching, its full Jacobian, shape ``(N, K, *image shape)``)."""
    logits: torch.Tensor
    index: torch.Tensor
    grad: torch.Tensor | None = None

    def take(self, idx: torch.Tensor):
        return (self.logits[idx], None if self.grad is None else self.grad[idx], self.index[idx])


@dataclass
class History:
    loss: list = field(default_factory=list)        # mean total loss per epoch
    terms: list = field(default_factory=list)       # mean of each unweighted term per epoch
    seconds: float = 0.0
    steps: int = 0


HOLD_ON_DEVICE_BYTES = 2 ** 30


class NonFiniteLoss(FloatingPointError):
    """The loss became NaN or infinite: training stops with the step and the terms."""

    def __init__(self, message: str, loss: float = float("nan"), terms: dict | None = None, history=None):
        super().__init__(message)
        self.loss, self.terms, self.history = loss, terms or {}, history  # history: the run up to that step


def training_step(model: nn.Module, optimizer, objective: Objective, x: torch.Tensor, y: torch.Tensor,
                  targets=None, teacher: nn.Module | None = None, generator: torch.Generator | None = None,
                  params=None):
    """One optimisation step: the objective's terms, their weighted sum, backward, update. Returns the
    detached ``(loss, terms)``. ``targets``: the teacher's ``(logits, grad, index)`` for this batch.

    ``params`` (the trainable parameters) restricts the backward pass to them: the input, which requires
    grad for Jacobian terms, then gets no gradient (measured: 13-19% of a Jacobian-matching step on the
    CPU). ``None`` back-propagates into every leaf, as a plain ``loss.backward()``.
    """
    t_logits, t_grad, t_index = targets if targets is not None else (None, None, None)
    terms = objective.terms(model, x, y, t_logits, t_grad, t_index, teacher, generator)
    loss = objective.total(terms)
    if not torch.isfinite(loss):
        values = {k: float(v.detach()) for k, v in terms.items()}
        value = float(loss.detach())
        raise NonFiniteLoss(f"non-finite loss {value}; terms: {values}", value, values)
    optimizer.zero_grad(set_to_none=True)
    loss.backward(inputs=params)
    optimizer.step()
    return loss.detach(), {k: v.detach() for k, v in terms.items()}


def make_optimizer(model: nn.Module, lr: float = 1e-3):
    return torch.optim.Adam(model.parameters(), lr=lr)


def anneal_epoch(epochs: int, anneal_at: float = 0.8) -> int:
    """The epoch at which the learning rate drops tenfold (400 of 500 in the paper)."""
    return int(round(anneal_at * epochs))


def fit(model: nn.Module, dataset: Dataset | None, split, objective: Objective, epochs: int,
        batch_size: int, seed: int = 0, lr: float = 1e-3, anneal_at: float = 0.8, device="auto",
        teacher_targets: TeacherTargets | None = None, teacher: nn.Module | None = None,
        progress: bool = True, desc: str = "train") -> History:
    """Train ``model`` in place on ``split`` with ``objective``; returns the per-epoch history.

    ``split``: a jkt ``Split`` of ``dataset`` (uint8 images, normalised per batch), or your own
    ``torch.utils.data.Dataset``/``DataLoader`` of ``(x, y)`` tensors (then ``dataset`` may be None).

    ``teacher_targets`` serves the teacher's logits and gradients from memory (no teacher cost per
    epoch); ``teacher`` is needed only for objectives that run the teacher online (noisy inputs).
    A non-finite loss raises NonFiniteLoss naming the epoch, the step and each term's value, with the run's
    History up to that step (``history.steps`` of them finished) and the model as that step left it.
    """
    check_nonnegative_int("epochs", epochs)
    check_positive_int("batch_size", batch_size)
    check_number("lr", lr, minimum=0.0)
    device = resolve_device(device)
    if objective.needs_teacher and teacher_targets is None:
        raise ValueError(f"the objective {objective} matches a teacher: pass teacher_targets")
    memory = torch.channels_last if any(isinstance(m, nn.Conv2d) for m in model.modules()) else torch.contiguous_format
    model.to(device, memory_format=memory).train()  # channels-last convolutions: measured faster (python -m jkt bench)
    if isinstance(split, Split) and split.x.numel() <= HOLD_ON_DEVICE_BYTES:  # small sets live on the device
        split = split.to(device)
    optimizer = make_optimizer(model, lr)
    params = [p for p in model.parameters() if p.requires_grad]
    batches = jdata_batches(split, dataset, batch_size, device, shuffle=True, seed=seed)
    noise_gen = torch.Generator(device=device).manual_seed(seed + 1_000_003)
    history, start, drop = History(), time.perf_counter(), anneal_epoch(epochs, anneal_at)
    bar = progress_bar(range(epochs), progress, desc=desc)
    for epoch in bar:
        if epoch == drop:
            for group in optimizer.param_groups:
                group["lr"] = lr / 10
        sums, total_sum, n = {}, 0.0, 0
        for step, (x, y, idx) in enumerate(batches):
            x = x.contiguous(memory_format=memory) if x.dim() == 4 else x
            targets = teacher_targets.take(idx.to(teacher_targets.logits.device)) \
                if teacher_targets is not None else None
            try:
                loss, terms = training_step(model, optimizer, objective, x, y, targets, teacher, noise_gen, params)
            except NonFiniteLoss as e:
                history.seconds = time.perf_counter() - start
                model.to(memory_format=torch.contiguous_format)
                raise NonFiniteLoss(f"non-finite loss {e.loss} at epoch {epoch}, step {step} "
                                    f"(global step {history.steps}); terms: {e.terms}", e.loss, e.terms,
                                    history) from None
            history.steps += 1
            total_sum += float(loss) * len(y)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v) * len(y)
            n += len(y)
        history.loss.append(total_sum / max(n, 1))
        history.terms.append({k: v / max(n, 1) for k, v in sums.items()})
        bar.set_postfix(loss=f"{history.loss[-1]:.4g}")
    history.seconds = time.perf_counter() - start
    model.to(memory_format=torch.contiguous_format)
    return history


def eval_batch_size(device) -> int:
    """Evaluation batch: 256 on the CPU (measured 2.3 s vs 4.3 s at 1000 for Fashion-MNIST's test split with
    the cpu profile's VGG-4: activations stay in cache), 1000 on a GPU."""
    return 1000 if torch.device(device).type == "cuda" else 256


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, split: Split, batch_size: int | None = None, device="auto",
            sigma: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Logits of ``model`` (eval mode) on ``split``, with Gaussian noise of ``sigma`` on the normalised images."""
    device = resolve_device(device)
    batch_size = batch_size or eval_batch_size(device)
    was_training = model.training
    model.to(device).eval()
    dtype = next(model.parameters(), torch.empty(0)).dtype  # float64 models get float64 images
    out = []
    for x, _, _ in Batches(split, dataset, batch_size, device, shuffle=False):
        if sigma > 0:
            x = add_noise(x, sigma, generator)
        out.append(model(x.to(dtype)))
    model.train(was_training)
    return torch.cat(out)


def accuracy(model: nn.Module, dataset: Dataset, split: Split, batch_size: int | None = None, device="auto",
             sigma: float = 0.0, generator: torch.Generator | None = None) -> float:
    """Top-1 accuracy in percent."""
    logits = predict(model, dataset, split, batch_size, device, sigma, generator)
    return 100.0 * (logits.argmax(1).cpu() == split.y.cpu()).double().mean().item()


def accuracy_under_noise(model: nn.Module, dataset: Dataset, split: Split, sigma: float, draws: int = 5,
                         seed: int = 0, batch_size: int | None = None, device="auto") -> dict:
    """Accuracy with Gaussian noise of ``sigma`` added to the normalised test images (Table 3):
    mean and standard deviation over ``draws`` independent noise draws."""
    check_sigma("sigma", sigma)
    check_positive_int("draws", draws)
    device = resolve_device(device)
    if sigma == 0:
        acc = accuracy(model, dataset, split, batch_size, device)
        return {"sigma": 0.0, "mean": acc, "std": 0.0, "draws": [acc]}
    gen = torch.Generator(device=device).manual_seed(seed)
    accs = [accuracy(model, dataset, split, batch_size, device, sigma, gen) for _ in range(draws)]
    mean = sum(accs) / draws
    std = math.sqrt(sum((a - mean) ** 2 for a in accs) / (draws - 1)) if draws > 1 else 0.0
    return {"sigma": float(sigma), "mean": mean, "std": std, "draws": accs}


def reset_peak_memory(device) -> None:
    """Start a new peak-memory window on a GPU (on the CPU the process peak cannot be reset)."""
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device) -> float:
    """Peak memory: CUDA allocations since the last reset_peak_memory on a GPU; on the CPU the process's
    peak resident set so far (an upper bound for the current run)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
