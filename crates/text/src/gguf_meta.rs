//! GGUF metadata, read with every length checked against what is left of
//! the input, so a forged count or string length is a typed error rather
//! than a huge allocation (candle's reader trusts them). Tensor data is not
//! read: the model loader does that.

use std::collections::HashMap;

use crate::{Result, TextError};

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// Any unsigned integer type.
    Uint(u64),
    /// Any signed integer type.
    Int(i64),
    /// `f32` or `f64`.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A string.
    Str(String),
    /// An array.
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// As an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::Uint(v) => Some(v),
            Self::Int(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// As a float, if it is any number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::Float(v) => Some(v),
            Self::Uint(v) => Some(v as f64),
            Self::Int(v) => Some(v as f64),
            _ => None,
        }
    }

    /// As a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// As a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }

    /// As an array.
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            Self::Array(v) => Some(v),
            _ => None,
        }
    }
}

/// The key/value metadata of a GGUF file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GgufMetadata {
    /// Format version (2 or 3).
    pub version: u32,
    /// Tensors the file declares.
    pub tensor_count: u64,
    /// Every key and its value.
    pub values: HashMap<String, MetaValue>,
}

const MAGIC: &[u8; 4] = b"GGUF";
/// Nesting of arrays in arrays accepted (real files use one level).
const MAX_DEPTH: usize = 4;

struct Cursor<'a> {
    data: &'a [u8],
    at: usize,
}

fn bad(reason: impl Into<String>) -> TextError {
    TextError::Gguf(reason.into())
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| bad(format!("{n} bytes needed at offset {}, file ends", self.at)))?;
        let bytes = &self.data[self.at..end];
        self.at = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn left(&self) -> usize {
        self.data.len() - self.at
    }

    /// A count that must fit in what is left, each item taking at least
    /// `min_item` bytes.
    fn count(&mut self, min_item: usize) -> Result<usize> {
        let n = self.u64()?;
        let n = usize::try_from(n).map_err(|_| bad(format!("count {n} too large")))?;
        if n.saturating_mul(min_item.max(1)) > self.left() {
            return Err(bad(format!(
                "count {n} cannot fit in the {} bytes left",
                self.left()
            )));
        }
        Ok(n)
    }

    fn string(&mut self) -> Result<String> {
        let n = self.count(1)?;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| bad("a string is not UTF-8"))
    }

    fn value(&mut self, kind: u32, depth: usize) -> Result<MetaValue> {
        Ok(match kind {
            0 => MetaValue::Uint(self.array::<1>()?[0].into()),
            1 => MetaValue::Int(i8::from_le_bytes(self.array()?).into()),
            2 => MetaValue::Uint(u16::from_le_bytes(self.array()?).into()),
            3 => MetaValue::Int(i16::from_le_bytes(self.array()?).into()),
            4 => MetaValue::Uint(self.u32()?.into()),
            5 => MetaValue::Int(i32::from_le_bytes(self.array()?).into()),
            6 => MetaValue::Float(f32::from_le_bytes(self.array()?).into()),
            7 => MetaValue::Bool(self.array::<1>()?[0] != 0),
            8 => MetaValue::Str(self.string()?),
            9 => {
                if depth >= MAX_DEPTH {
                    return Err(bad("arrays nested too deep"));
                }
                let item = self.u32()?;
                let n = self.count(min_size(item))?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(item, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::Uint(self.u64()?),
            11 => MetaValue::Int(i64::from_le_bytes(self.array()?)),
            12 => MetaValue::Float(f64::from_le_bytes(self.array()?)),
            other => return Err(bad(format!("unknown value type {other}"))),
        })
    }
}

/// The fewest bytes one value of GGUF type `kind` takes.
fn min_size(kind: u32) -> usize {
    match kind {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        // Strings and arrays carry an 8-byte length.
        8..=12 => 8,
        _ => 1,
    }
}

impl GgufMetadata {
    /// Read the header and metadata at the start of `data` (the whole file
    /// or at least its metadata part).
    pub fn parse(data: &[u8]) -> Result<Self> {
        let mut c = Cursor { data, at: 0 };
        if c.take(4)? != MAGIC {
            return Err(bad("not a GGUF file (magic)"));
        }
        let version = c.u32()?;
        if !(2..=3).contains(&version) {
            return Err(bad(format!("unsupported version {version}")));
        }
        let tensor_count = c.u64()?;
        // Each key/value pair takes at least a key length, a type and a byte.
        let n = c.count(8 + 4 + 1)?;
        let mut values = HashMap::with_capacity(n.min(1024));
        for _ in 0..n {
            let key = c.string()?;
            let kind = c.u32()?;
            let value = c.value(kind, 0)?;
            values.insert(key, value);
        }
        Ok(Self {
            version,
            tensor_count,
            values,
        })
    }

    /// Read a GGUF file's metadata from `path` (memory-mapped would be no
    /// faster: metadata is read once, front to back).
    pub fn read(path: &std::path::Path) -> Result<Self> {
        let data = std::fs::read(path).map_err(|source| TextError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&data)
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.values.get(key)
    }

    /// The string at `key`.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(MetaValue::as_str)
    }

    /// The unsigned integer at `key`.
    pub fn u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(MetaValue::as_u64)
    }

    /// The boolean at `key`.
    pub fn bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(MetaValue::as_bool)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kv: u64) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend(0u64.to_le_bytes());
        out.extend(kv.to_le_bytes());
        out
    }

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }

    #[test]
    fn reads_scalars_strings_and_arrays() {
        let mut f = header(3);
        string(&mut f, "a.u32");
        f.extend(4u32.to_le_bytes());
        f.extend(7u32.to_le_bytes());
        string(&mut f, "a.str");
        f.extend(8u32.to_le_bytes());
        string(&mut f, "héllo");
        string(&mut f, "a.arr");
        f.extend(9u32.to_le_bytes());
        f.extend(8u32.to_le_bytes());
        f.extend(2u64.to_le_bytes());
        string(&mut f, "x");
        string(&mut f, "y");
        let m = GgufMetadata::parse(&f).unwrap();
        assert_eq!(m.u64("a.u32"), Some(7));
        assert_eq!(m.str("a.str"), Some("héllo"));
        let arr = m.get("a.arr").and_then(MetaValue::as_array).unwrap();
        assert_eq!(
            arr,
            [MetaValue::Str("x".into()), MetaValue::Str("y".into())]
        );
    }

    #[test]
    fn forged_lengths_are_errors_not_allocations() {
        // A key/value count of 2^60.
        let f = header(1 << 60);
        assert!(matches!(GgufMetadata::parse(&f), Err(TextError::Gguf(_))));
        // A string that claims to be longer than the file.
        let mut f = header(1);
        f.extend(u64::MAX.to_le_bytes());
        assert!(GgufMetadata::parse(&f).is_err());
        // An array of 2^40 u64s.
        let mut f = header(1);
        string(&mut f, "k");
        f.extend(9u32.to_le_bytes());
        f.extend(10u32.to_le_bytes());
        f.extend((1u64 << 40).to_le_bytes());
        assert!(GgufMetadata::parse(&f).is_err());
        assert!(GgufMetadata::parse(b"GGML").is_err());
        assert!(GgufMetadata::parse(b"").is_err());
    }
}
