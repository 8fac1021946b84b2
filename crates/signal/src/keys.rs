//! Duplicate keys: every client frame with an object that names a key twice, at any
//! depth, is refused.
//!
//! JSON leaves duplicate keys to the reader (RFC 8259 section 4: "the behavior of
//! software that receives such an object is unpredictable"): serde's `Value` and a
//! browser's `JSON.parse` keep the last, a derive refuses a duplicate field it knows
//! and ignores one it does not. A frame the server checked one way and a peer reads
//! another (a `call.signal` is relayed verbatim) is refused instead, on every parse
//! path: the hand scanner ([`crate::scan`]) answers only for texts without a duplicate,
//! and every other path asks [`check`] first.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

use crate::protocol::{clip, MAX_ECHO};

/// Why [`check`] refused a text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// An object names this key twice (clipped to [`crate::protocol::MAX_ECHO`]).
    #[error("duplicate key {0:?}")]
    Duplicate(String),
    /// Not JSON (or nested deeper than serde's limit of 128).
    #[error("not JSON: {0}")]
    NotJson(String),
}

/// Whether `text` is one JSON value in which no object names a key twice.
pub fn check(text: &str) -> Result<(), KeyError> {
    let dup = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_str(text);
    match Unique(&dup).deserialize(&mut de).and_then(|()| de.end()) {
        Ok(()) => Ok(()),
        Err(e) => Err(match dup.into_inner() {
            Some(key) => KeyError::Duplicate(key),
            None => KeyError::NotJson(e.to_string()),
        }),
    }
}

/// Any JSON value, checking each object's keys; the first duplicate is put in the cell.
#[derive(Clone, Copy)]
struct Unique<'a>(&'a RefCell<Option<String>>);

impl<'de> DeserializeSeed<'de> for Unique<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// A key, borrowed from the text when it has no escape.
struct Key<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Visitor<'de> for Unique<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // A set, not a list: a 64 KiB frame can name ten thousand keys, and comparing
        // each with all before it would cost the server quadratic time.
        let mut seen: HashSet<Cow<'de, str>> = HashSet::new();
        while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
            if seen.contains(&k) {
                *self.0.borrow_mut() = Some(clip(&k, MAX_ECHO).into_owned());
                return Err(de::Error::custom("duplicate key"));
            }
            map.next_value_seed(self)?;
            seen.insert(k);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_at_any_depth_are_named() {
        for ok in [
            r#"{"a":1,"b":{"a":2},"c":[{"a":1},{"a":2}]}"#,
            r#"[]"#,
            r#""x""#,
            r#"{"a\u0062":1,"a":2}"#,
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
        for (dup, key) in [
            (r#"{"a":1,"a":2}"#, "a"),
            (r#"{"x":{"b":[1,{"c":1,"c":1}]}}"#, "c"),
            (r#"{"type":"hello","token":"a","token":"b"}"#, "token"),
            // The same key escaped: equal once unescaped, which is how readers see it.
            (r#"{"ab":1,"a\u0062":2}"#, "ab"),
        ] {
            assert_eq!(check(dup), Err(KeyError::Duplicate(key.into())), "{dup}");
        }
        let long = format!(r#"{{"{k}":1,"{k}":2}}"#, k = "k".repeat(1000));
        let Err(KeyError::Duplicate(shown)) = check(&long) else {
            panic!("not refused")
        };
        assert_eq!(shown.chars().count(), MAX_ECHO + 1, "clipped");
        assert!(matches!(check("{"), Err(KeyError::NotJson(_))));
        assert!(matches!(check("{} x"), Err(KeyError::NotJson(_))));
    }

    #[test]
    fn many_keys_cost_linear_time() {
        let text = format!(
            "{{{}}}",
            (0..8000).map(|i| format!(r#""k{i}":0"#)).collect::<Vec<_>>().join(",")
        );
        let t = std::time::Instant::now();
        assert_eq!(check(&text), Ok(()));
        assert!(t.elapsed() < std::time::Duration::from_secs(1), "{:?}", t.elapsed());
    }

    /// A JSON tree whose objects' keys come from a small set (so duplicates are common).
    #[derive(Clone, Debug)]
    enum Tree {
        Leaf,
        List(Vec<Tree>),
        Object(Vec<(u8, Tree)>),
    }

    impl Tree {
        fn text(&self, escape: bool) -> String {
            match self {
                Tree::Leaf => "0".into(),
                Tree::List(v) => format!("[{}]", v.iter().map(|t| t.text(escape)).collect::<Vec<_>>().join(",")),
                Tree::Object(f) => {
                    let fields: Vec<String> = f
                        .iter()
                        .enumerate()
                        // Every other key escaped: the same key to a reader.
                        .map(|(i, (k, t))| match escape && i % 2 == 1 {
                            true => format!(r#""k\u00{:02x}":{}"#, b'a' + k, t.text(escape)),
                            false => format!(r#""k{}":{}"#, char::from(b'a' + k), t.text(escape)),
                        })
                        .collect();
                    format!("{{{}}}", fields.join(","))
                }
            }
        }
        fn has_duplicate(&self) -> bool {
            match self {
                Tree::Leaf => false,
                Tree::List(v) => v.iter().any(Tree::has_duplicate),
                Tree::Object(f) => {
                    let keys: HashSet<u8> = f.iter().map(|(k, _)| *k).collect();
                    keys.len() != f.len() || f.iter().any(|(_, t)| t.has_duplicate())
                }
            }
        }
    }

    fn tree() -> impl proptest::strategy::Strategy<Value = Tree> {
        use proptest::prelude::*;
        Just(Tree::Leaf).prop_recursive(4, 32, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Tree::List),
                prop::collection::vec((0u8..6, inner), 0..5).prop_map(Tree::Object),
            ]
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// `check` refuses exactly the texts with some object naming a key twice,
        /// however the keys are written, and the hand scanner never accepts one.
        #[test]
        fn check_finds_exactly_the_duplicates(t in tree(), escape in proptest::bool::ANY) {
            let text = t.text(escape);
            let dup = t.has_duplicate();
            let got = check(&text);
            proptest::prop_assert_eq!(matches!(got, Err(KeyError::Duplicate(_))), dup, "{} {:?}", text, got);
            proptest::prop_assert!(dup || got.is_ok(), "{} {:?}", text, got);
            let env = format!(r#"{{"type":"ack","data":{text}}}"#);
            if dup {
                proptest::prop_assert!(crate::scan::envelope(&env).is_none(), "{}", env);
            }
            crate::scan::fuzz(env.as_bytes());
        }
    }
}
