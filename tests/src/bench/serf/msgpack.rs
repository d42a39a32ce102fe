//! The little MessagePack the Serf RPC protocol needs: encoding maps of strings and unsigned
//! integers (requests), decoding any value (responses), one value at a time from a stream.

use std::collections::BTreeMap;
use std::io::Read;

use anyhow::{bail, Context, Result};

/// A decoded MessagePack value. Strings and binaries are kept apart only as far as Serf needs:
/// Go's codec sends byte slices (an IP address) as either, depending on its settings.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Nil,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Bin(Vec<u8>),
    Array(Vec<Value>),
    Map(Vec<(Value, Value)>),
}

impl Value {
    /// The value under string key `key`, when this is a map.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Map(pairs) => pairs
                .iter()
                .find(|(k, _)| matches!(k, Value::Str(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            Value::Bin(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Str(s) => Some(s.as_bytes()),
            Value::Bin(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i128> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }

    /// A map with string keys and string values (Serf's tags).
    pub fn as_string_map(&self) -> BTreeMap<String, String> {
        match self {
            Value::Map(pairs) => pairs
                .iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.as_str()?.to_string())))
                .collect(),
            _ => BTreeMap::new(),
        }
    }
}

/// A request field value.
pub enum Field<'a> {
    Str(&'a str),
    Uint(u64),
}

/// Encodes a map of string keys, in the given order.
pub fn encode_map(fields: &[(&str, Field<'_>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let n = fields.len();
    if n < 16 {
        out.push(0x80 | n as u8);
    } else {
        out.push(0xde);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    }
    for (key, value) in fields {
        encode_str(&mut out, key);
        match value {
            Field::Str(s) => encode_str(&mut out, s),
            Field::Uint(v) => encode_uint(&mut out, *v),
        }
    }
    out
}

fn encode_str(out: &mut Vec<u8>, s: &str) {
    let len = s.len();
    if len < 32 {
        out.push(0xa0 | len as u8);
    } else if len < 256 {
        out.push(0xd9);
        out.push(len as u8);
    } else if len < 65536 {
        out.push(0xda);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0xdb);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }
    out.extend_from_slice(s.as_bytes());
}

fn encode_uint(out: &mut Vec<u8>, v: u64) {
    if v < 128 {
        out.push(v as u8);
    } else if v <= u8::MAX as u64 {
        out.extend_from_slice(&[0xcc, v as u8]);
    } else if v <= u16::MAX as u64 {
        out.push(0xcd);
        out.extend_from_slice(&(v as u16).to_be_bytes());
    } else if v <= u32::MAX as u64 {
        out.push(0xce);
        out.extend_from_slice(&(v as u32).to_be_bytes());
    } else {
        out.push(0xcf);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// Nesting deeper than this is refused (Serf's documents are three levels deep).
const MAX_DEPTH: usize = 32;

/// Reads exactly one value from `input`.
pub fn decode(input: &mut impl Read) -> Result<Value> {
    decode_at(input, 0)
}

fn decode_at(input: &mut impl Read, depth: usize) -> Result<Value> {
    if depth > MAX_DEPTH {
        bail!("MessagePack value nested deeper than {MAX_DEPTH}");
    }
    let tag = read_u8(input)?;
    Ok(match tag {
        0x00..=0x7f => Value::Int(tag as i128),
        0x80..=0x8f => decode_map(input, (tag & 0x0f) as usize, depth)?,
        0x90..=0x9f => decode_array(input, (tag & 0x0f) as usize, depth)?,
        0xa0..=0xbf => decode_str(input, (tag & 0x1f) as usize)?,
        0xc0 => Value::Nil,
        0xc2 => Value::Bool(false),
        0xc3 => Value::Bool(true),
        0xc4..=0xc6 => {
            let len = read_be(input, 1 << (tag - 0xc4))? as usize;
            Value::Bin(read_bytes(input, len)?)
        }
        0xc7..=0xc9 => {
            let len = read_be(input, 1 << (tag - 0xc7))? as usize;
            read_bytes(input, len + 1)?;
            Value::Nil
        }
        0xca => Value::Float(f32::from_bits(read_be(input, 4)? as u32) as f64),
        0xcb => Value::Float(f64::from_bits(read_be(input, 8)?)),
        0xcc..=0xcf => Value::Int(read_be(input, 1 << (tag - 0xcc))? as i128),
        0xd0..=0xd3 => {
            let width = 1usize << (tag - 0xd0);
            let raw = read_be(input, width)?;
            let shift = 64 - 8 * width as u32;
            Value::Int((((raw << shift) as i64) >> shift) as i128)
        }
        0xd4..=0xd8 => {
            read_bytes(input, 1 + (1 << (tag - 0xd4)))?;
            Value::Nil
        }
        0xd9..=0xdb => {
            let len = read_be(input, 1 << (tag - 0xd9))? as usize;
            decode_str(input, len)?
        }
        0xdc | 0xdd => {
            let len = read_be(input, if tag == 0xdc { 2 } else { 4 })? as usize;
            decode_array(input, len, depth)?
        }
        0xde | 0xdf => {
            let len = read_be(input, if tag == 0xde { 2 } else { 4 })? as usize;
            decode_map(input, len, depth)?
        }
        0xe0..=0xff => Value::Int((tag as i8) as i128),
        0xc1 => bail!("MessagePack: reserved byte 0xc1"),
    })
}

fn decode_map(input: &mut impl Read, n: usize, depth: usize) -> Result<Value> {
    let mut pairs = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let k = decode_at(input, depth + 1)?;
        let v = decode_at(input, depth + 1)?;
        pairs.push((k, v));
    }
    Ok(Value::Map(pairs))
}

fn decode_array(input: &mut impl Read, n: usize, depth: usize) -> Result<Value> {
    let mut items = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        items.push(decode_at(input, depth + 1)?);
    }
    Ok(Value::Array(items))
}

fn decode_str(input: &mut impl Read, len: usize) -> Result<Value> {
    let bytes = read_bytes(input, len)?;
    Ok(match String::from_utf8(bytes) {
        Ok(s) => Value::Str(s),
        Err(e) => Value::Bin(e.into_bytes()),
    })
}

fn read_u8(input: &mut impl Read) -> Result<u8> {
    let mut b = [0u8; 1];
    input.read_exact(&mut b).context("reading MessagePack")?;
    Ok(b[0])
}

fn read_be(input: &mut impl Read, width: usize) -> Result<u64> {
    let mut b = [0u8; 8];
    input
        .read_exact(&mut b[8 - width..])
        .context("reading MessagePack")?;
    Ok(u64::from_be_bytes(b))
}

fn read_bytes(input: &mut impl Read, len: usize) -> Result<Vec<u8>> {
    if len > 64 << 20 {
        bail!("MessagePack item of {len} bytes is implausibly large");
    }
    let mut buf = vec![0u8; len];
    input.read_exact(&mut buf).context("reading MessagePack")?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_what_it_decodes() {
        let long = "x".repeat(300);
        let bytes = encode_map(&[
            ("Command", Field::Str("members")),
            ("Seq", Field::Uint(70000)),
            ("Long", Field::Str(&long)),
        ]);
        let v = decode(&mut bytes.as_slice()).unwrap();
        assert_eq!(v.get("Command").and_then(Value::as_str), Some("members"));
        assert_eq!(v.get("Seq").and_then(Value::as_int), Some(70000));
        assert_eq!(v.get("Long").and_then(Value::as_str), Some(long.as_str()));
    }

    #[test]
    fn decodes_signed_binary_and_nested_values() {
        // {"A": [-1, -200, bin(1,2)], "B": nil}
        let raw = [
            0x82, 0xa1, b'A', 0x93, 0xff, 0xd1, 0xff, 0x38, 0xc4, 2, 1, 2, 0xa1, b'B', 0xc0,
        ];
        let v = decode(&mut raw.as_slice()).unwrap();
        let a = v.get("A").and_then(Value::as_array).unwrap();
        assert_eq!(a[0], Value::Int(-1));
        assert_eq!(a[1], Value::Int(-200));
        assert_eq!(a[2].as_bytes(), Some(&[1u8, 2][..]));
        assert_eq!(v.get("B"), Some(&Value::Nil));
    }

    #[test]
    fn truncated_input_is_an_error() {
        assert!(decode(&mut [0x92, 0x01].as_slice()).is_err());
    }
}
