"""Centrifugo's publication filters by tags (a subscribe request's ``tf``): a tree of
comparisons of a publication's ``tags`` (str to str), compiled once per subscription into
a predicate that each publication is asked against.

Why: a subscriber of a busy channel that wants a few of its publications (one ticker of a
market feed) gets only those, so the bytes it would drop never leave the server. It is a
bandwidth optimisation, not access control: a subscriber may read the whole channel.

A node is a comparison (``{"key", "cmp", "val"}`` or ``"vals"``) or a logical node
(``{"op": "and" | "or" | "not", "nodes": [...]}``). Comparisons: ``eq``, ``neq`` (true
when the tag is absent), ``in``, ``nin`` (true when absent), ``ex``, ``nex``, ``sw``,
``ew``, ``ct`` (starts with, ends with, contains), ``gt``, ``gte``, ``lt``, ``lte``
(numbers: false when the tag is absent or not a number).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

Predicate = Callable[[Mapping[str, str]], bool]

#: The most nodes one filter may have (each publication walks them for each subscriber).
MAX_NODES = 64

_LOGICAL = ("and", "or", "not")
_NUMERIC = ("gt", "gte", "lt", "lte")


class FilterError(ValueError):
    """A filter that cannot be compiled (the subscribe is refused: bad request)."""


#: A decimal number as Go's ``strconv.ParseFloat`` (Centrifugo's) reads one: no
#: underscores, no spaces, ASCII digits only.
_DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)


def _number(text: Any) -> float | None:
    if not isinstance(text, str) or not _DECIMAL.fullmatch(text):
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def _leaf(node: dict[str, Any]) -> Predicate:
    key, cmp, val = node.get("key", ""), node.get("cmp", ""), node.get("val", "")
    vals = node.get("vals") or []
    if not isinstance(key, str) or not isinstance(cmp, str) or not isinstance(val, str):
        raise FilterError("a filter's key, cmp and val are strings")
    if not isinstance(vals, list) or not all(isinstance(v, str) for v in vals):
        raise FilterError("a filter's vals are a list of strings")
    if node.get("nodes"):
        raise FilterError("a comparison has no nodes")
    if not key and cmp not in ("ex", "nex"):
        raise FilterError(f"a {cmp or 'comparison'} needs a key")
    if cmp == "eq":
        return lambda tags: tags.get(key) == val
    if cmp == "neq":
        return lambda tags: tags.get(key) != val
    if cmp in ("in", "nin"):
        if not vals:
            raise FilterError(f"{cmp} needs vals")
        among = frozenset(vals)
        if cmp == "in":
            return lambda tags: tags.get(key) in among
        return lambda tags: tags.get(key) not in among
    if cmp == "ex":
        return lambda tags: key in tags
    if cmp == "nex":
        return lambda tags: key not in tags
    if cmp == "sw":
        return lambda tags: (tag := tags.get(key)) is not None and tag.startswith(val)
    if cmp == "ew":
        return lambda tags: (tag := tags.get(key)) is not None and tag.endswith(val)
    if cmp == "ct":
        return lambda tags: (tag := tags.get(key)) is not None and val in tag
    if cmp in _NUMERIC:
        bound = _number(val)
        if bound is None:
            raise FilterError(f"{cmp} needs a number in val, not {val!r}")
        test: Callable[[float], bool] = {
            "gt": lambda x: x > bound, "gte": lambda x: x >= bound,
            "lt": lambda x: x < bound, "lte": lambda x: x <= bound}[cmp]

        def numeric(tags: Mapping[str, str]) -> bool:
            tag = tags.get(key)
            value = _number(tag) if tag is not None else None
            return value is not None and test(value)
        return numeric
    raise FilterError(f"unknown comparison {cmp!r}")


def compile_filter(node: Any) -> Predicate:
    """The predicate of a ``tf`` tree (``FilterError`` names what is wrong). Numeric
    comparisons of a tag that is no number are false, as Centrifugo's."""
    count = 0

    def build(node: Any) -> Predicate:
        nonlocal count
        count += 1
        if count > MAX_NODES:
            raise FilterError(f"a filter has at most {MAX_NODES} nodes")
        if not isinstance(node, dict):
            raise FilterError("a filter node is an object")
        op = node.get("op", "")
        if not op:
            return _leaf(node)
        if op not in _LOGICAL:
            raise FilterError(f"unknown filter op {op!r}")
        if node.get("key") or node.get("cmp"):
            raise FilterError(f"an {op} node has no key or cmp")
        nodes = node.get("nodes")
        if not isinstance(nodes, list) or not nodes:
            raise FilterError(f"{op} needs nodes")
        children = [build(child) for child in nodes]
        if op == "not":
            if len(children) != 1:
                raise FilterError("not takes exactly one node")
            only = children[0]
            return lambda tags: not only(tags)
        if op == "and":
            return lambda tags: all(child(tags) for child in children)
        return lambda tags: any(child(tags) for child in children)

    return build(node)
