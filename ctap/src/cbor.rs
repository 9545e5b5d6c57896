//! CTAP2 canonical CBOR (CTAP 2.1 §8 "Message encoding").
//!
//! Decoding and encoding use `ciborium`; what it lacks for CTAP is done here:
//! ciborium writes map keys in insertion order and its `CanonicalValue` sorts
//! length-first (RFC 7049), whereas CTAP2 wants map keys sorted by the bytes
//! of their encoding (so `24` sorts before `-1`). Responses are therefore
//! built as `Value` trees and every map is sorted by encoded key before
//! writing. Request parameters are read through [`ParamMap`], which turns a
//! wrong type into `CTAP2_ERR_CBOR_UNEXPECTED_TYPE` and an absent required key
//! into `CTAP2_ERR_MISSING_PARAMETER`.

use ciborium::value::Value;

use crate::status::{CtapResult, StatusCode};

/// Nesting allowed in a request: CTAP2 messages nest at most four levels
/// (§8 "canonical CBOR"); we leave a little room and refuse anything deeper.
const MAX_NESTING: usize = 8;

/// Decodes exactly one CBOR item that fills `bytes`.
pub fn decode(bytes: &[u8]) -> CtapResult<Value> {
    let mut reader = bytes;
    let value: Value = ciborium::de::from_reader_with_recursion_limit(&mut reader, MAX_NESTING)
        .map_err(|_| StatusCode::InvalidCbor)?;
    if !reader.is_empty() {
        return Err(StatusCode::InvalidCbor);
    }
    Ok(value)
}

/// Encodes `value` in CTAP2 canonical form.
pub fn encode(value: Value) -> Vec<u8> {
    let canonical = canonicalize(value);
    let mut out = Vec::new();
    // Writing into a Vec cannot fail, and a `Value` tree always serializes.
    if ciborium::ser::into_writer(&canonical, &mut out).is_err() {
        out.clear();
    }
    out
}

fn encoded_key(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = ciborium::ser::into_writer(value, &mut out);
    out
}

fn canonicalize(value: Value) -> Value {
    match value {
        Value::Map(entries) => {
            let mut keyed: Vec<(Vec<u8>, Value, Value)> = entries
                .into_iter()
                .map(|(k, v)| {
                    let k = canonicalize(k);
                    (encoded_key(&k), k, canonicalize(v))
                })
                .collect();
            keyed.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Map(keyed.into_iter().map(|(_, k, v)| (k, v)).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(canonicalize).collect()),
        other => other,
    }
}

/// Builds a response map with integer keys, skipping absent fields.
#[derive(Default)]
pub struct MapBuilder {
    entries: Vec<(Value, Value)>,
}

impl MapBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn int(mut self, key: i64, value: impl Into<Value>) -> Self {
        self.entries.push((Value::from(key), value.into()));
        self
    }

    pub fn int_opt(self, key: i64, value: Option<impl Into<Value>>) -> Self {
        match value {
            Some(v) => self.int(key, v),
            None => self,
        }
    }

    pub fn text(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.entries.push((Value::from(key), value.into()));
        self
    }

    pub fn text_opt(self, key: &str, value: Option<impl Into<Value>>) -> Self {
        match value {
            Some(v) => self.text(key, v),
            None => self,
        }
    }

    pub fn build(self) -> Value {
        Value::Map(self.entries)
    }

    /// The map, or nothing when no field was added: an extensions map is
    /// left out of authenticator data when it would be empty (§6.1.2 step 19).
    pub fn build_unless_empty(self) -> Option<Value> {
        (!self.entries.is_empty()).then(|| self.build())
    }
}

/// A CBOR byte string value (a plain `Vec<u8>` would become an array).
pub fn bytes(data: impl Into<Vec<u8>>) -> Value {
    Value::Bytes(data.into())
}

/// Read access to a decoded CBOR map, with CTAP's error mapping.
pub struct ParamMap {
    entries: Vec<(Value, Value)>,
}

impl ParamMap {
    /// `value` must be a map, else `CTAP2_ERR_CBOR_UNEXPECTED_TYPE`.
    pub fn from_value(value: Value) -> CtapResult<Self> {
        match value {
            Value::Map(entries) => Ok(Self { entries }),
            _ => Err(StatusCode::CborUnexpectedType),
        }
    }

    /// Decodes a command's parameter map; an empty body is a missing map.
    pub fn decode(bytes: &[u8]) -> CtapResult<Self> {
        Self::from_value(decode(bytes)?)
    }

    fn position(&self, wanted: &Value) -> Option<usize> {
        self.entries.iter().position(|(k, _)| k == wanted)
    }

    /// Removes and returns the value under integer key `key`.
    pub fn take(&mut self, key: i64) -> Option<Value> {
        let index = self.position(&Value::from(key))?;
        Some(self.entries.swap_remove(index).1)
    }

    /// Removes and returns the value under text key `key`.
    pub fn take_text_key(&mut self, key: &str) -> Option<Value> {
        let index = self.position(&Value::from(key))?;
        Some(self.entries.swap_remove(index).1)
    }

    pub fn required(&mut self, key: i64) -> CtapResult<Value> {
        self.take(key).ok_or(StatusCode::MissingParameter)
    }

    pub fn required_text_key(&mut self, key: &str) -> CtapResult<Value> {
        self.take_text_key(key).ok_or(StatusCode::MissingParameter)
    }

    /// The entries in their received order (for maps with text keys such
    /// as `options`, where unknown keys are ignored).
    pub fn into_entries(self) -> Vec<(Value, Value)> {
        self.entries
    }
}

pub fn expect_bytes(value: Value) -> CtapResult<Vec<u8>> {
    match value {
        Value::Bytes(b) => Ok(b),
        _ => Err(StatusCode::CborUnexpectedType),
    }
}

pub fn expect_text(value: Value) -> CtapResult<String> {
    match value {
        Value::Text(t) => Ok(t),
        _ => Err(StatusCode::CborUnexpectedType),
    }
}

pub fn expect_bool(value: Value) -> CtapResult<bool> {
    match value {
        Value::Bool(b) => Ok(b),
        _ => Err(StatusCode::CborUnexpectedType),
    }
}

pub fn expect_array(value: Value) -> CtapResult<Vec<Value>> {
    match value {
        Value::Array(items) => Ok(items),
        _ => Err(StatusCode::CborUnexpectedType),
    }
}

pub fn expect_map(value: Value) -> CtapResult<ParamMap> {
    ParamMap::from_value(value)
}

pub fn expect_int(value: Value) -> CtapResult<i64> {
    match value {
        Value::Integer(i) => i64::try_from(i128::from(i)).map_err(|_| StatusCode::CborUnexpectedType),
        _ => Err(StatusCode::CborUnexpectedType),
    }
}

pub fn expect_uint(value: Value) -> CtapResult<u64> {
    match value {
        Value::Integer(i) => u64::try_from(i128::from(i)).map_err(|_| StatusCode::CborUnexpectedType),
        _ => Err(StatusCode::CborUnexpectedType),
    }
}

/// Truncates `text` to at most `max` bytes without splitting a UTF-8
/// sequence (CTAP 2.1 §6.1.2 step 15: stored strings may be truncated at 64 bytes).
pub fn truncate_utf8(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_keys_sorted_by_encoded_bytes() {
        // 24 encodes as 0x18 0x18 and -1 as 0x20: CTAP2 order puts 24 first,
        // while length-first ordering would put -1 first.
        let v = MapBuilder::new().int(-1, 1).int(24, 2).int(1, 3).build();
        assert_eq!(encode(v), vec![0xa3, 0x01, 0x03, 0x18, 0x18, 0x02, 0x20, 0x01]);
    }

    #[test]
    fn text_keys_sorted_shorter_first_then_bytewise() {
        let v = MapBuilder::new().text("up", true).text("rk", true).text("plat", false).build();
        let encoded = encode(v);
        // "rk" < "up" (both length 2, bytewise), then "plat" (length 4).
        assert_eq!(
            encoded,
            vec![0xa3, 0x62, b'r', b'k', 0xf5, 0x62, b'u', b'p', 0xf5, 0x64, b'p', b'l', b'a', b't', 0xf4]
        );
    }

    #[test]
    fn nested_maps_are_sorted() {
        let inner = MapBuilder::new().int(3, -7).int(1, 2).build();
        let v = Value::Array(vec![inner]);
        assert_eq!(encode(v), vec![0x81, 0xa2, 0x01, 0x02, 0x03, 0x26]);
    }

    #[test]
    fn decode_rejects_trailing_bytes_and_garbage() {
        assert_eq!(decode(&[0xa0, 0x00]), Err(StatusCode::InvalidCbor));
        assert_eq!(decode(&[]), Err(StatusCode::InvalidCbor));
        assert_eq!(decode(&[0xff]), Err(StatusCode::InvalidCbor));
        // A byte string claiming more bytes than present.
        assert_eq!(decode(&[0x58, 0x20, 0x00]), Err(StatusCode::InvalidCbor));
    }

    #[test]
    fn decode_rejects_deep_nesting() {
        let deep = [0x81u8; 40].iter().copied().chain([0x00]).collect::<Vec<_>>();
        assert_eq!(decode(&deep), Err(StatusCode::InvalidCbor));
    }

    #[test]
    fn param_map_errors() {
        assert_eq!(ParamMap::from_value(Value::from(1)).err(), Some(StatusCode::CborUnexpectedType));
        let mut m = ParamMap::from_value(MapBuilder::new().int(1, "x").build()).unwrap();
        assert_eq!(m.required(2).err(), Some(StatusCode::MissingParameter));
        let v = m.required(1).unwrap();
        assert_eq!(expect_bytes(v), Err(StatusCode::CborUnexpectedType));
    }

    #[test]
    fn truncation_respects_utf8() {
        let s = "é".repeat(40); // 80 bytes
        let t = truncate_utf8(s, 64);
        assert_eq!(t.len(), 64);
        let s = format!("a{}", "é".repeat(40));
        let t = truncate_utf8(s, 64);
        assert_eq!(t.len(), 63);
    }
}
