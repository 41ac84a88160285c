//! The `ftvm` binary as a user runs it: record then replay every corpus guest, detect tampering at the right
//! exit, refuse damaged logs cleanly, and explain a missing KVM device. Each guest is recorded once per test
//! process and the recordings are shared (and copied before tampering).

mod common;

use common::kvm_usable;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use ft::log::{Entry, Input};
use ft::wire::{Message, StreamDecoder, StreamEncoder, HEADER_BYTES};

const FTVM: &str = env!("CARGO_BIN_EXE_ftvm");
/// Requests of the kv guest's load: enough for disk writes, reads and several checkpoints, and quick.
const KV_REQUESTS: &str = "60";
/// Lines of ftvm's own results on stdout (everything else is the guest's console).
const RESULT_KEYS: [&str; 8] =
    ["state-hash=", "exits=", "powered-off=", "responses=", "log-entries=", "log-bytes=", "checkpoints=", "idle="];

fn ftvm(args: &[&str]) -> Output {
    Command::new(FTVM).args(args).env_remove("FTVM_KVM_PATH").output().expect("ftvm starts")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The value of `key=` on stdout.
fn result(output: &Output, key: &str) -> Option<String> {
    let prefix = format!("{key}=");
    text(&output.stdout).lines().find_map(|line| line.strip_prefix(&prefix).map(String::from))
}

/// The guest's console: stdout without ftvm's result lines.
fn console(output: &Output) -> String {
    text(&output.stdout)
        .lines()
        .filter(|line| !RESULT_KEYS.iter().any(|key| line.starts_with(key)))
        .map(|line| format!("{line}\n"))
        .collect()
}

fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // Inside the target directory, so `cargo clean` removes what the tests leave behind.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("ftvm-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        dir
    })
}

struct Recording {
    log: PathBuf,
    output: Output,
}

/// Records `guest` once per test process.
fn recording(guest: &'static str) -> &'static Recording {
    static CPU: OnceLock<Recording> = OnceLock::new();
    static KV: OnceLock<Recording> = OnceLock::new();
    static TIMER: OnceLock<Recording> = OnceLock::new();
    let cell = match guest {
        "cpu" => &CPU,
        "kv" => &KV,
        "timer" => &TIMER,
        other => panic!("no recording for {other}"),
    };
    cell.get_or_init(|| {
        let log = scratch_dir().join(format!("{guest}.log"));
        let log_arg = log.to_str().expect("UTF-8 path");
        let mut args = vec!["record", "--guest", guest, "--log", log_arg];
        if guest == "kv" {
            args.extend(["--requests", KV_REQUESTS]);
        }
        let output = ftvm(&args);
        assert!(output.status.success(), "record {guest}: {}\n{}", text(&output.stderr), text(&output.stdout));
        Recording { log, output }
    })
}

fn replay(guest: &str, log: &Path) -> Output {
    ftvm(&["replay", "--guest", guest, "--log", log.to_str().expect("UTF-8 path")])
}

fn decode_log(path: &Path) -> Vec<Message> {
    let mut decoder = StreamDecoder::new();
    decoder.feed(&std::fs::read(path).expect("log readable"));
    let mut messages = Vec::new();
    while let Some(message) = decoder.next_message().expect("an intact log") {
        messages.push(message);
    }
    decoder.finish().expect("an intact log ends on a frame boundary");
    messages
}

fn write_log(path: &Path, messages: &[Message]) {
    let mut encoder = StreamEncoder::default();
    let bytes: Vec<u8> = messages.iter().flat_map(|message| encoder.encode(message)).collect();
    std::fs::write(path, bytes).expect("log written");
}

/// The entries of a decoded log, with their index in `messages`.
fn entries(messages: &[Message]) -> Vec<(usize, &Entry)> {
    messages
        .iter()
        .enumerate()
        .filter_map(|(at, message)| match message {
            Message::Log { entry, .. } => Some((at, entry)),
            _ => None,
        })
        .collect()
}

fn expect_divergence(output: &Output, exit: u64) {
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "a divergence exits with 3: {stderr}");
    assert!(stderr.contains(&format!("ftvm: divergence at exit {exit}: ")), "wanted exit {exit}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn expect_clean_error(output: &Output, wanted: &str) {
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("ftvm: ") && stderr.contains(wanted), "wanted {wanted:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn record_then_replay_every_corpus_guest() {
    if !kvm_usable() {
        return;
    }
    for guest in ["cpu", "kv", "timer"] {
        let recorded = recording(guest);
        let replayed = replay(guest, &recorded.log);
        assert!(replayed.status.success(), "replay {guest}: {}", text(&replayed.stderr));
        let hash = result(&recorded.output, "state-hash").expect("record prints the state hash");
        assert_eq!(result(&replayed, "state-hash"), Some(hash), "{guest}: state hashes");
        assert_eq!(result(&replayed, "exits"), result(&recorded.output, "exits"), "{guest}: exits");
        assert_eq!(result(&replayed, "log-entries"), result(&recorded.output, "log-entries"), "{guest}");
        assert_eq!(console(&replayed), console(&recorded.output), "{guest}: console output");
        assert!(result(&replayed, "checkpoints").is_some_and(|n| n != "0"), "{guest}: the final state is checked");
        match guest {
            "kv" => assert_eq!(result(&recorded.output, "responses").as_deref(), Some(KV_REQUESTS)),
            _ => assert_eq!(result(&replayed, "powered-off").as_deref(), Some("0"), "{guest} powers off"),
        }
    }
    let cpu = console(&recording("cpu").output);
    let expected = format!("result={:#018x}", kvm_backend::corpus::cpu_result(kvm_backend::corpus::CPU_ITERATIONS));
    assert!(cpu.contains(&expected), "cpu prints {expected}: {cpu}");
}

/// An output record with a wrong digest is caught at exactly the exit that produced the output.
#[test]
fn tampered_output_digest_is_detected_at_its_exit() {
    if !kvm_usable() {
        return;
    }
    let mut messages = decode_log(&recording("cpu").log);
    let (at, exit) = entries(&messages)
        .into_iter()
        .rev()
        .find(|(_, entry)| matches!(entry, Entry::Output { .. }))
        .map(|(at, entry)| (at, entry.position().exits))
        .expect("cpu prints its result");
    if let Message::Log { entry: Entry::Output { record, .. }, .. } = &mut messages[at] {
        record.digest ^= 1;
    }
    let log = scratch_dir().join("cpu-digest.log");
    write_log(&log, &messages);
    expect_divergence(&replay("cpu", &log), exit);
}

/// A different entropy value changes nothing the backup can see at once: the guest mixes it into its digest, so
/// the first output or checkpoint after it (both cover the digest) is where replay must stop.
#[test]
fn tampered_entropy_is_detected_at_the_next_output_or_checkpoint() {
    if !kvm_usable() {
        return;
    }
    let mut messages = decode_log(&recording("timer").log);
    let listed = entries(&messages);
    let entropy: Vec<usize> = listed
        .iter()
        .enumerate()
        .filter(|(_, (_, entry))| matches!(entry, Entry::Input { input: Input::Entropy { .. }, .. }))
        .map(|(nth, _)| nth)
        .collect();
    let tampered = entropy[entropy.len() / 3];
    let detected = listed[tampered + 1..]
        .iter()
        .find(|(_, entry)| matches!(entry, Entry::Output { .. } | Entry::Checkpoint { .. }))
        .map(|(_, entry)| entry.position().exits)
        .expect("checked after the tampered entry");
    let at = listed[tampered].0;
    if let Message::Log { entry: Entry::Input { input: Input::Entropy { value }, .. }, .. } = &mut messages[at] {
        *value ^= 0x8000_0001;
    }
    let log = scratch_dir().join("timer-entropy.log");
    write_log(&log, &messages);
    expect_divergence(&replay("timer", &log), detected);
}

/// An entry logged one exit late: the guest asks for the clock at the real position and finds the wrong one.
#[test]
fn tampered_position_is_detected_at_the_guests_exit() {
    if !kvm_usable() {
        return;
    }
    let mut messages = decode_log(&recording("timer").log);
    let (at, exit) = entries(&messages)
        .into_iter()
        .filter(|(_, entry)| matches!(entry, Entry::Input { input: Input::Clock { .. }, .. }))
        .map(|(at, entry)| (at, entry.position().exits))
        .nth(100)
        .expect("the timer guest reads the clock often");
    if let Message::Log { entry: Entry::Input { position, .. }, .. } = &mut messages[at] {
        position.exits += 1;
    }
    let log = scratch_dir().join("timer-position.log");
    write_log(&log, &messages);
    let output = replay("timer", &log);
    expect_divergence(&output, exit);
    assert!(text(&output.stderr).contains(&format!("at exit {}", exit + 1)), "names the logged position");
}

/// Byte offsets of the frames of a log.
fn frame_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut at = 0;
    while at + HEADER_BYTES <= bytes.len() {
        offsets.push(at);
        let length = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes")) as usize;
        at += HEADER_BYTES + length;
    }
    offsets
}

#[test]
fn damaged_logs_are_refused_cleanly() {
    if !kvm_usable() {
        return;
    }
    let bytes = std::fs::read(&recording("kv").log).expect("log");
    let offsets = frame_offsets(&bytes);
    assert!(offsets.len() > 20);

    let cut = scratch_dir().join("kv-truncated.log");
    std::fs::write(&cut, &bytes[..bytes.len() - 7]).expect("written");
    let last = offsets.len() - 1;
    expect_clean_error(
        &replay("kv", &cut),
        &format!("frame {last} at byte {}: stream ended inside a frame", offsets[last]),
    );

    // Cut at a frame boundary, as a recording that died leaves it: every frame checks out, and only the missing
    // end-of-recording frame shows that the guest's run did not end here (before: replayed "successfully", with
    // the hash of a state no complete run ends in).
    for frames in [last, last / 2] {
        std::fs::write(&cut, &bytes[..offsets[frames]]).expect("written");
        expect_clean_error(&replay("kv", &cut), "the log is truncated: it ends after");
    }

    std::fs::write(&cut, &bytes[..10]).expect("written");
    expect_clean_error(&replay("kv", &cut), "frame 0 at byte 0: stream ended inside a frame (10 bytes left over)");

    let flipped = scratch_dir().join("kv-flipped.log");
    let mut damaged = bytes.clone();
    damaged[offsets[7] + HEADER_BYTES + 3] ^= 0x40;
    std::fs::write(&flipped, &damaged).expect("written");
    expect_clean_error(&replay("kv", &flipped), &format!("frame 7 at byte {}: checksum mismatch", offsets[7]));

    let mut damaged = bytes.clone();
    damaged[offsets[12] + 8] ^= 0x01; // the sequence number, which the checksum also covers
    std::fs::write(&flipped, &damaged).expect("written");
    expect_clean_error(&replay("kv", &flipped), "frame 12 at byte");

    let missing = scratch_dir().join("no-such.log");
    expect_clean_error(&replay("kv", &missing), &format!("log {}: No such file or directory", missing.display()));

    std::fs::write(&cut, b"").expect("written");
    expect_clean_error(&replay("kv", &cut), "empty: no hello frame");

    expect_clean_error(&replay("cpu", &recording("kv").log), "recorded from another guest image");
}

#[test]
fn without_kvm_every_vm_command_says_so() {
    let missing = "/nonexistent/kvm";
    let expected = format!("ftvm: {missing}: No such file or directory (KVM is required)\n");
    let log = std::env::temp_dir().join(format!("ftvm-no-kvm-{}.log", std::process::id()));
    let log = log.to_str().expect("UTF-8 path");
    let commands: [&[&str]; 4] = [
        &["run", "--guest", "cpu"],
        &["record", "--guest", "timer", "--log", log],
        &["replay", "--guest", "kv", "--log", log],
        &["report", "--guest", "cpu"],
    ];
    for args in commands {
        let output = Command::new(FTVM).args(args).env("FTVM_KVM_PATH", missing).output().expect("ftvm starts");
        assert_eq!(text(&output.stderr), expected, "{args:?}");
        assert_eq!(output.status.code(), Some(1), "{args:?}");
    }
    let output = ftvm(&["--kvm-path", missing, "run", "--guest", "kv"]);
    assert_eq!(text(&output.stderr), expected);
    assert!(!output.status.success());
    assert!(!Path::new(log).exists(), "nothing is recorded without KVM");
}
