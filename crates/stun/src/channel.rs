//! ChannelData framing (RFC 8656 §12.4): the relay hot path. Nothing here allocates.

use std::fmt;

/// ChannelData header size.
pub const HEADER_LEN: usize = 4;

/// A bindable channel number: 0x4000..=0x7FFF.
///
/// RFC 8656 §12 narrowed the range to 0x4000..=0x4FFF, but RFC 5766 clients
/// (coturn's own `turnutils_uclient` among them) still pick numbers up to
/// 0x7FFF, and every such number starts with a byte that RFC 7983
/// demultiplexing reads as ChannelData, so accepting them is safe.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelNumber(u16);

impl ChannelNumber {
    /// Lowest bindable channel.
    pub const MIN: u16 = 0x4000;
    /// Highest bindable channel (RFC 5766 §11).
    pub const MAX: u16 = 0x7FFF;

    /// Parse a bindable channel number.
    pub fn new(n: u16) -> Option<ChannelNumber> {
        (Self::MIN..=Self::MAX).contains(&n).then_some(ChannelNumber(n))
    }
    /// The raw value.
    pub fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Debug for ChannelNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:04x}", self.0)
    }
}

/// Why a packet is not a usable ChannelData message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChannelDataError {
    /// Fewer than 4 bytes, or fewer than the length field announces.
    #[error("truncated ChannelData: {have} bytes, need {need}")]
    Truncated {
        /// Bytes present.
        have: usize,
        /// Bytes needed.
        need: usize,
    },
    /// The channel number is outside 0x4000..=0x7FFF.
    #[error("channel number 0x{0:04x} is outside 0x4000..=0x7FFF")]
    BadChannel(u16),
}

/// A decoded ChannelData message borrowing its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelData<'a> {
    /// The channel.
    pub channel: ChannelNumber,
    /// The application data.
    pub data: &'a [u8],
}

impl<'a> ChannelData<'a> {
    /// Decode a ChannelData message. Trailing bytes (padding over TCP, or padding
    /// some UDP senders add) are ignored, as RFC 8656 §12.5 allows.
    pub fn decode(packet: &'a [u8]) -> Result<ChannelData<'a>, ChannelDataError> {
        if packet.len() < HEADER_LEN {
            return Err(ChannelDataError::Truncated {
                have: packet.len(),
                need: HEADER_LEN,
            });
        }
        let raw = u16::from_be_bytes([packet[0], packet[1]]);
        let channel = ChannelNumber::new(raw).ok_or(ChannelDataError::BadChannel(raw))?;
        let len = u16::from_be_bytes([packet[2], packet[3]]) as usize;
        let data = packet
            .get(HEADER_LEN..HEADER_LEN + len)
            .ok_or(ChannelDataError::Truncated {
                have: packet.len(),
                need: HEADER_LEN + len,
            })?;
        Ok(ChannelData { channel, data })
    }

    /// The 4-byte header for `len` bytes of data on `channel`.
    pub fn header(channel: ChannelNumber, len: u16) -> [u8; HEADER_LEN] {
        let c = channel.get().to_be_bytes();
        let l = len.to_be_bytes();
        [c[0], c[1], l[0], l[1]]
    }

    /// Encode into `out`; returns the bytes written, padded to 4 when `pad` (TCP), or
    /// None when `out` is too small or `data` longer than 65535 bytes.
    pub fn encode_into(channel: ChannelNumber, data: &[u8], pad: bool, out: &mut [u8]) -> Option<usize> {
        let len = u16::try_from(data.len()).ok()?;
        let body = if pad {
            data.len().next_multiple_of(4)
        } else {
            data.len()
        };
        let total = HEADER_LEN + body;
        let out = out.get_mut(..total)?;
        out[..HEADER_LEN].copy_from_slice(&Self::header(channel, len));
        out[HEADER_LEN..HEADER_LEN + data.len()].copy_from_slice(data);
        out[HEADER_LEN + data.len()..].fill(0);
        Some(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_range_is_enforced() {
        // RFC 5766 §11: 0x4000 through 0x7FFF (RFC 8656 keeps 0x4000 as the floor).
        assert!(ChannelNumber::new(0x3FFF).is_none());
        assert!(ChannelNumber::new(0x4000).is_some());
        assert!(ChannelNumber::new(0x7FFF).is_some());
        assert!(ChannelNumber::new(0x8000).is_none());
        assert_eq!(
            ChannelData::decode(&[0x3F, 0xFF, 0, 0]),
            Err(ChannelDataError::BadChannel(0x3FFF))
        );
    }

    #[test]
    fn golden_bytes_with_and_without_padding() {
        let ch = ChannelNumber::new(0x4001).unwrap();
        let mut out = [0xEEu8; 16];
        assert_eq!(ChannelData::encode_into(ch, b"abcde", false, &mut out), Some(9));
        assert_eq!(&out[..9], &[0x40, 0x01, 0x00, 0x05, b'a', b'b', b'c', b'd', b'e']);
        assert_eq!(ChannelData::encode_into(ch, b"abcde", true, &mut out), Some(12));
        assert_eq!(
            &out[..12],
            &[0x40, 0x01, 0x00, 0x05, b'a', b'b', b'c', b'd', b'e', 0, 0, 0]
        );
        let d = ChannelData::decode(&out[..12]).unwrap();
        assert_eq!(d.channel, ch);
        assert_eq!(d.data, b"abcde");
        assert_eq!(ChannelData::encode_into(ch, b"abcde", true, &mut out[..11]), None);
    }

    #[test]
    fn truncated_payload_is_an_error() {
        assert_eq!(
            ChannelData::decode(&[0x40, 0x00, 0x00, 0x08, 1, 2]),
            Err(ChannelDataError::Truncated { have: 6, need: 12 })
        );
    }
}
