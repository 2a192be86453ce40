//! Time windows: days of the week and hours on the wall clock of a named IANA
//! time zone ("mon–fri 08:00–20:00 Europe/Paris"). Daylight saving time is the
//! zone's: a window is open by the local time the zone's clocks show, so an
//! 08:00 opening stays at 08:00 local across the change, and an hour the
//! clocks skip never happens (a window opening at 02:30 on the night clocks go
//! from 02:00 to 03:00 opens at 03:00).

use super::time_zones::{self, utc_offset};
use std::fmt::Write as _;
use tz::TimeZoneRef;

pub const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const MINUTES_PER_DAY: u16 = 24 * 60;

#[derive(Debug, Clone)]
pub struct TimeWindow {
    zone_name: &'static str,
    zone: &'static TimeZoneRef<'static>,
    /// Bit `d` set: the window opens on day `d` (Monday = 0).
    days: u8,
    /// Minutes after local midnight. `from < to`: that stretch of the day;
    /// `from > to`: overnight, from `from` on an open day to `to` the next day.
    from: u16,
    to: u16,
}

impl TimeWindow {
    /// `days`: bit `d` for day `d` (Monday = 0); `from`/`to` in minutes after
    /// midnight (`to` up to 1440, midnight at the end of the day). An error
    /// names the part at fault: `time_zone`, `days`, or `""` for the hours.
    pub fn new(
        zone: &str,
        days: u8,
        from: u16,
        to: u16,
    ) -> Result<TimeWindow, (&'static str, String)> {
        let (zone_name, tz) = match time_zones::find(zone) {
            Some(found) => found,
            None => {
                let message = match time_zones::spelled(zone) {
                    Some(name) => format!(
                        "unknown time zone `{zone}`: IANA names are case-sensitive, write `{name}`"
                    ),
                    None => format!(
                        "unknown time zone `{zone}`: use an IANA time zone name such as `Europe/Paris` (tz database {})",
                        time_zones::TZDATA_VERSION
                    ),
                };
                return Err(("time_zone", message));
            }
        };
        if days == 0 || days >= 1 << 7 {
            return Err(("days", "list at least one day".to_string()));
        }
        if from >= MINUTES_PER_DAY || to > MINUTES_PER_DAY {
            return Err(("", "times run from 00:00 to 24:00".to_string()));
        }
        if from == to {
            // Never, or always? Say which.
            return Err((
                "",
                "`from` and `to` are equal: for a whole day write 00:00 to 24:00".to_string(),
            ));
        }
        if from == 0 && to == MINUTES_PER_DAY && days == 0x7f {
            return Err((
                "",
                "a window open all day every day restricts nothing: remove it".to_string(),
            ));
        }
        Ok(TimeWindow {
            zone_name,
            zone: tz,
            days,
            from,
            to,
        })
    }

    /// Whether the window is open at `unix_secs`. Fails closed: a time the
    /// zone cannot place is outside every window.
    pub fn contains(&self, unix_secs: i64) -> bool {
        let Some(offset) = utc_offset(self.zone, unix_secs) else {
            return false;
        };
        let local = unix_secs.saturating_add(i64::from(offset));
        let day = local.div_euclid(86_400);
        let minute = (local.rem_euclid(86_400) / 60) as u16;
        // 1970-01-01 was a Thursday (day 3, counting from Monday = 0).
        let weekday = (day + 3).rem_euclid(7) as u8;
        let yesterday = (weekday + 6) % 7;
        if self.from < self.to {
            self.opens_on(weekday) && (self.from..self.to).contains(&minute)
        } else {
            (self.opens_on(weekday) && minute >= self.from)
                || (self.opens_on(yesterday) && minute < self.to)
        }
    }

    fn opens_on(&self, weekday: u8) -> bool {
        self.days & (1 << weekday) != 0
    }

    /// For a denial: `mon-fri 08:00-20:00 Europe/Paris`.
    pub fn describe(&self) -> String {
        let mut days = String::new();
        let mut d = 0;
        while d < 7 {
            if !self.opens_on(d) {
                d += 1;
                continue;
            }
            let start = d;
            while d + 1 < 7 && self.opens_on(d + 1) {
                d += 1;
            }
            if !days.is_empty() {
                days.push(',');
            }
            let name = |i: u8| DAY_NAMES.get(usize::from(i)).copied().unwrap_or("");
            days.push_str(name(start));
            if d > start {
                days.push_str(if d == start + 1 { "," } else { "-" });
                days.push_str(name(d));
            }
            d += 1;
        }
        let mut text = days;
        let hm = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
        let _ = write!(
            text,
            " {}-{} {}",
            hm(self.from),
            hm(self.to),
            self.zone_name
        );
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEEKDAYS: u8 = 0b001_1111;
    const EVERY_DAY: u8 = 0x7f;

    /// Seconds since the epoch of a UTC date and time.
    fn utc(y: i64, mo: i64, d: i64, h: i64, mi: i64) -> i64 {
        // Days from civil (H. Hinnant's algorithm).
        let y = if mo <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (mo + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        days * 86_400 + h * 3600 + mi * 60
    }

    fn window(zone: &str, days: u8, from: &str, to: &str) -> TimeWindow {
        let m = |s: &str| {
            let (h, mi) = s.split_once(':').unwrap();
            h.parse::<u16>().unwrap() * 60 + mi.parse::<u16>().unwrap()
        };
        TimeWindow::new(zone, days, m(from), m(to)).unwrap()
    }

    #[test]
    fn weekday_office_hours_in_paris_across_both_dst_changes() {
        let office = window("Europe/Paris", WEEKDAYS, "08:00", "20:00");
        // Winter (UTC+1): Friday 2025-03-28, 08:00 local is 07:00 UTC.
        assert!(!office.contains(utc(2025, 3, 28, 6, 59)));
        assert!(office.contains(utc(2025, 3, 28, 7, 0)));
        assert!(office.contains(utc(2025, 3, 28, 18, 59)));
        assert!(!office.contains(utc(2025, 3, 28, 19, 0)));
        // Clocks go forward on Sunday 2025-03-30 at 01:00 UTC. Monday 31st is
        // summer time (UTC+2): 08:00 local is 06:00 UTC.
        assert!(!office.contains(utc(2025, 3, 31, 5, 59)));
        assert!(office.contains(utc(2025, 3, 31, 6, 0)));
        assert!(office.contains(utc(2025, 3, 31, 17, 59)));
        assert!(!office.contains(utc(2025, 3, 31, 18, 0)));
        // Saturday and Sunday are closed.
        assert!(!office.contains(utc(2025, 3, 29, 10, 0)));
        assert!(!office.contains(utc(2025, 3, 30, 10, 0)));
        // Back to winter time on Sunday 2025-10-26 at 01:00 UTC.
        assert!(
            office.contains(utc(2025, 10, 24, 6, 0)),
            "Friday, still summer"
        );
        assert!(
            !office.contains(utc(2025, 10, 27, 6, 0)),
            "Monday 07:00 local"
        );
        assert!(
            office.contains(utc(2025, 10, 27, 7, 0)),
            "Monday 08:00 local"
        );
    }

    #[test]
    fn the_night_clocks_change_in_new_york() {
        // 2025-03-09: 02:00 EST becomes 03:00 EDT (07:00 UTC). A window from
        // 02:30 to 04:00 on Sundays opens when the clocks jump to 03:00.
        let w = window("America/New_York", 1 << 6, "02:30", "04:00");
        assert!(!w.contains(utc(2025, 3, 9, 6, 59)), "01:59 EST");
        assert!(w.contains(utc(2025, 3, 9, 7, 0)), "03:00 EDT");
        assert!(w.contains(utc(2025, 3, 9, 7, 59)), "03:59 EDT");
        assert!(!w.contains(utc(2025, 3, 9, 8, 0)), "04:00 EDT");
        // 2025-11-02: 02:00 EDT becomes 01:00 EST (06:00 UTC): 01:00–02:00
        // happens twice, and a 01:00–02:00 window is open both times.
        let w = window("America/New_York", 1 << 6, "01:00", "02:00");
        assert!(!w.contains(utc(2025, 11, 2, 4, 59)), "00:59 EDT");
        assert!(w.contains(utc(2025, 11, 2, 5, 0)), "01:00 EDT");
        assert!(
            w.contains(utc(2025, 11, 2, 6, 30)),
            "01:30 EST, the second time"
        );
        assert!(!w.contains(utc(2025, 11, 2, 7, 0)), "02:00 EST");
    }

    #[test]
    fn southern_hemisphere_and_zones_without_dst() {
        // Sydney: summer time (UTC+11) in January, standard (UTC+10) in July.
        let w = window("Australia/Sydney", EVERY_DAY, "09:00", "17:00");
        assert!(
            w.contains(utc(2026, 1, 15, 22, 0)),
            "09:00 AEDT on the 16th"
        );
        assert!(!w.contains(utc(2026, 1, 15, 21, 59)));
        assert!(
            w.contains(utc(2026, 7, 15, 23, 0)),
            "09:00 AEST on the 16th"
        );
        assert!(!w.contains(utc(2026, 7, 15, 22, 0)), "08:00 AEST");
        // Tokyo and UTC never change.
        let tokyo = window("Asia/Tokyo", EVERY_DAY, "09:00", "10:00");
        assert!(tokyo.contains(utc(2027, 6, 1, 0, 30)));
        let utc_w = window("UTC", EVERY_DAY, "09:00", "10:00");
        assert!(utc_w.contains(utc(2027, 6, 1, 9, 30)));
        assert!(!utc_w.contains(utc(2027, 6, 1, 10, 0)));
    }

    #[test]
    fn transitions_the_database_lists_one_by_one() {
        // Morocco sets clocks back an hour (UTC+1 to UTC+0) for Ramadan: in
        // 2026 from 2026-02-15 to 2026-03-22, a transition list, not a rule.
        let w = window("Africa/Casablanca", EVERY_DAY, "09:00", "10:00");
        assert!(w.contains(utc(2026, 1, 10, 8, 30)), "UTC+1 in January");
        assert!(w.contains(utc(2026, 3, 1, 9, 30)), "UTC+0 during Ramadan");
        assert!(!w.contains(utc(2026, 3, 1, 8, 30)));
        assert!(w.contains(utc(2026, 4, 10, 8, 30)), "UTC+1 again");
    }

    #[test]
    fn overnight_windows_belong_to_the_day_they_open() {
        // Friday 22:00 to Saturday 06:00 UTC.
        let w = window("UTC", 1 << 4, "22:00", "06:00");
        assert!(!w.contains(utc(2025, 6, 6, 21, 59)), "Friday 21:59");
        assert!(w.contains(utc(2025, 6, 6, 22, 0)), "Friday 22:00");
        assert!(w.contains(utc(2025, 6, 7, 5, 59)), "Saturday 05:59");
        assert!(!w.contains(utc(2025, 6, 7, 6, 0)), "Saturday 06:00");
        assert!(
            !w.contains(utc(2025, 6, 6, 3, 0)),
            "Friday 03:00: Thursday is closed"
        );
        let all_day = window("UTC", 1 << 4, "00:00", "24:00");
        assert!(all_day.contains(utc(2025, 6, 6, 23, 59)));
        assert!(!all_day.contains(utc(2025, 6, 7, 0, 0)));
    }

    #[test]
    fn refused_windows() {
        let (field, message) = TimeWindow::new("Europe/Pariss", 1, 0, 60).unwrap_err();
        assert_eq!(field, "time_zone");
        assert!(message.contains("unknown time zone `Europe/Pariss`"));
        assert!(TimeWindow::new("europe/paris", 1, 0, 60)
            .unwrap_err()
            .1
            .contains("write `Europe/Paris`"));
        assert!(TimeWindow::new("UTC", 0, 0, 60).is_err());
        assert!(TimeWindow::new("UTC", 1, 60, 60).is_err());
        assert!(TimeWindow::new("UTC", 1, 0, 1441).is_err());
        assert!(TimeWindow::new("UTC", 1, 1440, 60).is_err());
        assert!(TimeWindow::new("UTC", EVERY_DAY, 0, 1440).is_err());
    }

    #[test]
    fn descriptions() {
        assert_eq!(
            window("Europe/Paris", WEEKDAYS, "08:00", "20:00").describe(),
            "mon-fri 08:00-20:00 Europe/Paris"
        );
        assert_eq!(
            window("UTC", 0b101_0101, "22:00", "06:00").describe(),
            "mon,wed,fri,sun 22:00-06:00 UTC"
        );
        assert_eq!(
            window("UTC", 0b110_0000, "00:00", "24:00").describe(),
            "sat,sun 00:00-24:00 UTC"
        );
    }
}
