//! Writes values in the byte layout `arbitrary` 1.x reads them from, so that
//! the seed corpus of a structured target can hold meaningful inputs.
//!
//! Fixed-size values and collection elements are read from the front of the
//! data; string lengths are read from the back, with a width that depends on
//! how much data is left at that point. The encoder therefore records the
//! operations and lays the bytes out at the end. Callers check the result by
//! decoding it (see `examples/seed_corpus.rs`).

enum Op {
    Front(Vec<u8>),
    Len(usize),
}

#[derive(Default)]
pub struct Encoder {
    ops: Vec<Op>,
}

impl Encoder {
    pub fn new() -> Encoder {
        Encoder::default()
    }

    fn front(&mut self, bytes: &[u8]) -> &mut Self {
        self.ops.push(Op::Front(bytes.to_vec()));
        self
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.front(&[v])
    }

    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(u8::from(v))
    }

    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.front(&v.to_le_bytes())
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.front(&v.to_le_bytes())
    }

    pub fn i32(&mut self, v: i32) -> &mut Self {
        self.front(&v.to_le_bytes())
    }

    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.front(&v.to_le_bytes())
    }

    pub fn f64(&mut self, v: f64) -> &mut Self {
        self.front(&v.to_bits().to_le_bytes())
    }

    /// Enum variant `index` of `count`: derived enums map a `u32` `d` to
    /// `(d * count) >> 32`.
    pub fn variant(&mut self, index: u32, count: u32) -> &mut Self {
        assert!(index < count);
        let d = (u64::from(index) << 32).div_ceil(u64::from(count));
        self.u32(u32::try_from(d).expect("below 2^32"))
    }

    pub fn some(&mut self) -> &mut Self {
        self.bool(true)
    }

    pub fn none(&mut self) -> &mut Self {
        self.bool(false)
    }

    /// A `Vec<u8>`: every element behind a "continue" flag, then a stop flag.
    pub fn byte_vec(&mut self, bytes: &[u8]) -> &mut Self {
        for &b in bytes {
            self.bool(true).u8(b);
        }
        self.bool(false)
    }

    /// A `String` (not the last field): its length from the back, its bytes from the front.
    pub fn string(&mut self, s: &str) -> &mut Self {
        self.ops.push(Op::Len(s.len()));
        self.front(s.as_bytes())
    }

    /// A `String` that is the last field read: all the remaining data, no length.
    pub fn rest(&mut self, s: &str) -> &mut Self {
        self.front(s.as_bytes())
    }

    /// Elements of a `Vec<T>` are each preceded by a `true` flag ...
    pub fn item(&mut self) -> &mut Self {
        self.bool(true)
    }

    /// ... and the list ends with a `false` flag.
    pub fn end(&mut self) -> &mut Self {
        self.bool(false)
    }

    /// The bytes: front operations in order, then the length fields, the first
    /// one read last.
    pub fn finish(&self) -> Vec<u8> {
        let front_total: usize = self
            .ops
            .iter()
            .map(|op| match op {
                Op::Front(b) => b.len(),
                Op::Len(_) => 0,
            })
            .sum();
        let lens = self
            .ops
            .iter()
            .filter(|op| matches!(op, Op::Len(_)))
            .count();
        // The width of each length field depends on the data left when it is
        // read, which depends on the widths of the later fields: iterate.
        let mut widths = vec![1usize; lens];
        let remaining_at = |widths: &[usize]| {
            let back_total: usize = widths.iter().sum();
            let mut front_used = 0;
            let mut back_used = 0;
            let mut out = Vec::new();
            for op in &self.ops {
                match op {
                    Op::Front(b) => front_used += b.len(),
                    Op::Len(_) => {
                        out.push(front_total - front_used + back_total - back_used);
                        back_used += widths[out.len() - 1];
                    }
                }
            }
            out
        };
        loop {
            let next: Vec<usize> = remaining_at(&widths)
                .into_iter()
                .map(|remaining| match remaining {
                    0 => 0,
                    1..=256 => 1,
                    257..=65_537 => 2,
                    _ => 4,
                })
                .collect();
            if next == widths {
                break;
            }
            widths = next;
        }
        let remaining = remaining_at(&widths);

        let mut front = Vec::with_capacity(front_total);
        let mut fields = Vec::new();
        for op in &self.ops {
            match op {
                Op::Front(b) => front.extend_from_slice(b),
                Op::Len(len) => {
                    let i = fields.len();
                    fields.push(length_field(*len, widths[i], remaining[i]));
                }
            }
        }
        for field in fields.iter().rev() {
            front.extend_from_slice(field);
        }
        front
    }
}

/// A length read as `int_in_range(0..=remaining - width)` from `width` bytes,
/// big-endian, using only as many bytes as the range needs.
fn length_field(len: usize, width: usize, remaining: usize) -> Vec<u8> {
    if width == 0 || remaining == 1 {
        assert_eq!(len, 0, "no data left for a length");
        return vec![0; width];
    }
    let max = remaining - width;
    assert!(len <= max, "a length beyond the data");
    let used = (1..=width)
        .find(|&k| k == width || (max >> (k * 8)) == 0)
        .expect("some width");
    let mut field = vec![0; width];
    for (i, byte) in field[..used].iter_mut().enumerate() {
        *byte = (len >> ((used - 1 - i) * 8)) as u8;
    }
    field
}
