"""Settings of the learned-control engines (DIS, DDS, PIS), grouped by what they affect.

The defaults are the same for every target (docs/choices.md). ``horizon`` and
``integrator`` default to ``None`` and are resolved once, by the scheme
(:meth:`ControlSettings.resolve`): OU schemes T = 4, PIS T = 1; DIS Euler-Maruyama, DDS the
exponential integrator.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from ..settings import (
    EngineSettings,
    InvalidSettingError,
    SettingsGroup,
    at_least,
    in_range,
    nonnegative,
    option,
    positive,
)

__all__ = [
    "TimeGrid",
    "Network",
    "Optimiser",
    "Objective",
    "WarmStart",
    "Runtime",
    "ControlSettings",
]


@dataclasses.dataclass(frozen=True)
class TimeGrid(SettingsGroup):
    """The discretisation of the reference and the generative chain (docs/design.md s.2-3)."""

    num_steps: int = option(192, "K, the number of steps of the chain", positive)
    horizon: float | None = option(None, "T (None: 4 for the OU schemes, 1 for PIS)", positive)
    grid_power: float = option(2.0, "t_k = T (1 - k/K)^power, refined at the data end", positive)
    integrator: Literal["em", "ei"] | None = option(
        None, "'em' Euler-Maruyama, 'ei' exponential (None: by the scheme)"
    )
    pis_sigma: float = option(2.0, "sigma of the PIS Brownian reference", positive)


@dataclasses.dataclass(frozen=True)
class Network(SettingsGroup):
    """The control network u_theta(y, t) (docs/design.md s.3)."""

    hidden: tuple[int, ...] = option((64, 64), "hidden widths of the MLP")
    coordinate_hidden: int = option(
        0, "width of the per-coordinate networks of (y_i, t) (0: none)", nonnegative
    )
    score_gate: Literal["time", "state"] = option(
        "time", "gate on the score feature: g(t), or g(t) + G(y, t)"
    )
    num_time_features: int = option(16, "Fourier features of the time", at_least(2))
    conditioning: Literal["time", "noise"] = option(
        "time", "features of t / T, or of log sigma_t with the MLP term divided by sigma_t"
    )
    score_clip: float = option(1e3, "clip of the target-score feature (0: no feature)", nonnegative)

    def __post_init__(self):
        super().__post_init__()
        if any(h < 1 for h in self.hidden):
            raise InvalidSettingError(f"setting 'hidden' must hold positive widths, got {self.hidden}")


@dataclasses.dataclass(frozen=True)
class Optimiser(SettingsGroup):
    """Adam with global-norm clipping and a cosine-decayed learning rate (optax)."""

    num_iterations: int = option(2000, "training iterations", positive)
    batch_size: int = option(256, "paths per iteration", positive)
    learning_rate: float = option(3e-3, "initial learning rate", positive)
    final_learning_rate: float = option(1e-4, "learning rate at the end of the decay", positive)
    grad_clip: float = option(1.0, "global-norm gradient clip", positive)


@dataclasses.dataclass(frozen=True)
class Objective(SettingsGroup):
    """The training loss (docs/design.md s.3)."""

    loss: Literal["lv", "kl"] = option("lv", "'lv' log-variance or 'kl' reverse KL")
    lv_target_weight: float = option(
        0.5, "lambda of the LV reference measure (1 - lambda) F + lambda P", in_range(0.0, 1.0)
    )
    max_log_weight_dev: float = option(
        1e4, "log weights further than this from the batch median are masked", positive
    )


@dataclasses.dataclass(frozen=True)
class WarmStart(SettingsGroup):
    """Regression on tempered-SMC particles before training (``warm_start="smc"``)."""

    warm_start: Literal["smc"] | None = option(None, "None, or 'smc'")
    warm_start_iterations: int = option(3000, "regression iterations", positive)
    warm_start_batch_size: int = option(512, "regression batch", positive)
    smc_particles: int = option(2000, "SMC particles", positive)
    smc_init_scale: float = option(5.0, "std of the N(0, s^2 I) the SMC starts from", positive)


@dataclasses.dataclass(frozen=True)
class Runtime(SettingsGroup):
    """How the work is chunked (no effect on the result)."""

    log_every: int = option(50, "iterations per compiled training chunk", positive)
    sample_chunk: int = option(4096, "proposals per compiled sampling chunk", positive)


@dataclasses.dataclass(frozen=True)
class ControlSettings(EngineSettings):
    """All settings of a learned-control engine; ``scheme`` is fixed by the engine."""

    FIXED = ("scheme",)

    scheme: Literal["dis", "dds", "pis"] = "dds"
    grid: TimeGrid = dataclasses.field(default_factory=TimeGrid)
    network: Network = dataclasses.field(default_factory=Network)
    optimiser: Optimiser = dataclasses.field(default_factory=Optimiser)
    objective: Objective = dataclasses.field(default_factory=Objective)
    start: WarmStart = dataclasses.field(default_factory=WarmStart)
    runtime: Runtime = dataclasses.field(default_factory=Runtime)

    def __post_init__(self):
        if self.scheme not in ("dis", "dds", "pis"):
            raise InvalidSettingError(f"scheme must be 'dis', 'dds' or 'pis', got {self.scheme!r}")

    def resolve(self) -> "ControlSettings":
        """Fill the scheme-dependent defaults (``horizon``, ``integrator``) once."""
        grid = self.grid
        horizon = grid.horizon if grid.horizon is not None else (1.0 if self.scheme == "pis" else 4.0)
        integrator = grid.integrator or ("em" if self.scheme == "dis" else "ei")
        return dataclasses.replace(
            self, grid=dataclasses.replace(grid, horizon=horizon, integrator=integrator)
        )
