//! Pagination as AIP-158 describes it: a list answers at most a page and,
//! if more follow, a `next_page_token` the client passes back. The token is
//! opaque to clients; to the service it is a keyset position (the sort key
//! of the page's last item), so a page costs an index range scan however
//! deep into the list it is, and items added meanwhile are neither skipped
//! nor repeated.
//!
//! A token names the list it came from, so one list's token given to
//! another is refused instead of being misread. A filtered list's token also
//! carries a fingerprint of its filters ([`fingerprint`]), so a token made
//! under some filters is refused under others (it would skip or repeat items
//! there) with a message that says so.

use tonic::Status;

/// Longest token accepted, in characters: a position is a path or a few
/// numbers, hex-encoded.
const MAX_TOKEN_CHARS: usize = 16 * 1024;

/// How many items a page holds.
#[derive(Debug, Clone, Copy)]
pub struct PageSize {
    /// Used when the client asks for 0.
    pub default: u32,
    /// Larger requests get this many (AIP-158: coerce, don't refuse).
    pub max: u32,
}

impl PageSize {
    /// The page size for a request's `page_size`.
    pub fn of(&self, requested: u32) -> usize {
        match requested {
            0 => self.default,
            n => n.min(self.max),
        }
        .max(1) as usize
    }
}

/// Why a page token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("page_token: not a token this list returned (pass next_page_token back unchanged)")]
pub struct BadPageToken;

impl From<BadPageToken> for Status {
    fn from(err: BadPageToken) -> Self {
        Status::invalid_argument(err.to_string())
    }
}

/// Why a filtered list's page token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilteredTokenError {
    #[error(transparent)]
    Bad(#[from] BadPageToken),
    #[error("page_token: made for other filters; list again from the first page")]
    OtherFilters,
}

impl From<FilteredTokenError> for Status {
    fn from(err: FilteredTokenError) -> Self {
        Status::invalid_argument(err.to_string())
    }
}

/// A short digest of a list's filters, each part length-prefixed so that no
/// two filters give the same bytes. Callers pass the parts in a fixed form
/// (sorted sets, case folded where the filter ignores case).
pub fn fingerprint(parts: &[&[u8]]) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for part in parts {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hex::encode(&hash.finalize()[..8])
}

/// The position `position` under the filters whose [`fingerprint`] is
/// `filters`: what [`page`] is given for a filtered list.
pub fn filtered(filters: &str, position: &str) -> String {
    format!("{filters}\n{position}")
}

/// The position a filtered list's `token` continues after, refusing a token
/// made under filters other than `filters`; `None` for an empty token.
pub fn decode_filtered(
    list: &str,
    filters: &str,
    token: &str,
) -> Result<Option<String>, FilteredTokenError> {
    let Some(text) = decode(list, token)? else {
        return Ok(None);
    };
    match text.split_once('\n') {
        Some((made_for, position)) if made_for == filters => Ok(Some(position.to_owned())),
        Some(_) => Err(FilteredTokenError::OtherFilters),
        None => Err(BadPageToken.into()),
    }
}

/// The token for the page after the item at `position` of list `list`.
pub fn encode(list: &str, position: &str) -> String {
    hex::encode(format!("{list}\n{position}"))
}

/// The position `token` continues after; `None` for an empty token (the
/// first page).
pub fn decode(list: &str, token: &str) -> Result<Option<String>, BadPageToken> {
    if token.is_empty() {
        return Ok(None);
    }
    if token.len() > MAX_TOKEN_CHARS {
        return Err(BadPageToken);
    }
    let bytes = hex::decode(token).map_err(|_| BadPageToken)?;
    let text = String::from_utf8(bytes).map_err(|_| BadPageToken)?;
    match text.split_once('\n') {
        Some((named, position)) if named == list => Ok(Some(position.to_owned())),
        _ => Err(BadPageToken),
    }
}

/// The position of an item in a newest-first list: its creation time
/// (`seconds`, `nanos` since the epoch) and, to break ties, its id.
pub fn time_and_id(seconds: i64, nanos: i32, id: &str) -> String {
    format!("{seconds},{nanos},{id}")
}

/// A [`time_and_id`] position read back: the time and the id.
pub fn parse_time_and_id(
    position: &str,
) -> Result<(chrono::DateTime<chrono::Utc>, uuid::Uuid), BadPageToken> {
    let mut parts = position.splitn(3, ',');
    let (Some(seconds), Some(nanos), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(BadPageToken);
    };
    let seconds: i64 = seconds.parse().map_err(|_| BadPageToken)?;
    let nanos: u32 = nanos.parse().map_err(|_| BadPageToken)?;
    let at = chrono::DateTime::from_timestamp(seconds, nanos).ok_or(BadPageToken)?;
    let id = uuid::Uuid::parse_str(id).map_err(|_| BadPageToken)?;
    Ok((at, id))
}

/// Cuts `items` (fetched as up to one more than `size`) to a page of at
/// most `size` items and `max_bytes` (as `bytes` measures them, at least one
/// item), and gives the next page's token from the last item kept when more
/// follow (`position` gives an item's sort key).
pub fn page<T>(
    list: &str,
    mut items: Vec<T>,
    size: usize,
    max_bytes: usize,
    bytes: impl Fn(&T) -> usize,
    position: impl Fn(&T) -> String,
) -> (Vec<T>, String) {
    let mut total = 0;
    let mut keep = 0;
    for item in items.iter().take(size) {
        total += bytes(item);
        if keep > 0 && total > max_bytes {
            break;
        }
        keep += 1;
    }
    let more = items.len() > keep;
    items.truncate(keep);
    let next = match (more, items.last()) {
        (true, Some(last)) => encode(list, &position(last)),
        _ => String::new(),
    };
    (items, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_for_its_own_list_only() {
        let token = encode("outputs", "frames/0001.png");
        assert_eq!(
            decode("outputs", &token),
            Ok(Some("frames/0001.png".into()))
        );
        assert_eq!(decode("tasks", &token), Err(BadPageToken));
        assert_eq!(decode("outputs", ""), Ok(None));
        assert_eq!(decode("outputs", "zz"), Err(BadPageToken));
        assert_eq!(decode("outputs", &"0".repeat(40_000)), Err(BadPageToken));
    }

    #[test]
    fn a_filtered_token_is_refused_under_other_filters() {
        let alice = fingerprint(&[b"alice", b"running"]);
        let token = encode("jobs", &filtered(&alice, "1,2,x"));
        assert_eq!(
            decode_filtered("jobs", &alice, &token),
            Ok(Some("1,2,x".into()))
        );
        // The same bytes split differently are other filters.
        let other = fingerprint(&[b"alicer", b"unning"]);
        let refused = decode_filtered("jobs", &other, &token).expect_err("other filters");
        assert_eq!(refused, FilteredTokenError::OtherFilters);
        assert!(refused.to_string().contains("other filters"));
        assert_eq!(decode_filtered("jobs", &alice, ""), Ok(None));
        assert_eq!(
            decode_filtered("jobs", &alice, &encode("jobs", "no filters")),
            Err(BadPageToken.into())
        );
        assert_eq!(
            decode_filtered("tasks", &alice, &token),
            Err(BadPageToken.into())
        );
    }

    #[test]
    fn time_and_id_positions_round_trip() {
        let id = uuid::Uuid::new_v4();
        let (at, back) = parse_time_and_id(&time_and_id(1_700_000_000, 123_000, &id.to_string()))
            .expect("a position");
        assert_eq!(
            (at.timestamp(), at.timestamp_subsec_nanos(), back),
            (1_700_000_000, 123_000, id)
        );
        assert_eq!(parse_time_and_id("1,2"), Err(BadPageToken));
        assert_eq!(parse_time_and_id("x,2,y"), Err(BadPageToken));
    }

    #[test]
    fn sizes_default_and_are_coerced_to_the_most() {
        let size = PageSize {
            default: 100,
            max: 1000,
        };
        assert_eq!(size.of(0), 100);
        assert_eq!(size.of(7), 7);
        assert_eq!(size.of(5000), 1000);
    }

    #[test]
    fn a_page_stops_at_its_size_or_its_bytes_and_says_where_to_go_on() {
        let items: Vec<u32> = (1..=11).collect();
        let (page1, next) = page("n", items.clone(), 10, usize::MAX, |_| 1, u32::to_string);
        assert_eq!(page1.len(), 10);
        assert_eq!(decode("n", &next), Ok(Some("10".into())));
        let (last, next) = page("n", vec![11], 10, usize::MAX, |_| 1, u32::to_string);
        assert_eq!((last, next), (vec![11], String::new()));
        // Bytes: 3 items of 4 fit in 12; one item always fits.
        let (by_bytes, next) = page("n", items, 10, 12, |_| 4, u32::to_string);
        assert_eq!(by_bytes, [1, 2, 3]);
        assert_eq!(decode("n", &next), Ok(Some("3".into())));
        let (one, _) = page("n", vec![1, 2], 10, 1, |_| 100, u32::to_string);
        assert_eq!(one, [1]);
    }
}
