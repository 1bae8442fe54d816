"""Static limits on CEL expressions, checked before an expression reaches the CEL library.

The library (``cel``, Rust) recurses over the expression tree when it evaluates: an expression a few thousand
levels deep (``1 + 1 + ... + 1`` with 15,000 terms) overflows its stack and kills the process. So every expression
is measured here first, by a small parser of CEL's grammar that keeps only the shape (it builds no tree and
evaluates nothing), and refused when it is too long, too deep, too big or too costly:

- ``MAX_CHARS`` characters (cel-go, which Inngest uses, allows 100,000 code points);
- ``MAX_DEPTH`` levels of the expression tree, every operator of a chain counted as one level, as the
  library builds it (cel-go's parser allows 250 levels of recursion; the library crashes at a few thousand);
- ``MAX_NODES`` operations, literals and names;
- comprehensions (``all``, ``exists``, ``exists_one``, ``map``, ``filter``) nested at most ``MAX_NESTED_LOOPS``
  deep, and an estimated cost under ``MAX_COST``, where a comprehension's body counts ``ASSUMED_LIST_SIZE``
  times.

Expressions without comprehensions then cost at most a pass over their inputs per operation; the ones with
comprehensions (whose cost depends on the lists in the data) are evaluated under a time budget in a separate
process (``cel_sandbox``).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ASSUMED_LIST_SIZE",
    "CHEAP_CALLS",
    "MAX_CHARS",
    "MAX_COST",
    "MAX_DEPTH",
    "MAX_NESTED_LOOPS",
    "MAX_NODES",
    "ExpressionShape",
    "LimitExceeded",
    "OverLimit",
    "measure",
]  # fmt: skip

MAX_CHARS = 16_384
MAX_DEPTH = 64
MAX_NODES = 1_000
MAX_NESTED_LOOPS = 2
ASSUMED_LIST_SIZE = 100
MAX_COST = 1_000_000

COMPREHENSIONS = frozenset({"all", "exists", "exists_one", "map", "filter"})
_BINARY = {"||": 1, "&&": 2, "==": 3, "!=": 3, "<": 3, "<=": 3, ">": 3, ">=": 3, "in": 3,
           "+": 4, "-": 4, "*": 5, "/": 5, "%": 5}  # fmt: skip
_PUNCT2 = ("||", "&&", "==", "!=", "<=", ">=")
_PUNCT1 = "<>+-*/%!?:.,()[]{}"
_OPENERS = {"(": ")", "[": "]", "{": "}"}


class LimitExceeded(ValueError):
    """The expression is over a limit, or is not CEL the measuring parser can read; the message says which."""


class OverLimit(LimitExceeded):
    """The expression is over one of the limits (as opposed to not being readable CEL)."""


@dataclass(frozen=True)
class ExpressionShape:
    """What the checks measured: tree depth, node count, deepest comprehension nesting, estimated cost."""

    depth: int
    nodes: int
    loops: int  # how deep comprehensions nest (0: none)
    cost: int
    heavy: int = 0  # operations whose cost grows with the data (+, in, ==, != and most calls): see data_cost

    @property
    def has_loops(self) -> bool:
        return self.loops > 0


# --- tokens ---------------------------------------------------------------------------------------------------
_ID_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_ID_CHARS = _ID_START | frozenset("0123456789")
_DIGITS = frozenset("0123456789")
_NUMBER_CHARS = frozenset("0123456789abcdefABCDEFxXuU.eE")


def _string_end(src: str, i: int, raw: bool) -> int:
    """The index just past the string literal starting with a quote at ``i``."""
    quote = src[i]
    triple = src.startswith(quote * 3, i)
    delim = quote * 3 if triple else quote
    j = i + len(delim)
    n = len(src)
    while j < n:
        ch = src[j]
        if ch == "\\" and not raw:
            j += 2
            continue
        if src.startswith(delim, j):
            return j + len(delim)
        if ch == "\n" and not triple:
            break
        j += 1
    raise LimitExceeded(f"unterminated string literal at character {i + 1}")


def _tokens(src: str) -> list[tuple[str, str]]:
    """(kind, text) pairs: kind is 'id', 'lit' (numbers, strings, bytes) or 'op'."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(src)
    while i < n:
        ch = src[i]
        if ch in " \t\r\n\f":
            i += 1
        elif ch == "/" and src.startswith("//", i):
            end = src.find("\n", i)
            i = n if end < 0 else end + 1
        elif ch in ("'", '"'):
            j = _string_end(src, i, raw=False)
            out.append(("lit", src[i:j]))
            i = j
        elif ch in _ID_START:
            j = i + 1
            while j < n and src[j] in _ID_CHARS:
                j += 1
            word = src[i:j]
            prefix = word.lower()
            if j < n and src[j] in ("'", '"') and prefix in ("r", "b", "rb", "br"):
                k = _string_end(src, j, raw="r" in prefix)
                out.append(("lit", src[i:k]))
                i = k
                continue
            out.append(("op" if word == "in" else "id", word))
            i = j
        elif ch in _DIGITS or (ch == "." and i + 1 < n and src[i + 1] in _DIGITS):
            j = i + 1
            while j < n and (
                src[j] in _NUMBER_CHARS
                or (src[j] in "+-" and src[j - 1] in "eE" and not src[i:j].lower().startswith("0x"))
            ):
                j += 1
            out.append(("lit", src[i:j]))
            i = j
        elif src.startswith(_PUNCT2, i):
            out.append(("op", src[i : i + 2]))
            i += 2
        elif ch in _PUNCT1:
            out.append(("op", ch))
            i += 1
        else:
            raise LimitExceeded(f"unexpected character {ch!r} at character {i + 1}")
    return out


def _check_nesting(tokens: list[tuple[str, str]]) -> None:
    """Brackets balanced and nested at most MAX_DEPTH: bounds the measuring parser's own recursion."""
    stack: list[str] = []
    for kind, text in tokens:
        if kind != "op":
            continue
        if text in _OPENERS:
            stack.append(_OPENERS[text])
            if len(stack) > MAX_DEPTH:
                raise OverLimit(f"the expression nests brackets more than {MAX_DEPTH} deep")
        elif text in (")", "]", "}"):
            if not stack or stack.pop() != text:
                raise LimitExceeded(f"unbalanced {text!r}")
    if stack:
        raise LimitExceeded(f"missing {stack[-1]!r}")


# --- shape parser -----------------------------------------------------------------------------------------------
@dataclass
class _Node:
    depth: int
    nodes: int
    loops: int
    cost: int


def _combine(*children: _Node, extra_depth: int = 1, extra_cost: int = 1) -> _Node:
    return _Node(depth=extra_depth + max((c.depth for c in children), default=0),
                 nodes=1 + sum(c.nodes for c in children),
                 loops=max((c.loops for c in children), default=0),
                 cost=extra_cost + sum(c.cost for c in children))  # fmt: skip


class _Parser:
    """Recursive descent over CEL's grammar (conditional, binary operators by precedence, unary, member chains,
    primaries), returning only the measurements. Recursion happens only for brackets and the conditional
    operator's branches, both bounded by MAX_DEPTH; chains of operators are loops."""

    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.toks = tokens
        self.i = 0
        self.level = 0

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, text: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise LimitExceeded("the expression ends too early")
        if text is not None and tok[1] != text:
            raise LimitExceeded(f"expected {text!r}, found {tok[1]!r}")
        self.i += 1
        return tok

    def at(self, text: str) -> bool:
        tok = self.peek()
        return tok is not None and tok[0] == "op" and tok[1] == text

    def check(self, node: _Node) -> _Node:
        if node.depth > MAX_DEPTH:
            raise OverLimit(f"the expression is more than {MAX_DEPTH} levels deep (each operator of a chain "
                                "is a level: split it, or use 'in [...]' for long alternatives)")  # fmt: skip
        if node.nodes > MAX_NODES:
            raise OverLimit(f"the expression has more than {MAX_NODES} operations and values")
        return node

    def expr(self) -> _Node:
        self.level += 1
        if self.level > MAX_DEPTH:
            raise OverLimit(f"the expression is more than {MAX_DEPTH} levels deep")
        try:
            cond = self.binary(1)
            if self.at("?"):
                self.take("?")
                yes = self.expr()
                self.take(":")
                no = self.expr()
                cond = self.check(_combine(cond, yes, no))
            return cond
        finally:
            self.level -= 1

    def binary(self, min_prec: int) -> _Node:
        left = self.unary()
        while True:
            tok = self.peek()
            if tok is None or tok[0] != "op" or tok[1] not in _BINARY or _BINARY[tok[1]] < min_prec:
                return left
            prec = _BINARY[tok[1]]
            self.take()
            right = self.binary(prec + 1) if prec < 5 else self.unary()
            left = self.check(_combine(left, right))

    def unary(self) -> _Node:
        ops = 0
        while self.at("!") or self.at("-"):
            self.take()
            ops += 1
        node = self.member()
        for _ in range(ops):
            node = self.check(_combine(node))
        return node

    def member(self) -> _Node:
        node = self.primary()
        while True:
            if self.at("."):
                self.take(".")
                if self.at("?"):  # optional field selection: .?field
                    self.take("?")
                kind, name = self.take()
                if kind != "id":
                    raise LimitExceeded(f"expected a field name after '.', found {name!r}")
                if self.at("("):
                    node = self.call(node, name)
                else:
                    node = self.check(_combine(node))
            elif self.at("["):
                self.take("[")
                if self.at("?"):
                    self.take("?")
                index = self.expr()
                self.take("]")
                node = self.check(_combine(node, index))
            elif self.at("{") and self.i > 0 and self.toks[self.i - 1][0] == "id":
                node = self.check(_combine(node, self.entries("}")))  # message construction: Type{field: v}
            else:
                return node

    def call(self, target: _Node | None, name: str) -> _Node:
        self.take("(")
        args = self.arguments(")")
        if target is not None and name in COMPREHENSIONS and len(args) >= 2:
            bodies = _combine(*args[1:], extra_depth=0, extra_cost=0)  # args[0] is the loop variable
            loop = _Node(depth=bodies.depth, nodes=bodies.nodes, loops=bodies.loops + 1,
                         cost=bodies.cost * ASSUMED_LIST_SIZE)  # fmt: skip
            if loop.loops > MAX_NESTED_LOOPS:
                raise OverLimit(f"comprehensions ({', '.join(sorted(COMPREHENSIONS))}) nest more than "
                                    f"{MAX_NESTED_LOOPS} deep")  # fmt: skip
            node = _combine(target, args[0], loop, extra_depth=3)
        else:
            node = _combine(*((target,) if target is not None else ()), *args)
        node = self.check(node)
        if node.cost > MAX_COST:
            raise OverLimit(f"the expression's estimated cost is over {MAX_COST:,} (comprehension bodies count "
                                f"{ASSUMED_LIST_SIZE} times per level of nesting)")  # fmt: skip
        return node

    def arguments(self, closer: str) -> list[_Node]:
        args: list[_Node] = []
        while not self.at(closer):
            args.append(self.expr())
            if not self.at(closer):
                self.take(",")
        self.take(closer)
        return args

    def entries(self, closer: str) -> _Node:
        self.take("{")
        parts: list[_Node] = []
        while not self.at(closer):
            if self.at("?"):  # optional entry: {?key: value}
                self.take("?")
            parts.append(self.expr())
            self.take(":")
            parts.append(self.expr())
            if not self.at(closer):
                self.take(",")
        self.take(closer)
        return _combine(*parts)

    def primary(self) -> _Node:
        tok = self.peek()
        if tok is None:
            raise LimitExceeded("the expression ends too early")
        kind, text = tok
        if kind == "lit":
            self.take()
            return _Node(1, 1, 0, 1)
        if kind == "id":
            self.take()
            if self.at("("):
                return self.call(None, text)
            return _Node(1, 1, 0, 1)
        if text == ".":  # a leading dot: a fully qualified name
            self.take(".")
            kind, name = self.take()
            if kind != "id":
                raise LimitExceeded(f"expected a name after '.', found {name!r}")
            return _Node(1, 1, 0, 1)
        if text == "(":
            self.take("(")
            inner = self.expr()
            self.take(")")
            return inner
        if text == "[":
            self.take("[")
            return self.check(_combine(*self.arguments("]")))
        if text == "{":
            return self.check(self.entries("}"))
        raise LimitExceeded(f"unexpected {text!r}")


def measure(source: str) -> ExpressionShape:
    """Measure ``source`` and check it against the limits; raises LimitExceeded naming the limit."""
    if len(source) > MAX_CHARS:
        raise OverLimit(f"the expression is {len(source):,} characters long; the limit is {MAX_CHARS:,}")
    tokens = _tokens(source)
    if len(tokens) > 2 * MAX_NODES:
        raise OverLimit(f"the expression has more than {MAX_NODES} operations and values")
    _check_nesting(tokens)
    parser = _Parser(tokens)
    node = parser.expr()
    if parser.peek() is not None:
        raise LimitExceeded(f"unexpected {parser.peek()[1]!r} after the end of the expression")  # type: ignore[index]
    return ExpressionShape(depth=node.depth, nodes=node.nodes, loops=node.loops, cost=node.cost,
                           heavy=_heavy_operations(tokens))  # fmt: skip


# Calls whose cost does not grow with the size of their arguments (size reads a stored length).
CHEAP_CALLS = frozenset(
    {
        "size",
        "has",
        "int",
        "uint",
        "double",
        "bool",
        "type",
        "dyn",
        "duration",
        "timestamp",
        "getFullYear",
        "getMonth",
        "getDate",
        "getDayOfMonth",
        "getDayOfWeek",
        "getDayOfYear",
        "getHours",
        "getMinutes",
        "getSeconds",
        "getMilliseconds",
        "orValue",
        "hasValue",
        "value",
    }
)


def _heavy_operations(tokens: list[tuple[str, str]]) -> int:
    """Operations whose cost grows with the data they touch: concatenation (``+`` of strings and lists), membership
    and (in)equality of aggregates, and calls other than ``CHEAP_CALLS`` (``matches``, ``contains``, ``string``,
    ...). An expression made only of a few of them costs a pass over its inputs each; many of them over large data
    (``l + l + l + ...``) can take seconds and gigabytes, so ``data_cost`` weighs them by the data's size."""
    heavy = 0
    for i, (kind, text) in enumerate(tokens):
        if kind == "op" and text in ("+", "in", "==", "!="):
            heavy += 1
        elif kind == "id" and i + 1 < len(tokens) and tokens[i + 1][1] == "(" and text not in CHEAP_CALLS:
            heavy += 1
    return heavy
