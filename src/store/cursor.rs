//! Opaque pagination cursors: a short text, hex-encoded so clients treat it
//! as a token rather than something to build by hand.

use super::StoreError;

pub fn encode(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

pub fn decode(cursor: &str) -> Result<String, StoreError> {
    let bad = || StoreError::Invalid("`cursor` is not a cursor this API returned".into());
    if cursor.len() % 2 != 0 || cursor.len() > 512 {
        return Err(bad());
    }
    let bytes = (0..cursor.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&cursor[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| bad())?;
    String::from_utf8(bytes).map_err(|_| bad())
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
        assert!(super::fields(&super::encode("1"), 2).is_err());
    }
}
