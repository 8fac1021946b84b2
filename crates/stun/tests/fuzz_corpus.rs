//! Replays the `stun_decode` fuzz corpus (and any crash found since) as a regression test.

#[test]
fn stun_decode_corpus_replays_cleanly() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/stun_decode");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("corpus directory exists") {
        let path = entry.expect("readable corpus entry").path();
        let data = std::fs::read(&path).expect("readable corpus file");
        firstcall_stun::fuzzing::decode(&data);
        n += 1;
    }
    assert!(n >= 5, "corpus has only {n} inputs");
}
