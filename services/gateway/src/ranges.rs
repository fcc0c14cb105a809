//! Conditional and partial downloads of content-addressed files (RFC 9110):
//! the digest is the strong `ETag`, so `If-None-Match` answers 304 and a
//! `Range` resumes a download. What to answer is decided here, without I/O;
//! `rest.rs` streams it.

/// A file's strong entity tag: its SHA-256, which never changes for its URL.
pub fn etag(digest: &str) -> String {
    format!("\"{digest}\"")
}

/// What a GET of a file of `size` bytes with this entity tag should answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 304: the client's copy is current.
    NotModified,
    /// 200: all of it.
    Full,
    /// 206: bytes `start..=end`.
    Partial { start: u64, end: u64 },
    /// 416: the range lies outside the file.
    Unsatisfiable,
}

/// The request's conditional and range headers, as text.
#[derive(Debug, Default, Clone, Copy)]
pub struct Conditions<'a> {
    pub if_none_match: Option<&'a str>,
    pub range: Option<&'a str>,
    pub if_range: Option<&'a str>,
}

impl Conditions<'_> {
    pub fn answer(&self, etag: &str, size: u64) -> Answer {
        if let Some(tags) = self.if_none_match
            && matches_any(tags, etag)
        {
            return Answer::NotModified;
        }
        let Some(range) = self.range else {
            return Answer::Full;
        };
        // A range for another version of the file: send the whole of this one.
        if self.if_range.is_some_and(|tag| tag.trim() != etag) {
            return Answer::Full;
        }
        match single_range(range, size) {
            Some(Ok((start, end))) => Answer::Partial { start, end },
            Some(Err(())) => Answer::Unsatisfiable,
            // A range we do not serve (several ranges, another unit): the
            // RFC lets a server ignore it and send everything.
            None => Answer::Full,
        }
    }
}

/// Whether an `If-None-Match` list names `etag` (weak comparison, `*`).
fn matches_any(tags: &str, etag: &str) -> bool {
    tags.split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

/// One `bytes=` range of a file of `size` bytes as inclusive bounds:
/// None when it is not one byte range, Err when it is unsatisfiable.
fn single_range(header: &str, size: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = header.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    let number = |text: &str| -> Option<u64> {
        (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
            .then(|| text.parse().ok())
            .flatten()
    };
    let bounds = if first.is_empty() {
        // The last `n` bytes.
        let n = number(last)?;
        if n == 0 || size == 0 {
            return Some(Err(()));
        }
        (size.saturating_sub(n), size - 1)
    } else {
        let start = number(first)?;
        let end = if last.is_empty() {
            u64::MAX
        } else {
            number(last)?
        };
        if end < start {
            return None;
        }
        if start >= size {
            return Some(Err(()));
        }
        (start, end.min(size - 1))
    };
    Some(Ok(bounds))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAG: &str = "\"abc\"";

    fn range(header: &str, size: u64) -> Answer {
        Conditions {
            range: Some(header),
            ..Default::default()
        }
        .answer(TAG, size)
    }

    #[test]
    fn a_matching_if_none_match_is_not_modified() {
        for tags in ["\"abc\"", "\"x\", \"abc\"", "W/\"abc\"", "*"] {
            let conditions = Conditions {
                if_none_match: Some(tags),
                range: Some("bytes=0-1"),
                ..Default::default()
            };
            assert_eq!(conditions.answer(TAG, 10), Answer::NotModified, "{tags}");
        }
        let other = Conditions {
            if_none_match: Some("\"other\""),
            ..Default::default()
        };
        assert_eq!(other.answer(TAG, 10), Answer::Full);
    }

    #[test]
    fn byte_ranges_resume_and_clamp_to_the_file() {
        assert_eq!(range("bytes=5-", 10), Answer::Partial { start: 5, end: 9 });
        assert_eq!(range("bytes=0-0", 10), Answer::Partial { start: 0, end: 0 });
        assert_eq!(
            range("bytes=2-100", 10),
            Answer::Partial { start: 2, end: 9 }
        );
        assert_eq!(range("bytes=-3", 10), Answer::Partial { start: 7, end: 9 });
        assert_eq!(range("bytes=-30", 10), Answer::Partial { start: 0, end: 9 });
    }

    #[test]
    fn ranges_outside_the_file_are_unsatisfiable() {
        assert_eq!(range("bytes=10-", 10), Answer::Unsatisfiable);
        assert_eq!(range("bytes=-0", 10), Answer::Unsatisfiable);
        assert_eq!(range("bytes=0-", 0), Answer::Unsatisfiable);
    }

    #[test]
    fn ranges_not_served_send_the_whole_file() {
        for header in [
            "bytes=0-1,4-5",
            "items=0-1",
            "bytes=5-2",
            "bytes=a-b",
            "bytes=--1",
        ] {
            assert_eq!(range(header, 10), Answer::Full, "{header}");
        }
        let stale = Conditions {
            range: Some("bytes=5-"),
            if_range: Some("\"older\""),
            ..Default::default()
        };
        assert_eq!(stale.answer(TAG, 10), Answer::Full);
    }
}
