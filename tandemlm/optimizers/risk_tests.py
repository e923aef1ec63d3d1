"""The exact tests behind a certified operating point (`certify`): is a configuration's loss
against the reference at most ε, at level δ?

`b` holds what the configuration loses on each row: on a labelled row [reference right] − [it
right], in {−1, 0, 1}; on an unlabeled row [its answer differs from the reference's], in {0, 1}.

* `losses_p`: exact, on the count of rows lost (b = +1), at least Binomial(n, ε) when the loss
  exceeds ε; it ignores the rows a configuration wins;
* `net_p`: lost minus won, an exact unconditional test (Berger & Boos 1994) whose nuisance (how
  often the two disagree) is bounded by a Clopper–Pearson interval.

`loss_bound` inverts a test into an upper confidence bound; `rows_needed` says how many rows like
these a test would need.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

#: the share of δ the `net` test spends on its confidence interval for the discordance rate
NUISANCE = 0.1
#: discordance rates at which the `net` test evaluates its tail (the supremum over an interval)
GRID = 16
#: rows_needed looks no further than this many times the rows it was given
NEEDED_AT_MOST = 20
_LOG_FACTORIAL = np.zeros(1)


def _log_factorials(n: int) -> np.ndarray:
    global _LOG_FACTORIAL
    if len(_LOG_FACTORIAL) <= n:
        _LOG_FACTORIAL = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, 2 * n + 2)))])
    return _LOG_FACTORIAL


def _log_pmf(k: np.ndarray, n: int, p: float) -> np.ndarray:
    """log P(Binomial(n, p) = k), elementwise (-inf outside 0..n)."""
    k = np.asarray(k)
    out = np.full(k.shape, -np.inf)
    inside = (k >= 0) & (k <= n)
    j = k[inside]
    if p <= 0.0 or p >= 1.0:
        out[inside] = np.where(j == (0 if p <= 0.0 else n), 0.0, -np.inf)
        return out
    lf = _log_factorials(n)
    out[inside] = lf[n] - lf[j] - lf[n - j] + j * math.log(p) + (n - j) * math.log1p(-p)
    return out


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) ≤ k), summed exactly in log space."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    terms = _log_pmf(np.arange(k + 1), n, p)
    top = float(terms.max())
    return min(1.0, math.exp(top) * float(np.exp(terms - top).sum()))


def upper_rate(k: int, n: int, alpha: float) -> float:
    """The Clopper–Pearson upper bound at level `alpha` of a rate seen k times in n."""
    if k >= n:
        return 1.0
    low, high = 0.0, 1.0
    for _ in range(50):
        mid = (low + high) / 2
        low, high = (low, mid) if binomial_tail(k, n, mid) <= alpha else (mid, high)
    return high


def losses_p(b: np.ndarray, labelled: np.ndarray, epsilon: float, delta: float) -> float:
    """p-value of "the loss exceeds ε" from the count of rows lost (b = +1: the reference right
    and it wrong, or on an unlabeled row another answer), exact: under that hypothesis each row
    is lost with chance above ε, so the count is at least Binomial(n, ε)."""
    return binomial_tail(int(np.sum(b > 0.5)), len(b), epsilon) if len(b) else 1.0


def _net_tail(t: int, n: int, lost: float, won: float, unlabeled: int, epsilon: float) -> float:
    """P(T ≤ t) for T = (rows lost − rows won among n labelled rows, each lost with chance
    `lost` and won with chance `won`) + Binomial(`unlabeled`, ε)."""
    def reach(rate: float, rows: int) -> int:  # counts beyond this carry no visible mass
        rate = max(rate, 0.0)
        return min(rows, int(rows * rate + 12 * math.sqrt(rows * rate) + 12))
    wins = np.arange(reach(won, n) + 1)
    losses = np.arange(reach(lost, n) + 1)
    given = lost / (1.0 - won) if won < 1.0 else 0.0
    joint = _log_pmf(wins, n, won)[:, None] + np.stack([_log_pmf(losses, n - w, given) for w in wins])
    net = (losses[None, :] - wins[:, None]).ravel()
    order = np.argsort(net, kind="stable")
    cumulative = np.cumsum(np.exp(joint.ravel()[order]))
    extra = np.arange(reach(epsilon, unlabeled) + 1) if unlabeled else np.zeros(1, dtype=int)
    weights = np.exp(_log_pmf(extra, unlabeled, epsilon)) if unlabeled else np.ones(1)
    at = np.searchsorted(net[order], t - extra, side="right") - 1
    below = np.where(at >= 0, cumulative[np.clip(at, 0, None)], 0.0)
    return float(np.sum(weights * below))


def net_p(b: np.ndarray, labelled: np.ndarray, epsilon: float, delta: float) -> float:
    """p-value of "the loss exceeds ε" from the net count of rows lost (rows it wins count for
    it): an exact unconditional test (Berger & Boos 1994). Under the hypothesis a labelled row
    is lost with chance (s + ε)/2 and won with chance (s − ε)/2 at worst, s its unknown
    discordance; the tail is maximised over s in a one-sided Clopper–Pearson interval from the
    labelled rows at level `NUISANCE`·δ, which is added to the p-value. Unlabeled rows count as
    lost with chance ε at least."""
    if not len(b):
        return 1.0
    mine = b[labelled]
    n, unlabeled = len(mine), int((~labelled).sum())
    lost, won = int(np.sum(mine > 0.5)), int(np.sum(mine < -0.5))
    t = lost - won + int(np.sum(b[~labelled] > 0.5))
    changed = max(epsilon, 0.0)  # an unlabeled row is lost at least as often as the loss
    if n == 0:
        return binomial_tail(t, unlabeled, changed)
    gamma = NUISANCE * delta
    top = upper_rate(lost + won, n, gamma)
    if top <= abs(epsilon):  # discordance too rare to lose ε, outside the interval
        return gamma
    tail = max(_net_tail(t, n, (s + epsilon) / 2, (s - epsilon) / 2, unlabeled, changed)
               for s in np.linspace(abs(epsilon), top, GRID))
    return min(1.0, tail + gamma)


TESTS: dict[str, Callable[[np.ndarray, np.ndarray, float, float], float]] = {
    "losses": losses_p, "net": net_p}


def loss_bound(b: np.ndarray, labelled: np.ndarray, delta: float, test: str) -> float:
    """The smallest ε at which `test` certifies these rows at level δ: an upper confidence bound
    on the loss (to 1e-4)."""
    pvalue = TESTS[test]
    low, high = (0.0 if test == "losses" else -1.0), 1.0 - 1e-9
    if pvalue(b, labelled, high, delta) > delta:
        return 1.0
    while high - low > 1e-4:
        mid = (low + high) / 2
        low, high = (low, mid) if pvalue(b, labelled, mid, delta) <= delta else (mid, high)
    return high


def rows_needed(b: np.ndarray, labelled: np.ndarray, epsilon: float, delta: float) -> float:
    """About how many rows like these (labelled and unlabeled in the same shares, each kind lost
    and won at the rates seen) the better test would need to certify the configuration; inf when
    it loses ε or more on them, or would need more than `NEEDED_AT_MOST` times as many."""
    if not len(b) or float(np.mean(b)) >= epsilon:
        return math.inf
    share = float(np.mean(labelled))

    def passes(m: int) -> bool:
        n = round(m * share)
        rows, mask = scaled(b, labelled, (n, m - n))
        return min(test(rows, mask, epsilon, delta) for test in TESTS.values()) <= delta
    high, limit = 64, max(64, NEEDED_AT_MOST * len(b))
    while not passes(high):
        high *= 2
        if high > limit:
            return math.inf
    low = high // 2
    while high - low > max(1, low // 50):
        mid = (low + high) // 2
        low, high = (low, mid) if passes(mid) else (mid, high)
    return float(high)


def scaled(b: np.ndarray, labelled: np.ndarray, shares: tuple[int, int],
            z: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the given sizes (labelled, unlabeled) with `b`'s rates of rows lost and won,
    moved `z` standard errors (of a rate seen k times in n, as (k + 0.5)/(n + 1)) towards more
    lost and fewer won."""
    parts, mask = [], []
    for kind, size in zip((True, False), shares, strict=True):
        mine = b[labelled == kind]
        lost = round(size * _moved(int(np.sum(mine > 0.5)), len(mine), z)) if len(mine) else 0
        won = round(size * _moved(int(np.sum(mine < -0.5)), len(mine), -z)) if len(mine) else 0
        lost = min(lost, size)
        won = min(won, size - lost)
        parts.append(np.concatenate([np.ones(lost), -np.ones(won), np.zeros(size - lost - won)]))
        mask.append(np.full(size, kind))
    return np.concatenate(parts), np.concatenate(mask)


def _moved(k: int, n: int, z: float) -> float:
    if z == 0.0:
        return k / n
    rate = (k + 0.5) / (n + 1)
    return max(0.0, rate + z * math.sqrt(rate * (1 - rate) / (n + 1)))
