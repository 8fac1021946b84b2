//! Fuzz entry points, shared by `fuzz/` (libFuzzer) and the corpus replay test.

use crate::{tcp_frame_len, ChannelData, Message, MessageBuilder};

/// Decode `data` every way a server would; re-encode what decodes and check it
/// decodes to the same attributes. Panics only on a codec bug.
pub fn decode(data: &[u8]) {
    let _ = ChannelData::decode(data);
    if let Ok(Some(n)) = tcp_frame_len(data) {
        assert!(n <= data.len(), "frame longer than the buffer");
    }
    let Ok(msg) = Message::decode(data) else {
        return;
    };
    let _ = msg.verify_integrity(b"key");
    let mut b = MessageBuilder::new(msg.class(), msg.method(), msg.transaction_id());
    for a in msg.attributes() {
        b.add(a);
    }
    let raw = b.finish();
    let again = Message::decode(&raw).expect("a re-encoded message decodes");
    assert_eq!(again.attributes(), msg.attributes(), "attributes survive a round trip");
}
