//! Little-endian byte writer and bounds-checked reader shared by the wire format and the state formats.
//!
//! Hand-written rather than serde-derived because the log is the hot path (see the frame throughput report) and
//! because every read of outside bytes must fail with an error, never panic.

/// Appends little-endian values to a buffer.
#[derive(Default)]
pub struct Writer {
    pub bytes: Vec<u8>,
}

impl Writer {
    pub fn with_capacity(capacity_bytes: usize) -> Writer {
        Writer { bytes: Vec::with_capacity(capacity_bytes) }
    }
    pub fn u8(&mut self, value: u8) {
        self.bytes.push(value);
    }
    pub fn u16(&mut self, value: u16) {
        self.bytes.extend_from_slice(&value.to_le_bytes());
    }
    pub fn u32(&mut self, value: u32) {
        self.bytes.extend_from_slice(&value.to_le_bytes());
    }
    pub fn u64(&mut self, value: u64) {
        self.bytes.extend_from_slice(&value.to_le_bytes());
    }
    /// A length-prefixed (u32) byte string.
    pub fn blob(&mut self, value: &[u8]) {
        let length = u32::try_from(value.len()).expect("blobs are bounded far below 4 GiB by their producers");
        self.u32(length);
        self.bytes.extend_from_slice(value);
    }
}

/// The input ended before a value, or a length field points past the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("truncated: needed {needed} bytes at offset {offset}, {available} available")]
pub struct Truncated {
    pub offset: usize,
    pub needed: usize,
    pub available: usize,
}

/// Reads little-endian values, failing cleanly at the end of the input.
pub struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, offset: 0 }
    }
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.offset
    }
    pub fn take(&mut self, length: usize) -> Result<&'a [u8], Truncated> {
        if self.remaining() < length {
            return Err(Truncated { offset: self.offset, needed: length, available: self.remaining() });
        }
        let slice = &self.bytes[self.offset..self.offset + length];
        self.offset += length;
        Ok(slice)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], Truncated> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    pub fn u8(&mut self) -> Result<u8, Truncated> {
        Ok(self.array::<1>()?[0])
    }
    pub fn u16(&mut self) -> Result<u16, Truncated> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    pub fn u32(&mut self) -> Result<u32, Truncated> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Result<u64, Truncated> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub fn blob(&mut self) -> Result<&'a [u8], Truncated> {
        let length = self.u32()? as usize;
        self.take(length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let mut writer = Writer::default();
        writer.u8(1);
        writer.u16(2);
        writer.u32(3);
        writer.u64(4);
        writer.blob(b"five");
        let mut reader = Reader::new(&writer.bytes);
        assert_eq!(reader.u8(), Ok(1));
        assert_eq!(reader.u16(), Ok(2));
        assert_eq!(reader.u32(), Ok(3));
        assert_eq!(reader.u64(), Ok(4));
        assert_eq!(reader.blob(), Ok(&b"five"[..]));
        assert_eq!(reader.remaining(), 0);
        assert!(reader.u8().is_err());
        let mut lying = Reader::new(&[0xff, 0xff, 0xff, 0xff, 0]);
        assert!(lying.blob().is_err(), "a length past the end must be an error");
    }
}
