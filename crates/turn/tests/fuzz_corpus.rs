//! Replays the `turn_server` fuzz corpus as a regression test.

#[test]
fn turn_server_corpus_replays_cleanly() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/turn_server");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("corpus directory exists") {
        let data = std::fs::read(entry.expect("readable corpus entry").path()).expect("readable corpus file");
        firstcall_turn::fuzzing::run(&data, std::time::Instant::now());
        n += 1;
    }
    assert!(n >= 3, "corpus has only {n} inputs");
}
