//! Dates as the reference reads them: `strptime` with the three DSS formats, seconds since
//! 1900-01-01 (format doc §4.2 "Normalize dates"), and the cyclical encodings (DatetimeCyclical).

/// The storage type of a date column, which fixes its text format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DateFormat {
    /// `date`: `%Y-%m-%dT%H:%M:%S.%fZ` (fractional seconds required).
    Timestamp,
    /// `dateonly`: `%Y-%m-%d`.
    DateOnly,
    /// `datetimenotz`: `%Y-%m-%d %H:%M:%S.%f`.
    DateTimeNoTz,
}

impl DateFormat {
    pub(crate) fn from_storage(t: &str) -> Option<DateFormat> {
        match t {
            "date" => Some(DateFormat::Timestamp),
            "dateonly" => Some(DateFormat::DateOnly),
            "datetimenotz" => Some(DateFormat::DateTimeNoTz),
            _ => None,
        }
    }

    pub(crate) fn pattern(self) -> &'static str {
        match self {
            DateFormat::Timestamp => "%Y-%m-%dT%H:%M:%S.%fZ",
            DateFormat::DateOnly => "%Y-%m-%d",
            DateFormat::DateTimeNoTz => "%Y-%m-%d %H:%M:%S.%f",
        }
    }
}

/// Days from 1970-01-01 to the civil date (proleptic Gregorian).
pub(crate) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day count from 1970-01-01.
pub(crate) fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

const US_PER_DAY: i64 = 86_400_000_000;
const DAYS_1900: i64 = -25_567; // days_from_civil(1900, 1, 1)

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn lit(&mut self, c: u8) -> Option<()> {
        (self.s.get(self.i) == Some(&c)).then(|| self.i += 1)
    }

    /// One or two digits, the longest that lies in `lo..=hi` and is followed by `next`
    /// (what the `strptime` regex alternatives amount to).
    fn num2(&mut self, lo: i64, hi: i64, next: Option<u8>) -> Option<i64> {
        let digit = |k: usize| {
            self.s
                .get(k)
                .filter(|c| c.is_ascii_digit())
                .map(|c| i64::from(c - b'0'))
        };
        let d0 = digit(self.i)?;
        let follows = |k: usize| next.is_none_or(|n| self.s.get(k) == Some(&n));
        if let Some(d1) = digit(self.i + 1) {
            let v = d0 * 10 + d1;
            if (lo..=hi).contains(&v) && follows(self.i + 2) {
                self.i += 2;
                return Some(v);
            }
        }
        if (lo..=hi).contains(&d0) && follows(self.i + 1) {
            self.i += 1;
            return Some(d0);
        }
        None
    }

    fn digits(&mut self, min: usize, max: usize) -> Option<&[u8]> {
        let start = self.i;
        while self.i < self.s.len() && self.i - start < max && self.s[self.i].is_ascii_digit() {
            self.i += 1;
        }
        (self.i - start >= min).then(|| &self.s[start..self.i])
    }
}

fn parse_int(d: &[u8]) -> i64 {
    d.iter().fold(0, |a, c| a * 10 + i64::from(c - b'0'))
}

/// Parses `text` with the column's format; returns microseconds since 1900-01-01.
pub(crate) fn parse_us_since_1900(text: &str, fmt: DateFormat) -> Option<i64> {
    let mut c = Cursor {
        s: text.as_bytes(),
        i: 0,
    };
    let y = parse_int(c.digits(4, 4)?);
    c.lit(b'-')?;
    let m = c.num2(1, 12, Some(b'-'))?;
    c.lit(b'-')?;
    let sep = match fmt {
        DateFormat::Timestamp => Some(b'T'),
        DateFormat::DateTimeNoTz => Some(b' '),
        DateFormat::DateOnly => None,
    };
    let d = c.num2(1, 31, sep)?;
    let (mut h, mut mi, mut s, mut us) = (0, 0, 0, 0);
    if let Some(sep) = sep {
        c.lit(sep)?;
        h = c.num2(0, 23, Some(b':'))?;
        c.lit(b':')?;
        mi = c.num2(0, 59, Some(b':'))?;
        c.lit(b':')?;
        s = c.num2(0, 61, Some(b'.'))?;
        c.lit(b'.')?;
        let f = c.digits(1, 6)?;
        us = parse_int(f) * 10_i64.pow(6 - f.len() as u32);
        if fmt == DateFormat::Timestamp {
            c.lit(b'Z')?;
        }
    }
    if c.i != c.s.len() || y < 1 || d > days_in_month(y, m) || s > 59 {
        return None;
    }
    let days = days_from_civil(y, m, d) - DAYS_1900;
    Some(days * US_PER_DAY + ((h * 60 + mi) * 60 + s) * 1_000_000 + us)
}

/// `timedelta.total_seconds()` of a microsecond count.
pub(crate) fn total_seconds(us: i64) -> f64 {
    us as f64 / 1e6
}

/// `timedelta(milliseconds=ms)` in microseconds, with CPython's float handling (the integral
/// part exactly, the fraction through doubles, the leftover rounded half to even).
pub(crate) fn timedelta_ms_to_us(ms: f64) -> Option<i64> {
    if !ms.is_finite() || ms.abs() > 8.0e15 {
        return None;
    }
    let int_ms = ms.trunc();
    let frac = ms - int_ms;
    let mut sum = (int_ms as i64) * 1000;
    if frac == 0.0 {
        return Some(sum);
    }
    let scaled = 1000.0 * frac;
    let int2 = scaled.trunc();
    let leftover = scaled - int2;
    sum += int2 as i64;
    let mut whole = leftover.round();
    if (whole - leftover).abs() == 0.5 {
        let odd = f64::from(u8::from(sum.rem_euclid(2) == 1));
        whole = 2.0 * ((leftover + odd) * 0.5).round() - odd;
    }
    Some(sum + whole as i64)
}

/// A period of the cyclical date encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Period {
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Quarter,
    Year,
}

impl Period {
    pub(crate) fn parse(s: &str) -> Option<Period> {
        Some(match s {
            "MINUTE" => Period::Minute,
            "HOUR" => Period::Hour,
            "DAY" => Period::Day,
            "WEEK" => Period::Week,
            "MONTH" => Period::Month,
            "QUARTER" => Period::Quarter,
            "YEAR" => Period::Year,
            _ => return None,
        })
    }

    pub(crate) fn lower(self) -> &'static str {
        match self {
            Period::Minute => "minute",
            Period::Hour => "hour",
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
            Period::Quarter => "quarter",
            Period::Year => "year",
        }
    }

    fn seconds(self) -> f64 {
        match self {
            Period::Minute => 60.0,
            Period::Hour => 3600.0,
            Period::Day => 86400.0,
            Period::Week => 604_800.0,
            Period::Month => 2_678_400.0,
            Period::Quarter => 7_948_800.0,
            Period::Year => 31_622_400.0,
        }
    }
}

/// The angle of a date (seconds since 1900, as the numeric slot holds it) in `period`:
/// `e·2π/P` where `e` is the whole seconds since the start of the period. `None` for NaN or
/// out-of-range dates (the reference raises; see docs/scoring.md).
pub(crate) fn cyclical_angle(seconds_since_1900: f64, period: Period) -> Option<f64> {
    let us = timedelta_ms_to_us(seconds_since_1900 * 1000.0)?;
    let days = us.div_euclid(US_PER_DAY);
    let day_us = us.rem_euclid(US_PER_DAY);
    let day_s = day_us / 1_000_000;
    let (mi, s) = ((day_s / 60) % 60, day_s % 60);
    let (y, m, d) = civil_from_days(days + DAYS_1900);
    let e = match period {
        Period::Minute => s,
        Period::Hour => mi * 60 + s,
        Period::Day => day_s,
        // 1900-01-01 is a Monday: weekday() == 0.
        Period::Week => days.rem_euclid(7) * 86400 + day_s,
        Period::Month => (d - 1) * 86400 + day_s,
        Period::Quarter => {
            let first = ((m - 1) / 3) * 3 + 1;
            (days_from_civil(y, m, d) - days_from_civil(y, first, 1)) * 86400 + day_s
        }
        Period::Year => (days_from_civil(y, m, d) - days_from_civil(y, 1, 1)) * 86400 + day_s,
    };
    Some(e as f64 * 2.0 * std::f64::consts::PI / period.seconds())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_formats() {
        let f = |s, fmt| parse_us_since_1900(s, fmt).map(total_seconds);
        assert_eq!(f("1900-01-02", DateFormat::DateOnly), Some(86400.0));
        assert_eq!(
            f("1900-01-01T00:00:01.5Z", DateFormat::Timestamp),
            Some(1.5)
        );
        assert_eq!(
            f("1900-1-1 00:01:00.000001", DateFormat::DateTimeNoTz),
            Some(60.000001)
        );
        // Fractional seconds are required for `date`, and the day must exist.
        assert_eq!(f("2020-01-01T00:00:00Z", DateFormat::Timestamp), None);
        assert_eq!(f("2021-02-29", DateFormat::DateOnly), None);
        assert_eq!(f("2020-13-01", DateFormat::DateOnly), None);
        assert_eq!(f("2020-02-29", DateFormat::DateOnly), Some(3_791_923_200.0));
    }

    #[test]
    fn civil_round_trip() {
        for z in [-800_000, -25_567, 0, 1, 18_000, 2_932_896] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
    }

    #[test]
    fn cyclical_periods() {
        // 1900-01-08 (a Monday) 06:00:00 -> start of week.
        let t = 7.0 * 86400.0 + 6.0 * 3600.0;
        let a = cyclical_angle(t, Period::Week).unwrap();
        assert_eq!(a, (6.0 * 3600.0) * 2.0 * std::f64::consts::PI / 604_800.0);
        assert!(cyclical_angle(f64::NAN, Period::Day).is_none());
    }

    #[test]
    fn timedelta_rounding() {
        assert_eq!(timedelta_ms_to_us(1.0005), Some(1000)); // 1000.5 -> even
        assert_eq!(timedelta_ms_to_us(1.0015), Some(1002)); // 1001.5 (+ float error)
        assert_eq!(timedelta_ms_to_us(-1.5), Some(-1500));
        assert_eq!(timedelta_ms_to_us(0.0025), Some(2));
    }
}
