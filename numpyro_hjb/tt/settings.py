"""Settings of the tensor-train HJB engine, grouped by what they affect (docs/design.md s.4).

Every option keeps its flat name (``fit(model, engine="tt", ch_degree=96)``):

* :class:`Route`: which equation is integrated (``formulation``: the exact HJB, the HJB with
  a far-field cutoff, or the linear Cole-Hopf equation) and at which degree W_0 is fitted;
* :class:`ColeHopf`: the fit of h_0 = e^{-(W_0 - c)} on the Cole-Hopf route;
* :class:`Cross`: the TT-cross of W_0 (and of h_0);
* :class:`LeastSquares`: the least-squares fallback for a W_0 the cross fits badly;
* :class:`Adaptivity`: TT rounding, rank cap and degree growth during the integration;
* :class:`Integration`: the time integrator of dW/dt = L W - |grad W|^2 and its step control;
* :class:`Sampling`: the sampler on the snapshots W_{t_j} (or h_{t_j}), its time grid and the
  exact-target final jump;
* :class:`Scaling`: the diagonal pre-scaling x = s xi and the automatic choice of s;
* :class:`Runtime`: how proposals are chunked (no effect on the result).

No default depends on another option, so :meth:`TTSettings.resolve` has nothing to fill in;
``formulation="auto"``, ``sampler="auto"`` and ``scale="auto"`` are decided by the fit (the
polynomial check of W_0, the route taken, the scale search) and recorded in the state.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from ..settings import (
    EngineSettings,
    SettingsGroup,
    at_least,
    nonnegative,
    option,
    positive,
)

__all__ = [
    "Route",
    "ColeHopf",
    "Cross",
    "LeastSquares",
    "Adaptivity",
    "Integration",
    "Sampling",
    "Scaling",
    "Runtime",
    "TTSettings",
]


def _greater_than_one(value) -> str | None:
    return None if value > 1 else "must be > 1"


def _at_most_one(value) -> str | None:
    return None if 0 < value <= 1 else "must be in (0, 1]"


def _positive_scale(value) -> str | None:
    if value is None or value == "auto":
        return None
    values = value if isinstance(value, tuple) else (value,)
    return None if all(v > 0 for v in values) else "must be positive"


@dataclasses.dataclass(frozen=True)
class Route(SettingsGroup):
    """Which equation carries the target to the reference (docs/design.md s.4).

    ``formulation="auto"`` takes the exact HJB when W_0 is a polynomial of degree ``degree``
    (hold-out error <= ``cross_tol``: Gaussian targets) and the Cole-Hopf equation
    h_t = e^{tL} h_0 otherwise. ``formulation="hjb"`` takes, for a W_0 that is not a
    polynomial, the HJB with the far-field cutoff sum_mu chi_R(x_mu) (d_mu W)^2,
    chi_R(x) = exp(-(x / R)^8), R = ``cutoff``, on a W_0 of degree ``cutoff_degree``.
    """

    formulation: Literal["auto", "hjb", "cole_hopf"] = option(
        "auto", "'hjb', 'cole_hopf', or 'auto': the exact HJB for a Gaussian, else Cole-Hopf"
    )
    degree: int = option(2, "degree of the W_0 fit of the exact-HJB check", positive)
    cutoff: float = option(4.0, "R of the far-field cutoff chi_R |grad W|^2 (0: off)", nonnegative)
    cutoff_degree: int = option(24, "degree of W_0 on the cutoff route", positive)


@dataclasses.dataclass(frozen=True)
class ColeHopf(SettingsGroup):
    """The Hermite fit of h_0 = e^{-(W_0 - c)} on the Cole-Hopf route (docs/design.md s.4).

    The default degree 96 is the largest the default ``ch_nodes`` = 2 nodes per degree allow
    (Gauss-Hermite rules of more than 200 nodes underflow in float64); degree 64 left log Z
    biased on the rotated gmm9 (docs/lab/notes.md).
    """

    ch_degree: int = option(96, "Hermite degree per mode of h_0", positive)
    ch_eps: float = option(
        1e-10, "guard eps of grad W = -grad h h / (h^2 + eps^2 E[h]^2)", nonnegative
    )
    ch_noise_rel: float = option(
        1e-2, "h_0 rounded at this fraction of its top-degree mass (0: round_tol only)",
        nonnegative,
    )
    ch_nodes: float = option(
        2.0, "Gauss-Hermite nodes per mode = ch_nodes (ch_degree + 1)", positive
    )


@dataclasses.dataclass(frozen=True)
class Cross(SettingsGroup):
    """The TT-cross of W_0 (and h_0) on the Gauss-Hermite grid (:mod:`numpyro_hjb.tt.cross`)."""

    cross_rank: int = option(8, "initial rank cap (doubles while over half of it is used)",
                             positive)
    cross_max_rank: int = option(32, "largest rank cap", positive)
    cross_sweeps: int = option(6, "maxvol sweep pairs", positive)
    cross_tol: float = option(
        1e-8, "hold-out relative error that stops the rank doubling", nonnegative
    )


@dataclasses.dataclass(frozen=True)
class LeastSquares(SettingsGroup):
    """The least-squares fit of W_0 by ALS on N(0, I) samples with gradients
    (:mod:`numpyro_hjb.tt.regression`), tried when the cross's hold-out error exceeds
    ``ls_fallback_tol``; the fit with the smaller hold-out error is kept."""

    ls_fallback_tol: float = option(
        2.0, "cross hold-out error above which the fallback runs", nonnegative
    )
    ls_num_samples: int = option(2000, "samples (values and gradients)", positive)
    ls_rank: int = option(4, "rank cap of the least-squares fit", positive)
    ls_sweeps: int = option(10, "ALS sweeps", positive)


@dataclasses.dataclass(frozen=True)
class Adaptivity(SettingsGroup):
    """TT rounding, rank cap and degree growth (docs/design.md s.4): a mode whose top-degree
    coefficient mass exceeds degree_tol ||W - E W|| gets ``degree_step`` more degrees."""

    round_tol: float = option(1e-11, "relative TT rounding tolerance", nonnegative)
    max_rank: int = option(24, "TT rank cap of the rounding", positive)
    max_degree: int = option(32, "largest Hermite degree per mode", positive)
    degree_step: int = option(4, "degrees added to a mode at a time", positive)
    degree_tol: float = option(
        1e-6, "relative top-degree mass that triggers degree growth", nonnegative
    )


@dataclasses.dataclass(frozen=True)
class Integration(SettingsGroup):
    """The time integrator of dW/dt = L W - |grad W|^2 (:func:`numpyro_hjb.tt.hjb.integrate`).

    The integration runs past the sampler's horizon until ||W - E W|| < ``stop_tol`` (the
    log Z read-off) or ``max(t_max, horizon)``.
    """

    integrator: Literal["heun", "euler", "dlra"] = option(
        "heun", "'heun' Lawson-Heun, 'euler' Lawson-Euler, 'dlra' projector splitting"
    )
    dlra_rank: int | None = option(
        None, "DLRA ranks raised to at least this (None: those of the rounded W_0)", positive
    )
    step_tol: float = option(1e-5, "local error tolerance (abs. + rel. to ||W - E W||)", positive)
    init_step: float = option(1e-4, "first step size", positive)
    max_step: float = option(2.0, "largest step size", positive)
    min_step: float = option(1e-7, "step size below which the integration fails", nonnegative)
    max_steps: int = option(20000, "accepted plus rejected steps before it fails", positive)
    t_max: float = option(40.0, "hard end of the integration", positive)
    stop_tol: float = option(1e-9, "stop when ||W - E W|| < stop_tol (after the horizon)",
                             nonnegative)


@dataclasses.dataclass(frozen=True)
class Sampling(SettingsGroup):
    """The sampler on the stored snapshots (:mod:`numpyro_hjb.tt.samplers`).

    The snapshots are stored at the times of the grid t_k = T (k / K)^power; on the
    Cole-Hopf route with the tweedie sampler the TT is trusted down to t_s with
    eps_p e^{-t_s p} = ``jump_tol`` (eps_p the top-degree mass of h_0, p its degree), and the
    last step t_s -> 0 is the exact-target final jump (0: no jump).
    """

    sampler: Literal["auto", "ode", "sde", "tweedie"] = option(
        "auto", "'ode', 'sde', 'tweedie', or 'auto': ode on the HJB route, tweedie on Cole-Hopf"
    )
    num_sampling_steps: int = option(200, "K, the steps of the sampler", positive)
    horizon: float = option(8.0, "T of the sampler", positive)
    grid_power: float = option(2.0, "t_k = T (k / K)^power, refined near t = 0", positive)
    jump_tol: float = option(1e-3, "error of h at which the final jump starts (0: none)",
                             nonnegative)
    jump_newton: int = option(6, "Newton steps of the final jump's Laplace proposal",
                              nonnegative)


@dataclasses.dataclass(frozen=True)
class Scaling(SettingsGroup):
    """The diagonal pre-scaling x = s xi: the engine works with rho~(xi) = rho(s xi) prod s
    (same Z). ``scale="auto"`` (the default) keeps s = 1 on the HJB route (a Gaussian
    target, or ``formulation="hjb"``) and on the Cole-Hopf route searches a common s from
    s = 1 in factors ``scale_step`` within [scale_min, scale_max], taking the largest s whose
    truncation indicator is <= ``scale_tol`` (:func:`numpyro_hjb.tt.w0.choose_scale`).
    ``None`` is s = 1."""

    scale: float | tuple[float, ...] | Literal["auto"] | None = option(
        "auto", "'auto', None (1), a number, or one number per dimension", _positive_scale
    )
    scale_tol: float = option(0.05, "truncation indicator the search accepts", positive)
    scale_step: float = option(1.25, "factor between the scales tried", _greater_than_one)
    scale_min: float = option(0.3, "smallest scale tried", _at_most_one)
    scale_max: float = option(4.0, "largest scale tried", at_least(1.0))


@dataclasses.dataclass(frozen=True)
class Runtime(SettingsGroup):
    """How the work is chunked (no effect on the result)."""

    batch_size: int = option(4096, "proposals per compiled chunk", positive)


@dataclasses.dataclass(frozen=True)
class TTSettings(EngineSettings):
    """All settings of the TT-HJB engine."""

    route: Route = dataclasses.field(default_factory=Route)
    cole_hopf: ColeHopf = dataclasses.field(default_factory=ColeHopf)
    cross: Cross = dataclasses.field(default_factory=Cross)
    fallback: LeastSquares = dataclasses.field(default_factory=LeastSquares)
    adaptivity: Adaptivity = dataclasses.field(default_factory=Adaptivity)
    integration: Integration = dataclasses.field(default_factory=Integration)
    sampling: Sampling = dataclasses.field(default_factory=Sampling)
    scaling: Scaling = dataclasses.field(default_factory=Scaling)
    runtime: Runtime = dataclasses.field(default_factory=Runtime)

    def resolve(self) -> "TTSettings":
        """Nothing to fill in: every option is used as given."""
        return self
