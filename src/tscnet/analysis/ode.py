"""Explicit ODE solvers behind the step-size argument of the paper (docs/design.md, section 2).

A residual block ``y_{d+1} = y_d + Δt_d ⊙ F(y_d)`` is one forward-Euler step. The paper motivates
adaptive Δt with the classical ODE picture reproduced here:

* :func:`euler` — fixed-step explicit Euler, ``y_{j+1} = y_j + h f(t_j, y_j)``. On the test
  equation ``Y' = −λY`` each step multiplies ``Y`` by the amplification factor ``1 − λh``, so it
  is stable only for ``h ≤ 2/λ``.
* :func:`rkf45` — Runge–Kutta–Fehlberg 4(5) with the paper's step controller
  ``Δt_{j+1} = k · Δt_j · (Tol / |y_{j+1} − ŷ_{j+1}|)^{1/(p+1)}``.

Both solvers integrate forward in time (``t_end > t0``) and work on numpy arrays: ``f(t, y)``
receives a 1-D float array ``y`` (a scalar ``y0`` is treated as a 1-vector) and returns an array of
the same length. The figure of the poster is built by :mod:`tscnet.analysis.ode_plot`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidValue

ODEFunc = Callable[[float, np.ndarray], np.ndarray]

__all__ = ["ODEResult", "euler", "rkf45", "fehlberg_step"]


@dataclass(frozen=True)
class ODEResult:
    """Trajectory of one solve.

    Attributes:
        t: accepted times, ``t[0] = t0`` and ``t[-1] = t_end``; shape ``(n_accepted + 1,)``.
        y: solution at those times, one row per time; shape ``(n_accepted + 1, dim)``.
        h: accepted step sizes, ``h[j] = t[j + 1] − t[j]``; shape ``(n_accepted,)``.
        n_accepted: number of accepted steps.
        n_rejected: number of steps rejected by the error test and retried with a smaller step.
        n_fev: number of evaluations of ``f``.
        method: ``"euler"`` or ``"rkf45"``.
    """

    t: np.ndarray
    y: np.ndarray
    h: np.ndarray
    n_accepted: int
    n_rejected: int
    n_fev: int
    method: str


def _as_state(y0: float | Sequence[float] | np.ndarray) -> np.ndarray:
    return np.atleast_1d(np.asarray(y0, dtype=float)).copy()


def _span(t_span: tuple[float, float]) -> tuple[float, float]:
    t0, t_end = map(float, t_span)
    if not t_end > t0:
        raise InvalidValue(f"t_span must satisfy t_end > t0, got {t_span}")
    return t0, t_end


def _call(f: ODEFunc, t: float, y: np.ndarray) -> np.ndarray:
    # Reshape so that scalar-valued right-hand sides of 1-D problems are accepted.
    return np.asarray(f(t, y), dtype=float).reshape(y.shape)


def _result(ts: list, ys: list, n_rejected: int, n_fev: int, method: str) -> ODEResult:
    t = np.asarray(ts)
    return ODEResult(t, np.stack(ys), np.diff(t), len(ts) - 1, n_rejected, n_fev, method)


def euler(f: ODEFunc, t_span: tuple[float, float], y0: float | Sequence[float] | np.ndarray, h: float) -> ODEResult:
    """Explicit Euler with a fixed step: ``y_{j+1} = y_j + h_j f(t_j, y_j)``.

    ``h_j = h`` except for the last step, which is clipped to land exactly on ``t_end`` (on
    ``[0, 2.5]``, ``h = 0.4`` takes six steps of 0.4 and one of 0.1).
    """
    t0, t_end = _span(t_span)
    if not h > 0:
        raise InvalidValue(f"h must be positive, got {h}")
    ratio = (t_end - t0) / h
    # A span that is a whole number of steps up to rounding must not get an extra sliver step.
    whole = np.isclose(ratio, round(ratio), rtol=1e-10, atol=1e-10)
    n = max(1, round(ratio)) if whole else int(np.ceil(ratio))
    # t_j = t0 + j·h (not accumulated) so that times carry no rounding drift.
    ts = [t0 + j * h for j in range(n)] + [t_end]
    y = _as_state(y0)
    ys = [y]
    for t, t_next in zip(ts[:-1], ts[1:]):
        y = y + (t_next - t) * _call(f, t, y)
        ys.append(y)
    return _result(ts, ys, 0, n, "euler")


# Fehlberg's RK4(5) tableau (Fehlberg 1969; Hairer, Nørsett & Wanner, Table II.5.1).
_C = np.array([0.0, 1 / 4, 3 / 8, 12 / 13, 1.0, 1 / 2])
_A = (
    (),
    (1 / 4,),
    (3 / 32, 9 / 32),
    (1932 / 2197, -7200 / 2197, 7296 / 2197),
    (439 / 216, -8.0, 3680 / 513, -845 / 4104),
    (-8 / 27, 2.0, -3544 / 2565, 1859 / 4104, -11 / 40),
)
_B4 = np.array([25 / 216, 0.0, 1408 / 2565, 2197 / 4104, -1 / 5, 0.0])
_B5 = np.array([16 / 135, 0.0, 6656 / 12825, 28561 / 56430, -9 / 50, 2 / 55])


def fehlberg_step(
    f: ODEFunc, t: float, y: np.ndarray, h: float, k1: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One Fehlberg step: ``(y4, y5)``, the 4th- and 5th-order solutions at ``t + h``.

    ``k_i = f(t + c_i h, y + h Σ_{l<i} a_il k_l)``, ``y4 = y + h Σ b4_i k_i``,
    ``y5 = y + h Σ b5_i k_i``. Pass ``k1 = f(t, y)`` to reuse it (e.g. after a rejected step).
    """
    k = np.empty((6, y.size))
    k[0] = _call(f, t, y) if k1 is None else k1
    for i in range(1, 6):
        k[i] = _call(f, t + _C[i] * h, y + h * (np.asarray(_A[i]) @ k[:i]))
    return y + h * (_B4 @ k), y + h * (_B5 @ k)


def _initial_step(f: ODEFunc, t0: float, y0: np.ndarray, f0: np.ndarray, tol: float, order: int) -> float:
    """Starting step of Hairer, Nørsett & Wanner (II.4): ``h·|f|`` and local error ~ Tol."""
    d0, d1 = np.max(np.abs(y0)), np.max(np.abs(f0))
    h0 = 1e-6 if min(d0, d1) < 1e-5 else 0.01 * d0 / d1
    f1 = _call(f, t0 + h0, y0 + h0 * f0)
    d2 = np.max(np.abs(f1 - f0)) / h0
    h1 = max(1e-6, h0 * 1e-3) if max(d1, d2) <= 1e-15 else (0.01 / max(d1, d2)) ** (1 / (order + 1))
    # Scale the heuristic, designed for Tol = 1, to the requested tolerance.
    return min(100 * h0, h1 * tol ** (1 / (order + 1)))


def rkf45(
    f: ODEFunc,
    t_span: tuple[float, float],
    y0: float | Sequence[float] | np.ndarray,
    tol: float = 1e-6,
    h0: float | None = None,
    safety: float = 0.9,
    order: int = 4,
    h_min: float | None = None,
    h_max: float | None = None,
    max_steps: int = 100_000,
    rtol: float = 0.0,
    factor_range: tuple[float, float] = (0.1, 5.0),
) -> ODEResult:
    """Adaptive Runge–Kutta–Fehlberg 4(5) with the paper's step-size controller.

    Each attempted step of size ``Δt_j`` gives the 4th-order ``y_{j+1}`` and the embedded
    5th-order ``ŷ_{j+1}`` (:func:`fehlberg_step`). Their difference estimates the local error of
    ``y_{j+1}``, measured in the max-norm over components, ``err = max_i |y_{j+1} − ŷ_{j+1}|_i``.
    The next step is

        ``Δt_{j+1} = k · Δt_j · (Tol / err)^{1/(p+1)}``,  k = ``safety``, p = ``order``,

    with the factor ``k (Tol/err)^{1/(p+1)}`` clamped to ``factor_range``. A step with
    ``err > Tol`` is rejected and retried from the same point with the shrunk step; the step after
    a rejection is not allowed to grow. The last step is clipped to land on ``t_end``.

    The **4th-order** solution ``y_{j+1}`` is propagated, as in classical RKF45, so the error
    estimate is the error of the solution actually returned (no local extrapolation; Dormand–
    Prince / scipy's ``RK45`` propagate the 5th-order one instead). The paper calls ``ŷ`` the
    embedded lower-order solution; the difference, hence the controller, is the same either way.

    Args:
        tol: Tol, an absolute tolerance on the local error (the paper's rule).
        h0: first trial step; default: Hairer's heuristic scaled to ``tol``.
        h_min: smallest allowed step (default ``1e-12·(t_end − t0)``); going below raises
            ``RuntimeError`` rather than letting steps underflow silently.
        h_max: largest step (default: the whole span).
        max_steps: limit on attempted (accepted + rejected) steps; exceeding it raises.
        rtol: optional relative part of the tolerance,
            ``Tol_i = tol + rtol·max(|y_j|, |y_{j+1}|)_i``
            (as in scipy's ``atol``/``rtol``); ``0`` gives the paper's purely absolute rule.
    """
    t0, t_end = _span(t_span)
    if not (tol > 0 and rtol >= 0):
        raise InvalidValue(f"need tol > 0 and rtol >= 0, got tol={tol}, rtol={rtol}")
    span = t_end - t0
    h_min = 1e-12 * span if h_min is None else h_min
    h_max = span if h_max is None else h_max
    shrink_min, grow_max = factor_range
    exponent = 1.0 / (order + 1)

    t, y = t0, _as_state(y0)
    k1 = _call(f, t, y)
    n_fev = 1
    if h0 is None:
        h = _initial_step(f, t, y, k1, tol, order)
        n_fev += 1
    else:
        h = h0
    h = float(np.clip(h, h_min, h_max))
    ts, ys, n_rejected, rejected_last = [t], [y], 0, False
    while t < t_end:
        if len(ts) - 1 + n_rejected >= max_steps:
            raise RuntimeError(f"rkf45: more than max_steps={max_steps} steps before t_end")
        # Land exactly on t_end instead of leaving a sliver of a step.
        last = t + h >= t_end - 1e-12 * span
        if last:
            h = t_end - t
        y4, y5 = fehlberg_step(f, t, y, h, k1)
        n_fev += 5
        scale = tol + rtol * np.maximum(np.abs(y), np.abs(y4))
        err = float(np.max(np.abs(y4 - y5) / scale))  # err / Tol in the paper's rule
        factor = grow_max if err == 0.0 else safety * err**-exponent
        factor = float(np.clip(factor, shrink_min, grow_max))
        if err <= 1.0:
            t = t_end if last else t + h
            y = y4
            ts.append(t)
            ys.append(y)
            if t < t_end:
                k1 = _call(f, t, y)
                n_fev += 1
            h *= min(factor, 1.0) if rejected_last else factor
            rejected_last = False
        else:
            n_rejected += 1
            rejected_last = True
            h *= factor
        h = min(h, h_max)
        if h < h_min and t < t_end:
            raise RuntimeError(f"rkf45: step {h:.3g} fell below h_min={h_min:.3g} at t={t:.6g}")
    return _result(ts, ys, n_rejected, n_fev, "rkf45")
