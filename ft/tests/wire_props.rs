//! Properties of the frame codec: everything round-trips; corrupted, truncated, oversized or reordered input is
//! an error, never a panic and never a different message.

use ft::abi::DiskStatus;
use ft::log::{Control, Entry, Input, OutputKind, OutputRecord};
use ft::wire::{self, Message, Role, StreamDecoder, StreamEncoder, WireError, HEADER_BYTES};
use ft::Position;
use proptest::prelude::*;

fn position() -> impl Strategy<Value = Position> {
    (any::<u64>(), any::<u64>()).prop_map(|(exits, instructions)| Position { exits, instructions })
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        any::<u64>().prop_map(|ns| Input::Clock { ns }),
        any::<u32>().prop_map(|value| Input::Entropy { value }),
        Just(Input::Timer),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(|frame| Input::NetReceive { frame }),
        (
            any::<u32>(),
            prop_oneof![Just(DiskStatus::Ok), Just(DiskStatus::IoError), Just(DiskStatus::BadRequest)],
            proptest::collection::vec(any::<u8>(), 0..600)
        )
            .prop_map(|(tag, status, data)| Input::DiskComplete { tag, status, data }),
    ]
}

fn entry() -> impl Strategy<Value = Entry> {
    let kind = prop_oneof![Just(OutputKind::Console), Just(OutputKind::NetTransmit), Just(OutputKind::DiskWrite)];
    prop_oneof![
        (position(), any::<u64>(), input()).prop_map(|(position, pc, input)| Entry::Input { position, pc, input }),
        (position(), any::<u64>(), any::<u64>(), kind, any::<u32>(), any::<u64>()).prop_map(
            |(position, pc, seq, kind, length_bytes, digest)| Entry::Output {
                position,
                pc,
                record: OutputRecord { seq, kind, length_bytes, digest }
            }
        ),
        (position(), any::<u64>(), any::<u32>()).prop_map(|(position, pc, status)| Entry::Control {
            position,
            pc,
            control: Control::PowerOff { status }
        }),
        (position(), any::<u64>()).prop_map(|(position, hash)| Entry::Checkpoint { position, hash }),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(pair_id, epoch, image_digest)| Message::Hello {
            pair_id,
            epoch,
            image_digest
        }),
        (any::<u64>(), any::<u64>()).prop_map(|(pair_id, epoch)| Message::Welcome { pair_id, epoch }),
        (any::<u64>(), entry()).prop_map(|(index, entry)| Message::Log { index, entry }),
        (any::<u64>(), any::<u64>(), position()).prop_map(|(received, replayed, position)| Message::Ack {
            received,
            replayed,
            position
        }),
        any::<u64>().prop_map(|output_seq| Message::Released { output_seq }),
        (any::<u64>(), any::<u64>(), any::<bool>(), any::<u64>(), any::<u64>()).prop_map(
            |(pair_id, epoch, primary, sent_ms, log_index)| Message::Heartbeat {
                pair_id,
                epoch,
                role: if primary { Role::Primary } else { Role::Backup },
                sent_ms,
                log_index
            }
        ),
        any::<u32>().prop_map(|status| Message::Goodbye { status }),
        any::<u64>().prop_map(|entries| Message::EndOfRecording { entries }),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(pair_id, image_digest, node)| Message::Join {
            pair_id,
            image_digest,
            node
        }),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(pair_id, epoch, memory_bytes)| Message::CloneBegin {
            pair_id,
            epoch,
            memory_bytes
        }),
        (any::<u32>(), proptest::collection::vec((any::<u64>(), any::<u8>()), 0..4)).prop_map(|(pass, pages)| {
            let pages = pages.into_iter().map(|(number, fill)| (number, vec![fill; ft::guest::PAGE_BYTES])).collect();
            Message::ClonePages { pass, pages }
        }),
        (any::<u32>(), any::<u64>()).prop_map(|(pass, pages)| Message::ClonePassEnd { pass, pages }),
        any::<u32>().prop_map(|pass| Message::CloneAck { pass }),
        (any::<u32>(), any::<u64>()).prop_map(|(pass, pages)| Message::ClonePagesAck { pass, pages }),
        (any::<u64>(), any::<u32>(), any::<u64>(), any::<u32>(), proptest::collection::vec(any::<u8>(), 0..600))
            .prop_map(|(seq, tag, sector, sectors, data)| Message::CloneWrite {
                seq,
                target: ft::log::DiskTarget { tag, sector, sectors },
                data
            }),
        (
            position(),
            proptest::collection::vec(any::<u8>(), 0..200),
            proptest::collection::vec(any::<u8>(), 0..200),
            any::<bool>(),
            any::<u64>()
        )
            .prop_map(|(position, cpu, platform, halted, hash)| Message::CloneCut {
                position,
                cpu,
                platform,
                halted,
                hash
            }),
    ]
}

proptest! {
    #[test]
    fn frames_round_trip(message in message(), seq in any::<u64>()) {
        let frame = wire::encode(&message, seq);
        prop_assert_eq!(wire::decode(&frame), Ok((seq, message)));
    }

    #[test]
    fn a_stream_round_trips_in_any_chunking(
        messages in proptest::collection::vec(message(), 1..20),
        chunk in 1usize..64,
    ) {
        let mut encoder = StreamEncoder::default();
        let stream: Vec<u8> = messages.iter().flat_map(|m| encoder.encode(m)).collect();
        let mut decoder = StreamDecoder::new();
        let mut decoded = Vec::new();
        for piece in stream.chunks(chunk) {
            decoder.feed(piece);
            while let Some(message) = decoder.next_message().expect("valid stream") {
                decoded.push(message);
            }
        }
        prop_assert!(decoder.finish().is_ok());
        prop_assert_eq!(decoded, messages);
    }

    #[test]
    fn any_corrupted_byte_is_rejected(message in message(), position in any::<prop::sample::Index>(), flip in 1u8..=255) {
        let mut frame = wire::encode(&message, 3);
        let at = position.index(frame.len());
        frame[at] ^= flip;
        // crc32c detects every error burst of 32 bits or fewer, so a single corrupted byte never decodes.
        prop_assert!(wire::decode(&frame).is_err(), "corruption at byte {} of {} went unnoticed", at, frame.len());
    }

    #[test]
    fn truncated_frames_are_errors(message in message(), cut in any::<prop::sample::Index>()) {
        let frame = wire::encode(&message, 0);
        let keep = cut.index(frame.len());
        prop_assert!(wire::decode(&frame[..keep]).is_err());
        let mut decoder = StreamDecoder::new();
        decoder.feed(&frame[..keep]);
        prop_assert_eq!(decoder.next_message(), Ok(None));
        prop_assert!(keep == 0 || decoder.finish().is_err(), "a stream ending mid-frame must be reported");
    }

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = wire::decode(&bytes);
        let mut decoder = StreamDecoder::new();
        decoder.feed(&bytes);
        while let Ok(Some(_)) = decoder.next_message() {}
    }
}

#[test]
fn out_of_order_and_repeated_frames_are_rejected() {
    let message = Message::Released { output_seq: 1 };
    let mut decoder = StreamDecoder::new();
    decoder.feed(&wire::encode(&message, 0));
    decoder.feed(&wire::encode(&message, 0));
    assert_eq!(decoder.next_message(), Ok(Some(message.clone())));
    assert_eq!(decoder.next_message(), Err(WireError::OutOfOrder { expected: 1, actual: 0 }));
    let mut skipping = StreamDecoder::new();
    skipping.feed(&wire::encode(&message, 1));
    assert_eq!(skipping.next_message(), Err(WireError::OutOfOrder { expected: 0, actual: 1 }));
}

#[test]
fn oversized_lengths_are_rejected_before_buffering() {
    let mut frame = wire::encode(&Message::Released { output_seq: 1 }, 0);
    frame[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(wire::decode(&frame), Err(WireError::Oversized(_))));
    let mut decoder = StreamDecoder::new();
    decoder.feed(&frame[..HEADER_BYTES]);
    assert!(matches!(decoder.next_message(), Err(WireError::Oversized(_))));
}

#[test]
fn wrong_version_and_kind_are_named() {
    let mut frame = wire::encode(&Message::Released { output_seq: 1 }, 0);
    frame[2] = 9;
    assert_eq!(wire::decode(&frame), Err(WireError::UnsupportedVersion(9)));
}

/// The bound is inclusive: a payload of exactly `PAYLOAD_BYTES_MAX` bytes passes the length check (and fails
/// later, here on its checksum), one more byte is oversized. Found by mutation testing (`>` turned `>=`).
#[test]
fn a_payload_of_exactly_the_maximum_is_not_oversized() {
    let mut frame = wire::encode(&Message::Released { output_seq: 1 }, 0);
    frame.truncate(HEADER_BYTES);
    frame[4..8].copy_from_slice(&(wire::PAYLOAD_BYTES_MAX as u32).to_le_bytes());
    frame.resize(HEADER_BYTES + wire::PAYLOAD_BYTES_MAX, 0);
    assert!(!matches!(wire::decode(&frame), Err(WireError::Oversized(_))), "{:?}", wire::decode(&frame));
    frame[4..8].copy_from_slice(&(wire::PAYLOAD_BYTES_MAX as u32 + 1).to_le_bytes());
    frame.push(0);
    assert!(matches!(wire::decode(&frame), Err(WireError::Oversized(_))));
}

/// A long-lived stream decoder keeps only what it has not consumed: after ten thousand frames it holds less
/// than one frame's bytes (compaction skipped, it grew by every byte ever fed). Found by mutation testing.
#[test]
fn a_stream_decoder_does_not_keep_consumed_bytes() {
    let message = Message::Released { output_seq: 1 };
    let mut decoder = StreamDecoder::new();
    let mut encoder = wire::StreamEncoder::default();
    for _ in 0..10_000 {
        decoder.feed(&encoder.encode(&message));
        assert_eq!(decoder.next_message(), Ok(Some(message.clone())));
    }
    assert!(decoder.buffered_bytes() < 64, "{} bytes kept", decoder.buffered_bytes());
}
