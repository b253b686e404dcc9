"""The control network u_theta(y, t) (docs/design.md s.3, "Control parametrisation").

    u_theta(y, t) = MLP([y, e(t)]) + g_theta(t) * s(y, t) + k_theta(t) * y

with e(t) a Fourier time embedding of t / T, s(y, t) a clipped target-score feature, and the
output layers of the MLP and of the time-only gates (g, k) initialised at zero, so that the
untrained sampler is the reference process. With g = 1, k = 1 / tau_K at t = 0 the control is
``grad log rho(y) + y / tau_K``, the optimal control at the data end in the parametrisation
of :mod:`numpyro_hjb.diffusion`. The score feature is built in ``control.engine``.

Noise conditioning (``noise_level`` given, the noise level sigma_t of the reference at time
t): the embedding is of the normalised log sigma_t instead of t / T, and the MLP term is
divided by max(sigma_t, 0.05),

    u_theta(y, t) = MLP([y, e(log sigma_t)]) / max(sigma_t, 0.05) + g_theta(t) s + k_theta(t) y,

as in noise-conditional score networks: the score of p_t grows like 1 / sigma_t where the
modes separate, and log sigma_t resolves the short times that t / T crowds together. Below
sigma = 0.05 the gated target score carries the steep part.

Coordinate-wise term (``coordinate_hidden`` = h > 0): every coordinate i also gets a small
network of its own value and the time features alone, added to the MLP output,

    u_theta(y, t)_i += c_theta,i(y_i, e(t)),    c_theta,i: [1 + E] -> h -> h -> 1 (output zero),

the additive ("mean-field") part of the control. For a product target the optimal control is
exactly of this form, and in high dimension the joint MLP learns such one-coordinate functions
slowly, because each of its hidden units mixes every input (docs/lab/notes.md,
manywell50).

State-dependent score gate (``state_gate=True``): the gate on the score feature becomes

    g_theta(t) + G_theta(y, t),    G_theta = (last hidden layer of the MLP) @ W_G + b_G,

a second, zero-initialised output head on the MLP's last hidden layer. The score of p_t is not
a time-only multiple of the target score wherever the target's local scale varies with the
state: for the funnel, given x_1, the score of p_t in x_i is the target's times
e^{x_1} / (e^{x_1} e^{-2t} + sigma_t^2), near 1 in the mouth and near 0 in the neck, and the
x_1 component of the target score there pushes paths out of the neck. A time-only gate has to
pick one value for both; the state-dependent gate can follow the ratio, a bounded and smooth
function of (y, t), instead of asking the MLP to cancel a term that grows like e^{-x_1}.

Parameters are a plain pytree of arrays ({"net": [(W, b), ...], "gate": [(W, b), ...]},
"state_gate": (W_G, b_G) when enabled, and "coord" with the coordinate networks' weights
stacked over coordinates),
which keeps save/load to ``.npz`` trivial.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


#: log-noise range of the embedding: sigma in [SIGMA_MIN, 1] maps to [0, 1]
SIGMA_MIN = 1e-4
#: the MLP term is divided by max(sigma_t, SIGMA_FLOOR)
SIGMA_FLOOR = 0.05


def time_embedding(t: Array, horizon: float, num_features: int) -> Array:
    """Fourier features of s = t / T in [0, 1]: (s, sin(pi k s), cos(pi k s)), k = 1..F/2."""
    s = jnp.asarray(t) / horizon
    k = jnp.arange(1, num_features // 2 + 1, dtype=jnp.result_type(s, jnp.float32))
    return jnp.concatenate([s[None], jnp.sin(jnp.pi * k * s), jnp.cos(jnp.pi * k * s)])


def _init_mlp(key: Array, sizes: list[int], zero_last: bool) -> list[tuple[Array, Array]]:
    layers = []
    keys = jax.random.split(key, len(sizes) - 1)
    for i, (k, n_in, n_out) in enumerate(zip(keys, sizes[:-1], sizes[1:])):
        w = jax.random.normal(k, (n_in, n_out)) * jnp.sqrt(1.0 / n_in)
        if zero_last and i == len(sizes) - 2:
            w = jnp.zeros_like(w)
        layers.append((w, jnp.zeros(n_out)))
    return layers


def _apply_hidden(layers, x: Array) -> Array:
    """The MLP up to (and including) its last hidden layer."""
    for w, b in layers[:-1]:
        x = jax.nn.gelu(x @ w + b)
    return x


def _apply_mlp(layers, x: Array) -> Array:
    w, b = layers[-1]
    return _apply_hidden(layers, x) @ w + b


def _init_coordinate_nets(rng_key: Array, dim: int, n_emb: int, width: int) -> list:
    """d independent networks [y_i, e] -> width -> width -> 1, weights stacked on axis 0."""
    keys = jax.random.split(rng_key, 3)
    w_in = jax.random.normal(keys[0], (dim, 1 + n_emb, width)) * jnp.sqrt(1.0 / (1 + n_emb))
    w_mid = jax.random.normal(keys[1], (dim, width, width)) * jnp.sqrt(1.0 / width)
    return [
        (w_in, jnp.zeros((dim, width))),
        (w_mid, jnp.zeros((dim, width))),
        (jnp.zeros((dim, width)), jnp.zeros(dim)),
    ]


def _apply_coordinate_nets(layers, y: Array, emb: Array) -> Array:
    """(B, d): network i applied to (y[:, i], emb). Laid out (d, B, width), so that the middle
    layer is one batched matmul over coordinates (about 1.7x faster on CPU than (B, d, width))."""
    (w_in, b_in), (w_mid, b_mid), (w_out, b_out) = layers
    h = y.T[:, :, None] * w_in[:, None, 0, :] + (emb @ w_in[:, 1:, :] + b_in)[:, None, :]
    h = jax.nn.gelu(h)
    h = jax.nn.gelu(jnp.matmul(h, w_mid) + b_mid[:, None, :])
    return (jnp.matmul(h, w_out[:, :, None])[..., 0] + b_out[:, None]).T


def init_control(
    rng_key: Array,
    dim: int,
    hidden: tuple[int, ...] = (64, 64),
    num_time_features: int = 16,
    coordinate_hidden: int = 0,
    state_gate: bool = False,
) -> dict:
    """Parameters of u_theta with zero-initialised output layers (and the coordinate-wise
    networks when ``coordinate_hidden`` > 0, the state-dependent gate head when
    ``state_gate``)."""
    n_emb = 1 + 2 * (num_time_features // 2)
    k_net, k_gate = jax.random.split(rng_key)
    params = {
        "net": _init_mlp(k_net, [dim + n_emb, *hidden, dim], zero_last=True),
        "gate": _init_mlp(k_gate, [n_emb, hidden[0], 2 * dim], zero_last=True),
    }
    if coordinate_hidden > 0:
        k_coord = jax.random.fold_in(rng_key, 3)
        params["coord"] = _init_coordinate_nets(k_coord, dim, n_emb, int(coordinate_hidden))
    if state_gate:
        params["state_gate"] = (jnp.zeros((hidden[-1], dim)), jnp.zeros(dim))
    return params


def apply_control(
    params: dict,
    y: Array,
    t: Array,
    base: Array,
    horizon: float,
    num_time_features: int = 16,
    noise_level: Array | None = None,
) -> Array:
    """u_theta(y, t) for a batch y (B, d) at one time t, given the score feature base (B, d);
    noise-conditioned when ``noise_level`` (sigma_t, a scalar) is given."""
    if noise_level is None:
        emb = time_embedding(t, horizon, num_time_features)
    else:
        log_s = jnp.log(jnp.maximum(noise_level, SIGMA_MIN))
        emb = time_embedding(log_s - jnp.log(SIGMA_MIN), -jnp.log(SIGMA_MIN), num_time_features)
    emb = emb.astype(y.dtype)
    inp = jnp.concatenate([y, jnp.broadcast_to(emb, (y.shape[0], emb.shape[0]))], axis=1)
    gate_score, gate_y = jnp.split(_apply_mlp(params["gate"], emb), 2)
    hidden = _apply_hidden(params["net"], inp)
    w_out, b_out = params["net"][-1]
    out = hidden @ w_out + b_out
    if "state_gate" in params:
        w_g, b_g = params["state_gate"]
        gate_score = gate_score + hidden @ w_g + b_g
    if "coord" in params:
        out = out + _apply_coordinate_nets(params["coord"], y, emb)
    if noise_level is not None:
        out = out / jnp.maximum(noise_level, SIGMA_FLOOR).astype(y.dtype)
    return out + gate_score * base + gate_y * y
