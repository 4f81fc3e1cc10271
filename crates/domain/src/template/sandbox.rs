//! What a policy's own texts may do, and what any render may cost.
//!
//! A tenant writes its texts; every tenant's messages are rendered by the same
//! replicas. So a policy's text is held to a subset of the template language that
//! cannot build large values (no `+`, `*`, `**`, `~`, list, tuple or map literals, no
//! `set`, macros, includes or global functions, and only the filters and tests listed
//! here, none of which grows a string more than once), and every render, shipped or
//! policy-written, runs on fuel (a budget of engine instructions, which bounds loops and
//! therefore time) into an output that refuses to grow past a cap. The subset is
//! checked on write, field by field, and again before every render, so a text stored
//! before these rules fails its own message (`permanent`) and no other.

use std::io;
use std::sync::OnceLock;

use minijinja::machinery::{Token, WhitespaceConfig, tokenize};
use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, ErrorKind, Value, filters, tests};

/// Engine instructions one part of a policy's text may execute. The shipped texts use
/// under 200; a loop over every invoice of the largest command stays far below.
pub const POLICY_FUEL: u64 = 20_000;

/// Engine instructions one shipped template (the e-mail layout included) may execute.
pub const SHIPPED_FUEL: u64 = 2_000_000;

/// Bytes one part of a policy's text may render to.
pub const MAX_POLICY_OUTPUT: usize = 16 * 1024;

/// Bytes one shipped template (the e-mail layout) may render to.
pub const MAX_SHIPPED_OUTPUT: usize = 1024 * 1024;

/// Bytes one part of a policy's text may be written in.
pub const MAX_SOURCE: usize = 8 * 1024;

/// The statements a policy's text may use.
pub const BLOCKS: [&str; 6] = ["if", "elif", "else", "endif", "for", "endfor"];

/// The filters a policy's text may use.
pub const FILTERS: [&str; 16] = [
    "upper",
    "lower",
    "title",
    "capitalize",
    "trim",
    "default",
    "d",
    "length",
    "count",
    "first",
    "last",
    "round",
    "abs",
    "int",
    "float",
    "string",
];

/// The tests (`x is defined`) a policy's text may use.
pub const TESTS: [&str; 10] = [
    "defined",
    "undefined",
    "none",
    "number",
    "string",
    "odd",
    "even",
    "sequence",
    "startingwith",
    "endingwith",
];

/// Why a render stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopped {
    /// A policy's text leaves the subset ([`check`]).
    Forbidden(String),
    /// Out of fuel: the text runs too many instructions.
    Fuel,
    /// The output passed its cap.
    Size(usize),
    /// Any other template error (syntax, a type error).
    Error(String),
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stopped::Forbidden(e) => f.write_str(e),
            Stopped::Fuel => f.write_str("the text runs too many instructions (out of fuel)"),
            Stopped::Size(cap) => write!(f, "the text renders to more than {cap} bytes"),
            Stopped::Error(e) => f.write_str(e),
        }
    }
}

/// One way a policy's text leaves the subset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forbidden {
    pub code: &'static str,
    pub message: String,
}

/// The environment a policy's texts render in: no globals, the listed filters and
/// tests only, and [`POLICY_FUEL`].
pub fn policy_env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::empty();
        env.add_filter("upper", filters::upper);
        env.add_filter("lower", filters::lower);
        env.add_filter("title", filters::title);
        env.add_filter("capitalize", filters::capitalize);
        env.add_filter("trim", filters::trim);
        env.add_filter("default", filters::default);
        env.add_filter("d", filters::default);
        env.add_filter("length", filters::length);
        env.add_filter("count", filters::length);
        env.add_filter("first", filters::first);
        env.add_filter("last", filters::last);
        env.add_filter("round", filters::round);
        env.add_filter("abs", filters::abs);
        env.add_filter("int", filters::int);
        env.add_filter("float", filters::float);
        env.add_filter("string", filters::string);
        env.add_test("defined", tests::is_defined);
        env.add_test("undefined", tests::is_undefined);
        env.add_test("none", tests::is_none);
        env.add_test("number", tests::is_number);
        env.add_test("string", tests::is_string);
        env.add_test("odd", tests::is_odd);
        env.add_test("even", tests::is_even);
        env.add_test("sequence", tests::is_sequence);
        env.add_test("startingwith", tests::is_startingwith);
        env.add_test("endingwith", tests::is_endingwith);
        env.set_fuel(Some(POLICY_FUEL));
        env
    })
}

/// Whether `source` stays in the subset a policy's text may use; every way it leaves
/// it, in order.
pub fn check(source: &str) -> Vec<Forbidden> {
    let mut out = Vec::new();
    let mut forbid = |code: &'static str, message: String| {
        if !out.iter().any(|f: &Forbidden| f.message == message) {
            out.push(Forbidden { code, message });
        }
    };
    if source.len() > MAX_SOURCE {
        forbid(
            "template_too_long",
            format!("a text is at most {MAX_SOURCE} bytes"),
        );
        return out;
    }
    // Parentheses open: true for a call's (filter, test or method arguments).
    let mut parens: Vec<bool> = Vec::new();
    let mut prev: [Option<Token>; 2] = [None, None];
    let tokens = tokenize(source, false, SyntaxConfig, WhitespaceConfig::default());
    for token in tokens {
        // Syntax errors are reported by the lint's compile step.
        let Ok((token, _)) = token else { break };
        let after_block_start = matches!(prev[1], Some(Token::BlockStart));
        let after_pipe = matches!(prev[1], Some(Token::Pipe));
        match &token {
            Token::Ident(name) if after_block_start && !BLOCKS.contains(name) => forbid(
                "template_forbidden",
                format!(
                    "`{{% {name} %}}` is not available in a policy's texts (statements: {})",
                    BLOCKS.join(", ")
                ),
            ),
            Token::Ident(name) if after_pipe && !FILTERS.contains(name) => forbid(
                "template_forbidden",
                format!(
                    "the filter `{name}` is not available in a policy's texts (filters: {})",
                    FILTERS.join(", ")
                ),
            ),
            Token::Ident(name)
                if !TESTS.contains(name)
                    && (ident(&prev[1]) == Some("is")
                        || (ident(&prev[1]) == Some("not") && ident(&prev[0]) == Some("is"))) =>
            {
                forbid(
                    "template_forbidden",
                    format!(
                        "the test `{name}` is not available in a policy's texts (tests: {})",
                        TESTS.join(", ")
                    ),
                )
            }
            Token::Plus | Token::Mul | Token::Pow | Token::Tilde => forbid(
                "template_forbidden",
                format!(
                    "the operator {token} is not available in a policy's texts: write the parts side by side"
                ),
            ),
            Token::BraceOpen => forbid(
                "template_forbidden",
                "map literals (`{…}`) are not available in a policy's texts".into(),
            ),
            Token::BracketOpen
                if !matches!(
                    prev[1],
                    Some(
                        Token::Ident(_)
                            | Token::BracketClose
                            | Token::ParenClose
                            | Token::Str(_)
                            | Token::String(_)
                    )
                ) =>
            {
                forbid(
                    "template_forbidden",
                    "list literals (`[…]`) are not available in a policy's texts".into(),
                )
            }
            Token::ParenOpen => {
                let call = ident(&prev[1]).is_some();
                let callable = matches!(prev[0], Some(Token::Pipe | Token::Dot))
                    || matches!(ident(&prev[0]), Some("is" | "not"));
                if call && !callable {
                    forbid(
                        "template_forbidden",
                        format!(
                            "`{}(…)`: functions are not available in a policy's texts",
                            ident(&prev[1]).unwrap_or_default()
                        ),
                    );
                }
                parens.push(call);
            }
            Token::ParenClose => {
                parens.pop();
            }
            Token::Comma | Token::Assign if parens.last() != Some(&true) => forbid(
                "template_forbidden",
                "tuples and assignments are not available in a policy's texts".into(),
            ),
            Token::VariableEnd | Token::BlockEnd => parens.clear(),
            _ => {}
        }
        prev = [prev[1].take(), Some(token)];
    }
    out
}

/// The identifier `t` is, if it is one.
fn ident<'a>(t: &Option<Token<'a>>) -> Option<&'a str> {
    match t {
        Some(Token::Ident(name)) => Some(name),
        _ => None,
    }
}

/// A writer that refuses to grow past `cap` bytes.
struct Capped {
    out: Vec<u8>,
    cap: usize,
    over: bool,
}

impl io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.out.len().saturating_add(buf.len()) > self.cap {
            self.over = true;
            return Err(io::Error::other("output cap"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Renders `template` of `env` with `ctx` into at most `cap` bytes, on `env`'s fuel.
pub fn render(
    template: &minijinja::Template<'_, '_>,
    ctx: &Value,
    cap: usize,
) -> Result<String, Stopped> {
    let mut w = Capped {
        out: Vec::new(),
        cap,
        over: false,
    };
    match template.render_captured_to(ctx, &mut w) {
        Ok(_) => String::from_utf8(w.out).map_err(|e| Stopped::Error(e.to_string())),
        Err(_) if w.over => Err(Stopped::Size(cap)),
        Err(e) if e.kind() == ErrorKind::OutOfFuel => Err(Stopped::Fuel),
        Err(e) => Err(Stopped::Error(e.to_string())),
    }
}

/// Checks and renders a policy's text `source` with `ctx`.
pub fn render_policy(source: &str, ctx: &Value) -> Result<String, Stopped> {
    if let Some(f) = check(source).into_iter().next() {
        return Err(Stopped::Forbidden(f.message));
    }
    let template = policy_env()
        .template_from_str(source)
        .map_err(|e| Stopped::Error(e.to_string()))?;
    render(&template, ctx, MAX_POLICY_OUTPUT)
}
