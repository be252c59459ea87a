//! Reading durations and times as people write them in flags and config files.

/// `500ms`, `30s`, `5m`, `2h`, `7d` (a bare number is seconds) to microseconds.
pub fn parse_duration_us(text: &str) -> Option<i64> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: f64 = number.parse().ok()?;
    let scale = match unit.trim() {
        "us" => 1.0,
        "ms" => 1e3,
        "" | "s" => 1e6,
        "m" | "min" => 60e6,
        "h" => 3_600e6,
        "d" => 86_400e6,
        _ => return None,
    };
    let us = n * scale;
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
        assert_eq!(parse_duration_us("1.5s"), Some(1_500_000));
        assert_eq!(parse_duration_us("7d"), Some(7 * 86_400_000_000));
        assert_eq!(parse_duration_us("2h"), Some(7_200_000_000));
        assert_eq!(parse_duration_us("5 m"), Some(300_000_000));
        for bad in ["", "x", "5w", "-1s", "1e400s", "s"] {
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
