"""Which source frames to decode. Pure functions on integers; no I/O.

All rounding is "half up" (``floor(x + 1/2)``) and is done in exact rational arithmetic on the
given float values, so the chosen indices never depend on floating-point noise (``np.round``
would round ties to even, and ``np.linspace`` accumulates error).

By fps: sample times are ``t_k = k / fps`` for ``k = 0, 1, ...`` while ``t_k < duration`` with
``duration = total_frames / native_fps``; each maps to frame ``min(round(t_k * native_fps),
total_frames - 1)``. Duplicates (when ``fps`` exceeds ``native_fps``) are dropped. If more than
``max_frames`` (rounded down to a multiple of ``frame_multiple``) remain, that many are taken
evenly spread among them: candidate positions ``round(i * (L - 1) / (n - 1))``, so the first and
last candidate are always kept. Otherwise the count is rounded down to a multiple of
``frame_multiple`` by dropping the *last* samples, which keeps the spacing exactly ``1/fps``.

By count: ``n = min(num_frames, total_frames)`` rounded down to a multiple of
``frame_multiple`` (but at least ``frame_multiple``), then indices ``round(i * (total - 1) /
(n - 1))`` for ``i = 0 .. n-1`` (first and last frame always included).

Both: when fewer than ``frame_multiple`` frames exist, every frame is used and the last index
is repeated to pad up to ``frame_multiple``.
"""

from __future__ import annotations

from fractions import Fraction


def _round_half_up(x: Fraction) -> int:
    return (2 * x.numerator + x.denominator) // (2 * x.denominator)


def spread(length: int, n: int) -> list[int]:
    """``n`` positions in ``range(length)`` evenly spread, first and last included."""
    if n == 1:
        return [0]
    return [_round_half_up(Fraction(i * (length - 1), n - 1)) for i in range(n)]


def _to_multiple(indices: list[int], multiple: int) -> list[int]:
    if len(indices) >= multiple:
        return indices[: len(indices) - len(indices) % multiple]
    # Too few frames for one temporal patch: repeat the last one, as the model's own
    # processor would, rather than failing on a very short clip.
    return indices + [indices[-1]] * (multiple - len(indices))


def _check_common(total_frames: int, frame_multiple: int) -> None:
    if total_frames < 1:
        raise ValueError(f"total_frames must be >= 1, got {total_frames}")
    if frame_multiple < 1:
        raise ValueError(f"frame_multiple must be >= 1, got {frame_multiple}")


def frame_indices_by_fps(total_frames: int, native_fps: float, fps: float, max_frames: int,
                         frame_multiple: int = 1) -> list[int]:
    """Frame indices sampled at ``fps`` from a ``native_fps`` video (see module docstring).

    >>> frame_indices_by_fps(16, 8.0, 2.0, max_frames=32, frame_multiple=2)
    [0, 4, 8, 12]
    """
    _check_common(total_frames, frame_multiple)
    if not (native_fps > 0 and fps > 0):
        raise ValueError(f"fps values must be > 0, got native_fps={native_fps}, fps={fps}")
    cap = max_frames - max_frames % frame_multiple
    if cap < 1:
        raise ValueError(f"max_frames={max_frames} is below frame_multiple={frame_multiple}")
    step = Fraction(native_fps) / Fraction(fps)  # source frames between two samples
    if step <= 1:
        # Consecutive sample positions are at most one frame apart and the last is within one
        # frame of the end, so every frame is hit; skip enumerating up to fps*duration times.
        candidates = list(range(total_frames))
    else:
        count = -(-Fraction(total_frames) // step)  # ceil: number of k with k*step < total
        hits = {min(_round_half_up(k * step), total_frames - 1) for k in range(int(count))}
        candidates = sorted(hits)
    if len(candidates) > cap:
        candidates = [candidates[j] for j in spread(len(candidates), cap)]
    return _to_multiple(candidates, frame_multiple)


def frame_indices_by_count(total_frames: int, num_frames: int, frame_multiple: int = 1) -> list[int]:
    """``num_frames`` indices evenly spread over ``total_frames`` (see module docstring).

    >>> frame_indices_by_count(10, 4, frame_multiple=2)
    [0, 3, 6, 9]
    """
    _check_common(total_frames, frame_multiple)
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    n = min(num_frames, total_frames)
    n = max(frame_multiple, n - n % frame_multiple)
    if n > total_frames:
        return _to_multiple(list(range(total_frames)), frame_multiple)
    return spread(total_frames, n)
