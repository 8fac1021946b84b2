//! MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 and FINGERPRINT (RFC 8489 §14.5-14.7).

use hmac::{Hmac, Mac};

use crate::{attr, HEADER_LEN};

/// RFC 8489 §14.7: the CRC-32 is XORed with this so STUN can't be confused with other CRC'd protocols.
pub const FINGERPRINT_XOR: u32 = 0x5354_554E;

/// Which HMAC protects a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IntegrityKind {
    /// MESSAGE-INTEGRITY, HMAC-SHA1, 20 bytes.
    Sha1,
    /// MESSAGE-INTEGRITY-SHA256, HMAC-SHA256, 32 bytes.
    Sha256,
}

impl IntegrityKind {
    fn attr_type(self) -> u16 {
        match self {
            IntegrityKind::Sha1 => attr::MESSAGE_INTEGRITY,
            IntegrityKind::Sha256 => attr::MESSAGE_INTEGRITY_SHA256,
        }
    }
}

/// CRC-32 of `msg_before_fp` with the length field adjusted to cover the FINGERPRINT that follows.
pub(crate) fn fingerprint(msg_before_fp: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    let len = (msg_before_fp.len() + 8 - HEADER_LEN) as u16;
    h.update(&msg_before_fp[..2]);
    h.update(&len.to_be_bytes());
    h.update(&msg_before_fp[4..]);
    h.finalize() ^ FINGERPRINT_XOR
}

/// HMAC over the message up to the integrity attribute at `offset`, with the length
/// field set as if that attribute, `value_len` bytes long, were the last (RFC 8489 §14.5).
/// Returns the full MAC length written to `out`.
fn mac(msg: &[u8], offset: usize, kind: IntegrityKind, key: &[u8], value_len: usize, out: &mut [u8; 32]) -> usize {
    let len = (offset + 4 + value_len - HEADER_LEN) as u16;
    let parts: [&[u8]; 3] = [&msg[..2], &len.to_be_bytes(), &msg[4..offset]];
    match kind {
        IntegrityKind::Sha1 => {
            let mut m = Hmac::<sha1::Sha1>::new_from_slice(key).expect("HMAC takes any key length");
            parts.iter().for_each(|p| m.update(p));
            out[..20].copy_from_slice(&m.finalize().into_bytes());
            20
        }
        IntegrityKind::Sha256 => {
            let mut m = Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key length");
            parts.iter().for_each(|p| m.update(p));
            out.copy_from_slice(&m.finalize().into_bytes());
            32
        }
    }
}

/// Verify the integrity attribute whose header starts at `offset` in `msg`.
/// MESSAGE-INTEGRITY-SHA256 may be truncated to 16..32 bytes; the length field
/// then covers the attribute as sent (RFC 8489 §14.6).
pub(crate) fn verify(msg: &[u8], offset: usize, kind: IntegrityKind, key: &[u8]) -> bool {
    let Some(len_bytes) = msg.get(offset + 2..offset + 4) else {
        return false;
    };
    let given_len = u16::from_be_bytes([len_bytes[0], len_bytes[1]]) as usize;
    let Some(given) = msg.get(offset + 4..offset + 4 + given_len) else {
        return false;
    };
    let mut out = [0u8; 32];
    let n = mac(msg, offset, kind, key, given_len, &mut out);
    // Constant-time comparison: integrity checks face attackers.
    given_len <= n
        && out[..given_len]
            .iter()
            .zip(given)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Append an integrity attribute over everything in `buf` so far.
pub(crate) fn append(buf: &mut Vec<u8>, kind: IntegrityKind, key: &[u8]) {
    let offset = buf.len();
    let mut out = [0u8; 32];
    let full = match kind {
        IntegrityKind::Sha1 => 20,
        IntegrityKind::Sha256 => 32,
    };
    let n = mac(buf, offset, kind, key, full, &mut out);
    buf.extend_from_slice(&kind.attr_type().to_be_bytes());
    buf.extend_from_slice(&(n as u16).to_be_bytes());
    buf.extend_from_slice(&out[..n]);
    set_len(buf);
}

/// Append FINGERPRINT over everything in `buf` so far.
pub(crate) fn append_fingerprint(buf: &mut Vec<u8>) {
    let crc = fingerprint(buf);
    buf.extend_from_slice(&attr::FINGERPRINT.to_be_bytes());
    buf.extend_from_slice(&4u16.to_be_bytes());
    buf.extend_from_slice(&crc.to_be_bytes());
    set_len(buf);
}

fn set_len(buf: &mut [u8]) {
    let len = (buf.len() - HEADER_LEN) as u16;
    buf[2..4].copy_from_slice(&len.to_be_bytes());
}
