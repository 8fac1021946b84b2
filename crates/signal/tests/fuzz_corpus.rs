//! Replays the `ws_decode` and `frame_scan` fuzz corpora (and any crash found since) as
//! regression tests.

#[test]
fn ws_decode_corpus_replays_cleanly() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/ws_decode");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("corpus directory exists") {
        let path = entry.expect("readable corpus entry").path();
        let data = std::fs::read(&path).expect("readable corpus file");
        firstcall_signal::ws::fuzz(&data);
        n += 1;
    }
    assert!(n >= 5, "corpus has only {n} inputs");
}

#[test]
fn frame_scan_corpus_replays_cleanly() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/frame_scan");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("corpus directory exists") {
        let path = entry.expect("readable corpus entry").path();
        let data = std::fs::read(&path).expect("readable corpus file");
        firstcall_signal::scan::fuzz(&data);
        n += 1;
    }
    assert!(n >= 5, "corpus has only {n} inputs");
}
