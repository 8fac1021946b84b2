//! One entry of the cluster's log: an input to the hub, as the node that took it
//! appended it to the Redis Stream, and the one decode from the stream's reply to it.

use firstcall_signal::hub::ConnId;
use firstcall_signal::protocol::UserId;
use serde::{Deserialize, Serialize};

/// A node of the cluster, numbered by Redis (`INCR`) when it starts: a restarted
/// process is a new node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub u32);

/// Bits of a [`ConnId`] below the node number.
const CONN_BITS: u32 = 40;

impl NodeId {
    /// The `n`th socket this node opened.
    pub fn conn(self, n: u64) -> ConnId {
        ConnId((u64::from(self.0) << CONN_BITS) | (n & ((1 << CONN_BITS) - 1)))
    }

    /// The node whose socket `conn` is.
    pub fn of(conn: ConnId) -> NodeId {
        NodeId((conn.0 >> CONN_BITS) as u32)
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What the appending node's check of a hello's token said: every replica takes the
/// same decision, whatever its own key cache holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verified {
    /// The token names this user.
    User(UserId),
    /// Refused, and why.
    Refused(String),
}

impl Verified {
    /// As the hub takes it.
    pub fn into_result(self) -> Result<UserId, String> {
        match self {
            Verified::User(u) => Ok(u),
            Verified::Refused(why) => Err(why),
        }
    }
}

impl From<Result<UserId, String>> for Verified {
    fn from(r: Result<UserId, String>) -> Self {
        match r {
            Ok(u) => Verified::User(u),
            Err(why) => Verified::Refused(why),
        }
    }
}

/// An input to the hub.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum Input {
    /// A socket opened.
    Connect {
        /// The socket.
        c: ConnKey,
        /// The client's address as the listener saw it (TURN peer grants on every node).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ip: Option<std::net::IpAddr>,
    },
    /// A text frame; `v` on a socket's first one when it parsed as a hello.
    Text {
        /// The socket.
        c: ConnKey,
        /// The frame.
        t: String,
        /// The token check.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        v: Option<Verified>,
    },
    /// A socket closed.
    Disconnect {
        /// The socket.
        c: ConnKey,
    },
    /// The leader saw a hub deadline due at `at` (unix ms): timers fire at the same
    /// place in the log on every node.
    Tick {
        /// Unix milliseconds of the deadline.
        at: u64,
    },
    /// A node stopped heartbeating: its sockets are gone (their sessions wait for a
    /// resume on another node).
    NodeGone {
        /// The node.
        gone: NodeId,
    },
    /// A node started (the log's first entry gives every replica its time base).
    Joined,
    /// The leader asks for a checkpoint: every replica reseeds its random generator
    /// here, and the leader stores its replica's snapshot, from which a node that joins
    /// later starts (the log before the previous checkpoint is trimmed).
    Checkpoint,
}

/// A [`ConnId`] as the log writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConnKey(pub u64);

impl From<ConnId> for ConnKey {
    fn from(c: ConnId) -> Self {
        ConnKey(c.0)
    }
}

impl From<ConnKey> for ConnId {
    fn from(c: ConnKey) -> Self {
        ConnId(c.0)
    }
}

/// An entry: who appended it, and the input.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The appending node (which alone posts the webhooks the entry causes).
    pub n: NodeId,
    /// The input.
    #[serde(flatten)]
    pub input: Input,
}

/// The stream entry's id: Redis's milliseconds and sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct StreamId {
    /// Unix milliseconds (of the Redis server's clock, never going back in a stream).
    pub ms: u64,
    /// Sequence within the millisecond.
    pub seq: u64,
}

impl StreamId {
    /// Before every entry.
    pub const ZERO: StreamId = StreamId { ms: 0, seq: 0 };

    /// `<ms>-<seq>`.
    pub fn parse(s: &str) -> Option<StreamId> {
        let (ms, seq) = s.split_once('-')?;
        Some(StreamId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// The stream's reply was not what this version writes.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    /// The reply's shape is not XREAD's.
    #[error("unexpected XREAD reply shape: {0}")]
    Shape(&'static str),
    /// An entry id that is not `<ms>-<seq>`.
    #[error("bad stream entry id {0:?}")]
    Id(String),
    /// The entry's payload does not decode.
    #[error("entry {id}: {why}")]
    Payload {
        /// The entry.
        id: StreamId,
        /// The decoder's message.
        why: String,
    },
}

/// The field that holds an entry's JSON.
pub const FIELD: &str = "e";

impl Entry {
    /// The payload appended under [`FIELD`].
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("entries serialize")
    }

    /// From an entry's payload.
    pub fn decode(id: StreamId, payload: &[u8]) -> Result<Entry, DecodeError> {
        serde_json::from_slice(payload).map_err(|e| DecodeError::Payload { id, why: e.to_string() })
    }
}

/// An entry read, or why it does not decode (every replica skips it alike).
pub type Read = (StreamId, Result<Entry, DecodeError>);

/// The entries of an `XREAD ... STREAMS <one key>` reply, in order. `Nil` (the block
/// timed out) is no entry.
pub fn decode_read(reply: redis::Value) -> Result<Vec<Read>, DecodeError> {
    use redis::Value as V;
    let entries = match reply {
        V::Nil => return Ok(Vec::new()),
        // XREAD (RESP2): [[key, [entry, ...]]].
        V::Array(mut streams) => match streams.pop() {
            None => return Ok(Vec::new()),
            Some(V::Array(mut kv)) if kv.len() == 2 => match kv.pop() {
                Some(V::Array(entries)) => entries,
                _ => return Err(DecodeError::Shape("stream without an entry list")),
            },
            _ => return Err(DecodeError::Shape("stream is not [key, entries]")),
        },
        // XREAD (RESP3): {key: [entry, ...]}.
        V::Map(mut streams) => match streams.pop() {
            Some((_, V::Array(entries))) => entries,
            None => return Ok(Vec::new()),
            _ => return Err(DecodeError::Shape("stream without an entry list")),
        },
        _ => return Err(DecodeError::Shape("not an array")),
    };
    decode_entries(entries)
}

/// Entries as `XRANGE` returns them: `[[id, [field, value, ...]], ...]`.
pub fn decode_entries(entries: Vec<redis::Value>) -> Result<Vec<Read>, DecodeError> {
    use redis::Value as V;
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let V::Array(mut parts) = e else {
            return Err(DecodeError::Shape("entry is not [id, fields]"));
        };
        if parts.len() != 2 {
            return Err(DecodeError::Shape("entry is not [id, fields]"));
        }
        let fields = parts.pop().expect("two parts");
        let id = match parts.pop().expect("two parts") {
            V::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
            V::SimpleString(s) => s,
            _ => return Err(DecodeError::Shape("entry id is not a string")),
        };
        let id = StreamId::parse(&id).ok_or(DecodeError::Id(id))?;
        let V::Array(fields) = fields else {
            return Err(DecodeError::Shape("entry fields are not an array"));
        };
        let mut payload = None;
        let mut it = fields.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            if matches!(&k, V::BulkString(b) if b == FIELD.as_bytes()) {
                if let V::BulkString(b) = v {
                    payload = Some(b);
                }
            }
        }
        let entry = match payload {
            Some(p) => Entry::decode(id, &p),
            None => Err(DecodeError::Payload {
                id,
                why: format!("no {FIELD:?} field"),
            }),
        };
        out.push((id, entry));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value as V;

    fn bulk(s: &str) -> V {
        V::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn conn_ids_carry_their_node() {
        let c = NodeId(7).conn(12345);
        assert_eq!(NodeId::of(c), NodeId(7));
        assert_ne!(NodeId(8).conn(12345), c);
    }

    #[test]
    fn entries_round_trip_and_a_reply_decodes_in_order() {
        let a = Entry {
            n: NodeId(1),
            input: Input::Text {
                c: ConnKey(5),
                t: r#"{"type":"hello","token":"x\"y"}"#.into(),
                v: Some(Verified::User(UserId::parse("alice").unwrap())),
            },
        };
        let b = Entry {
            n: NodeId(2),
            input: Input::Tick { at: 1_800_000_000_123 },
        };
        let reply = V::Array(vec![V::Array(vec![
            bulk("firstcall:log"),
            V::Array(vec![
                V::Array(vec![
                    bulk("1800000000000-0"),
                    V::Array(vec![bulk("e"), V::BulkString(a.encode())]),
                ]),
                V::Array(vec![
                    bulk("1800000000001-3"),
                    V::Array(vec![bulk("e"), V::BulkString(b.encode())]),
                ]),
            ]),
        ])]);
        let got = decode_read(reply).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0],
            (
                StreamId {
                    ms: 1_800_000_000_000,
                    seq: 0
                },
                Ok(a)
            )
        );
        assert_eq!(
            got[1],
            (
                StreamId {
                    ms: 1_800_000_000_001,
                    seq: 3
                },
                Ok(b)
            )
        );
        assert_eq!(decode_read(V::Nil).unwrap(), vec![]);
    }

    #[test]
    fn a_foreign_entry_is_an_error_naming_it() {
        let reply = V::Array(vec![V::Array(vec![
            bulk("k"),
            V::Array(vec![V::Array(vec![
                bulk("5-1"),
                V::Array(vec![bulk("e"), bulk("{\"k\":\"nope\"}")]),
            ])]),
        ])]);
        let got = decode_read(reply).unwrap();
        assert_eq!(got.len(), 1, "the entry is read, and skipped by its reader");
        match &got[0] {
            (at, Err(DecodeError::Payload { id, .. })) => {
                assert_eq!(*id, StreamId { ms: 5, seq: 1 });
                assert_eq!(at, id);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(decode_read(V::Int(3)), Err(DecodeError::Shape(_))));
    }
}
