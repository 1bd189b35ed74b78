//! A deliberately small, independent MessagePack reader (no rmp involved), used to check the
//! wire shape the encoder produces (maps with string keys, `bin` payloads, float64 times) and to
//! print the annotated hex dumps in PROTOCOL.md.

use std::fmt::Write as _;

/// A decoded MessagePack value that keeps the distinctions the contract cares about.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Nil,
    Bool(bool),
    UInt(u64),
    Int(i64),
    F32(f32),
    F64(f64),
    Str(String),
    Bin(Vec<u8>),
    Array(Vec<Self>),
    Map(Vec<(Self, Self)>),
}

impl Value {
    /// The keys of a map whose keys are all strings, in wire order.
    pub(crate) fn keys(&self) -> Vec<&str> {
        match self {
            Self::Map(pairs) => pairs
                .iter()
                .map(|(k, _)| match k {
                    Self::Str(s) => s.as_str(),
                    other => panic!("non-string map key {other:?}"),
                })
                .collect(),
            other => panic!("not a map: {other:?}"),
        }
    }

    pub(crate) fn get(&self, key: &str) -> &Self {
        match self {
            Self::Map(pairs) => pairs
                .iter()
                .find(|(k, _)| matches!(k, Self::Str(s) if s == key))
                .map(|(_, v)| v)
                .unwrap_or_else(|| panic!("no key {key:?} in {self:?}")),
            other => panic!("not a map: {other:?}"),
        }
    }
}

/// Parses exactly one value spanning all of `bytes`.
pub(crate) fn parse(bytes: &[u8]) -> Result<Value, String> {
    let mut reader = Reader {
        bytes,
        pos: 0,
        lines: None,
    };
    let value = reader.value(0, "")?;
    if reader.pos != bytes.len() {
        return Err(format!("{} trailing bytes", bytes.len() - reader.pos));
    }
    Ok(value)
}

/// One line per MessagePack element: offset, raw bytes, what they mean.
pub(crate) fn annotate(bytes: &[u8]) -> String {
    let mut reader = Reader {
        bytes,
        pos: 0,
        lines: Some(Vec::new()),
    };
    reader.value(0, "").expect("annotate a valid encoding");
    assert_eq!(reader.pos, bytes.len(), "trailing bytes");
    let mut out = String::from("offset  bytes (hex)                                    meaning\n");
    for line in reader.lines.unwrap_or_default() {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// Lowercase hex, bytes separated by spaces.
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        write!(out, "{b:02x}").unwrap();
    }
    out
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    lines: Option<Vec<String>>,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| format!("truncated at offset {}", self.pos))?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn uint(&mut self, n: usize) -> Result<u64, String> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    }

    fn emit(&mut self, start: usize, depth: usize, role: &str, meaning: String) {
        let raw = hex(&self.bytes[start..self.pos]);
        if let Some(lines) = &mut self.lines {
            let indent = "  ".repeat(depth);
            lines.push(format!("{start:04x}    {raw:<45}  {indent}{role}{meaning}"));
        }
    }

    fn value(&mut self, depth: usize, role: &str) -> Result<Value, String> {
        if depth > 64 {
            return Err("nested too deeply".into());
        }
        let start = self.pos;
        let marker = self.take(1)?[0];
        let (len, kind) = match marker {
            0x00..=0x7f => {
                self.emit(start, depth, role, format!("positive fixint: {marker}"));
                return Ok(Value::UInt(u64::from(marker)));
            }
            0xe0..=0xff => {
                let v = i64::from(marker as i8);
                self.emit(start, depth, role, format!("negative fixint: {v}"));
                return Ok(Value::Int(v));
            }
            0xc0 => {
                self.emit(start, depth, role, "nil".into());
                return Ok(Value::Nil);
            }
            0xc2 | 0xc3 => {
                let v = marker == 0xc3;
                self.emit(start, depth, role, format!("{v}"));
                return Ok(Value::Bool(v));
            }
            0xcc..=0xcf => {
                let width = 1usize << (marker - 0xcc);
                let v = self.uint(width)?;
                self.emit(start, depth, role, format!("uint {}: {v}", width * 8));
                return Ok(Value::UInt(v));
            }
            0xd0..=0xd3 => {
                let width = 1usize << (marker - 0xd0);
                let raw = self.uint(width)?;
                let shift = 64 - 8 * width as u32;
                let v = ((raw << shift) as i64) >> shift;
                self.emit(start, depth, role, format!("int {}: {v}", width * 8));
                return Ok(Value::Int(v));
            }
            0xca => {
                let v = f32::from_bits(self.uint(4)? as u32);
                self.emit(start, depth, role, format!("float 32: {v}"));
                return Ok(Value::F32(v));
            }
            0xcb => {
                let v = f64::from_bits(self.uint(8)?);
                self.emit(start, depth, role, format!("float 64: {v}"));
                return Ok(Value::F64(v));
            }
            0xa0..=0xbf => (usize::from(marker & 0x1f), "fixstr"),
            0xd9 => (self.uint(1)? as usize, "str 8"),
            0xda => (self.uint(2)? as usize, "str 16"),
            0xdb => (self.uint(4)? as usize, "str 32"),
            0xc4 => (self.uint(1)? as usize, "bin 8"),
            0xc5 => (self.uint(2)? as usize, "bin 16"),
            0xc6 => (self.uint(4)? as usize, "bin 32"),
            0x90..=0x9f => (usize::from(marker & 0x0f), "fixarray"),
            0xdc => (self.uint(2)? as usize, "array 16"),
            0xdd => (self.uint(4)? as usize, "array 32"),
            0x80..=0x8f => (usize::from(marker & 0x0f), "fixmap"),
            0xde => (self.uint(2)? as usize, "map 16"),
            0xdf => (self.uint(4)? as usize, "map 32"),
            other => return Err(format!("unsupported marker {other:#04x}")),
        };
        if kind.contains("str") {
            let raw = self.take(len)?;
            let s = std::str::from_utf8(raw).map_err(|e| e.to_string())?;
            self.emit(start, depth, role, format!("{kind}, length {len}: {s:?}"));
            Ok(Value::Str(s.to_owned()))
        } else if kind.contains("bin") {
            let raw = self.take(len)?.to_vec();
            let shown = if raw.len() <= 8 {
                hex(&raw)
            } else {
                format!("{} …", hex(&raw[..8]))
            };
            self.emit(start, depth, role, format!("{kind}, length {len}: {shown}"));
            Ok(Value::Bin(raw))
        } else if kind.contains("array") {
            let noun = if len == 1 { "element" } else { "elements" };
            self.emit(start, depth, role, format!("{kind}, {len} {noun}"));
            let mut items = Vec::new();
            for _ in 0..len {
                items.push(self.value(depth + 1, "item  ")?);
            }
            Ok(Value::Array(items))
        } else {
            let noun = if len == 1 { "pair" } else { "pairs" };
            self.emit(
                start,
                depth,
                role,
                format!("{kind}, {len} key/value {noun}"),
            );
            let mut pairs = Vec::new();
            for _ in 0..len {
                let key = self.value(depth + 1, "key   ")?;
                let value = self.value(depth + 1, "value ")?;
                pairs.push((key, value));
            }
            Ok(Value::Map(pairs))
        }
    }
}
