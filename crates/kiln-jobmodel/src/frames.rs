//! Frame lists in OpenJD's range-expression syntax ("1-4", "1-10:3", "1,3,5-7").

use crate::JobModelError;

/// Most frames a single range expression may expand to; guards memory against "1-999999999999".
const MAX_FRAMES: usize = 1_000_000;

/// Expands an OpenJD range expression into its frames, in order.
pub fn parse_frame_list(expr: &str) -> Result<Vec<i64>, JobModelError> {
    let bad = || JobModelError::FrameRange(expr.to_owned());
    let mut frames = Vec::new();
    for part in expr.split(',').map(str::trim) {
        let (range, step) = match part.split_once(':') {
            Some((range, step)) => (range, step.trim().parse::<i64>().map_err(|_| bad())?),
            None => (part, 1),
        };
        let (start, end) = parse_bounds(range).ok_or_else(bad)?;
        // In i128: any two i64 frames and step fit, where i64 overflows
        // ("0--9223372036854775808:-1").
        let (start, end, step) = (i128::from(start), i128::from(end), i128::from(step));
        if step == 0 || (end - start).signum() * step.signum() < 0 {
            return Err(bad());
        }
        let count = (end - start) / step + 1;
        if frames.len() as i128 + count > MAX_FRAMES as i128 {
            return Err(bad());
        }
        // Every frame lies between start and end, so it fits in an i64.
        frames.extend((0..count).filter_map(|i| i64::try_from(start + i * step).ok()));
    }
    if frames.is_empty() {
        return Err(bad());
    }
    Ok(frames)
}

/// "a-b" or "a"; a negative start ("-5-3") is allowed.
fn parse_bounds(range: &str) -> Option<(i64, i64)> {
    let range = range.trim();
    let split_at = range
        .char_indices()
        .skip(1)
        .find(|&(_, c)| c == '-')
        .map(|(i, _)| i);
    match split_at {
        Some(i) => Some((
            range[..i].trim().parse().ok()?,
            range[i + 1..].trim().parse().ok()?,
        )),
        None => {
            let frame = range.parse().ok()?;
            Some((frame, frame))
        }
    }
}

/// Blender's `-f` syntax for a frame list: contiguous runs become "a..b",
/// everything else a comma list.
pub fn blender_frame_arg(frames: &[i64]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < frames.len() {
        let mut j = i;
        while j + 1 < frames.len() && frames[j + 1] == frames[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            frames[i].to_string()
        } else {
            format!("{}..{}", frames[i], frames[j])
        });
        i = j + 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_ranges_steps_and_lists() {
        assert_eq!(parse_frame_list("1-4").unwrap(), vec![1, 2, 3, 4]);
        assert_eq!(parse_frame_list("1-10:3").unwrap(), vec![1, 4, 7, 10]);
        assert_eq!(parse_frame_list("1,3,5-7").unwrap(), vec![1, 3, 5, 6, 7]);
        assert_eq!(parse_frame_list("5").unwrap(), vec![5]);
        assert_eq!(parse_frame_list("-2-1").unwrap(), vec![-2, -1, 0, 1]);
    }

    #[test]
    fn rejects_malformed_ranges() {
        for bad in ["", "a-b", "4-1", "1-4:0", "1-", "1-999999999999"] {
            assert!(parse_frame_list(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn extreme_bounds_are_refused_not_overflowed() {
        for huge in [
            "0--9223372036854775808:-1",
            "-9223372036854775808-9223372036854775807",
            "9223372036854775807--9223372036854775808:-1",
        ] {
            assert!(parse_frame_list(huge).is_err(), "{huge} should be rejected");
        }
        assert_eq!(
            parse_frame_list("9223372036854775806-9223372036854775807").ok(),
            Some(vec![i64::MAX - 1, i64::MAX])
        );
        assert_eq!(
            parse_frame_list("-9223372036854775808--9223372036854775808:-1").ok(),
            Some(vec![i64::MIN])
        );
        assert_eq!(parse_frame_list("3-1:-1").ok(), Some(vec![3, 2, 1]));
        assert_eq!(
            parse_frame_list("-9223372036854775808-9223372036854775807:9223372036854775807").ok(),
            Some(vec![i64::MIN, -1, i64::MAX - 1])
        );
    }

    #[test]
    fn formats_for_blender() {
        assert_eq!(blender_frame_arg(&[1, 2, 3, 4]), "1..4");
        assert_eq!(blender_frame_arg(&[1, 4, 7]), "1,4,7");
        assert_eq!(blender_frame_arg(&[1, 2, 5, 6, 7, 9]), "1..2,5..7,9");
        assert_eq!(blender_frame_arg(&[3]), "3");
    }
}
