//! Opaque pagination cursors: a short text, hex-encoded so clients treat it
//! as a token rather than something to build by hand.

use super::StoreError;
use super::conversations::Page;

pub fn encode(text: &str) -> String {
    crate::hex::encode(text.as_bytes())
}

pub fn decode(cursor: &str) -> Result<String, StoreError> {
    let bad = || StoreError::Invalid("`cursor` is not a cursor this API returned".into());
    if cursor.len() % 2 != 0 || cursor.len() > 512 {
        return Err(bad());
    }
    // Pairs of bytes, never string slices: a client's cursor may hold
    // multi-byte characters, and slicing inside one panics.
    let bytes = cursor
        .as_bytes()
        .chunks_exact(2)
        .map(|pair| Some((hex_value(pair[0])? << 4) | hex_value(pair[1])?))
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(bad)?;
    String::from_utf8(bytes).map_err(|_| bad())
}

/// Lowercase only: the API issues lowercase, and the document's cursor
/// patterns say so (an uppercase cursor is one this API did not return).
fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        _ => None,
    }
}

fn not_ours() -> StoreError {
    StoreError::Invalid("`cursor` is not a cursor this API returned".into())
}

/// Decimal digits only (a sign only where the API issues one: a time
/// before 1970), as the document's cursor patterns say; `i64::from_str`
/// alone would also take `+5`.
fn number(text: &str, signed: bool) -> Result<i64, StoreError> {
    let digits = match text.strip_prefix('-') {
        Some(rest) if signed => rest,
        _ => text,
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(not_ours());
    }
    text.parse().map_err(|_| not_ours())
}

/// `cursor=` (empty) means no cursor: the first page.
fn given(after: Option<&str>) -> Option<&str> {
    after.filter(|c| !c.is_empty())
}

/// A cursor holding one integer (an id or an offset); `default` without one.
pub fn int(after: Option<&str>, default: i64) -> Result<i64, StoreError> {
    match given(after) {
        Some(c) => number(&fields(c, 1)?[0], false),
        None => Ok(default),
    }
}

/// A `(unix ms, id)` keyset cursor; `(None, None)` without one.
pub fn time_id(after: Option<&str>) -> Result<(Option<i64>, Option<String>), StoreError> {
    match given(after) {
        Some(c) => {
            let f = fields(c, 2)?;
            let t = number(&f[0], true)?;
            Ok((Some(t), Some(f[1].clone())))
        }
        None => Ok((None, None)),
    }
}

/// The `(unix ms, id)` cursor text for an RFC 3339 time and an id.
pub fn time_id_text(rfc3339: &str, id: &str) -> String {
    let ms = chrono::DateTime::parse_from_rfc3339(rfc3339)
        .map(|d| d.timestamp_millis())
        .unwrap_or(0);
    format!("{ms}|{id}")
}

/// Cut rows fetched with `limit + 1` to a page; when there were more, the
/// next cursor is `next` of the last row kept.
pub fn page<T>(mut items: Vec<T>, limit: u32, next: impl FnOnce(&T) -> String) -> Page<T> {
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|last| encode(&next(last)))
    } else {
        None
    };
    Page { items, next_cursor }
}

/// Decode a cursor made of `n` `|`-separated fields.
pub fn fields(cursor: &str, n: usize) -> Result<Vec<String>, StoreError> {
    let text = decode(cursor)?;
    let parts: Vec<String> = text.splitn(n, '|').map(str::to_owned).collect();
    if parts.len() != n {
        return Err(StoreError::Invalid(
            "`cursor` is not a cursor this API returned".into(),
        ));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip() {
        let c = super::encode("123|abc|é");
        assert_eq!(super::fields(&c, 3).expect("ok"), vec!["123", "abc", "é"]);
        assert!(super::decode("zz").is_err());
        assert!(super::decode("4A").is_err(), "uppercase is not issued");
        assert_eq!(super::decode("4a").expect("ok"), "J");
        assert!(super::fields(&super::encode("1"), 2).is_err());
        assert_eq!(super::int(Some(&super::encode("42")), 0).expect("ok"), 42);
        assert!(super::int(Some(&super::encode("+42")), 0).is_err());
        assert!(super::int(Some(&super::encode("-42")), 0).is_err());
        let (t, id) = super::time_id(Some(&super::encode("-5|a|b"))).expect("ok");
        assert_eq!((t, id.as_deref()), (Some(-5), Some("a|b")));
        assert!(super::time_id(Some(&super::encode("+5|a"))).is_err());
    }
}
