//! Fast conditions: the common simple shapes of a `when` expression, compiled
//! into a native predicate that reads the borrowed event tree ([`Json`])
//! instead of a Rhai value of the event.
//!
//! Converting every event body to a Rhai value is the biggest cost of
//! matching. Most conditions only compare a few fields of the body with
//! literals, so [`FastCondition::compile`] recognises that subset (paths from
//! `event`, literals, comparisons, `in` on an array of literals, `&&`, `||`,
//! `!`, parentheses, and chains of the string methods users reach for:
//! `to_lower`, `sub_string`, `split` and an item of its pieces,
//! `starts_with`, `len`, ...) and [`FastCondition::eval`] answers on the tree
//! directly.
//!
//! It is a second parser beside Rhai's, kept small and checked against Rhai
//! by the differential tests below (hand-made, random, and under tiny
//! limits). Deriving it from Rhai's AST (`internals`) instead is the next
//! step: the AST would settle precedence and literals, but the meaning of
//! each operation on the tree would still be mirrored here.
//!
//! The invariant: whenever [`FastCondition::eval`] gives `Some(b)`, the
//! engine's Rhai evaluation of the same source on the same event gives
//! `Ok(b)`. Anything uncertain gives `None` and the caller asks Rhai: an
//! expression outside the subset does not compile, and a missing field, a
//! mix of types, a non-bool operand of `&&`, `||` or `!`, or a non-bool
//! result does not evaluate. Rhai's rules mirrored here (checked by the
//! differential tests below):
//!
//! - `map.key` and `map["key"]` read the key (the last of duplicate keys);
//!   a missing key would give `()`, so it gives `None` here.
//! - `==`, `!=`, `<`, `<=`, `>`, `>=` compare two integers, two floats or two
//!   strings (as `str` does); booleans only with `==` and `!=`. A mix (an
//!   integer and a float included), `()`, arrays and maps give `None`.
//! - Rhai compares floats with a relative tolerance of `f64::EPSILON`
//!   (`0.30000000000000004 == 0.3` is true); a float comparison answers only
//!   when that and the exact comparison agree.
//! - `&&` and `||` short-circuit: `false && x` is false whatever `x` is.
//! - `.len()` counts a string's chars, an array's items or a map's keys.
//! - `to_lower`/`to_upper` are Rust's `to_lowercase`/`to_uppercase`;
//!   `sub_string(start[, len])` counts chars; `split(d)` gives the whole
//!   string when it is empty or lacks a non-empty `d`, else `str::split`'s
//!   pieces (as the guarded `split` of `script::guards`); an item past the
//!   end is an error.
//! - `x in [a, b]` is Rhai's array `contains`: `==` with each item in turn;
//!   an item of another type than `x` gives `None`.
//! - After every method call Rhai measures the receiver, nested items
//!   included, and fails when it is larger than the condition engine's
//!   limits (`max_string_size`, and `max_array_size` and `max_map_size`
//!   capped at [`CONDITION_MAX_COLLECTION_SIZE`]): `.len()` of an event's
//!   array of 1001 numbers is an error, not 1001. A method call answers only
//!   when the receiver is within the limits the condition was compiled for:
//!   compile with [`FastCondition::compile_with_limits`] and the sandbox's
//!   limits when they are not the defaults.

use std::borrow::Cow;
use std::collections::HashSet;

use crate::event::tree::Json;
use crate::script::SandboxLimits;
use crate::script::limits::CONDITION_MAX_COLLECTION_SIZE;

/// Deepest nesting of parentheses and `!` accepted (Rhai's own limit for
/// conditions is 32 levels; a deeper expression is left to Rhai).
const MAX_DEPTH: usize = 24;
/// Longest expression accepted, in tokens: far below any operation limit.
const MAX_TOKENS: usize = 1024;

/// Words Rhai reserves (keywords and reserved words of its tokenizer):
/// never taken as property names, even where Rhai might accept them.
const RESERVED: &str = "
    Fn _ as async await break call case catch const continue curry debug
    default do else eval exit export false fn for global go goto if import
    in is is_def_fn is_def_var is_shared let loop match module new nil
    no_closure no_function no_index no_module no_object null package print
    private protected public return shared spawn static super switch sync
    this thread throw true try type_of until use var void while with yield
";

/// A `when` expression in the subset the engine evaluates natively.
#[derive(Debug, Clone)]
pub struct FastCondition {
    expr: Expr,
    limits: ReceiverLimits,
}

impl FastCondition {
    /// `Some` when the whole expression is within the subset, else `None`
    /// (Rhai evaluates it). For a sandbox with the default limits; see
    /// [`FastCondition::compile_with_limits`].
    pub fn compile(source: &str) -> Option<FastCondition> {
        FastCondition::compile_with_limits(source, &SandboxLimits::default())
    }

    /// As [`FastCondition::compile`], for a sandbox built with `limits` (the
    /// answers of method calls depend on them).
    pub fn compile_with_limits(source: &str, limits: &SandboxLimits) -> Option<FastCondition> {
        let tokens = tokenize(source)?;
        if tokens.len() > MAX_TOKENS {
            return None;
        }
        let mut parser = Parser {
            tokens: &tokens,
            at: 0,
            depth: 0,
        };
        let expr = parser.or_expr()?;
        parser.finished().then_some(FastCondition {
            expr,
            limits: ReceiverLimits::of(limits),
        })
    }

    /// `Some(answer)` only when the answer is certainly what Rhai would give;
    /// `None` means "not sure, ask Rhai" (the caller then evaluates the Rhai
    /// AST on the full event).
    pub fn eval(&self, event: &Json<'_>) -> Option<bool> {
        self.expr.truth(&Context {
            event,
            limits: self.limits,
        })
    }
}

/// What an evaluation reads: the event, and the limits of method receivers.
struct Context<'v, 'a> {
    event: &'v Json<'a>,
    limits: ReceiverLimits,
}

// ---------------------------------------------------------------------------
// The compiled expression and its evaluation

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Literal(Literal),
    /// A value read from the event, then passed through method calls and
    /// indexes: `event.a.b.to_lower()`, `event.a.split("@")[1]`.
    Chain(Vec<Step>, Vec<Link>),
    /// `lhs in [literal, ...]`: Rhai's `contains` on an array literal.
    In(Box<Expr>, Vec<Literal>),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Compare(CompareOp, Box<Expr>, Box<Expr>),
}

#[derive(Debug, Clone, PartialEq)]
enum Literal {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

/// One step of a path from `event`.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    /// `.key` or `["key"]`: the value of a key of an object.
    Key(String),
    /// `[n]`: an item of an array.
    Index(usize),
}

/// What a chain does after its path: call a method on the value it holds,
/// or take an item of the array a method made.
#[derive(Debug, Clone, PartialEq)]
enum Link {
    Call(Method),
    Item(usize),
}

#[derive(Debug, Clone, PartialEq)]
enum Method {
    StartsWith(String),
    EndsWith(String),
    Contains(String),
    Len,
    IsEmpty,
    ToLower,
    ToUpper,
    /// `sub_string(start)` (`None`: to the end) or `sub_string(start, len)`.
    SubString(usize, Option<usize>),
    Split(String),
}

/// What a method gives, known when it is compiled: what may follow it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Gives {
    Text,
    Pieces,
    Scalar,
}

impl Method {
    fn gives(&self) -> Gives {
        match self {
            Method::ToLower | Method::ToUpper | Method::SubString(..) => Gives::Text,
            Method::Split(_) => Gives::Pieces,
            _ => Gives::Scalar,
        }
    }

    /// Whether the method is called on an array a method made (only
    /// `split`'s pieces): Rhai's array `len` and `is_empty`.
    fn applies_to_pieces(&self) -> bool {
        matches!(self, Method::Len | Method::IsEmpty)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum CompareOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A value an expression gives: the scalars the subset can compare.
#[derive(Debug, Clone, PartialEq)]
enum Value<'v> {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Cow<'v, str>),
}

/// What a chain holds between its links: a value of the event, or one a
/// method made.
#[derive(Debug)]
enum Operand<'v, 'a> {
    Event(&'v Json<'a>),
    Text(String),
    Pieces(Vec<String>),
    Bool(bool),
    Int(i64),
}

impl Expr {
    /// The value of a condition that must be a bool.
    fn truth(&self, context: &Context<'_, '_>) -> Option<bool> {
        match self.value(context)? {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    fn value<'v>(&'v self, context: &Context<'v, '_>) -> Option<Value<'v>> {
        match self {
            Expr::Literal(literal) => Some(literal.value()),
            Expr::Chain(steps, links) => {
                let start = Operand::Event(resolve(steps, context.event)?);
                let end = links
                    .iter()
                    .try_fold(start, |operand, link| link.apply(operand, context.limits))?;
                end.into_value()
            }
            Expr::In(lhs, items) => {
                let value = lhs.value(context)?;
                in_literals(&value, items, context.limits).map(Value::Bool)
            }
            Expr::Not(operand) => Some(Value::Bool(!operand.truth(context)?)),
            // Short-circuit as Rhai does: the right side is not evaluated.
            Expr::And(lhs, rhs) => Some(Value::Bool(lhs.truth(context)? && rhs.truth(context)?)),
            Expr::Or(lhs, rhs) => Some(Value::Bool(lhs.truth(context)? || rhs.truth(context)?)),
            Expr::Compare(op, lhs, rhs) => {
                compare(*op, &lhs.value(context)?, &rhs.value(context)?).map(Value::Bool)
            }
        }
    }
}

/// Rhai's `value in [items]`: array `contains`, comparing each item with
/// `==` until one is equal. An item of another type than the value (Rhai
/// may answer false or fail) gives `None`, as does a literal array larger
/// than the limits.
fn in_literals(value: &Value<'_>, items: &[Literal], limits: ReceiverLimits) -> Option<bool> {
    let bytes: usize = items
        .iter()
        .map(|item| match item {
            Literal::Str(s) => s.len(),
            _ => 0,
        })
        .sum();
    if items.len() > limits.array || bytes > limits.string {
        return None;
    }
    for item in items {
        if compare(CompareOp::Eq, &item.value(), value)? {
            return Some(true);
        }
    }
    Some(false)
}

impl Literal {
    fn value(&self) -> Value<'_> {
        match self {
            Literal::Bool(b) => Value::Bool(*b),
            Literal::Int(n) => Value::Int(*n),
            Literal::Float(x) => Value::Float(*x),
            Literal::Str(s) => Value::Str(Cow::Borrowed(s)),
        }
    }
}

impl<'v, 'a> Operand<'v, 'a> {
    fn text(&self) -> Option<&str> {
        match self {
            Operand::Event(Json::Str(s)) => Some(s),
            Operand::Text(s) => Some(s),
            _ => None,
        }
    }

    /// The value at the end of a chain: a scalar (`()`, arrays and maps are
    /// not).
    fn into_value(self) -> Option<Value<'v>> {
        match self {
            Operand::Event(json) => scalar(json),
            Operand::Text(s) => Some(Value::Str(Cow::Owned(s))),
            Operand::Bool(b) => Some(Value::Bool(b)),
            Operand::Int(n) => Some(Value::Int(n)),
            Operand::Pieces(_) => None,
        }
    }
}

impl Link {
    fn apply<'v, 'a>(
        &self,
        operand: Operand<'v, 'a>,
        limits: ReceiverLimits,
    ) -> Option<Operand<'v, 'a>> {
        match (self, operand) {
            (Link::Call(method), receiver) => {
                if !limits.admit(&receiver) {
                    return None;
                }
                let result = method.call(&receiver)?;
                limits.admit(&result).then_some(result)
            }
            // Rhai fails on an index past the end.
            (Link::Item(index), Operand::Pieces(mut pieces)) => {
                (*index < pieces.len()).then(|| Operand::Text(pieces.swap_remove(*index)))
            }
            (Link::Item(_), _) => None,
        }
    }
}

/// The value at `steps` from `root`; `None` when a step is missing (Rhai
/// would give `()` or fail) or does not apply to the value it reads.
fn resolve<'v, 'a>(steps: &[Step], root: &'v Json<'a>) -> Option<&'v Json<'a>> {
    steps
        .iter()
        .try_fold(root, |value, step| match (step, value) {
            (Step::Key(key), Json::Object(_)) => value.get(key),
            (Step::Index(index), Json::Array(items)) => items.get(*index),
            _ => None,
        })
}

/// A value read from the event as a comparable scalar; `()`, arrays and
/// maps are not.
fn scalar<'v>(value: &'v Json<'_>) -> Option<Value<'v>> {
    match value {
        Json::Bool(b) => Some(Value::Bool(*b)),
        Json::Int(n) => Some(Value::Int(*n)),
        Json::Float(x) => Some(Value::Float(*x)),
        Json::Str(s) => Some(Value::Str(Cow::Borrowed(s))),
        Json::Null | Json::Array(_) | Json::Object(_) => None,
    }
}

impl Method {
    /// What Rhai's function of this name gives for `receiver` (the guarded
    /// `split` of `script::guards` gives the same pieces); `None` where it
    /// would fail or another function would be called.
    fn call<'v, 'a>(&self, receiver: &Operand<'v, 'a>) -> Option<Operand<'v, 'a>> {
        let result = match self {
            Method::StartsWith(part) => Operand::Bool(receiver.text()?.starts_with(&**part)),
            Method::EndsWith(part) => Operand::Bool(receiver.text()?.ends_with(&**part)),
            Method::Contains(part) => Operand::Bool(receiver.text()?.contains(&**part)),
            Method::Len => Operand::Int(operand_length(receiver)?),
            Method::IsEmpty => Operand::Bool(operand_length(receiver)? == 0),
            Method::ToLower => Operand::Text(receiver.text()?.to_lowercase()),
            Method::ToUpper => Operand::Text(receiver.text()?.to_uppercase()),
            // Rhai's `sub_string` for a start and length that are not negative.
            Method::SubString(start, len) => Operand::Text(
                receiver
                    .text()?
                    .chars()
                    .skip(*start)
                    .take(len.unwrap_or(usize::MAX))
                    .collect(),
            ),
            Method::Split(delimiter) => Operand::Pieces(split(receiver.text()?, delimiter)),
        };
        Some(result)
    }
}

/// Rhai's `split(delimiter)`: the whole string when it is empty or does not
/// hold a non-empty delimiter, else its pieces.
fn split(text: &str, delimiter: &str) -> Vec<String> {
    if text.is_empty() || (!delimiter.is_empty() && !text.contains(delimiter)) {
        return vec![text.to_owned()];
    }
    text.split(delimiter).map(str::to_owned).collect()
}

/// `len()` of an operand: of the event's value as [`length`], chars of a
/// made string, items of made pieces.
fn operand_length(operand: &Operand<'_, '_>) -> Option<i64> {
    match operand {
        Operand::Event(json) => length(json),
        Operand::Text(s) => i64::try_from(s.chars().count()).ok(),
        Operand::Pieces(pieces) => i64::try_from(pieces.len()).ok(),
        Operand::Bool(_) | Operand::Int(_) => None,
    }
}

/// Rhai's `len()`: chars of a string, items of an array, keys of a map (a
/// key repeated in the text is one key of the map).
fn length(value: &Json<'_>) -> Option<i64> {
    let count = match value {
        Json::Str(s) => s.chars().count(),
        Json::Array(items) => items.len(),
        Json::Object(entries) => {
            let mut keys = HashSet::with_capacity(entries.len());
            entries
                .iter()
                .filter(|(key, _)| keys.insert(&**key))
                .count()
        }
        _ => return None,
    };
    i64::try_from(count).ok()
}

/// A comparison Rhai makes with a built-in operator on two values of one
/// type; `None` for any other pair.
fn compare(op: CompareOp, lhs: &Value<'_>, rhs: &Value<'_>) -> Option<bool> {
    match (lhs, rhs) {
        (Value::Int(a), Value::Int(b)) => Some(op.exact(a, b)),
        (Value::Float(a), Value::Float(b)) => compare_floats(op, *a, *b),
        (Value::Str(a), Value::Str(b)) => Some(op.exact(&**a, &**b)),
        (Value::Bool(a), Value::Bool(b)) if op.is_equality() => Some(op.exact(a, b)),
        _ => None,
    }
}

/// Rhai (built without `unchecked`) compares floats with a tolerance; the
/// answer is given only when the tolerant and the exact comparison agree,
/// so it is right whichever one Rhai makes.
fn compare_floats(op: CompareOp, x: f64, y: f64) -> Option<bool> {
    let exact = op.exact(&x, &y);
    (exact == op.tolerant(x, y)).then_some(exact)
}

impl CompareOp {
    fn is_equality(self) -> bool {
        matches!(self, CompareOp::Eq | CompareOp::Ne)
    }

    fn exact<T: PartialOrd + ?Sized>(self, a: &T, b: &T) -> bool {
        match self {
            CompareOp::Eq => a == b,
            CompareOp::Ne => a != b,
            CompareOp::Lt => a < b,
            CompareOp::Le => a <= b,
            CompareOp::Gt => a > b,
            CompareOp::Ge => a >= b,
        }
    }

    /// Rhai's float comparison (`rhai::func::builtin`, checked build): the
    /// difference relative to the larger magnitude (to 1 when either is 0)
    /// against `f64::EPSILON`.
    fn tolerant(self, x: f64, y: f64) -> bool {
        let max = if x * y == 0.0 {
            1.0
        } else {
            x.abs().max(y.abs())
        };
        let (diff, eps) = (x - y, f64::EPSILON);
        match self {
            CompareOp::Eq => diff.abs() / max <= eps,
            CompareOp::Ne => diff.abs() / max > eps,
            CompareOp::Gt => diff / max > eps,
            CompareOp::Ge => diff / max > -eps,
            CompareOp::Lt => (y - x) / max > eps,
            CompareOp::Le => (y - x) / max > -eps,
        }
    }
}

// ---------------------------------------------------------------------------
// Receiver sizes

/// The sizes past which the condition engine fails a method call: it
/// measures the receiver after the call (`rhai::Engine::check_data_size`).
#[derive(Debug, Clone, Copy, PartialEq)]
struct ReceiverLimits {
    /// Bytes of the strings in the receiver.
    string: usize,
    /// Items of the arrays in the receiver.
    array: usize,
    /// Keys of the maps in the receiver.
    map: usize,
}

impl ReceiverLimits {
    /// The limits the condition engine applies (see `script::engine`).
    fn of(limits: &SandboxLimits) -> ReceiverLimits {
        let limits = limits.effective();
        ReceiverLimits {
            string: limits.max_string_size,
            array: limits.max_array_size.min(CONDITION_MAX_COLLECTION_SIZE),
            map: limits.max_map_size.min(CONDITION_MAX_COLLECTION_SIZE),
        }
    }

    /// Whether Rhai's measure of `operand` is within the limits. A key
    /// repeated in the text is counted each time: more than Rhai's map
    /// holds, so the answer errs towards "no".
    fn admit(&self, operand: &Operand<'_, '_>) -> bool {
        let measured = match operand {
            Operand::Event(value) => Sizes::of(value),
            Operand::Text(s) => Sizes {
                string: s.len(),
                ..Sizes::default()
            },
            Operand::Pieces(pieces) => Sizes {
                string: pieces.iter().map(String::len).sum(),
                array: pieces.len(),
                map: 0,
            },
            Operand::Bool(_) | Operand::Int(_) => Sizes::default(),
        };
        measured.string <= self.string && measured.array <= self.array && measured.map <= self.map
    }
}

/// What `rhai::Engine::check_data_size` adds up: string bytes, array items
/// and map keys, through every level of nesting.
#[derive(Debug, Default)]
struct Sizes {
    string: usize,
    array: usize,
    map: usize,
}

impl Sizes {
    fn of(value: &Json<'_>) -> Sizes {
        let mut sizes = Sizes::default();
        sizes.add(value);
        sizes
    }

    fn add(&mut self, value: &Json<'_>) {
        match value {
            Json::Str(s) => self.string += s.len(),
            Json::Array(items) => {
                for item in items {
                    self.array += 1;
                    self.add(item);
                }
            }
            Json::Object(entries) => {
                for (_, item) in entries {
                    self.map += 1;
                    self.add(item);
                }
            }
            Json::Null | Json::Bool(_) | Json::Int(_) | Json::Float(_) => {}
        }
    }
}

// ---------------------------------------------------------------------------
// Tokens

#[derive(Debug, Clone, PartialEq)]
enum Token<'s> {
    Ident(&'s str),
    Int(i64),
    Float(f64),
    Str(&'s str),
    Dot,
    LeftParen,
    RightParen,
    LeftBracket,
    RightBracket,
    Comma,
    Bang,
    And,
    Or,
    Compare(CompareOp),
}

/// Splits `source` into tokens; `None` at anything outside the subset.
fn tokenize(source: &str) -> Option<Vec<Token<'_>>> {
    let mut tokens = Vec::new();
    let mut rest = source;
    while let Some(first) = rest.bytes().next() {
        if matches!(first, b' ' | b'\t' | b'\n' | b'\r') {
            rest = &rest[1..];
            continue;
        }
        let (token, len) = match first {
            b'"' => string(rest)?,
            b'0'..=b'9' => number(rest)?,
            b'A'..=b'Z' | b'a'..=b'z' | b'_' => identifier(rest),
            _ => symbol(rest.as_bytes())?,
        };
        tokens.push(token);
        rest = &rest[len..];
    }
    Some(tokens)
}

/// A double-quoted string without escapes, line breaks or control chars.
fn string(text: &str) -> Option<(Token<'_>, usize)> {
    let end = 1 + text[1..].find('"')?;
    let content = &text[1..end];
    if content.chars().any(|c| c == '\\' || c.is_control()) {
        return None;
    }
    Some((Token::Str(content), end + 1))
}

/// `[0-9]+` fitting `i64`, or `[0-9]+.[0-9]+`; nothing that Rhai would read
/// as more of a number (`_`, `e`, `x`, a second `.`) may follow.
fn number(text: &str) -> Option<(Token<'_>, usize)> {
    let bytes = text.as_bytes();
    let digits = |from: usize| {
        bytes[from..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count()
    };
    let mut len = digits(0);
    let is_float =
        bytes.get(len) == Some(&b'.') && bytes.get(len + 1).is_some_and(u8::is_ascii_digit);
    if is_float {
        len += 1 + digits(len + 1);
    }
    if bytes
        .get(len)
        .is_some_and(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
    {
        return None;
    }
    let text = &text[..len];
    let token = if is_float {
        Token::Float(text.parse().ok()?)
    } else {
        Token::Int(text.parse().ok()?)
    };
    Some((token, len))
}

fn identifier(text: &str) -> (Token<'_>, usize) {
    let len = text
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
        .count();
    (Token::Ident(&text[..len]), len)
}

fn symbol(bytes: &[u8]) -> Option<(Token<'static>, usize)> {
    let second = bytes.get(1).copied();
    let token = match (bytes[0], second) {
        (b'!', Some(b'=')) => (Token::Compare(CompareOp::Ne), 2),
        (b'=', Some(b'=')) => (Token::Compare(CompareOp::Eq), 2),
        (b'<', Some(b'=')) => (Token::Compare(CompareOp::Le), 2),
        (b'>', Some(b'=')) => (Token::Compare(CompareOp::Ge), 2),
        (b'&', Some(b'&')) => (Token::And, 2),
        (b'|', Some(b'|')) => (Token::Or, 2),
        (b'<', _) => (Token::Compare(CompareOp::Lt), 1),
        (b'>', _) => (Token::Compare(CompareOp::Gt), 1),
        (b'!', _) => (Token::Bang, 1),
        (b'.', _) => (Token::Dot, 1),
        (b'(', _) => (Token::LeftParen, 1),
        (b')', _) => (Token::RightParen, 1),
        (b'[', _) => (Token::LeftBracket, 1),
        (b']', _) => (Token::RightBracket, 1),
        (b',', _) => (Token::Comma, 1),
        _ => return None,
    };
    Some(token)
}

/// An identifier Rhai reads as a property name: valid (a letter before any
/// digit) and not reserved.
fn is_property_name(name: &str) -> bool {
    let first_letter = name.bytes().find(|&b| b != b'_');
    first_letter.is_some_and(|b| b.is_ascii_alphabetic())
        && !RESERVED.split_ascii_whitespace().any(|word| word == name)
}

// ---------------------------------------------------------------------------
// Parser
//
//   or         := and ("||" and)*
//   and        := comparison ("&&" comparison)*
//   comparison := unary (op unary | "in" array)?    no chains: `a < b == c` is refused
//   unary      := "!" unary | primary
//   primary    := "(" or ")" | literal | chain
//   chain      := "event" step* link*
//   step       := "." name | "[" string "]" | "[" integer "]"
//   link       := "." method "(" args ")" | "[" integer "]"   an index only after `split`
//   array      := "[" (literal ("," literal)* ","?)? "]"
//
// This is Rhai's precedence (|| 30, && 60, == != 90, `in` 110, < <= > >=
// 130, unary `!` above every binary operator, `.` and `[]` above `!`)
// restricted to expressions whose comparisons are not chained. Rhai turns
// `a in b` into `contains(b, a)`.

struct Parser<'t, 's> {
    tokens: &'t [Token<'s>],
    at: usize,
    depth: usize,
}

impl<'s> Parser<'_, 's> {
    fn finished(&self) -> bool {
        self.at == self.tokens.len()
    }

    fn peek(&self) -> Option<&Token<'s>> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<&Token<'s>> {
        let token = self.tokens.get(self.at)?;
        self.at += 1;
        Some(token)
    }

    fn eat(&mut self, token: &Token<'_>) -> bool {
        let found = self.peek() == Some(token);
        if found {
            self.at += 1;
        }
        found
    }

    fn expect(&mut self, token: &Token<'_>) -> Option<()> {
        self.eat(token).then_some(())
    }

    fn or_expr(&mut self) -> Option<Expr> {
        let mut lhs = self.and_expr()?;
        while self.eat(&Token::Or) {
            lhs = Expr::Or(Box::new(lhs), Box::new(self.and_expr()?));
        }
        Some(lhs)
    }

    fn and_expr(&mut self) -> Option<Expr> {
        let mut lhs = self.comparison()?;
        while self.eat(&Token::And) {
            lhs = Expr::And(Box::new(lhs), Box::new(self.comparison()?));
        }
        Some(lhs)
    }

    fn comparison(&mut self) -> Option<Expr> {
        let lhs = self.unary()?;
        let expr = match self.peek() {
            Some(&Token::Compare(op)) => {
                self.at += 1;
                Expr::Compare(op, Box::new(lhs), Box::new(self.unary()?))
            }
            Some(Token::Ident("in")) => {
                self.at += 1;
                Expr::In(Box::new(lhs), self.array()?)
            }
            _ => return Some(lhs),
        };
        if matches!(self.peek(), Some(Token::Compare(_) | Token::Ident("in"))) {
            return None;
        }
        Some(expr)
    }

    /// An array of literals, as Rhai writes one (a trailing comma allowed).
    fn array(&mut self) -> Option<Vec<Literal>> {
        self.expect(&Token::LeftBracket)?;
        let mut items = Vec::new();
        while !self.eat(&Token::RightBracket) {
            let Expr::Literal(item) = self.primary()? else {
                return None;
            };
            items.push(item);
            if !self.eat(&Token::Comma) {
                self.expect(&Token::RightBracket)?;
                break;
            }
        }
        Some(items)
    }

    fn unary(&mut self) -> Option<Expr> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return None;
        }
        let expr = if self.eat(&Token::Bang) {
            Expr::Not(Box::new(self.unary()?))
        } else {
            self.primary()?
        };
        self.depth -= 1;
        Some(expr)
    }

    fn primary(&mut self) -> Option<Expr> {
        let expr = match self.next()? {
            Token::LeftParen => {
                let inner = self.or_expr()?;
                self.expect(&Token::RightParen)?;
                inner
            }
            Token::Int(n) => Expr::Literal(Literal::Int(*n)),
            Token::Float(x) => Expr::Literal(Literal::Float(*x)),
            Token::Str(s) => Expr::Literal(Literal::Str((*s).to_owned())),
            Token::Ident("true") => Expr::Literal(Literal::Bool(true)),
            Token::Ident("false") => Expr::Literal(Literal::Bool(false)),
            Token::Ident("event") => self.chain()?,
            _ => return None,
        };
        Some(expr)
    }

    /// The steps after `event`, then the method calls and items of what
    /// they give: a string method on a string, `len` and `is_empty` on
    /// anything, an item only of `split`'s pieces, and nothing after a
    /// method that gives a bool or a number.
    fn chain(&mut self) -> Option<Expr> {
        let mut steps = Vec::new();
        let mut links = Vec::new();
        let mut made: Option<Gives> = None;
        loop {
            if self.eat(&Token::Dot) {
                let &Token::Ident(name) = self.next()? else {
                    return None;
                };
                if !is_property_name(name) {
                    return None;
                }
                if self.peek() != Some(&Token::LeftParen) {
                    // A property of what a method made: refused.
                    made.is_none().then_some(())?;
                    steps.push(Step::Key(name.to_owned()));
                    continue;
                }
                let method = self.method(name)?;
                match made {
                    None | Some(Gives::Text) => {}
                    Some(Gives::Pieces) if method.applies_to_pieces() => {}
                    Some(_) => return None,
                }
                made = Some(method.gives());
                links.push(Link::Call(method));
            } else if self.eat(&Token::LeftBracket) {
                let token = self.next()?.clone();
                self.expect(&Token::RightBracket)?;
                match (made, token) {
                    (None, Token::Str(key)) => steps.push(Step::Key(key.to_owned())),
                    (None, Token::Int(index)) => {
                        steps.push(Step::Index(usize::try_from(index).ok()?))
                    }
                    (Some(Gives::Pieces), Token::Int(index)) => {
                        links.push(Link::Item(usize::try_from(index).ok()?));
                        made = Some(Gives::Text);
                    }
                    _ => return None,
                }
            } else {
                return Some(Expr::Chain(steps, links));
            }
        }
    }

    /// `(...)` after a method name: its arguments, literals of the types
    /// Rhai's function of that name takes.
    fn method(&mut self, name: &str) -> Option<Method> {
        self.expect(&Token::LeftParen)?;
        let method = match name {
            "len" => Method::Len,
            "is_empty" => Method::IsEmpty,
            "to_lower" => Method::ToLower,
            "to_upper" => Method::ToUpper,
            "starts_with" | "ends_with" | "contains" | "split" => {
                let part = self.string_argument()?;
                match name {
                    "starts_with" => Method::StartsWith(part),
                    "ends_with" => Method::EndsWith(part),
                    "contains" => Method::Contains(part),
                    _ => Method::Split(part),
                }
            }
            "sub_string" => {
                let start = self.count_argument()?;
                let len = if self.eat(&Token::Comma) {
                    Some(self.count_argument()?)
                } else {
                    None
                };
                Method::SubString(start, len)
            }
            _ => return None,
        };
        self.expect(&Token::RightParen)?;
        Some(method)
    }

    fn string_argument(&mut self) -> Option<String> {
        match self.next()? {
            Token::Str(text) => Some((*text).to_owned()),
            _ => None,
        }
    }

    /// An integer literal (never negative: the tokenizer reads no sign).
    fn count_argument(&mut self) -> Option<usize> {
        match self.next()? {
            Token::Int(n) => usize::try_from(*n).ok(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use rhai::{AST, Dynamic, Scope};

    use super::*;
    use crate::event::sample_bodies;
    use crate::script::{Sandbox, SandboxLimits, ScriptModules};

    fn accepts(source: &str) -> bool {
        FastCondition::compile(source).is_some()
    }

    fn eval(source: &str, body: &str) -> Option<bool> {
        let condition = FastCondition::compile(source).expect(source);
        condition.eval(&Json::parse(body).unwrap())
    }

    #[test]
    fn compiles_the_simple_shapes() {
        for source in [
            "event.payload.object.duration > 240",
            "event.payload.object.type == 8 && !event.payload.object.settings.waiting_room",
            r#"event.payload.object.participant.email.ends_with("@rival.example")"#,
            "event.payload.object.recording_files.len() == 0",
            r#"(event.a == 1 || event.b == "x") && event.c != true"#,
            r#"event["payload"]["object"].topic.starts_with("Inc")"#,
            "event.payload.object.recording_files[0].file_size >= 2.5",
            "event . a\n  == 1\t&&\r\nevent.b",
            "!!event.a",
            "true",
            r#""x" < event.s"#,
            "event.s.is_empty() || event.s.contains(\"é\")",
            "event.type == 2 && event.is_empty_room && event._id == event.id2",
            "event.s.len ( ) == 3",
            r#"event.a.to_lower().ends_with("@x.example")"#,
            r#"event.a.sub_string(11, 2) >= "22""#,
            r#"event.a.sub_string(3).to_upper() == "X""#,
            r#"event.a.split("@")[1] in ["a.example", "b.example"]"#,
            r#"event.a.split("@").len() == 2"#,
            "event.type in [5, 9] || !event.settings.waiting_room",
            "event.a in []",
            "event.a in [1.5, (2)]",
        ] {
            assert!(accepts(source), "{source}");
        }
    }

    #[test]
    fn refuses_everything_else() {
        let deep = format!("{}event.a{}", "(".repeat(30), ")".repeat(30));
        let negated = format!("{}event.a", "!".repeat(30));
        for source in [
            "",
            "vars.x == 1",
            "meta.type == \"x\"",
            "event.a + 1 > 2",
            "event.a == -1",
            r#"event.a == "x\"y""#,
            "event.a == \"line\nbreak\"",
            "event.a // comment",
            "event.a /* comment */",
            "event.a == 1; event.b",
            "event.a == `x`",
            "event.a == 'x'",
            "1_000 == event.a",
            "event.a == 0x10",
            "event.a == 1e3",
            "event.a == 1.",
            "event.a == .5",
            "event.a == 99999999999999999999",
            "event.a?.b",
            "event.a ?? 1",
            r#""x" in event.a"#,
            r#""x" !in event.a"#,
            "event.a < event.b < event.c",
            "event.a == event.b == true",
            "event.a < 1 == true",
            "event.a == 1 < 2",
            "event.a.b()",
            "event.a.len(1)",
            "event.a.ends_with(event.b)",
            "event.a.ends_with('x')",
            r#"event.a.contains("x", "y")"#,
            "event.a.len().b",
            "event.a.len()[0]",
            "event.a.to_lower().b",
            "event.a.to_lower()[0]",
            r#"event.a.split("x").to_lower()"#,
            r#"event.a.split("x").contains("y")"#,
            r#"event.a.split("x")["k"]"#,
            r#"event.a.split("x")[0].b"#,
            "event.a.split()",
            "event.a.split(1)",
            "event.a.sub_string(-1)",
            "event.a.sub_string(1, 2, 3)",
            r#"event.a.sub_string("1")"#,
            "event.a.sub_string()",
            "event.a.to_lower(1)",
            "event.a in [event.b]",
            "event.a in [-1]",
            "event.a in [1] == true",
            "event.a == 1 in [true]",
            "event.a in [1] in [true]",
            "event.a in [1,,]",
            "event.a in [,]",
            "event.a in [1",
            "event.a in event.b",
            "event.in == 1",
            "(event.a).len() == 1",
            r#""x".len() == 1"#,
            "event.if == 1",
            "event.type_of == 1",
            "event._1 == 1",
            "event.__ == 1",
            "event.a[-1]",
            "event.a[1.5]",
            "event.a[event.b]",
            r#"event.a["x""#,
            "(event.a",
            "event.a)",
            "()",
            "event.a = 1",
            "event.a === 1",
            "event.a !== 1",
            "event.a => 1",
            "event.a & event.b",
            "event.a | event.b",
            "event.a ||| event.b",
            "event.a..event.b",
            "event.a !.b",
            "if event.a { true } else { false }",
            "#{a: 1}.a == 1",
            "[1].len() == 1",
            "event.ä == 1",
            r#"zoom::uuid(event.a) == "x""#,
            "event!",
            "event(1)",
            "event.a.b.c.",
            "let x = 1",
            "|| true",
            &deep,
            &negated,
        ] {
            assert!(!accepts(source), "accepted {source:?}");
        }
    }

    #[test]
    fn parses_with_rhai_precedence() {
        let path = |key: &str| Expr::Chain(vec![Step::Key(key.to_owned())], Vec::new());
        let parsed = |source| FastCondition::compile(source).unwrap().expr;
        assert_eq!(
            parsed("event.a || event.b && event.c"),
            Expr::Or(
                Box::new(path("a")),
                Box::new(Expr::And(Box::new(path("b")), Box::new(path("c"))))
            )
        );
        // `!` binds tighter than `==`: this is `(!event.a) == event.b`.
        assert_eq!(
            parsed("!event.a == event.b"),
            Expr::Compare(
                CompareOp::Eq,
                Box::new(Expr::Not(Box::new(path("a")))),
                Box::new(path("b"))
            )
        );
        assert_eq!(
            parsed(r#"event["a"][2].len()"#),
            Expr::Chain(
                vec![Step::Key("a".into()), Step::Index(2)],
                vec![Link::Call(Method::Len)]
            )
        );
        assert_eq!(
            parsed(r#"event.a.split("@")[1].to_lower()"#),
            Expr::Chain(
                vec![Step::Key("a".into())],
                vec![
                    Link::Call(Method::Split("@".into())),
                    Link::Item(1),
                    Link::Call(Method::ToLower)
                ]
            )
        );
        // `!` binds tighter than `in`, which Rhai reads as `contains`.
        assert_eq!(
            parsed("!event.a in [true, 2,]"),
            Expr::In(
                Box::new(Expr::Not(Box::new(path("a")))),
                vec![Literal::Bool(true), Literal::Int(2)]
            )
        );
    }

    #[test]
    fn answers_only_when_certain() {
        let body = r#"{"i": 1, "f": 0.30000000000000004, "z": 1e-300, "s": "é!", "t": true,
            "n": null, "d": {"k": 1, "k": 2}, "l": [1, [2]], "o": {"k": "v"}, "big": [BIG]}"#;
        let big = vec!["0"; 1001].join(",");
        let body = &body.replace("BIG", &big);
        let cases = [
            ("event.i == 1", Some(true)),
            ("event.i > 1 || event.t", Some(true)),
            ("false && event.missing.x == 1", Some(false)),
            ("true || event.i.x", Some(true)),
            (
                "event.s.len() == 2 && event.s.starts_with(\"é\")",
                Some(true),
            ),
            ("event.d.len() == 1 && event.d.k == 2", Some(true)),
            ("event.l[1][0] == 2 && event.l.len() == 2", Some(true)),
            ("event[\"o\"][\"k\"] != \"w\"", Some(true)),
            ("event.f > 0.3", None),  // Rhai: equal within EPSILON
            ("event.z == 0.0", None), // Rhai: 1e-300 == 0.0
            ("event.f > 0.2", Some(true)),
            ("event.i == 1.0", None),     // int and float
            ("event.i == \"1\"", None),   // int and string
            ("event.n == 1", None),       // null
            ("event.missing == 1", None), // missing key
            ("event.l[2] == 1", None),    // out of bounds
            ("event.i.x == 1", None),     // property of an int
            ("event.o.len() == event.i", Some(true)),
            ("event.i.len() == 1", None),       // len of an int
            ("event.o.ends_with(\"v\")", None), // string method on a map
            ("event.big.len() == 1001", None),  // Rhai: array too large
            ("event.t < false", None),          // ordering of bools
            ("event.i", None),                  // not a bool
            ("event.t && event.s", None),       // non-bool operand
            ("event.i && true", None),
            ("!event.s", None),
            (r#"event.s.to_upper() == "É!""#, Some(true)),
            (r#"event.s.sub_string(1) == "!""#, Some(true)),
            (r#"event.s.sub_string(5, 1) == """#, Some(true)),
            (
                r#"event.s.split("é")[1] == "!" && event.s.split("").len() == 4"#,
                Some(true),
            ),
            (r#"event.s.split("x")[1] == "!""#, None), // past the end
            ("event.i in [2, 1]", Some(true)),
            ("event.i in []", Some(false)),
            (r#"event.i in ["1"]"#, None), // an item of another type
            (r#"event.s.to_lower() in ["é!"]"#, Some(true)),
            ("event.big.len() in [1001]", None), // Rhai: array too large
        ];
        for (source, expected) in cases {
            assert_eq!(eval(source, body), expected, "{source}");
        }
    }

    // -----------------------------------------------------------------------
    // Differential tests: the answers given agree with the engine's Rhai.

    /// Evaluates conditions as the matcher does: compiled by the sandbox's
    /// condition engine, run in the scope built once per event.
    struct RhaiConditions {
        sandbox: Sandbox,
    }

    impl RhaiConditions {
        fn with_limits(limits: &SandboxLimits) -> RhaiConditions {
            RhaiConditions {
                sandbox: Sandbox::new(limits.clone(), ScriptModules::empty()),
            }
        }

        fn compile(&self, source: &str) -> Option<AST> {
            self.sandbox.compile_expression(source).ok()
        }

        /// The scope of one event, its body converted as `Event::parse` does.
        fn scope(&self, body: &str) -> Scope<'static> {
            let event = serde_json::from_str::<Dynamic>(body)
                .unwrap()
                .into_read_only()
                .into_shared();
            let vars = Dynamic::from_map(rhai::Map::new());
            self.sandbox.expression_scope(&event, &Dynamic::UNIT, &vars)
        }

        fn eval(&self, scope: &mut Scope<'static>, ast: &AST) -> Result<Dynamic, String> {
            self.sandbox
                .eval_expression(scope, ast)
                .map_err(|error| error.to_string())
        }
    }

    /// What a differential run saw.
    #[derive(Debug, Default)]
    struct Tally {
        sources: usize,
        /// Sources Rhai does not compile (their rules would not load).
        refused_by_rhai: usize,
        compiled: usize,
        pairs: usize,
        answered: usize,
        answered_true: usize,
    }

    /// Evaluates every source on every body both ways, in a sandbox with
    /// `limits`, and asserts the invariant: a `Some(b)` is Rhai's `Ok(b)`.
    fn differential(limits: &SandboxLimits, sources: &[String], bodies: &[String]) -> Tally {
        let rhai = RhaiConditions::with_limits(limits);
        let trees: Vec<Json<'_>> = bodies.iter().map(|b| Json::parse(b).unwrap()).collect();
        let mut scopes: Vec<Scope<'static>> = bodies.iter().map(|b| rhai.scope(b)).collect();
        let mut tally = Tally {
            sources: sources.len(),
            ..Tally::default()
        };
        for source in sources {
            let fast = FastCondition::compile_with_limits(source, limits);
            let Some(ast) = rhai.compile(source) else {
                tally.refused_by_rhai += 1;
                continue;
            };
            let Some(fast) = fast else { continue };
            tally.compiled += 1;
            for ((body, tree), scope) in bodies.iter().zip(&trees).zip(&mut scopes) {
                tally.pairs += 1;
                let Some(answer) = fast.eval(tree) else {
                    continue;
                };
                tally.answered += 1;
                tally.answered_true += usize::from(answer);
                let engine = rhai.eval(scope, &ast);
                assert!(
                    matches!(&engine, Ok(value) if value.as_bool() == Ok(answer)),
                    "fast gave {answer}, Rhai gave {engine:?}\n  when: {source}\n  body: {body}"
                );
            }
        }
        tally
    }

    /// Conditions as users write them (the README's kind of rule).
    const USER_CONDITIONS: [&str; 12] = [
        r#"event.payload.object.participant.email.to_lower().ends_with("@rival.example")"#,
        r#"event.payload.object.participant.join_time.sub_string(11, 2) >= "22""#,
        "event.payload.object.participant.id == event.payload.object.host_id",
        r#"event.payload.object.participant.leave_reason.contains("removed by the host")"#,
        r#"event.payload.object.topic.contains("Board")"#,
        r#"event.payload.object.duration > 240 && !event.payload.object.topic.contains("Workshop")"#,
        r#"event.payload.object.recording_files[2].file_type == "CHAT""#,
        r#"event.payload.object.email.split("@")[1] in ["contractor.example", "agency.example"]"#,
        "event.payload.object.type in [5, 9] || !event.payload.object.settings.waiting_room",
        r#"event.payload.object.participant.user_name == "The CEO""#,
        "event.payload.object.recording_count > 20",
        "event.payload.object.settings.use_pmi",
    ];

    /// Hand-made bodies: missing fields, nulls, mixed numbers, big numbers,
    /// unicode, duplicate keys, escapes, nested and large arrays.
    fn odd_bodies() -> Vec<String> {
        let many: Vec<String> = (0..1500).map(|n| n.to_string()).collect();
        let mut bodies: Vec<String> = [
            "{}",
            r#"{"payload": null}"#,
            r#"{"payload": {"object": null}}"#,
            r#"{"payload": {"object": {}}}"#,
            r#"{"payload": {"object": {"duration": 240.5, "type": 8.0, "topic": "Incident 🔥",
                "settings": {"waiting_room": null, "use_pmi": "false"}, "total_size": 18446744073709551615}}}"#,
            r#"{"payload": {"object": {"duration": "300", "type": "8", "topic": "",
                "settings": {"waiting_room": 0, "use_pmi": true}, "total_size": 9223372036854775807}}}"#,
            r#"{"payload": {"object": {"duration": 1e3, "type": 8, "topic": "incident",
                "settings": {"waiting_room": false}, "total_size": 2000000000.5, "recording_count": 21}}}"#,
            r#"{"payload": {"object": {"duration": -9223372036854775808, "type": 5, "topic": "Incidentally",
                "settings": {}, "total_size": 2000000001, "host_id": ""}}}"#,
            r#"{"payload": {"object": {"duration": 10, "duration": 300, "type": 8, "type": "8",
                "settings": {"waiting_room": true, "waiting_room": false, "use_pmi": true}}}}"#,
            r#"{"payload": {"object": {"topic": "Board Review", "topic": "Board Review", "duration": 601}}}"#,
            r#"{"payload": {"object": {"participant": {"email": "ÅSA@rival.example", "user_name": "The CEO",
                "phone_number": null, "leave_reason": "was removed by the host", "id": "h1"}, "host_id": "h1"}}}"#,
            r#"{"payload": {"object": {"participant": {"email": 123, "user_name": "The CEO ",
                "phone_number": "+15550100", "leave_reason": "connection lost", "id": 7}, "host_id": "7"}}}"#,
            r#"{"payload": {"object": {"participant": {"email": "x@rival.example\n", "phone_number": "",
                "leave_reason": "Connection Lost"}, "host_id": null}}}"#,
            r#"{"payload": {"object": {"participant": "not an object"}}}"#,
            r#"{"payload": {"object": {"topic": "Incident \"quoted\"\ttab \u00e9", "email": "a@contractor.example"}}}"#,
            r#"{"payload": {"object": {"recording_files": [], "recording_count": 0}}}"#,
            r#"{"payload": {"object": {"recording_files": [[]], "recording_count": 1.0}}}"#,
            r#"{"payload": {"object": {"recording_files": [1, [2, 3], {"file_type": "MP4", "file_size": 2.5}]}}}"#,
            r#"{"payload": {"object": {"recording_files": {}, "settings": {"len": 3, "contains": true}}}}"#,
            r#"{"payload": {"object": {"recording_files": "abc", "settings": []}}}"#,
            r#"{"payload": {"object": {"recording_files": null, "settings": "abc"}}}"#,
            r#"{"f": 0.1, "g": 0.30000000000000004, "tiny": 1e-300, "nz": -0.0, "big": 18446744073709551615,
                "m": {"len": 3, "contains": true, "is_empty": 1}, "s": "a${b}", "u": "é!"}"#,
            r#"{"f": 0.2, "g": 0.3, "tiny": 0.0, "nz": 0.0, "big": 1.8446744073709552e19,
                "m": {}, "s": "", "u": "日本"}"#,
            r#"{"f": 1, "g": "0.3", "tiny": 1e-15, "nz": 0, "big": -1.5, "m": [], "s": null, "u": "e\u0301"}"#,
        ]
        .map(str::to_owned)
        .to_vec();
        bodies.push(format!(
            r#"{{"payload": {{"object": {{"recording_files": [{}], "duration": 241}}}}}}"#,
            many.join(",")
        ));
        bodies.push("[]".to_owned());
        bodies
    }

    /// Conditions covering every operator, method and precedence level.
    fn hand_sources() -> Vec<String> {
        let own = [
            "event.payload.object.duration >= 240.5",
            "event.payload.object.duration < 60",
            "event.payload.object.duration <= 60",
            "event.payload.object.duration == 60",
            "event.payload.object.duration != 60",
            "event.payload.object.duration == 60.0",
            "60 == event.payload.object.duration",
            "!event.payload.object.settings.waiting_room || event.payload.object.type == 2",
            "event.payload.object.type == 2 || event.payload.object.type == 8 && event.payload.object.settings.use_pmi",
            "(event.payload.object.type == 2 || event.payload.object.type == 8) && event.payload.object.settings.use_pmi",
            "!event.payload.object.settings.use_pmi == false",
            "!(event.payload.object.settings.use_pmi == false)",
            "!!event.payload.object.settings.use_pmi",
            "event.payload.object.settings.use_pmi == event.payload.object.settings.join_before_host",
            "event.payload.object.settings.use_pmi != true",
            "false && event.payload.object.nothing.deeper == 1",
            "true || event.payload.object.nothing.deeper == 1",
            "event.payload.object.missing == 1 || true",
            "event.payload.object.type == 2 && event.payload.object.topic",
            "event.payload.object.topic && true",
            "event.payload.object.topic",
            "event.payload.object.duration",
            r#"event.payload.object.topic == "Weekly Sync""#,
            r#"event.payload.object.topic != """#,
            r#"event.payload.object.topic < "X""#,
            r#"event.payload.object.topic >= "Weekly""#,
            r#"event.payload.object.topic > "Ä""#,
            r#"event.payload.object.topic <= "Incident 🔥""#,
            r#"event.payload.object.topic.ends_with("Sync")"#,
            r#"event.payload.object.topic.contains("")"#,
            r#"event.payload.object.topic.contains("ee") && event.payload.object.topic.len() == 11"#,
            "event.payload.object.topic.len() > 3",
            "event.payload.object.topic.len ( ) == 12",
            "event.payload.object.topic.is_empty()",
            "!event.payload.object.topic.is_empty()",
            "event.payload.object.recording_files.len() >= 2",
            "event.payload.object.recording_files.len() == 1500",
            "event.payload.object.recording_files.is_empty()",
            r#"event.payload.object.recording_files[0].file_type == "MP4""#,
            r#"event.payload.object.recording_files[1]["file_size"] < 5000000"#,
            "event.payload.object.recording_files[1][1] == 3",
            "event.payload.object.recording_files[1499] == 1499",
            r#"event.payload.object.recording_files[5].file_type == "MP4""#,
            r#"event["payload"]["object"].settings.use_pmi"#,
            "event.payload.object.settings.len() == 4",
            "event.payload.object.settings.len() == 2",
            "event.payload.object.settings.is_empty()",
            "event.payload.object.settings.len == 3",
            "event.payload.object.settings.contains == true",
            "event.payload.len() > 2",
            "event.payload.object.participant.email.len() == 17",
            r#"event.payload.object.participant.email.ends_with ( "@rival.example" )"#,
            r#"event.payload.object.participant.phone_number != "" && event.payload.object.participant.phone_number.starts_with("+1")"#,
            "event.payload.object.total_size > 2000000000.0",
            "event.payload.object.total_size == 18446744073709551615.0",
            "event.payload.object.id == 85512345678",
            r#"event.payload.object.id == "85512345678""#,
            "event.event_ts >= 1732000000000 && event.event_ts < 1732010000000",
            r#"event.event == "meeting.started" || event.event == "meeting.ended""#,
            "(event.payload.object.type == 2) == (event.payload.object.duration > 30)",
            "(((event.payload.object.type == 2)))",
            "1 == 1",
            "1 < 2.5",
            r#""a" < "b""#,
            "true",
            "!true",
            "true != false",
            "event.f == 0.1",
            "event.f < 0.2",
            "event.f >= 0.2",
            "event.g == 0.3",
            "event.g != 0.3",
            "event.g > 0.3",
            "event.g <= 0.3",
            "event.tiny == 0.0",
            "event.tiny > 0.0",
            "event.nz == 0.0",
            "event.nz < 0.0",
            "event.big > 9223372036854775807",
            "event.big >= 18446744073709551615.0",
            "event.m.len == 3",
            "event.m.len() == 3",
            "event.m.contains == true",
            "event.m.is_empty()",
            r#"event.s == "a${b}""#,
            r#"event.s.contains("${")"#,
            "event.u.len() == 2",
            r#"event.u > "é""#,
            r#"event.payload.object.participant.email.to_lower().ends_with("@rival.example")"#,
            r#"event.payload.object.participant.email.to_upper().starts_with("ÅSA")"#,
            r#"event.payload.object.participant.leave_reason.to_lower() == "connection lost""#,
            r#"event.payload.object.topic.to_lower().contains("incident")"#,
            "event.payload.object.topic.to_lower().len() == 10",
            r#"event.payload.object.start_time.sub_string(11, 2) >= "22""#,
            r#"event.payload.object.start_time.sub_string(0, 4) == "2024""#,
            r#"event.payload.object.topic.sub_string(9) == "🔥""#,
            r#"event.payload.object.topic.sub_string(100, 2) == """#,
            r#"event.payload.object.topic.sub_string(2, 0).is_empty()"#,
            r#"event.payload.object.email.split("@")[1] in ["contractor.example", "agency.example"]"#,
            r#"event.payload.object.email.split("@")[0].len() > 0"#,
            r#"event.payload.object.topic.split(" ").len() == 2"#,
            r#"event.payload.object.topic.split("").len() > 3"#,
            r#"event.payload.object.topic.split(" ")[1].to_upper() == "SYNC""#,
            r#"event.payload.object.topic.split(" ").is_empty()"#,
            "event.payload.object.type in [5, 9] || !event.payload.object.settings.waiting_room",
            "event.payload.object.type in [2.0, 8.0]",
            r#"event.payload.object.type in ["8", 8]"#,
            "event.payload.object.type in []",
            "event.payload.object.settings.use_pmi in [true]",
            "!event.payload.object.type in [false]",
            r#"event.event in ["meeting.started", "meeting.ended",]"#,
            "event.payload.object.participant.id == event.payload.object.host_id",
            "event.m.len() in [3, 0]",
            r#"event.u.to_lower() in ["日本", "é"]"#,
        ];
        own.map(str::to_owned).to_vec()
    }

    #[test]
    fn agrees_with_rhai_on_conditions_as_users_write_them() {
        let sources = USER_CONDITIONS.map(str::to_owned);
        let mut bodies = sample_bodies();
        bodies.extend(odd_bodies());
        let tally = differential(&SandboxLimits::default(), &sources, &bodies);
        eprintln!("as users write them: {tally:?}");
        assert_eq!(tally.refused_by_rhai, 0, "{tally:?}");
        assert_eq!(tally.compiled, tally.sources, "{tally:?}");
    }

    #[test]
    fn agrees_with_rhai_on_hand_made_conditions_and_events() {
        let sources = hand_sources();
        let mut bodies = sample_bodies();
        bodies.extend(odd_bodies());
        let tally = differential(&SandboxLimits::default(), &sources, &bodies);
        eprintln!("hand-made: {tally:?}");
        assert!(tally.sources >= 88, "{tally:?}");
        assert_eq!(tally.compiled, tally.sources, "{tally:?}");
        assert_eq!(tally.refused_by_rhai, 0, "{tally:?}");
        assert!(tally.answered * 5 > tally.pairs, "{tally:?}");
        assert!(tally.answered_true * 10 > tally.answered, "{tally:?}");
    }

    /// Random conditions of the subset on random bodies whose fields take
    /// every type.
    struct Random {
        rng: fastrand::Rng,
    }

    const PATHS: [&str; 12] = [
        "event.a",
        "event.b",
        "event.s",
        "event.o.a",
        "event.o.s",
        r#"event.o["b"]"#,
        r#"event["a"]"#,
        "event.l[0]",
        "event.l[1]",
        "event.missing",
        "event.o",
        "event.l",
    ];
    const LITERALS: [&str; 16] = [
        "0",
        "1",
        "5",
        "2.5",
        "1.0",
        "0.0",
        "0.3",
        "9223372036854775807",
        r#""""#,
        r#""abc""#,
        r#""b""#,
        r#""é""#,
        r#""Abc""#,
        "true",
        "false",
        "100.0",
    ];
    const VALUES: [&str; 27] = [
        "0",
        "1",
        "5",
        "-3",
        "2.5",
        "1.0",
        "0.0",
        "-0.0",
        "1e2",
        "1e-300",
        "0.30000000000000004",
        "18446744073709551615",
        "9223372036854775807",
        r#""""#,
        r#""abc""#,
        r#""b""#,
        r#""é""#,
        r#""Abc""#,
        r#""a\"b""#,
        "true",
        "false",
        "null",
        "[]",
        r#"[1, "abc"]"#,
        "{}",
        r#"{"a": 1, "a": true}"#,
        r#"{"s": "abc"}"#,
    ];
    const COMPARISONS: [&str; 6] = ["==", "!=", "<", "<=", ">", ">="];
    const ARGUMENTS: [&str; 5] = [r#""""#, r#""a""#, r#""b""#, r#""é""#, r#""abc""#];

    impl Random {
        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.rng.usize(0..items.len())]
        }

        fn value(&mut self) -> String {
            self.pick(&VALUES).to_owned()
        }

        /// Fields `a`, `b`, `s`, object `o` and array `l`, each sometimes
        /// missing, repeated or of another type.
        fn body(&mut self) -> String {
            let mut fields = Vec::new();
            for key in ["a", "b", "s", "a"] {
                if self.rng.u32(0..4) > 0 {
                    fields.push(format!("\"{key}\": {}", self.value()));
                }
            }
            let mut inner = Vec::new();
            for key in ["a", "b", "s"] {
                if self.rng.bool() {
                    inner.push(format!("\"{key}\": {}", self.value()));
                }
            }
            fields.push(format!("\"o\": {{{}}}", inner.join(", ")));
            let items: Vec<String> = (0..self.rng.usize(0..4)).map(|_| self.value()).collect();
            fields.push(format!("\"l\": [{}]", items.join(", ")));
            if self.rng.u32(0..5) == 0 {
                fields.push(format!("\"o\": {}", self.value()));
            }
            format!("{{{}}}", fields.join(", "))
        }

        fn operand(&mut self, depth: u32) -> String {
            match self.rng.u32(0..7) {
                0..=2 => self.pick(&PATHS).to_owned(),
                3 | 4 => self.pick(&LITERALS).to_owned(),
                5 => format!("{}.len()", self.pick(&PATHS)),
                6 if self.rng.bool() => self.made_text(),
                _ if depth > 0 => format!("({})", self.condition(depth - 1)),
                _ => self.pick(&LITERALS).to_owned(),
            }
        }

        /// A string a method makes from a path, sometimes of pieces.
        fn made_text(&mut self) -> String {
            let path = self.pick(&PATHS);
            match self.rng.u32(0..5) {
                0 => format!("{path}.to_lower()"),
                1 => format!("{path}.to_upper()"),
                2 => format!("{path}.sub_string({})", self.rng.u32(0..4)),
                3 => format!(
                    "{path}.sub_string({}, {})",
                    self.rng.u32(0..4),
                    self.rng.u32(0..3)
                ),
                _ => format!(
                    "{path}.split({})[{}]",
                    self.pick(&ARGUMENTS),
                    self.rng.u32(0..3)
                ),
            }
        }

        /// `in` on an array of 0 to 3 literals.
        fn in_array(&mut self, depth: u32) -> String {
            let items: Vec<&str> = (0..self.rng.usize(0..4))
                .map(|_| self.pick(&LITERALS))
                .collect();
            format!("{} in [{}]", self.operand(depth), items.join(", "))
        }

        fn condition(&mut self, depth: u32) -> String {
            let choices = if depth == 0 { 4 } else { 8 };
            match self.rng.u32(0..choices) {
                0 | 1 => {
                    let lhs = self.operand(depth);
                    let op = self.pick(&COMPARISONS);
                    format!("{lhs} {op} {}", self.operand(depth))
                }
                2 if self.rng.u32(0..3) == 0 => self.in_array(depth),
                2 => {
                    let path = if self.rng.bool() {
                        self.pick(&PATHS).to_owned()
                    } else {
                        self.made_text()
                    };
                    let method = self.pick(&["starts_with", "ends_with", "contains"]);
                    match self.rng.u32(0..4) {
                        0 => format!("{path}.is_empty()"),
                        _ => format!("{path}.{method}({})", self.pick(&ARGUMENTS)),
                    }
                }
                3 => self.pick(&PATHS[..5]).to_owned(),
                4 => format!("!{}", self.condition(depth - 1)),
                5 => format!("({})", self.condition(depth - 1)),
                6 => {
                    let lhs = self.condition(depth - 1);
                    format!("{lhs} && {}", self.condition(depth - 1))
                }
                _ => {
                    let lhs = self.condition(depth - 1);
                    format!("{lhs} || {}", self.condition(depth - 1))
                }
            }
        }
    }

    fn random_case(seed: u64, sources: usize, bodies: usize) -> (Vec<String>, Vec<String>) {
        let mut random = Random {
            rng: fastrand::Rng::with_seed(seed),
        };
        let bodies = (0..bodies).map(|_| random.body()).collect();
        let sources = (0..sources).map(|_| random.condition(3)).collect();
        (sources, bodies)
    }

    #[test]
    fn agrees_with_rhai_on_random_conditions_and_events() {
        let (sources, bodies) = random_case(20_241_119, 4000, 60);
        let tally = differential(&SandboxLimits::default(), &sources, &bodies);
        eprintln!("random: {tally:?}");
        assert_eq!(tally.compiled, tally.sources, "{tally:?}");
        assert_eq!(tally.refused_by_rhai, 0, "{tally:?}");
        assert!(tally.answered * 20 > tally.pairs, "{tally:?}");
        assert!(tally.answered_true * 5 > tally.answered, "{tally:?}");
    }

    /// Tiny limits make Rhai fail method calls on small receivers: the fast
    /// answers must follow the limits the condition was compiled for.
    #[test]
    fn agrees_with_rhai_under_tiny_limits() {
        let limits = SandboxLimits {
            max_string_size: 4,
            max_array_size: 2,
            max_map_size: 3,
            ..SandboxLimits::default()
        };
        let (mut sources, mut bodies) = random_case(7, 3000, 40);
        sources.extend(hand_sources());
        bodies.extend(sample_bodies());
        bodies.extend(odd_bodies());
        let tally = differential(&limits, &sources, &bodies);
        eprintln!("tiny limits: {tally:?}");
        assert!(tally.answered > 5_000, "{tally:?}");
        assert!(tally.refused_by_rhai * 2 < tally.sources, "{tally:?}");
    }
}
