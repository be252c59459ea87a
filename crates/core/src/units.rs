//! Reading durations and times as people write them in flags and config files.

/// A duration as people write it (`500ms`, `30s`, `5m`, `2h`, `7d`, `1h 30m`: `humantime`'s
/// forms; a bare number, fractions allowed, is seconds) to microseconds.
pub fn parse_duration_us(text: &str) -> Option<i64> {
    let t = text.trim();
    let us = match t.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 && !t.starts_with(['+', '-']) => secs * 1e6,
        Ok(_) => return None,
        Err(_) => humantime::parse_duration(t).ok()?.as_micros() as f64,
    };
    (0.0..9.0e18).contains(&us).then_some(us as i64)
}

/// An RFC 3339 time to UTC microseconds, or `now` to the current time.
pub fn parse_time_us(text: &str) -> Option<i64> {
    if text.trim() == "now" {
        return Some(chrono::Utc::now().timestamp_micros());
    }
    crate::event::parse_rfc3339(text.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_us("500ms"), Some(500_000));
        assert_eq!(parse_duration_us("30"), Some(30_000_000));
        assert_eq!(parse_duration_us("1.5"), Some(1_500_000));
        assert_eq!(parse_duration_us("1h 30m"), Some(5_400_000_000));
        assert_eq!(parse_duration_us("7d"), Some(7 * 86_400_000_000));
        assert_eq!(parse_duration_us("2h"), Some(7_200_000_000));
        assert_eq!(parse_duration_us("0s"), Some(0));
        for bad in ["", "x", "5 fortnights", "-1s", "-1", "1e400", "s", "inf", "NaN"] {
            assert_eq!(parse_duration_us(bad), None, "{bad}");
        }
    }

    #[test]
    fn times() {
        assert_eq!(parse_time_us("2026-11-01T00:00:00Z"), Some(1_793_491_200_000_000));
        assert!(parse_time_us("now").unwrap() > 1_793_491_200_000_000 - 86_400_000_000 * 400);
        assert_eq!(parse_time_us("2026-11-01"), None);
    }
}
