//! FORMULA metrics (SPEC §4): arithmetic over other metrics by key.
//!
//! Grammar (whitespace between tokens is ignored):
//!
//! ```text
//! formula = sum
//! sum     = product { ("+" | "-") product }          left associative
//! product = unary { ("*" | "/") unary }              left associative
//! unary   = "-" unary | primary                      binds tighter than * and /
//! primary = number | identifier | "`" key "`" | "(" sum ")"
//! number  = (digits ["." digits] | "." digits) [("e" | "E") ["+" | "-"] digits]
//! ```
//!
//! An identifier is a run of `[a-z0-9_]` that is not entirely a number: `7d_users`, `1e` and
//! `1_000` are identifiers, `7`, `7.5`, `1e3` and `.5` are numbers. It names an input alias or a
//! metric key. Metric keys are slugs `[a-z0-9][a-z0-9_-]{0,62}`; since `-` is also minus, a key
//! containing `-` (or one that reads as a number, such as `7`) is written in backticks:
//! `` `new-users` ``. Numbers are read greedily: `1e-3` is the number 0.001; the key `1e` minus
//! three is `1e - 3`. A number directly followed by a letter, digit or `_` that does not make the
//! whole run an identifier (`7.5d`) is an error.
//!
//! Evaluation gives no value (`None`) for a missing input, a division by zero or any non-finite
//! intermediate result; it never fails.

use std::collections::HashSet;
use std::fmt;

/// Longest accepted formula source, in bytes.
pub const MAX_SOURCE_LEN: usize = 4096;
/// Deepest accepted nesting, counting each open parenthesis and each unary minus as one level.
pub const MAX_DEPTH: usize = 64;

/// A binary operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Add,
    Sub,
    Mul,
    Div,
}

impl Op {
    pub fn symbol(self) -> char {
        match self {
            Op::Add => '+',
            Op::Sub => '-',
            Op::Mul => '*',
            Op::Div => '/',
        }
    }

    /// `a op b`, or `None` when `b` is zero for `/` or the result is not finite.
    pub fn apply(self, a: f64, b: f64) -> Option<f64> {
        let value = match self {
            Op::Add => a + b,
            Op::Sub => a - b,
            Op::Mul => a * b,
            Op::Div if b == 0.0 => return None,
            Op::Div => a / b,
        };
        value.is_finite().then_some(value)
    }

    fn spaced(self) -> &'static str {
        match self {
            Op::Add => " + ",
            Op::Sub => " - ",
            Op::Mul => " * ",
            Op::Div => " / ",
        }
    }

    fn precedence(self) -> u8 {
        match self {
            Op::Add | Op::Sub => PREC_SUM,
            Op::Mul | Op::Div => PREC_PRODUCT,
        }
    }
}

const PREC_SUM: u8 = 1;
const PREC_PRODUCT: u8 = 2;
const PREC_UNARY: u8 = 3;

/// A parsed formula. `Metric` holds the identifier or backticked key as written (an alias or a
/// metric key; resolving it is the caller's business).
///
/// `references`, `eval` and `Display` walk the tree with explicit stacks. A parsed tree is at most
/// about 2100 levels high (a 4096-byte `a+a+...` chain plus 64 levels of nesting); the derived
/// `Clone`, `PartialEq`, `Debug` and drop recurse that deep, which needs well under 1 MiB of stack
/// even in debug builds.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Number(f64),
    Metric(String),
    Neg(Box<Expr>),
    Binary(Op, Box<Expr>, Box<Expr>),
}

/// Why a formula does not parse; `position` is a byte offset into the source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at {position}: {message}")]
pub struct FormulaError {
    pub position: usize,
    pub message: String,
}

fn error<T>(position: usize, message: impl Into<String>) -> Result<T, FormulaError> {
    Err(FormulaError { position, message: message.into() })
}

/// Parses a formula (see the module documentation for the grammar).
pub fn parse(source: &str) -> Result<Expr, FormulaError> {
    if source.len() > MAX_SOURCE_LEN {
        // The first byte past the limit (backed off to a char boundary).
        let position = (0..=MAX_SOURCE_LEN).rev().find(|&i| source.is_char_boundary(i)).unwrap_or(0);
        return error(position, format!("formula too long: {} bytes, at most {MAX_SOURCE_LEN}", source.len()));
    }
    let mut parser = Parser { src: source, tok: Token { kind: Kind::End, start: 0, end: 0 }, depth: 0, open: 0 };
    parser.tok = next_token(source, 0)?;
    if parser.tok.kind == Kind::End {
        return error(0, "empty formula");
    }
    let expr = parser.sum()?;
    match parser.tok.kind {
        Kind::End => Ok(expr),
        Kind::RParen => error(parser.tok.start, "unbalanced parenthesis: ')' without a matching '('"),
        _ => error(parser.tok.start, format!("trailing input {} after a complete expression", parser.describe())),
    }
}

impl Expr {
    /// The identifiers and keys the formula uses, each once, in order of first appearance.
    pub fn references(&self) -> Vec<String> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        // Explicit stack: a parsed tree can be ~2000 levels high (`a+a+a+...`).
        let mut stack = vec![self];
        while let Some(expr) = stack.pop() {
            match expr {
                Expr::Number(_) => {}
                Expr::Metric(name) => {
                    if seen.insert(name.as_str()) {
                        out.push(name.clone());
                    }
                }
                Expr::Neg(inner) => stack.push(inner),
                Expr::Binary(_, left, right) => {
                    stack.push(right);
                    stack.push(left);
                }
            }
        }
        out
    }

    /// The formula's value given each reference's value. `None` when an input has no value
    /// (`value_of` returns `None`), on division by zero, and when any input or intermediate result
    /// is not finite. A zero result is always +0.
    pub fn eval(&self, value_of: &dyn Fn(&str) -> Option<f64>) -> Option<f64> {
        enum Step<'a> {
            Visit(&'a Expr),
            Negate,
            Apply(Op),
        }
        let finite = |x: f64| x.is_finite().then_some(x);
        // Explicit stacks: a parsed tree can be ~2000 levels high (`a+a+a+...`).
        let mut work = vec![Step::Visit(self)];
        let mut values: Vec<f64> = Vec::new();
        while let Some(step) = work.pop() {
            match step {
                Step::Visit(Expr::Number(x)) => values.push(finite(*x)?),
                Step::Visit(Expr::Metric(name)) => values.push(finite(value_of(name)?)?),
                Step::Visit(Expr::Neg(inner)) => {
                    work.push(Step::Negate);
                    work.push(Step::Visit(inner));
                }
                Step::Visit(Expr::Binary(op, left, right)) => {
                    work.push(Step::Apply(*op));
                    work.push(Step::Visit(right));
                    work.push(Step::Visit(left));
                }
                Step::Negate => {
                    let x = values.pop()?;
                    values.push(-x);
                }
                Step::Apply(op) => {
                    let b = values.pop()?;
                    let a = values.pop()?;
                    values.push(op.apply(a, b)?);
                }
            }
        }
        let value = values.pop()?;
        Some(if value == 0.0 { 0.0 } else { value })
    }
}

/// Shortest text that reads back as the same `f64`; exponent form for very large or small values.
fn write_number(f: &mut fmt::Formatter<'_>, x: f64) -> fmt::Result {
    if x == 0.0 || (1e-5..1e16).contains(&x) || !x.is_finite() { write!(f, "{x}") } else { write!(f, "{x:e}") }
}

/// Canonical form: minimal parentheses, one space around binary operators, keys in backticks only
/// when needed. For every `Expr` that `parse` can produce, `parse(&e.to_string()) == Ok(e)`.
/// (Negative or non-finite `Number`s and keys that are not slugs cannot be written in the grammar;
/// they print as readable text that does not read back to the same tree.)
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        enum Piece<'a> {
            /// A subtree and the lowest precedence it may have without parentheses.
            Node(&'a Expr, u8),
            Text(&'static str),
        }
        // Explicit stack: a parsed tree can be ~2000 levels high (`a+a+a+...`).
        let mut work = vec![Piece::Node(self, 0)];
        while let Some(piece) = work.pop() {
            let (expr, context) = match piece {
                Piece::Text(text) => {
                    f.write_str(text)?;
                    continue;
                }
                Piece::Node(expr, context) => (expr, context),
            };
            match expr {
                Expr::Number(x) if x.is_sign_negative() && !x.is_nan() => {
                    // Not produced by `parse` (which makes `Neg`); printed with the same value.
                    let parens = PREC_UNARY < context;
                    f.write_str(if parens { "(-" } else { "-" })?;
                    write_number(f, -x)?;
                    if parens {
                        f.write_str(")")?;
                    }
                }
                Expr::Number(x) => write_number(f, *x)?,
                Expr::Metric(name) if is_bare_identifier(name) => f.write_str(name)?,
                Expr::Metric(name) => write!(f, "`{name}`")?,
                Expr::Neg(inner) => {
                    f.write_str("-")?;
                    work.push(Piece::Node(inner, PREC_UNARY));
                }
                Expr::Binary(op, left, right) => {
                    let prec = op.precedence();
                    if prec < context {
                        f.write_str("(")?;
                        work.push(Piece::Text(")"));
                    }
                    work.push(Piece::Node(right, prec + 1));
                    work.push(Piece::Text(op.spaced()));
                    work.push(Piece::Node(left, prec));
                }
            }
        }
        Ok(())
    }
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'
}

/// Whether `name` can be written without backticks and read back as itself.
fn is_bare_identifier(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty() && bytes.iter().all(|&b| is_ident_byte(b)) && scan_number(bytes, 0) < bytes.len()
}

/// A metric key slug: `[a-z0-9][a-z0-9_-]{0,62}`.
fn is_key(key: &str) -> bool {
    let bytes = key.as_bytes();
    (1..=63).contains(&bytes.len())
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes.iter().all(|&b| is_ident_byte(b) || b == b'-')
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Number(f64),
    Ident,
    /// Backticked key; the key is the token's text without the backticks.
    Key,
    Plus,
    Minus,
    Star,
    Slash,
    LParen,
    RParen,
    End,
}

#[derive(Debug, Clone, Copy)]
struct Token {
    kind: Kind,
    start: usize,
    end: usize,
}

fn count_digits(bytes: &[u8], from: usize) -> usize {
    bytes.get(from..).map_or(0, |rest| rest.iter().take_while(|b| b.is_ascii_digit()).count())
}

/// End of the longest number starting at `pos` (`pos` itself when there is none).
fn scan_number(bytes: &[u8], pos: usize) -> usize {
    let int_digits = count_digits(bytes, pos);
    let mut end = pos + int_digits;
    if bytes.get(end) == Some(&b'.') && count_digits(bytes, end + 1) > 0 {
        end += 1 + count_digits(bytes, end + 1);
    } else if int_digits == 0 {
        return pos;
    }
    if matches!(bytes.get(end), Some(b'e' | b'E')) {
        let mut exp = end + 1;
        if matches!(bytes.get(exp), Some(b'+' | b'-')) {
            exp += 1;
        }
        let exp_digits = count_digits(bytes, exp);
        if exp_digits > 0 {
            end = exp + exp_digits;
        }
    }
    end
}

/// The token at or after `pos` (skipping ASCII whitespace). `pos` is always on a char boundary, as
/// tokens and whitespace are ASCII.
fn next_token(src: &str, pos: usize) -> Result<Token, FormulaError> {
    let bytes = src.as_bytes();
    let start = pos + bytes[pos..].iter().take_while(|b| b.is_ascii_whitespace()).count();
    let single = |kind| Ok(Token { kind, start, end: start + 1 });
    let Some(&b) = bytes.get(start) else {
        return Ok(Token { kind: Kind::End, start, end: start });
    };
    match b {
        b'+' => single(Kind::Plus),
        b'-' => single(Kind::Minus),
        b'*' => single(Kind::Star),
        b'/' => single(Kind::Slash),
        b'(' => single(Kind::LParen),
        b')' => single(Kind::RParen),
        b'`' => {
            let Some(len) = bytes[start + 1..].iter().position(|&c| c == b'`') else {
                return error(start, "unterminated backtick: no closing '`'");
            };
            let key = &src[start + 1..start + 1 + len];
            if !is_key(key) {
                let shown: String = key.chars().take(70).collect();
                return error(
                    start,
                    format!("invalid key in backticks: {shown:?} is not a metric key [a-z0-9][a-z0-9_-]{{0,62}}"),
                );
            }
            Ok(Token { kind: Kind::Key, start, end: start + len + 2 })
        }
        _ if is_ident_byte(b) || b == b'.' => {
            let number_end = scan_number(bytes, start);
            let word_end = start + bytes[start..].iter().take_while(|&&c| is_ident_byte(c)).count();
            if word_end > number_end {
                return Ok(Token { kind: Kind::Ident, start, end: word_end });
            }
            if number_end == start {
                return error(start, "unexpected character '.'");
            }
            if let Some(&next) = bytes.get(number_end).filter(|&&c| is_ident_byte(c)) {
                return error(number_end, format!("unexpected character {:?} after a number", next as char));
            }
            let text = &src[start..number_end];
            let value: f64 = text
                .parse()
                .map_err(|_| FormulaError { position: start, message: format!("number out of range: {text}") })?;
            let mantissa = text.split(['e', 'E']).next().unwrap_or(text);
            if !value.is_finite() || (value == 0.0 && mantissa.bytes().any(|c| matches!(c, b'1'..=b'9'))) {
                return error(start, format!("number out of range: {text}"));
            }
            Ok(Token { kind: Kind::Number(value), start, end: number_end })
        }
        _ => {
            let c = src[start..].chars().next().unwrap_or_default();
            error(start, format!("unexpected character {c:?}"))
        }
    }
}

struct Parser<'a> {
    src: &'a str,
    tok: Token,
    /// Open parentheses plus unary minuses being parsed.
    depth: usize,
    /// Open parentheses being parsed.
    open: usize,
}

impl Parser<'_> {
    fn advance(&mut self) -> Result<(), FormulaError> {
        self.tok = next_token(self.src, self.tok.end)?;
        Ok(())
    }

    fn describe(&self) -> String {
        format!("'{}'", &self.src[self.tok.start..self.tok.end])
    }

    fn enter(&mut self) -> Result<(), FormulaError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return error(
                self.tok.start,
                format!("nesting too deep: more than {MAX_DEPTH} levels of parentheses and unary minus"),
            );
        }
        Ok(())
    }

    fn sum(&mut self) -> Result<Expr, FormulaError> {
        let mut left = self.product()?;
        loop {
            let op = match self.tok.kind {
                Kind::Plus => Op::Add,
                Kind::Minus => Op::Sub,
                _ => return Ok(left),
            };
            self.advance()?;
            let right = self.product()?;
            left = Expr::Binary(op, Box::new(left), Box::new(right));
        }
    }

    fn product(&mut self) -> Result<Expr, FormulaError> {
        let mut left = self.unary()?;
        loop {
            let op = match self.tok.kind {
                Kind::Star => Op::Mul,
                Kind::Slash => Op::Div,
                _ => return Ok(left),
            };
            self.advance()?;
            let right = self.unary()?;
            left = Expr::Binary(op, Box::new(left), Box::new(right));
        }
    }

    fn unary(&mut self) -> Result<Expr, FormulaError> {
        if self.tok.kind != Kind::Minus {
            return self.primary();
        }
        self.enter()?;
        self.advance()?;
        let inner = self.unary()?;
        self.depth -= 1;
        Ok(Expr::Neg(Box::new(inner)))
    }

    fn primary(&mut self) -> Result<Expr, FormulaError> {
        let Token { kind, start, end } = self.tok;
        let expr = match kind {
            Kind::Number(value) => Expr::Number(value),
            Kind::Ident => Expr::Metric(self.src[start..end].to_string()),
            Kind::Key => Expr::Metric(self.src[start + 1..end - 1].to_string()),
            Kind::LParen => {
                self.enter()?;
                self.open += 1;
                self.advance()?;
                let inner = self.sum()?;
                match self.tok.kind {
                    Kind::RParen => {}
                    Kind::End => return error(start, "unbalanced parenthesis: '(' is never closed"),
                    _ => {
                        return error(
                            self.tok.start,
                            format!("expected an operator or ')', found {}", self.describe()),
                        );
                    }
                }
                self.open -= 1;
                self.depth -= 1;
                inner
            }
            Kind::RParen if self.open == 0 => {
                return error(start, "unbalanced parenthesis: ')' without a matching '('");
            }
            Kind::RParen | Kind::Plus | Kind::Minus | Kind::Star | Kind::Slash => {
                return error(start, format!("missing operand before {}", self.describe()));
            }
            Kind::End => return error(start, "missing operand at end of formula"),
        };
        self.advance()?;
        Ok(expr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn num(x: f64) -> Expr {
        Expr::Number(x)
    }
    fn key(k: &str) -> Expr {
        Expr::Metric(k.to_string())
    }
    fn neg(e: Expr) -> Expr {
        Expr::Neg(Box::new(e))
    }
    fn bin(op: Op, l: Expr, r: Expr) -> Expr {
        Expr::Binary(op, Box::new(l), Box::new(r))
    }

    fn eval_with(source: &str, values: &[(&str, f64)]) -> Option<f64> {
        let expr = parse(source).unwrap_or_else(|e| panic!("{source}: {e}"));
        expr.eval(&|name: &str| values.iter().find(|(k, _)| *k == name).map(|(_, v)| *v))
    }

    fn constant(source: &str) -> Option<f64> {
        eval_with(source, &[])
    }

    #[test]
    fn spec_cac_is_spend_per_new_customer() {
        let expr = parse("ad_spend / new_customers").unwrap();
        assert_eq!(expr, bin(Op::Div, key("ad_spend"), key("new_customers")));
        assert_eq!(expr.references(), ["ad_spend", "new_customers"]);
        // 1200 spent, 40 new customers: 30 per customer.
        assert_eq!(eval_with("ad_spend / new_customers", &[("ad_spend", 1200.0), ("new_customers", 40.0)]), Some(30.0));
        assert_eq!(eval_with("ad_spend / new_customers", &[("ad_spend", 1200.0), ("new_customers", 0.0)]), None);
    }

    #[test]
    fn spec_roi_is_return_over_spend() {
        let source = "(revenue - ad_spend) / ad_spend";
        let expr = parse(source).unwrap();
        assert_eq!(expr, bin(Op::Div, bin(Op::Sub, key("revenue"), key("ad_spend")), key("ad_spend")));
        assert_eq!(expr.references(), ["revenue", "ad_spend"]);
        // (5000 − 2000) / 2000 = 1.5; (500 − 2000) / 2000 = −0.75.
        assert_eq!(eval_with(source, &[("revenue", 5000.0), ("ad_spend", 2000.0)]), Some(1.5));
        assert_eq!(eval_with(source, &[("revenue", 500.0), ("ad_spend", 2000.0)]), Some(-0.75));
        assert_eq!(eval_with(source, &[("revenue", 500.0), ("ad_spend", 0.0)]), None);
        assert_eq!(eval_with(source, &[("revenue", 500.0)]), None);
    }

    #[test]
    fn precedence_and_associativity() {
        assert_eq!(constant("8 / 4 / 2"), Some(1.0));
        assert_eq!(parse("8 / 4 / 2").unwrap(), bin(Op::Div, bin(Op::Div, num(8.0), num(4.0)), num(2.0)));
        assert_eq!(constant("2 - 3 - 4"), Some(-5.0));
        assert_eq!(parse("2 - 3 - 4").unwrap(), bin(Op::Sub, bin(Op::Sub, num(2.0), num(3.0)), num(4.0)));
        assert_eq!(constant("-2 * 3"), Some(-6.0));
        assert_eq!(parse("-2 * 3").unwrap(), bin(Op::Mul, neg(num(2.0)), num(3.0)));
        assert_eq!(constant("--1"), Some(1.0));
        assert_eq!(parse("--1").unwrap(), neg(neg(num(1.0))));
        assert_eq!(constant("1 + 2 * 3"), Some(7.0));
        assert_eq!(constant("(1 + 2) * 3"), Some(9.0));
        assert_eq!(constant("2 * 3 + 4 * 5"), Some(26.0));
        assert_eq!(constant("12 / 2 * 3"), Some(18.0));
        assert_eq!(constant("12 / (2 * 3)"), Some(2.0));
        assert_eq!(constant("2 - -3"), Some(5.0));
        assert_eq!(constant("2 * -3"), Some(-6.0));
        assert_eq!(constant("-(2 + 3) * 2"), Some(-10.0));
        assert_eq!(constant("1 - 2 + 3"), Some(2.0));
        assert_eq!(parse("a - -b").unwrap(), bin(Op::Sub, key("a"), neg(key("b"))));
        assert_eq!(parse("-a / b").unwrap(), bin(Op::Div, neg(key("a")), key("b")));
    }

    #[test]
    fn whitespace_is_ignored() {
        assert_eq!(parse(" \t(a+b )\n*\r\nc ").unwrap(), parse("(a + b) * c").unwrap());
        assert_eq!(parse("a-b").unwrap(), bin(Op::Sub, key("a"), key("b")));
        assert_eq!(parse("2*-3").unwrap(), bin(Op::Mul, num(2.0), neg(num(3.0))));
    }

    #[test]
    fn numbers_and_identifiers() {
        for (source, value) in [
            ("7", 7.0),
            ("7.5", 7.5),
            ("1e3", 1000.0),
            (".5", 0.5),
            ("1.5e-3", 0.0015),
            ("2E2", 200.0),
            ("1e+2", 100.0),
        ] {
            assert_eq!(parse(source).unwrap(), num(value), "{source}");
        }
        for name in ["7d_users", "_x", "a1", "1e", "1e3x", "1_000", "x1e3", "0x10"] {
            assert_eq!(parse(name).unwrap(), key(name), "{name}");
        }
        // Numbers are read greedily; the key `1e` minus 3 needs a space.
        assert_eq!(parse("1e-3").unwrap(), num(0.001));
        assert_eq!(parse("1e - 3").unwrap(), bin(Op::Sub, key("1e"), num(3.0)));
        assert_eq!(parse("7d_users*2").unwrap(), bin(Op::Mul, key("7d_users"), num(2.0)));
    }

    #[test]
    fn backticked_keys() {
        let expr = parse("`new-users` / `all-users`").unwrap();
        assert_eq!(expr, bin(Op::Div, key("new-users"), key("all-users")));
        assert_eq!(expr.references(), ["new-users", "all-users"]);
        assert_eq!(eval_with("`new-users` / `all-users`", &[("new-users", 30.0), ("all-users", 120.0)]), Some(0.25));
        assert_eq!(parse("`a-b`-c").unwrap(), bin(Op::Sub, key("a-b"), key("c")));
        assert_eq!(parse("`ad_spend`").unwrap(), parse("ad_spend").unwrap());
        // A key that reads as a number is still a key in backticks.
        assert_eq!(parse("`7` + 7").unwrap(), bin(Op::Add, key("7"), num(7.0)));
        let longest = "k".repeat(63);
        assert_eq!(parse(&format!("`{longest}`")).unwrap(), key(&longest));
    }

    #[test]
    fn references_are_distinct_in_first_appearance_order() {
        let expr = parse("b + a * b - `c-d` / a + 2 * c").unwrap();
        assert_eq!(expr.references(), ["b", "a", "c-d", "c"]);
        assert!(parse("1 + 2").unwrap().references().is_empty());
    }

    #[test]
    fn errors_name_the_problem_and_its_position() {
        let deep_parens = format!("{}a{}", "(".repeat(MAX_DEPTH + 1), ")".repeat(MAX_DEPTH + 1));
        let deep_minus = format!("{}1", "-".repeat(MAX_DEPTH + 1));
        let deep_mixed = format!("{}1{}", "-(".repeat(MAX_DEPTH / 2 + 1), ")".repeat(MAX_DEPTH / 2 + 1));
        let too_long = format!("a{}", " + a".repeat(1024)); // 4097 bytes
        let too_long_key = format!("`{}`", "k".repeat(64));
        let cases: Vec<(&str, usize, &str)> = vec![
            ("", 0, "empty formula"),
            (" \t\n", 0, "empty formula"),
            ("a $ b", 2, "unexpected character '$'"),
            ("a + é", 4, "unexpected character 'é'"),
            ("Revenue", 0, "unexpected character 'R'"),
            ("a % b", 2, "unexpected character '%'"),
            ("7.5d", 3, "unexpected character 'd'"),
            ("1.", 1, "unexpected character '.'"),
            (".x", 0, "unexpected character '.'"),
            ("1 + 1E3x", 7, "unexpected character 'x'"),
            ("(a + b", 0, "unbalanced parenthesis"),
            ("((a + b) * c", 0, "unbalanced parenthesis"),
            ("a + b)", 5, "unbalanced parenthesis"),
            (")", 0, "unbalanced parenthesis"),
            ("a +", 3, "missing operand"),
            ("a -  ", 5, "missing operand"),
            ("* a", 0, "missing operand"),
            ("+a", 0, "missing operand"),
            ("a * / b", 4, "missing operand"),
            ("()", 1, "missing operand"),
            ("(a +)", 4, "missing operand"),
            ("-", 1, "missing operand"),
            ("a b", 2, "trailing input"),
            ("2 (3)", 2, "trailing input"),
            ("`a-b` 7", 6, "trailing input"),
            ("(a b)", 3, "expected an operator or ')'"),
            ("`new-users", 0, "unterminated backtick"),
            ("a + `b", 4, "unterminated backtick"),
            ("``", 0, "invalid key in backticks"),
            ("1 + `New`", 4, "invalid key in backticks"),
            ("`-a`", 0, "invalid key in backticks"),
            ("`_a`", 0, "invalid key in backticks"),
            ("`a b`", 0, "invalid key in backticks"),
            (&too_long_key, 0, "invalid key in backticks"),
            ("1e999", 0, "number out of range"),
            ("2 * 1e-999", 4, "number out of range"),
            (&deep_parens, MAX_DEPTH, "nesting too deep"),
            (&deep_minus, MAX_DEPTH, "nesting too deep"),
            (&deep_mixed, MAX_DEPTH, "nesting too deep"),
            (&too_long, MAX_SOURCE_LEN, "formula too long"),
        ];
        for (source, position, message) in cases {
            let err = parse(source).expect_err(source);
            assert_eq!(err.position, position, "{source:?}: {err}");
            assert!(err.message.starts_with(message), "{source:?}: {err}");
            assert_eq!(err.to_string(), format!("at {position}: {}", err.message));
        }
    }

    #[test]
    fn limits_are_inclusive() {
        let parens = format!("{}a{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert_eq!(parse(&parens).unwrap(), key("a"));
        let minus = format!("{}1", "-".repeat(MAX_DEPTH));
        assert_eq!(parse(&minus).unwrap().eval(&|_| None), Some(1.0));
        let mixed = format!("{}1{}", "-(".repeat(MAX_DEPTH / 2), ")".repeat(MAX_DEPTH / 2));
        assert_eq!(parse(&mixed).unwrap().eval(&|_| None), Some(1.0));
        // Sequential groups do not add up.
        let siblings = vec![format!("{}a{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH)); 3].join(" + ");
        assert!(parse(&siblings).is_ok());
        let longest = format!("abcd{}", " + a".repeat(1023));
        assert_eq!(longest.len(), MAX_SOURCE_LEN);
        assert!(parse(&longest).is_ok());
    }

    #[test]
    fn longest_flat_formula_is_handled_on_a_small_stack() {
        // A 4096-byte chain builds a 2048-level left spine; parse, eval, references and display do
        // not recurse along it.
        let source = format!("a{}", "+a".repeat((MAX_SOURCE_LEN - 1) / 2));
        let expected = source.clone();
        let expr = std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(move || {
                let expr = parse(&source).unwrap();
                assert_eq!(expr.eval(&|_| Some(1.0)), Some(2048.0));
                assert_eq!(expr.eval(&|_| None), None);
                assert_eq!(expr.references(), ["a"]);
                assert_eq!(expr.to_string().replace(' ', ""), source);
                expr
            })
            .unwrap()
            .join()
            .unwrap();
        // The derived traits and drop recurse; they run on the test thread's normal stack.
        assert_eq!(expr.clone(), parse(&expected).unwrap());
    }

    #[test]
    fn division_by_zero_and_non_finite_results_give_no_value() {
        assert_eq!(constant("1 / 0"), None);
        assert_eq!(constant("0 / 0"), None);
        assert_eq!(constant("1 / -0"), None);
        assert_eq!(constant("1 / (2 - 2)"), None);
        assert_eq!(eval_with("a / (b - b)", &[("a", 1.0), ("b", 3.0)]), None);
        assert_eq!(eval_with("1 + a / b", &[("a", 1.0), ("b", 0.0)]), None);
        assert_eq!(eval_with("a * a", &[("a", 1e200)]), None);
        assert_eq!(eval_with("a - a", &[("a", f64::INFINITY)]), None);
        assert_eq!(eval_with("a", &[("a", f64::NAN)]), None);
        assert_eq!(eval_with("a + b", &[("a", 1.0)]), None);
        assert_eq!(constant("1e308 * 10 / 10"), None);
        assert_eq!(constant("0 / 5"), Some(0.0));
        let zero = constant("0 * -1").unwrap();
        assert!(zero == 0.0 && zero.is_sign_positive());
    }

    #[test]
    fn display_is_canonical() {
        for (source, shown) in [
            ("a+b*c", "a + b * c"),
            ("(a+b)*c", "(a + b) * c"),
            ("a-(b-c)", "a - (b - c)"),
            ("(a-b)-c", "a - b - c"),
            ("a+(b+c)", "a + (b + c)"),
            ("a/(b*c)", "a / (b * c)"),
            ("(a*b)/c", "a * b / c"),
            ("-(a*b)", "-(a * b)"),
            ("(-a)*b", "-a * b"),
            ("-(-(1))", "--1"),
            ("a - -b", "a - -b"),
            ("((a))", "a"),
            ("`new-users`/`7`", "`new-users` / `7`"),
            ("`ad_spend`", "ad_spend"),
            ("7d_users", "7d_users"),
            ("`1e3` + 1e3", "`1e3` + 1000"),
            ("1e20", "1e20"),
            ("1e-7", "1e-7"),
            (".5", "0.5"),
            ("1000", "1000"),
            ("2.50", "2.5"),
        ] {
            let expr = parse(source).unwrap();
            assert_eq!(expr.to_string(), shown, "{source}");
            assert_eq!(parse(shown).unwrap(), expr, "{source}");
        }
    }

    fn arb_number() -> impl Strategy<Value = f64> {
        prop_oneof![
            (0u32..1000).prop_map(f64::from),
            0.0f64..1e6,
            any::<f64>().prop_map(f64::abs).prop_filter("finite", |x| x.is_finite()),
        ]
    }

    fn arb_name() -> impl Strategy<Value = String> {
        prop_oneof!["[a-z_][a-z0-9_]{0,10}", "[a-z0-9][a-z0-9_-]{0,62}", "[0-9]{1,3}(e[0-9]?)?[a-z_]?",]
    }

    fn arb_expr() -> impl Strategy<Value = Expr> {
        let leaf = prop_oneof![arb_number().prop_map(Expr::Number), arb_name().prop_map(Expr::Metric)];
        leaf.prop_recursive(8, 48, 2, |inner| {
            prop_oneof![
                inner.clone().prop_map(|e| Expr::Neg(Box::new(e))),
                (prop_oneof![Just(Op::Add), Just(Op::Sub), Just(Op::Mul), Just(Op::Div)], inner.clone(), inner)
                    .prop_map(|(op, l, r)| Expr::Binary(op, Box::new(l), Box::new(r))),
            ]
        })
    }

    /// Parsing must not panic; on success the canonical form reads back to the same tree.
    fn check_total(source: &str) -> Result<(), TestCaseError> {
        match parse(source) {
            Ok(expr) => {
                let shown = expr.to_string();
                prop_assert_eq!(parse(&shown), Ok(expr.clone()), "{:?} shown as {:?}", source, shown);
                let _ = expr.eval(&|_| Some(1.0));
                let _ = expr.references();
            }
            Err(err) => {
                prop_assert!(err.position <= source.len().max(MAX_SOURCE_LEN), "{:?}: {}", source, err);
                prop_assert!(source.is_char_boundary(err.position.min(source.len())), "{:?}: {}", source, err);
                prop_assert!(!err.message.is_empty());
                prop_assert!(!err.message.starts_with(|c: char| c.is_uppercase()), "{}", err);
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn display_round_trips(expr in arb_expr()) {
            let shown = expr.to_string();
            prop_assume!(shown.len() <= MAX_SOURCE_LEN);
            prop_assert_eq!(parse(&shown), Ok(expr), "{}", shown);
        }

        #[test]
        fn parse_never_panics_on_arbitrary_strings(source in any::<String>()) {
            check_total(&source)?;
        }

        #[test]
        fn parse_never_panics_on_formula_like_strings(source in "[a-z0-9_()+*/. `eE-]{0,300}") {
            check_total(&source)?;
        }

        #[test]
        fn parse_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            check_total(&String::from_utf8_lossy(&bytes))?;
        }

        #[test]
        fn parse_never_panics_on_deep_nesting(
            pieces in proptest::collection::vec(prop_oneof![Just("("), Just(")"), Just("-"), Just("a"), Just(" + ")], 0..6000),
            open in 0usize..3000,
        ) {
            check_total(&pieces.concat())?;
            check_total(&format!("{}1{}", "(".repeat(open), ")".repeat(open)))?;
            check_total(&format!("{}1", "-(".repeat(open)))?;
        }
    }
}
