"""Windowed perplexity of a causal language model given as a logits callable.

Protocol (the one behind the SmolLM2 reference numbers): the token ids are cut
into consecutive non-overlapping windows of ``window`` tokens starting at 0;
an incomplete tail window is dropped. Each window is run on its own (no
context carried over, no BOS inserted) and scored on its tokens
``1 .. window - 1``, each predicted from the tokens before it in the window.
Perplexity is ``exp`` of the mean negative log-likelihood over all scored
tokens, accumulated in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import EvaluationError

#: Rows of logits turned into log-probabilities at a time (bounds float64 temporaries).
_ROWS_PER_CHUNK = 64


@dataclass(frozen=True)
class PerplexityResult:
    """Outcome of :func:`window_perplexity`.

    Parameters
    ----------
    perplexity : float
        ``exp(nll)``.
    nll : float
        Mean negative log-likelihood per scored token, in nats.
    scored_tokens : int
        Number of tokens scored: ``windows * (window - 1)``.
    windows : int
        Number of windows run.
    """

    perplexity: float
    nll: float
    scored_tokens: int
    windows: int


def window_perplexity(logits_fn, token_ids, window: int = 512, max_windows=None) -> PerplexityResult:
    """Perplexity over non-overlapping windows (see the module docstring).

    Parameters
    ----------
    logits_fn : callable
        ``logits_fn(ids)`` with ``ids`` an int64 numpy array ``[window]``
        returns logits ``[window, vocab]`` (or ``[1, window, vocab]``) as a
        numpy array or CPU torch tensor; row ``t`` predicts token ``t + 1``.
    token_ids : sequence of int or numpy.ndarray
        The tokenized text, 1-D.
    window : int
        Tokens per window (at least 2).
    max_windows : int, optional
        Run only the first ``max_windows`` windows.

    Returns
    -------
    PerplexityResult

    Raises
    ------
    EvaluationError
        If ``window`` or ``max_windows`` is invalid, the text is shorter than
        one window, or ``logits_fn`` returns logits of the wrong shape or
        non-finite values.
    """
    ids = _check_ids(token_ids, window)
    count = len(ids) // window
    if max_windows is not None:
        if not isinstance(max_windows, int) or max_windows < 1:
            raise EvaluationError(f"max_windows must be a positive int, got {max_windows!r}")
        count = min(count, max_windows)
    total = 0.0
    for w in range(count):
        chunk = ids[w * window : (w + 1) * window]
        logits = _logits_array(logits_fn(chunk), window)
        total += _sum_nll(logits[:-1], chunk[1:])
    scored = count * (window - 1)
    nll = total / scored
    return PerplexityResult(math.exp(nll), nll, scored, count)


def _check_ids(token_ids, window) -> np.ndarray:
    """Validate ``window`` and the ids; return them as int64 numpy 1-D."""
    if not isinstance(window, int) or window < 2:
        raise EvaluationError(f"window must be an int >= 2, got {window!r}")
    ids = np.asarray(token_ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise EvaluationError(
            f"token_ids must be a 1-D sequence of ints, got dtype {ids.dtype} shape {ids.shape}"
        )
    if len(ids) < window:
        raise EvaluationError(
            f"text has {len(ids)} tokens, fewer than one window of {window}"
        )
    return ids.astype(np.int64)


def _logits_array(logits, window: int) -> np.ndarray:
    """Logits as a numpy ``[window, vocab]`` array (squeezing a batch of 1)."""
    if hasattr(logits, "detach"):
        logits = logits.detach().float().cpu().numpy()
    logits = np.asarray(logits)
    if logits.ndim == 3 and logits.shape[0] == 1:
        logits = logits[0]
    if logits.ndim != 2 or logits.shape[0] != window:
        raise EvaluationError(
            f"logits_fn must return logits [window={window}, vocab], got shape {logits.shape}"
        )
    return logits


def _sum_nll(logits: np.ndarray, targets: np.ndarray) -> float:
    """Sum over rows of ``-log softmax(logits[t])[targets[t]]``, in float64."""
    if targets.max() >= logits.shape[1]:
        raise EvaluationError(
            f"token id {int(targets.max())} is outside the logits' vocabulary of {logits.shape[1]}"
        )
    total = 0.0
    for start in range(0, len(targets), _ROWS_PER_CHUNK):
        rows = logits[start : start + _ROWS_PER_CHUNK].astype(np.float64)
        picked = rows[np.arange(len(rows)), targets[start : start + _ROWS_PER_CHUNK]]
        peak = rows.max(axis=1)
        lse = peak + np.log(np.exp(rows - peak[:, None]).sum(axis=1))
        total += float(np.sum(lse - picked))
    if not math.isfinite(total):
        raise EvaluationError("logits_fn returned non-finite logits (NaN or Inf)")
    return total
