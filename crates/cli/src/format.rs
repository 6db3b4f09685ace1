//! How the commands spell durations and sizes for people: one place, so
//! `status`, `push --wait` and the rest agree.

/// `in 2m10s`, or `now` when due (or overdue: the daemon is busy or down).
pub fn relative(at: i64, now: i64) -> String {
    if at <= now {
        "now".to_owned()
    } else {
        format!("in {}", human_duration(at - now))
    }
}

/// Seconds as `45s`, `2m10s`, `1h05m`, `3d04h`: two units at most.
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// Bytes in binary units with one decimal: `512 B`, `1.5 KiB`, `12.3 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(human_duration(-5), "0s");
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(60), "1m00s");
        assert_eq!(human_duration(130), "2m10s");
        assert_eq!(human_duration(3599), "59m59s");
        assert_eq!(human_duration(3600 + 5 * 60 + 59), "1h05m");
        assert_eq!(human_duration(86400 * 3 + 4 * 3600 + 1), "3d04h");
        assert_eq!(relative(100, 100), "now");
        assert_eq!(relative(90, 100), "now");
        assert_eq!(relative(230, 100), "in 2m10s");
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(12_897_484), "12.3 MiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
    }
}
