"""Euler and RKF45 (tscnet.analysis.ode) against closed forms and scipy's solve_ivp."""
from __future__ import annotations

import numpy as np
import pytest

from tscnet.analysis import euler, fehlberg_step, format_table, poster_figure, rkf45

solve_ivp = pytest.importorskip("scipy.integrate").solve_ivp


def decay4(t, y):
    return -4.0 * y


# ---------------------------------------------------------------- Euler on Y' = -4Y (the poster)


def test_euler_h05_sits_on_stability_limit():
    r = euler(decay4, (0.0, 2.5), 1.0, 0.5)
    assert r.n_accepted == 5 and r.method == "euler"
    np.testing.assert_allclose(r.t, [0.0, 0.5, 1.0, 1.5, 2.0, 2.5])
    y = r.y[:, 0]
    np.testing.assert_array_equal(np.abs(y), 1.0)  # amplification 1 - 4h = -1 exactly
    assert np.all(np.sign(y[1:]) == -np.sign(y[:-1]))


def test_euler_h04_oscillates_and_decays():
    r = euler(decay4, (0.0, 2.5), 1.0, 0.4)
    assert r.n_accepted == 7
    np.testing.assert_allclose(r.h, [0.4] * 6 + [0.1])  # last step clipped onto t_end
    assert r.t[-1] == 2.5
    y = r.y[:, 0]
    np.testing.assert_allclose(y[1:7] / y[:6], -0.6)  # |1 - 1.6| = 0.6, sign flips
    np.testing.assert_allclose(y[7] / y[6], 1 - 4 * 0.1)


def test_euler_h005_tracks_exact_solution():
    r = euler(decay4, (0.0, 2.5), 1.0, 0.05)
    y = r.y[:, 0]
    assert r.n_accepted == 50
    assert np.all(np.diff(y) < 0) and np.all(y > 0)
    np.testing.assert_allclose(y, 0.8 ** np.arange(51), rtol=1e-12)
    assert np.max(np.abs(y - np.exp(-4 * r.t))) < 0.05


def test_euler_is_first_order_on_a_vector_system():
    f = lambda t, y: np.array([y[1], -y[0]])  # noqa: E731
    ends = [euler(f, (0.0, 1.0), [1.0, 0.0], h).y[-1, 0] for h in (0.01, 0.005)]
    errors = [abs(y - np.cos(1.0)) for y in ends]
    assert errors[0] / errors[1] == pytest.approx(2.0, rel=0.05)


def test_shapes_and_argument_checks():
    r = rkf45(decay4, (0.0, 1.0), 1.0)
    assert r.y.shape == (r.n_accepted + 1, 1) and r.h.shape == (r.n_accepted,)
    np.testing.assert_allclose(np.diff(r.t), r.h)
    with pytest.raises(ValueError):
        euler(decay4, (1.0, 0.0), 1.0, 0.1)
    with pytest.raises(ValueError):
        euler(decay4, (0.0, 1.0), 1.0, 0.0)


# ------------------------------------------------------------------------------------ RKF45


def test_fehlberg_tableau_orders():
    # One step on y' = y: local errors of the 4th/5th-order solutions scale as h^5 / h^6.
    f = lambda t, y: y  # noqa: E731
    err4, err5 = [], []
    for h in (0.1, 0.05):
        y4, y5 = fehlberg_step(f, 0.0, np.array([1.0]), h)
        err4.append(abs(y4[0] - np.exp(h)))
        err5.append(abs(y5[0] - np.exp(h)))
    assert 25 < err4[0] / err4[1] < 36
    assert 50 < err5[0] / err5[1] < 70


LOGISTIC_K, LOGISTIC_Y0 = 10.0, 0.5


def vdp(t, y, mu=1.0):
    return np.array([y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]])


PROBLEMS = {
    "decay": (lambda t, y: -2 * y, (0.0, 5.0), [1.0], lambda t: [np.exp(-2 * t)]),
    "logistic": (
        lambda t, y: y * (1 - y / LOGISTIC_K),
        (0.0, 10.0),
        [LOGISTIC_Y0],
        lambda t: [LOGISTIC_K / (1 + (LOGISTIC_K / LOGISTIC_Y0 - 1) * np.exp(-t))],
    ),
    "oscillator": (
        lambda t, y: np.array([y[1], -4 * y[0]]),
        (0.0, 10.0),
        [1.0, 0.0],
        lambda t: [np.cos(2 * t), -2 * np.sin(2 * t)],
    ),
    "riccati": (lambda t, y: -2 * t * y**2, (0.0, 5.0), [1.0], lambda t: [1 / (1 + t * t)]),
    "van_der_pol": (vdp, (0.0, 10.0), [2.0, 0.0], None),
}


@pytest.mark.parametrize("rtol,atol", [(1e-6, 1e-8), (0.0, 1e-6)])
@pytest.mark.parametrize("name", list(PROBLEMS))
def test_rkf45_matches_scipy(name, rtol, atol):
    f, span, y0, exact = PROBLEMS[name]
    r = rkf45(f, span, y0, tol=atol, rtol=rtol)
    ref = solve_ivp(f, span, y0, method="RK45", rtol=max(rtol, 1e-12), atol=atol)
    if exact is None:
        truth = solve_ivp(f, span, y0, method="DOP853", rtol=1e-13, atol=1e-13).y[:, -1]
    else:
        truth = np.asarray(exact(span[1]))
    assert r.t[-1] == span[1]
    # Global error: at most the local tolerance accumulated over the steps taken.
    scale = atol + rtol * np.max(np.abs(truth))
    assert np.max(np.abs(r.y[-1] - truth)) <= 2 * r.n_accepted * scale
    n_scipy = len(ref.t) - 1
    assert n_scipy / 3 <= r.n_accepted <= 3 * n_scipy


def test_rkf45_error_shrinks_with_tolerance():
    f, span, y0, exact = PROBLEMS["oscillator"]
    ends = [rkf45(f, span, y0, tol=tol).y[-1] for tol in (1e-4, 1e-8)]
    errors = [np.max(np.abs(y - exact(span[1]))) for y in ends]
    assert errors[1] < errors[0] / 100


def test_rkf45_accepted_steps_pass_error_test_and_propagate_4th_order():
    tol = 1e-6
    r = rkf45(PROBLEMS["van_der_pol"][0], (0.0, 5.0), [2.0, 0.0], tol=tol)
    for t, y, h, y_next in zip(r.t[:-1], r.y[:-1], r.h, r.y[1:]):
        y4, y5 = fehlberg_step(vdp, t, y, h)
        assert np.max(np.abs(y4 - y5)) <= tol
        np.testing.assert_allclose(y_next, y4, rtol=0, atol=1e-14)


def test_rkf45_steps_grow_as_solution_decays():
    r = rkf45(decay4, (0.0, 2.5), 1.0, tol=1e-6)
    inner = r.h[:-1]  # the last step is clipped onto t_end
    assert np.all(np.diff(inner) >= -1e-12 * inner[1:])
    assert inner[-1] > 3 * inner[1]
    assert np.max(np.abs(r.y[-1, 0] - np.exp(-10.0))) < 100 * 1e-6


def test_rkf45_rejects_and_retries_too_large_steps():
    tol = 1e-6
    good = rkf45(decay4, (0.0, 2.5), 1.0, tol=tol)
    bad = rkf45(decay4, (0.0, 2.5), 1.0, tol=tol, h0=1.0)
    assert good.n_rejected == 0
    assert bad.n_rejected >= 1
    assert bad.h[0] < 1.0 / 5  # shrunk until the error test passed
    y4, y5 = fehlberg_step(decay4, 0.0, np.array([1.0]), bad.h[0])
    assert abs(y4[0] - y5[0]) <= tol
    assert abs(bad.y[-1, 0] - np.exp(-10.0)) < 100 * tol
    # 5 new stages per attempt; f(t, y) is evaluated once per accepted point and reused on retry.
    assert bad.n_fev == 1 + 5 * (bad.n_accepted + bad.n_rejected) + bad.n_accepted - 1


def test_rkf45_step_underflow_raises():
    # y = -log(1 - t) blows up at t = 1: steps must shrink to h_min and stop, not underflow.
    with pytest.raises(RuntimeError, match="h_min"), np.errstate(divide="ignore"):
        rkf45(lambda t, y: 1.0 / (1.0 - t), (0.0, 2.0), 0.0, tol=1e-8, max_steps=5000)


# ---------------------------------------------------------------------------------- figure


@pytest.mark.slow
def test_poster_figure_writes_png_and_table(tmp_path):
    path = tmp_path / "poster.png"
    rows = poster_figure(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000
    assert [(r["method"], r["steps"]) for r in rows[:3]] == [("euler", n) for n in (50, 7, 5)]
    assert rows[2]["error"] == pytest.approx(1.0, abs=1e-4)  # h = 0.5 ends at -1, exact ~ 0
    assert rows[3]["method"] == "rkf45" and rows[3]["error"] < 1e-3
    assert "rkf45" in format_table(rows)
