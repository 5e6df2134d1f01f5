"""The CESQL tokenizer and a hand-written precedence parser producing a small AST.

Only :mod:`eventmesh.pipeline.cesql` uses this module; it turns the AST into closures
and drops it. Precedence follows CESQL v1.0 section 3.6, tightest first:

1. function invocations, literals, attributes and ``( ... )``
2. prefix ``NOT``, ``-`` and ``EXISTS``
3. postfix ``[NOT] LIKE 'pattern'`` and ``[NOT] IN (set)``, left to right
4. ``*`` ``/`` ``%``, then ``+`` ``-``, then ``=`` ``!=`` ``<>`` ``<`` ``<=`` ``>`` ``>=``
5. ``AND`` ``OR`` ``XOR``, one level, left to right

A ``-`` or ``+`` directly before digits is part of the integer literal, so
``-2147483648`` is a valid literal although ``2147483648`` is not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, NamedTuple, TypeAlias

from eventmesh.errors import ConfigError

__all__ = [
    "Attribute",
    "Binary",
    "Call",
    "Exists",
    "In",
    "Like",
    "Literal",
    "Node",
    "ParseError",
    "Unary",
    "children",
    "parse",
]

INT32_MIN: Final = -(2**31)
INT32_MAX: Final = 2**31 - 1
MAX_HEIGHT: Final = 256
"""An expression tree taller than this (a very long operator chain) is rejected."""

_KEYWORDS: Final = frozenset({"AND", "OR", "XOR", "NOT", "LIKE", "IN", "EXISTS", "TRUE", "FALSE"})
_COMPARISONS: Final = frozenset({"=", "!=", "<>", "<", "<=", ">", ">="})
_ADDITIVE: Final = frozenset({"+", "-"})
_MULTIPLICATIVE: Final = frozenset({"*", "/", "%"})
_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\r\n]+)
    | (?P<word>[A-Za-z0-9_]+)
    | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
    | (?P<op><>|!=|<=|>=|[=<>+\-*/%(),])
    """,
    re.VERBOSE | re.DOTALL,
)
_SHOWN: Final = 80
"""Characters of the expression's line an error message shows around the problem."""
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_ATTRIBUTE_NAME = re.compile(r"[A-Za-z0-9]+\Z")
_FUNCTION_NAME = re.compile(r"[A-Za-z][A-Za-z_]*\Z")
_INT32_DIGITS = 10
"""Digits of the longest 32-bit integer, 2147483648 (negated)."""


class ParseError(ConfigError):
    """A CESQL expression is not valid syntax; the message points at the column.

    ``expression`` is the text, ``position`` the 0-based offset of the problem,
    ``column`` its 1-based column within its line and ``problem`` what was expected.
    ``kind`` is ``"parse"``, as the CESQL error type, so parse and evaluation errors can
    be checked alike.
    """

    kind: Final = "parse"

    def __init__(self, expression: str, position: int, problem: str) -> None:
        line_start = expression.rfind("\n", 0, position) + 1
        line_end = expression.find("\n", position)
        line_text = expression[line_start : None if line_end == -1 else line_end]
        column = position - line_start + 1
        where = f"column {column}"
        if "\n" in expression:
            where = f"line {expression.count(chr(10), 0, position) + 1}, {where}"
        shown, caret = line_text, column - 1
        if len(line_text) > _SHOWN:  # a window around the problem, not the whole line
            low = max(0, caret - _SHOWN // 2)
            high = min(len(line_text), low + _SHOWN)
            shown = ("..." if low else "") + line_text[low:high]
            shown += "..." if high < len(line_text) else ""
            caret = caret - low + (3 if low else 0)
        super().__init__(
            f"invalid CESQL expression at {where}: {problem}\n    {shown}\n    {' ' * caret}^"
        )
        self.expression = expression
        self.position = position
        self.column = column
        self.problem = problem

    def __reduce__(self) -> tuple[type[ParseError], tuple[str, int, str]]:
        return (type(self), (self.expression, self.position, self.problem))


# -- the AST --------------------------------------------------------------------------
# Every node spans source[start:end], which evaluation errors quote.


@dataclass(frozen=True, slots=True)
class Literal:
    value: bool | int | str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Attribute:
    name: str  # lower-cased: attribute names are case-insensitive in expressions
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Exists:
    name: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Unary:
    op: str  # "NOT" or "-"
    operand: Node
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Binary:
    op: str  # an arithmetic or comparison symbol, or "AND", "OR", "XOR"
    left: Node
    right: Node
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Like:
    operand: Node
    pattern: str
    negated: bool
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class In:
    operand: Node
    items: tuple[Node, ...]
    negated: bool
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Call:
    name: str  # upper-cased: function names are case-insensitive
    args: tuple[Node, ...]
    start: int
    end: int


Node: TypeAlias = Literal | Attribute | Exists | Unary | Binary | Like | In | Call


# -- tokens ---------------------------------------------------------------------------


class _Token(NamedTuple):
    kind: str  # "word", "string", "op" or "end"
    text: str
    start: int
    end: int
    key: str | None = None  # the keyword in upper case, or the operator; found once, here


def _tokenize(source: str) -> list[_Token]:
    tokens = []
    position = 0
    for match in _TOKEN.finditer(source):
        start, end = match.span()
        if start != position:  # finditer skipped what no token matches
            break
        kind = match.lastgroup
        if kind == "word":
            text = match.group()
            upper = text.upper()
            tokens.append(_Token(kind, text, start, end, upper if upper in _KEYWORDS else None))
        elif kind != "space":
            text = match.group()
            tokens.append(_Token(kind, text, start, end, text if kind == "op" else None))  # type: ignore[arg-type]
        position = end
    if position < len(source):
        char = source[position]
        if char in "'\"":
            problem = f"the string literal starting here has no closing {char}"
        else:
            problem = f"unexpected character {char!r}"
        raise ParseError(source, position, problem)
    # Three end tokens, so that looking ahead never runs off the list.
    tokens += [_Token("end", "", len(source), len(source))] * 3
    return tokens


def _unescape(literal: str) -> str:
    """The value of a quoted literal: ``\\'`` (or ``\\"``) and ``\\\\`` are escapes,
    any other backslash stays as written (so LIKE sees ``\\%`` and ``\\_``)."""
    quote = literal[0]
    return _ESCAPE.sub(lambda m: m[1] if m[1] == quote or m[1] == "\\" else m[0], literal[1:-1])


def _describe(token: _Token) -> str:
    return "the end of the expression" if token.kind == "end" else repr(token.text)


# -- the parser -----------------------------------------------------------------------


def parse(source: str, max_depth: int) -> Node:
    """Parse a CESQL expression into its AST; raises :class:`ParseError`.

    Parentheses, calls, sets and prefix operators nested more than ``max_depth`` deep
    are refused when the parser reaches the level too many, before it recurses into it.
    """
    parser = _Parser(source, max_depth)
    node = parser.logic()
    token = parser.peek()
    if token.kind != "end":
        parser.fail(token, "an operator or the end of the expression")
    if _height(node) > MAX_HEIGHT:
        raise ParseError(
            source, 0, f"the expression is more than {MAX_HEIGHT} operators deep; split it"
        )
    return node


class _Parser:
    def __init__(self, source: str, max_depth: int) -> None:
        self.source = source
        self.tokens = _tokenize(source)
        self.index = 0
        self.depth = 0
        self.max_depth = max_depth

    # -- helpers

    def peek(self, ahead: int = 0) -> _Token:
        return self.tokens[self.index + ahead]

    def advance(self) -> _Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def keyword(self, ahead: int = 0) -> str | None:
        token = self.tokens[self.index + ahead]
        return token.key if token.kind == "word" else None

    def is_op(self, text: str, ahead: int = 0) -> bool:
        token = self.tokens[self.index + ahead]
        return token.kind == "op" and token.key == text

    def op(self, allowed: frozenset[str]) -> str | None:
        """The operator token next, when it is one of ``allowed``."""
        token = self.tokens[self.index]
        return token.key if token.kind == "op" and token.key in allowed else None

    def expect(self, text: str, expected: str) -> _Token:
        if not self.is_op(text):
            self.fail(self.peek(), expected)
        return self.advance()

    def fail(self, token: _Token, expected: str) -> None:
        raise ParseError(self.source, token.start, f"expected {expected}, found {_describe(token)}")

    def enter(self, token: _Token) -> None:
        self.depth += 1
        if self.depth > self.max_depth:
            raise ParseError(
                self.source,
                token.start,
                f"the expression nests more than {self.max_depth} levels "
                "(limits.filters.max_depth); flatten it",
            )

    # -- grammar, loosest binding first

    def logic(self) -> Node:
        left = self.comparison()
        while (op := self.keyword()) in ("AND", "OR", "XOR"):
            self.advance()
            right = self.comparison()
            left = Binary(op, left, right, left.start, right.end)
        return left

    def comparison(self) -> Node:
        left = self.additive()
        while op := self.op(_COMPARISONS):
            self.index += 1
            right = self.additive()
            left = Binary(op, left, right, left.start, right.end)
        return left

    def additive(self) -> Node:
        left = self.multiplicative()
        while op := self.op(_ADDITIVE):
            self.index += 1
            right = self.multiplicative()
            left = Binary(op, left, right, left.start, right.end)
        return left

    def multiplicative(self) -> Node:
        left = self.membership()
        while op := self.op(_MULTIPLICATIVE):
            self.index += 1
            right = self.membership()
            left = Binary(op, left, right, left.start, right.end)
        return left

    def membership(self) -> Node:
        node = self.unary()
        while True:
            negated = self.keyword() == "NOT"
            operator = self.keyword(1 if negated else 0)
            if operator not in ("LIKE", "IN"):
                if negated:
                    self.fail(self.peek(1), "LIKE or IN after NOT")
                return node
            if negated:
                self.advance()
            self.advance()
            if operator == "LIKE":
                pattern = self.peek()
                if pattern.kind != "string":
                    self.fail(pattern, "a string literal as the LIKE pattern")
                self.advance()
                node = Like(node, _unescape(pattern.text), negated, node.start, pattern.end)
            else:
                items, end = self.parenthesised_list("a set of values after IN", allow_empty=False)
                node = In(node, items, negated, node.start, end)

    def unary(self) -> Node:
        token = self.peek()
        keyword = self.keyword()
        if keyword == "NOT" or self.is_op("-"):
            self.advance()
            if keyword is None and self.is_integer(self.peek()):
                return self.integer(self.advance(), token.start, negative=True)
            self.enter(token)
            operand = self.unary()
            self.depth -= 1
            return Unary(keyword or "-", operand, token.start, operand.end)
        if self.is_op("+"):
            self.advance()
            if not self.is_integer(self.peek()):
                self.fail(self.peek(), "digits after '+' (there is no unary plus)")
            return self.integer(self.advance(), token.start, negative=False)
        if keyword == "EXISTS":
            self.advance()
            name = self.peek()
            if name.kind != "word" or self.keyword() or self.is_integer(name):
                self.fail(name, "an attribute name after EXISTS")
            self.advance()
            return Exists(self.attribute_name(name), token.start, name.end)
        return self.primary()

    def primary(self) -> Node:
        token = self.peek()
        if token.kind == "string":
            self.advance()
            return Literal(_unescape(token.text), token.start, token.end)
        if token.kind == "word":
            keyword = self.keyword()
            if keyword in ("TRUE", "FALSE"):
                self.advance()
                return Literal(keyword == "TRUE", token.start, token.end)
            if keyword is not None:
                self.fail(token, "a value, an attribute, a function call or '('")
            self.advance()
            if self.is_integer(token):
                return self.integer(token, token.start, negative=False)
            if self.is_op("("):
                return self.call(token)
            return Attribute(self.attribute_name(token), token.start, token.end)
        if self.is_op("("):
            self.advance()
            self.enter(token)
            node = self.logic()
            self.depth -= 1
            self.expect(")", "')' to close the '(' at column " + str(token.start + 1))
            return node
        self.fail(token, "a value, an attribute, a function call or '('")
        raise AssertionError("unreachable")  # pragma: no cover

    def call(self, name: _Token) -> Node:
        if not _FUNCTION_NAME.match(name.text):
            raise ParseError(
                self.source, name.start, f"{name.text!r} is not a function name (letters and '_')"
            )
        args, end = self.parenthesised_list("'(' after the function name", allow_empty=True)
        return Call(name.text.upper(), args, name.start, end)

    def parenthesised_list(
        self, expected: str, *, allow_empty: bool
    ) -> tuple[tuple[Node, ...], int]:
        opening = self.expect("(", expected)
        self.enter(opening)
        items: list[Node] = []
        if not (allow_empty and self.is_op(")")):
            items.append(self.logic())
            while self.is_op(","):
                self.advance()
                items.append(self.logic())
        closing = self.expect(")", "',' or ')'")
        self.depth -= 1
        return tuple(items), closing.end

    def attribute_name(self, token: _Token) -> str:
        if not _ATTRIBUTE_NAME.match(token.text):
            raise ParseError(
                self.source,
                token.start,
                f"{token.text!r} is not an attribute name (CloudEvents names use only "
                "letters and digits)",
            )
        return token.text.lower()

    @staticmethod
    def is_integer(token: _Token) -> bool:
        return token.kind == "word" and token.text.isdigit()

    def integer(self, token: _Token, start: int, *, negative: bool) -> Literal:
        digits = token.text.lstrip("0")
        if len(digits) > _INT32_DIGITS:  # int() of thousands of digits is slow, or refused
            raise ParseError(
                self.source,
                start,
                f"the integer {'-' if negative else ''}{digits[:12]}... ({len(digits)} digits) "
                f"is outside the 32-bit range [{INT32_MIN}, {INT32_MAX}] of CESQL integers",
            )
        value = int(digits or "0")  # without the zeros: int() counts them against its limit
        if negative:
            value = -value
        if not INT32_MIN <= value <= INT32_MAX:
            raise ParseError(
                self.source,
                start,
                f"the integer {value} is outside the 32-bit range "
                f"[{INT32_MIN}, {INT32_MAX}] of CESQL integers",
            )
        return Literal(value, start, token.end)


def children(node: Node) -> tuple[Node, ...]:
    if isinstance(node, Unary | Like):
        return (node.operand,)
    if isinstance(node, Binary):
        return (node.left, node.right)
    if isinstance(node, In):
        return (node.operand, *node.items)
    if isinstance(node, Call):
        return node.args
    return ()


def _height(root: Node) -> int:
    """The tree's height, computed without recursion (chains can be long)."""
    height = 0
    stack = [(root, 1)]
    while stack:
        node, level = stack.pop()
        height = max(height, level)
        stack.extend((child, level + 1) for child in children(node))
    return height
