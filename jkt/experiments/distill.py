"""Low-data distillation (Tables 1-2): plan, validate, run (resumably), tabulate.

A plan is validated completely when it is made, before any training and before any file is written.
Every student run is one record (jkt.store), keyed by its full config; finished runs are loaded, not redone.
"""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field

import torch

from . import data as jdata
from . import models, profiles, store
from .losses import PAPER_METHODS, PRESETS, preset
from .teachers import get_teacher, teacher_config, teacher_targets
from .train import (accuracy, fit, peak_memory_mb, progress_bar, reset_peak_memory, resolve_device,
                    seed_everything)
from .validate import (as_list, check_choice, check_choices, check_positive_int,
                       check_positive_number, check_seeds, check_sigma)

METHODS = tuple(PRESETS)


def method_objective(method: str, jacobian_output="target", jacobian_loss="squared", sigma=0.1, samples=1,
                     temperature=4.0):
    """The objective of ``method`` with only the options that method uses (so an unused option never
    changes a run's key, and finished runs are reused)."""
    base = preset(method)
    options = {}
    if base.gamma > 0:
        options.update(jacobian_output=jacobian_output, jacobian_loss=jacobian_loss)
    if base.noisy > 0:
        options.update(sigma=sigma, samples=samples)
    if base.hinton > 0:
        options.update(temperature=temperature)
    return preset(method, **options)


def host_info(device) -> dict:
    return {"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "cpu_count": __import__("os").cpu_count(),
            "gpu": torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else None}


def run_metrics(history, start: float, n_train: int, device, **metrics) -> dict:
    """What every student run records besides its accuracies: times, steps, loss curve, peak memory, host."""
    return {**metrics, "train_seconds": history.seconds, "seconds": time.perf_counter() - start,
            "steps": history.steps, "n_train": n_train, "final_loss": history.loss[-1],
            "final_terms": history.terms[-1], "loss_curve": history.loss, "peak_memory_mb": peak_memory_mb(device),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), **host_info(device)}


def records_frame(run_config, methods, seeds, results=None):
    """The finished runs of a (method x seed) grid as a DataFrame, one row per run (scalar metrics only)."""
    import pandas as pd

    rows = []
    for m in methods:
        for s in seeds:
            rec = store.load_record(run_config(m, s), results)
            if rec is not None:
                rows.append({"method": m, "seed": s, **{k: v for k, v in rec["metrics"].items()
                                                        if not isinstance(v, (list, dict))}, "key": rec["key"]})
    return pd.DataFrame(rows)


@dataclass
class DistillPlan:
    """The grid of one distillation experiment: one dataset and per_class, methods x seeds."""
    profile: profiles.Profile
    dataset: str
    per_class: object
    methods: list
    seeds: list
    epochs: int | None
    batch_size: int
    jacobian_output: str
    jacobian_loss: str
    sigma: float
    samples: int
    temperature: float
    device: torch.device
    data: jdata.Dataset = field(repr=False)
    results: object = None
    progress: bool = True

    # ---- configs (what makes each result; hashed into its key) -------------------------------------
    def teacher_config(self) -> dict:
        p = self.profile
        return teacher_config(self.dataset, p.teacher_arch, p.teacher_width, p.teacher_epochs,
                              p.teacher_batch_size, seed=0, lr=p.lr)

    def train_split(self, seed: int) -> jdata.Split:
        return jdata.subset(self.data.train, self.per_class, seed)

    def run_config(self, method: str, seed: int) -> dict:
        p = self.profile
        objective = method_objective(method, self.jacobian_output, self.jacobian_loss, self.sigma,
                                     self.samples, self.temperature)
        n_train = len(self.data.train) if self.per_class == "full" else self.per_class * self.data.num_classes
        epochs = self.epochs if self.epochs is not None else p.student_epochs_for(n_train, self.batch_size)
        return {"kind": "distill", "profile": p.name, "dataset": self.dataset, "per_class": self.per_class,
                "method": method, "seed": seed, "objective": objective.to_dict(), "student": p.student_arch,
                "student_width": p.student_width, "epochs": epochs, "batch_size": self.batch_size,
                "lr": p.lr, "anneal_at": p.anneal_at, "teacher": store.config_hash(self.teacher_config())}

    def pending(self) -> list[tuple[str, int]]:
        return [(m, s) for s in self.seeds for m in self.methods
                if store.load_record(self.run_config(m, s), self.results) is None]

    # ---- work ---------------------------------------------------------------------------------------------
    def teacher(self):
        """The VGG-9 teacher of this plan: trained once per profile, then loaded from data/checkpoints."""
        return get_teacher(self.data, self.data.train, self.teacher_config(), self.device, progress=self.progress)

    def run(self) -> "pandas.DataFrame":  # noqa: F821
        """Run every pending (method, seed), one record each; returns this plan's records as a DataFrame."""
        todo = self.pending()
        if todo:
            teacher, teacher_meta = self.teacher()
            cache = {}
            bar = progress_bar(todo, self.progress, desc=f"{self.dataset} per_class={self.per_class}")
            for method, seed in bar:
                bar.set_postfix(method=method, seed=seed)
                self._run_one(method, seed, teacher, teacher_meta, cache)
        return self.records()

    def _run_one(self, method, seed, teacher, teacher_meta, cache):
        config = self.run_config(method, seed)
        objective = preset(method, **{k: v for k, v in config["objective"].items()})
        start = time.perf_counter()
        reset_peak_memory(self.device)
        train = self.train_split(seed)
        targets = None
        if objective.needs_teacher:
            key = (seed, objective.jacobian_output, objective.gamma > 0)
            if key not in cache:
                cache.clear()
                cache[key] = teacher_targets(teacher, self.data, train, objective.jacobian_output,
                                             with_gradients=objective.gamma > 0, device=self.device)
            targets = cache[key]
        seed_everything(seed)
        student = models.build(self.profile.student_arch, self.data.in_channels, self.data.num_classes,
                               self.profile.student_width)
        history = fit(student, self.data, train, objective, config["epochs"], self.batch_size, seed=seed,
                      lr=self.profile.lr, anneal_at=self.profile.anneal_at, device=self.device,
                      teacher_targets=targets, teacher=teacher if objective.noisy > 0 else None,
                      progress=self.progress, desc=f"{method} seed {seed}")
        test_acc = accuracy(student, self.data, self.data.test, device=self.device)
        metrics = run_metrics(history, start, len(train), self.device, test_accuracy=test_acc,
                              teacher_test_accuracy=teacher_meta["test_accuracy"])
        store.save_record(config, metrics, self.results)
        return metrics

    def records(self):
        """This plan's finished runs as a DataFrame (one row per run)."""
        return records_frame(self.run_config, self.methods, self.seeds, self.results)


def plan_distillation(profile: str = "cpu", dataset: str | None = None, per_class=None, methods=PAPER_METHODS,
                      seeds=None, epochs=None, batch_size=None, jacobian_output="target", jacobian_loss=None,
                      sigma=0.1, samples=1, temperature=4.0, device="auto", results=None, data_root=None,
                      progress=True) -> DistillPlan:
    """Validate every parameter (ValueError naming it), load the dataset, and return the plan.

    None means the profile's value (dataset, per_class, seeds, epochs, batch_size) or the paper's
    (jacobian_loss: normalised on CIFAR-10, squared elsewhere). Nothing is trained or written here.
    """
    p = profiles.get(profile)
    dataset = p.dataset if dataset is None else dataset
    if not isinstance(dataset, str) or not (dataset in jdata.DATASETS or dataset.startswith("imagefolder:")):
        raise ValueError(f"dataset={dataset!r} is not allowed; choose one of {list(jdata.DATASETS)} "
                         f"or 'imagefolder:PATH'")
    methods = check_choices("methods", as_list("methods", methods, '["ce", "act+jac+ce"]', words=True), METHODS)
    seeds = check_seeds("seeds", list(p.seeds) if seeds is None else as_list("seeds", seeds, "[0, 1, 2]"))
    if epochs is not None:
        check_positive_int("epochs", epochs)
    batch_size = check_positive_int("batch_size", p.batch_size if batch_size is None else batch_size)
    check_choice("jacobian_output", jacobian_output, ["target", "top1", "all"])
    jacobian_loss = profiles.default_jacobian_loss(dataset) if jacobian_loss is None else jacobian_loss
    check_choice("jacobian_loss", jacobian_loss, ["squared", "normalized"])
    check_sigma("sigma", sigma)
    check_positive_int("samples", samples)
    check_positive_number("temperature", temperature)
    if per_class is None:
        per_class = p.per_class
    if not (per_class == "full" or (isinstance(per_class, int) and not isinstance(per_class, bool) and per_class >= 1)):
        raise ValueError(f"per_class={per_class!r} is not allowed; it must be an integer >= 1 or 'full'")
    device = resolve_device(device)
    data = jdata.load(dataset, root=data_root)
    jdata.subset_indices(data.train, per_class, 0)  # raises ValueError naming per_class and its range
    return DistillPlan(p, dataset, per_class, methods, seeds, epochs, batch_size, jacobian_output, jacobian_loss,
                       float(sigma), int(samples), float(temperature), device, data, results, progress)
