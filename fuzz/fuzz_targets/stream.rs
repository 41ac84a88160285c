//! A logging-channel byte stream, fed in arbitrary chunks: never a panic, and the messages (and the error, if
//! any) are the same however the stream is cut.
#![no_main]

use ft::wire::StreamDecoder;

fn decode(chunks: &[&[u8]]) -> (Vec<ft::wire::Message>, bool) {
    let mut decoder = StreamDecoder::new();
    let mut messages = Vec::new();
    for chunk in chunks {
        decoder.feed(chunk);
        loop {
            match decoder.next_message() {
                Ok(Some(message)) => messages.push(message),
                Ok(None) => break,
                Err(_) => return (messages, true),
            }
        }
    }
    (messages, false)
}

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    let Some((&cut, stream)) = input.split_first() else { return };
    let whole = decode(&[stream]);
    let at = usize::from(cut).min(stream.len());
    let (first, second) = stream.split_at(at);
    let pieces: Vec<&[u8]> = first.chunks(1 + usize::from(cut % 7)).chain([second]).collect();
    assert_eq!(decode(&pieces), whole);
});
