//! Replays the `ws_decode` and `frame_scan` fuzz corpora (and any crash found since) as
//! regression tests.

/// Run `target` on every input of the corpus `name`, which must hold at least five.
fn replay(name: &str, target: fn(&[u8])) {
    let dir = format!("{}/../../fuzz/corpus/{name}", env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory exists") {
        let path = entry.expect("readable corpus entry").path();
        let data = std::fs::read(&path).expect("readable corpus file");
        target(&data);
        n += 1;
    }
    assert!(n >= 5, "corpus {name} has only {n} inputs");
}

#[test]
fn ws_decode_corpus_replays_cleanly() {
    replay("ws_decode", firstcall_signal::ws::fuzz);
}

#[test]
fn frame_scan_corpus_replays_cleanly() {
    replay("frame_scan", firstcall_signal::scan::fuzz);
}
