"""Binary operators: scalar/scalar, vector/scalar and vector/vector with matching.

Vector matching is resolved once per *series pair* (labels do not change across
steps), and the per-step part — which pairs are present, the arithmetic, the
cardinality errors Prometheus raises — is done on ``(pairs, steps)`` arrays.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from ._ast import Binary
from ._values import NAME, Labels, Scalar, Vec, labels_str, lget
from .errors import EvaluationError

ARITH = frozenset({"+", "-", "*", "/", "^", "%", "atan2"})
COMPARE = frozenset({"==", "!=", ">", "<", ">=", "<="})


def arith(op: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Float arithmetic with Go's semantics (IEEE, ``%`` is ``math.Mod``)."""
    with np.errstate(all="ignore"):
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        if op == "/":
            return a / b
        if op == "^":
            return np.power(a, b)
        if op == "%":
            return np.fmod(a, b)
        if op == "atan2":
            return np.arctan2(a, b)
    raise EvaluationError(f"operator {op!r} not allowed here")


def compare(op: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise comparison (NaN compares false except for ``!=``)."""
    with np.errstate(all="ignore"):
        if op == "==":
            return a == b
        if op == "!=":
            return a != b
        if op == ">":
            return a > b
        if op == "<":
            return a < b
        if op == ">=":
            return a >= b
        if op == "<=":
            return a <= b
    raise EvaluationError(f"operator {op!r} not allowed here")


def scalar_scalar(op: str, a: Scalar, b: Scalar) -> Scalar:
    if op in COMPARE:
        return Scalar(compare(op, a.values, b.values).astype(np.float64))
    return Scalar(arith(op, a.values, b.values))


def vector_scalar(op: str, vec: Vec, scalar: Scalar, swap: bool, return_bool: bool) -> tuple[Vec, np.ndarray]:
    """``vec op scalar`` (or ``scalar op vec`` when ``swap``).

    Returns the new vector and the rows whose ``__name__`` must be dropped.
    """
    s = scalar.values[None, :]
    lv, rv = (s, vec.values) if swap else (vec.values, s)
    if op in COMPARE:
        keep = compare(op, lv, rv)
        if return_bool:
            values = keep.astype(np.float64)
            present = vec.present.copy()
        else:
            values = vec.values.copy()
            present = vec.present & keep
        drop = np.full(len(vec), return_bool)
    else:
        values = np.broadcast_to(arith(op, lv, rv), vec.values.shape).copy()
        present = vec.present.copy()
        drop = np.ones(len(vec), dtype=bool)
    out = Vec(list(vec.labels), values, present, vec.drop_name.copy())
    return out, drop


def _signature(labels: Labels, on: bool, names: list[str]) -> tuple[tuple[str, str], ...]:
    if on:
        wanted = set(names)
        return tuple(p for p in labels if p[0] in wanted)
    drop = set(names) | {NAME}
    return tuple(p for p in labels if p[0] not in drop)


def set_operation(node: Binary, lhs: Vec, rhs: Vec) -> Vec:
    """``and`` / ``or`` / ``unless``, matched on the signature of each series."""
    on, names = node.on, node.matching_labels
    steps = lhs.values.shape[1]
    lsig = [_signature(lb, on, names) for lb in lhs.labels]
    rsig = [_signature(lb, on, names) for lb in rhs.labels]

    def any_present(sigs: list[tuple], vec: Vec) -> dict[tuple, np.ndarray]:
        out: dict[tuple, np.ndarray] = {}
        for i, sig in enumerate(sigs):
            cur = out.get(sig)
            out[sig] = vec.present[i].copy() if cur is None else (cur | vec.present[i])
        return out

    none = np.zeros(steps, dtype=bool)
    if node.op == "and":
        r_any = any_present(rsig, rhs)
        mask = np.array([r_any.get(sig, none) for sig in lsig], dtype=bool).reshape(len(lhs), steps)
        return Vec(list(lhs.labels), lhs.values, lhs.present & mask, lhs.drop_name.copy())
    if node.op == "unless":
        r_any = any_present(rsig, rhs)
        mask = np.array([r_any.get(sig, none) for sig in lsig], dtype=bool).reshape(len(lhs), steps)
        return Vec(list(lhs.labels), lhs.values, lhs.present & ~mask, lhs.drop_name.copy())
    # or: everything from the left, plus right-hand series whose signature the
    # left does not have at that step.
    l_any = any_present(lsig, lhs)
    mask = np.array([l_any.get(sig, none) for sig in rsig], dtype=bool).reshape(len(rhs), steps)
    return Vec(
        list(lhs.labels) + list(rhs.labels),
        np.concatenate([lhs.values, rhs.values]),
        np.concatenate([lhs.present, rhs.present & ~mask]),
        np.concatenate([lhs.drop_name, rhs.drop_name]),
    )


def _match_labels(labels: Labels, on: bool, names: list[str]) -> Labels:
    return _signature(labels, on, names)


def vector_vector(node: Binary, lhs: Vec, rhs: Vec, delayed: bool) -> Vec:
    """Arithmetic or comparison between two vectors, with on/ignoring and group_x."""
    op, on, names = node.op, node.on, node.matching_labels
    card = node.card
    steps = lhs.values.shape[1]
    swapped = card == "one-to-many"
    many, one = (rhs, lhs) if swapped else (lhs, rhs)
    both = lhs.present.any(axis=0) & rhs.present.any(axis=0)  # steps where neither side is empty

    one_by_sig: dict[tuple, list[int]] = defaultdict(list)
    for i, lb in enumerate(one.labels):
        one_by_sig[_signature(lb, on, names)].append(i)

    # Duplicates on the "one" side are an error at any step where both sides have data.
    for rows in one_by_sig.values():
        if len(rows) < 2:
            continue
        cnt = one.present[rows].sum(axis=0)
        bad = (cnt > 1) & both
        if bad.any():
            _raise_duplicate(one, one_by_sig, on, names, int(np.argmax(bad)), "left" if swapped else "right")

    pairs_l: list[int] = []
    pairs_r: list[int] = []
    for i, lb in enumerate(many.labels):
        for j in one_by_sig.get(_signature(lb, on, names), ()):
            pairs_l.append(i)
            pairs_r.append(j)
    if not pairs_l:
        return Vec.empty(steps)
    pl = np.asarray(pairs_l, dtype=np.intp)
    pr = np.asarray(pairs_r, dtype=np.intp)
    valid = many.present[pl] & one.present[pr]

    if card == "one-to-one":
        # Two left series matching the same right series at one step.
        by_r: dict[int, list[int]] = defaultdict(list)
        for k, j in enumerate(pairs_r):
            by_r[j].append(k)
        for ks in by_r.values():
            if len(ks) > 1 and (valid[ks].sum(axis=0) > 1).any():
                raise EvaluationError(
                    "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)"
                )

    fl, fr = many.values[pl], one.values[pr]
    if swapped:
        fl, fr = fr, fl
    if op in COMPARE:
        keep = compare(op, fl, fr)
        if node.return_bool:
            values = keep.astype(np.float64)
            present = valid
        else:
            values = fl
            present = valid & keep
    else:
        values = arith(op, fl, fr)
        present = valid

    drop_now = op in ARITH or (node.return_bool and not delayed)
    out_labels: list[Labels] = []
    for i, j in zip(pairs_l, pairs_r, strict=True):
        out_labels.append(_result_labels(many.labels[i], one.labels[j], node, drop_now))

    # Group pairs by their result labels; two pairs landing on one label set at one
    # step is Prometheus's "grouping labels must ensure unique matches".
    groups: dict[Labels, list[int]] = defaultdict(list)
    for k, lb in enumerate(out_labels):
        groups[lb].append(k)
    labels_out: list[Labels] = []
    rows_v, rows_p = [], []
    for lb, ks in groups.items():
        if len(ks) == 1:
            labels_out.append(lb)
            rows_v.append(values[ks[0]])
            rows_p.append(present[ks[0]])
            continue
        if (valid[ks].sum(axis=0) > 1).any():
            if card == "one-to-one":
                raise EvaluationError(
                    "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)"
                )
            raise EvaluationError("multiple matches for labels: grouping labels must ensure unique matches")
        v = np.zeros(steps)
        p = np.zeros(steps, dtype=bool)
        for k in ks:
            v = np.where(present[k], values[k], v)
            p |= present[k]
        labels_out.append(lb)
        rows_v.append(v)
        rows_p.append(p)
    n = len(labels_out)
    return Vec(
        labels_out,
        np.asarray(rows_v).reshape(n, steps),
        np.asarray(rows_p, dtype=bool).reshape(n, steps),
        np.full(n, node.return_bool and delayed),
    )


def _result_labels(ls: Labels, rs: Labels, node: Binary, drop_name: bool) -> Labels:
    d = dict(ls)
    if drop_name:
        d.pop(NAME, None)
    if node.card == "one-to-one":
        if node.on:
            keep = set(node.matching_labels)
            d = {k: v for k, v in d.items() if k in keep}
        else:
            for name in node.matching_labels:
                d.pop(name, None)
    for name in node.include:
        v = lget(rs, name)
        if v:
            d[name] = v
        else:
            d.pop(name, None)
    return tuple(sorted(d.items()))


def _raise_duplicate(
    one: Vec, by_sig: dict[tuple, list[int]], on: bool, names: list[str], step: int, side: str
) -> None:
    seen: dict[tuple, int] = {}
    for i, lb in enumerate(one.labels):
        if not one.present[i, step]:
            continue
        sig = _signature(lb, on, names)
        if sig in seen:
            a, b = labels_str(lb), labels_str(one.labels[seen[sig]])
            if a > b:
                a, b = b, a
            matched = labels_str(_match_labels(lb, on, names))
            raise EvaluationError(
                f"found duplicate series for the match group {matched} on the {side} hand-side of the "
                f"operation: [{a}, {b}];many-to-many matching not allowed: matching labels must be unique on one side"
            )
        seen[sig] = i
