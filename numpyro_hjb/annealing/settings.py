"""Settings of the sequential annealing engine (``engine="scld"``), grouped by what they affect.

The engine tunes itself: the base, the schedule, the step sizes, the mass matrix and the
number of particle systems follow from the model and the time budget (docs/choices.md).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from ..settings import EngineSettings, SettingsGroup, at_least, in_range, option, positive

__all__ = ["Budget", "Path", "Rejuvenation", "Control", "SCLDSettings"]


@dataclasses.dataclass(frozen=True)
class Budget(SettingsGroup):
    """How long the fit may take, and how finely its work is split."""

    time_budget: float = option(60.0, "seconds for the whole fit (pilots, training, final runs)", positive)
    num_particles: int | None = option(
        None, "particles per particle system (None: from the budget and a timed gradient)",
        at_least(16),
    )
    num_replicates: int = option(8, "particle systems run side by side per call", at_least(2))
    target_se: float = option(
        0.0, "stop early once the SE of log Z is below this (0: use the whole budget)", in_range(0.0, 1e9)
    )
    keep_particles: int = option(8192, "weighted particles kept for the draws", at_least(16))
    num_systems: int | None = option(
        None, "final particle systems (None: as many as the budget allows); with num_particles "
        "also set, the fit no longer depends on timings and the same key gives the same result",
        at_least(2),
    )


@dataclasses.dataclass(frozen=True)
class Path(SettingsGroup):
    """The annealing path pi_beta = b^{1 - beta} rho^beta and its adaptive schedule."""

    base: Literal["auto", "prior", "fitted"] = option(
        "auto", "'prior' (proper priors), 'fitted' (to pilot particles) or 'auto' (by the pilots)"
    )
    widen: float = option(1.5, "the fitted base's standard deviations times this", positive)
    refinements: int = option(4, "pilots from bases refitted to the previous pilot", at_least(0))
    max_components: int = option(16, "components of a fitted mixture base (chosen by BIC)", at_least(1))
    defensive: float = option(
        0.1, "weight of the Gaussian in a fitted mixture base", in_range(0.0, 1.0, open_lo=True, open_hi=True)
    )
    broad_scale: float = option(
        2.0, "initial std of the broad Gaussian for models with improper priors", positive
    )
    cess_target: float = option(
        0.5, "conditional ESS of each tempering step", in_range(0.0, 1.0, open_lo=True, open_hi=True)
    )
    resample_ess: float = option(0.5, "resample when the ESS falls below this", in_range(0.0, 1.0))
    max_steps: int = option(500, "cap on the number of temperatures", at_least(1))
    schedule: Literal["adaptive", "frozen"] = option(
        "frozen", "final systems: 'frozen' (the temperatures and step sizes of one scout "
        "call, fixed in advance: each Z exactly unbiased) or 'adaptive' (each system chooses "
        "them from its own particles: a bias of O(1/N), measured -0.017 on random_walk50)"
    )


@dataclasses.dataclass(frozen=True)
class Rejuvenation(SettingsGroup):
    """The MCMC moves after each tempering step (BlackJAX HMC)."""

    num_mcmc_steps: int = option(5, "HMC steps per temperature", at_least(1))
    num_leapfrog: int = option(5, "leapfrog steps per HMC step", at_least(1))
    target_acceptance: float = option(
        0.65, "the step size follows the acceptance rate to this", in_range(0.0, 1.0, open_lo=True, open_hi=True)
    )
    step_jitter: float = option(
        10.0, "per-move step sizes log-uniform in [step / J, step] (1: fixed)", at_least(1.0)
    )
    mass: Literal["auto", "diagonal", "dense"] = option(
        "auto", "inverse mass matrix from pilot particles: 'auto' is dense when some correlation "
        "of the particles exceeds 0.3, else diagonal"
    )


@dataclasses.dataclass(frozen=True)
class Control(SettingsGroup):
    """The learned control of the controlled Langevin transitions (CMCD)."""

    control: Literal["auto", "on", "off"] = option(
        "auto", "'auto': train it when the pilots' spread says the target is hard and keep it "
        "when it pays; 'on': always train it; 'off': never"
    )
    loss: Literal["lv", "kl"] = option("lv", "'lv' log-variance or 'kl' reverse KL (log-derivative)")
    control_fraction: float = option(
        0.3, "at most this fraction of the budget is spent on training", in_range(0.0, 1.0, open_lo=True)
    )
    control_threshold: float = option(
        0.3, "'auto' trains when one system's sd of log Z exceeds this", in_range(0.0, 1e9)
    )
    control_hidden: tuple[int, ...] = option((32, 32), "hidden widths of the control network")


@dataclasses.dataclass(frozen=True)
class SCLDSettings(EngineSettings):
    """All settings of the sequential annealing engine."""

    budget: Budget = dataclasses.field(default_factory=Budget)
    path: Path = dataclasses.field(default_factory=Path)
    rejuvenation: Rejuvenation = dataclasses.field(default_factory=Rejuvenation)
    learning: Control = dataclasses.field(default_factory=Control)

    def resolve(self) -> "SCLDSettings":
        return self
