//! Development tools, never part of the shipped `regua` binary or image:
//! - `regua-demo` ([`demo`], with the payer model in [`payers`]): a demo tenant on a
//!   test clock, a portfolio published through the public subjects, two months of the
//!   régua day by day, simulated customers paying, and the portfolio's story;
//! - `regua-fakes` ([`fakes`]): the provider fakes (SMTP, Twilio-shaped, Meta-shaped)
//!   on fixed local ports, printing and listing what they receive;
//! - `regua-bench`: the benchmarks, reported as ratios to ceilings and floors measured
//!   in the same run (see BENCHMARKS.md).

pub mod demo;
pub mod fakes;
pub mod payers;

/// Writes `line` to standard output at once (the tools report as they go).
pub fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout();
    out.write_all(line.as_bytes()).ok();
    out.write_all(b"\n").ok();
    out.flush().ok();
}
