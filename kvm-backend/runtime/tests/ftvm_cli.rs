//! The `ftvm` binary as a user runs it: record then replay every corpus guest, detect tampering at the right
//! exit, refuse damaged logs cleanly, and explain a missing KVM device. Each guest is recorded once per test
//! process and the recordings are shared (and copied before tampering).

mod common;

use common::{kvm_usable, output_within};

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use ft::log::{Entry, Input};
use ft::wire::{Message, StreamDecoder, StreamEncoder, HEADER_BYTES};

const FTVM: &str = env!("CARGO_BIN_EXE_ftvm");
/// Requests of the kv guest's load: enough for disk writes, reads and several checkpoints, and quick.
const KV_REQUESTS: &str = "60";
/// kvq prints a line every 100 answers: its last answer comes with a console line.
const KVQ_REQUESTS: &str = "200";
/// Frames of the netrx and nettx loads.
const STREAM_FRAMES: &str = "3000";
/// Lines of ftvm's own results on stdout (everything else is the guest's console).
/// Guard against a hang of a command that should finish (never a speed check).
const HANG_GUARD: std::time::Duration = std::time::Duration::from_secs(120);
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
    static KVQ: OnceLock<Recording> = OnceLock::new();
    static NETRX: OnceLock<Recording> = OnceLock::new();
    static NETTX: OnceLock<Recording> = OnceLock::new();
    static TIMER: OnceLock<Recording> = OnceLock::new();
    let cell = match guest {
        "netrx" => &NETRX,
        "nettx" => &NETTX,
        "cpu" => &CPU,
        "kv" => &KV,
        "kvq" => &KVQ,
        "timer" => &TIMER,
        other => panic!("no recording for {other}"),
    };
    cell.get_or_init(|| {
        let log = scratch_dir().join(format!("{guest}.log"));
        let log_arg = log.to_str().expect("UTF-8 path");
        let mut args = vec!["record", "--guest", guest, "--log", log_arg];
        match guest {
            "kv" => args.extend(["--requests", KV_REQUESTS]),
            "kvq" => args.extend(["--requests", KVQ_REQUESTS]),
            "netrx" | "nettx" => args.extend(["--requests", STREAM_FRAMES]),
            _ => {}
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
    // Every corpus guest: kvq was missing, and its recording lost the console line the guest printed after its
    // last answer (the session stopped before the ack that released it), so replay printed one line more.
    // Every one that ends: `dirty` and `redis` never power off, and a recording cut by `--timeout-ms` is
    // `timeout_stops_a_guest_that_never_exits`'s business.
    for guest in
        kvm_backend::corpus::guest_names().filter(|guest| !kvm_backend::corpus::RUN_UNTIL_STOPPED.contains(guest))
    {
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
            "kvq" => assert_eq!(result(&recorded.output, "responses").as_deref(), Some(KVQ_REQUESTS)),
            // Every frame acknowledged by netrx, or received from nettx in order with its pattern (the loads
            // check each one).
            "netrx" | "nettx" => assert_eq!(result(&recorded.output, "responses").as_deref(), Some(STREAM_FRAMES)),
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

/// `ftvm ARGS` under the hang guard; a hang fails the test with what it printed.
fn ftvm_guarded(args: &[&str]) -> Output {
    let mut command = Command::new(FTVM);
    command.args(args).env_remove("FTVM_KVM_PATH");
    output_within(&mut command, HANG_GUARD).unwrap_or_else(|hang| panic!("ftvm {args:?}: {hang}"))
}

/// The fault guest `name` (corpus/faults) written to a file, as a user would pass it.
fn fault_guest_file(name: &str) -> PathBuf {
    let path = scratch_dir().join(format!("{name}.elf"));
    std::fs::write(&path, kvm_backend::corpus::fault_guest_elf(name).expect("a fault guest")).expect("written");
    path
}

fn path_arg(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// A guest that triple-faults, makes an MMIO access or stops the CPL0 emulator failed: `run`, `record` and
/// `replay` name the reason and exit with status 6, never "powered-off=4294967295" with status 0. A guest's own
/// non-zero power-off status shows as status 5 (before: every one of them exited 0).
#[test]
fn failed_guests_and_non_zero_power_offs_show_in_the_exit_status() {
    if !kvm_usable() {
        return;
    }
    let cases: [(&str, &[&str]); 3] = [
        ("triple-fault", &["triple fault"]),
        ("mmio", &["MMIO read of 4 bytes at 0xd0000000"]),
        ("sse-at-cpl0", &["emulation failure", "triple fault"]),
    ];
    for (name, reasons) in cases {
        let elf = fault_guest_file(name);
        let log = scratch_dir().join(format!("{name}.log"));
        let run = ftvm_guarded(&["run", "--guest", path_arg(&elf)]);
        let record = ftvm_guarded(&["record", "--guest", path_arg(&elf), "--log", path_arg(&log)]);
        let replay = ftvm_guarded(&["replay", "--guest", path_arg(&elf), "--log", path_arg(&log)]);
        for (command, output) in [("run", &run), ("record", &record), ("replay", &replay)] {
            let stderr = text(&output.stderr);
            assert_eq!(output.status.code(), Some(6), "{name} {command}: {stderr}{}", text(&output.stdout));
            assert!(stderr.contains("failed"), "{name} {command}: {stderr}");
            assert!(reasons.iter().any(|reason| stderr.contains(reason)), "{name} {command}: {reasons:?} in {stderr}");
            assert!(result(output, "powered-off").is_none(), "{name} {command} did not power off");
            assert!(!stderr.contains("panicked"), "{stderr}");
        }
        assert_eq!(
            result(&replay, "state-hash"),
            result(&record, "state-hash"),
            "{name}: replay reaches the same state"
        );
    }
    let elf = fault_guest_file("exit7");
    let log = scratch_dir().join("exit7.log");
    let run = ftvm_guarded(&["run", "--guest", path_arg(&elf)]);
    let record = ftvm_guarded(&["record", "--guest", path_arg(&elf), "--log", path_arg(&log)]);
    let replay = ftvm_guarded(&["replay", "--guest", path_arg(&elf), "--log", path_arg(&log)]);
    for (command, output) in [("run", &run), ("record", &record), ("replay", &replay)] {
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(5), "exit7 {command}: {stderr}");
        assert_eq!(result(output, "powered-off").as_deref(), Some("7"), "exit7 {command}");
        assert!(stderr.contains("powered off with status 7"), "exit7 {command}: {stderr}");
    }
}

/// `--timeout-ms` stops a guest that spins at CPL3 without a single exit (before: the vCPU thread stayed inside
/// KVM_RUN and ftvm ran forever). The kick is reported as a timeout, not as a guest exit, and what was recorded
/// before it still replays.
#[test]
fn timeout_stops_a_guest_that_never_exits() {
    if !kvm_usable() {
        return;
    }
    let elf = fault_guest_file("spin");
    let run = ftvm_guarded(&["run", "--guest", path_arg(&elf), "--timeout-ms", "300"]);
    let stderr = text(&run.stderr);
    assert_eq!(run.status.code(), Some(4), "timed out: {stderr}");
    assert!(stderr.contains("timed out"), "{stderr}");
    assert!(console(&run).contains("spin: looping at CPL3 without exits"), "the guest ran: {}", text(&run.stdout));
    assert!(result(&run, "powered-off").is_none(), "the kick is not a guest exit");
    let log = scratch_dir().join("spin.log");
    let record = ftvm_guarded(&["record", "--guest", path_arg(&elf), "--log", path_arg(&log), "--timeout-ms", "300"]);
    assert_eq!(record.status.code(), Some(4), "{}", text(&record.stderr));
    let exits = result(&record, "exits").expect("record prints its exits");
    assert_eq!(result(&run, "exits"), Some(exits.clone()), "the kick is not counted as an exit");
    let replay = ftvm_guarded(&["replay", "--guest", path_arg(&elf), "--log", path_arg(&log)]);
    assert!(replay.status.success(), "the recording up to the kick replays: {}", text(&replay.stderr));
    assert_eq!(result(&replay, "exits"), Some(exits));
}

/// The client load of the kv guest follows the image, not the name `kv` (before: `--guest path/to/kv.elf` ran
/// without a load, and the idle guest kept ftvm waiting forever).
#[test]
fn the_kv_load_follows_the_image_not_the_name() {
    if !kvm_usable() {
        return;
    }
    let elf = scratch_dir().join("copy-of-kv.elf");
    std::fs::write(&elf, kvm_backend::corpus::guest_elf("kv").expect("kv")).expect("written");
    let log = scratch_dir().join("copy-of-kv.log");
    let recorded = ftvm_guarded(&["record", "--guest", path_arg(&elf), "--log", path_arg(&log), "--requests", "0"]);
    // `--requests 0` asks for no load explicitly: an idle guest, which record reports and ends.
    assert!(recorded.status.success(), "{}", text(&recorded.stderr));
    assert_eq!(result(&recorded, "responses").as_deref(), Some("0"));
    let recorded = ftvm_guarded(&["record", "--guest", path_arg(&elf), "--log", path_arg(&log)]);
    assert!(recorded.status.success(), "{}", text(&recorded.stderr));
    assert_eq!(result(&recorded, "responses").as_deref(), Some("200"), "the default load of kv");
    let replayed = ftvm_guarded(&["replay", "--guest", path_arg(&elf), "--log", path_arg(&log)]);
    assert!(replayed.status.success(), "{}", text(&replayed.stderr));
    assert_eq!(result(&replayed, "state-hash"), result(&recorded, "state-hash"));
}

/// Limits `ftvm`'s address space, so that a read without a bound fails fast instead of taking the machine's memory
/// (before the fix `replay --log /dev/zero` took 7 GB in 3 s).
fn ftvm_bounded_memory(args: &[&str]) -> Output {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(FTVM);
    command.args(args).env_remove("FTVM_KVM_PATH");
    // SAFETY: setrlimit is async-signal-safe and changes only the child's own limit.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit { rlim_cur: 4 << 30, rlim_max: 4 << 30 };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    output_within(&mut command, HANG_GUARD).unwrap_or_else(|hang| panic!("ftvm {args:?}: {hang}"))
}

/// Logs and guest images are read with a bound: a device, an oversized (sparse) file and a FIFO that never ends
/// are refused with an error naming the path and the limit.
#[test]
fn oversized_logs_and_images_are_refused_with_the_limit() {
    let sparse_image = scratch_dir().join("huge.elf");
    let file = std::fs::File::create(&sparse_image).expect("created");
    file.set_len((64 << 20) + 1).expect("sparse");
    for (args, wanted) in [
        (vec!["run", "--guest", "/dev/zero"], vec!["/dev/zero", "not a regular file"]),
        (vec!["run", "--guest", path_arg(&sparse_image)], vec![path_arg(&sparse_image), "67108864 bytes"]),
    ] {
        let output = ftvm_bounded_memory(&args);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        for word in wanted {
            assert!(stderr.contains(word), "{args:?}: {word:?} in {stderr}");
        }
        assert!(!stderr.contains("panicked") && !stderr.contains("memory allocation"), "{stderr}");
    }
    // A FIFO whose writer never stops: only the bound ends the read.
    let fifo = scratch_dir().join("endless.fifo");
    let _ = std::fs::remove_file(&fifo);
    let c_path = std::ffi::CString::new(path_arg(&fifo)).expect("no NUL");
    // SAFETY: mkfifo reads the NUL-terminated path, which outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
    let writer_path = fifo.clone();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let Ok(mut pipe) = std::fs::OpenOptions::new().write(true).open(&writer_path) else { return };
        let chunk = vec![0u8; 1 << 20];
        while pipe.write_all(&chunk).is_ok() {}
    });
    let output = ftvm_bounded_memory(&["run", "--guest", path_arg(&fifo)]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(path_arg(&fifo)) && stderr.contains("67108864 bytes"), "{stderr}");
    // Had ftvm never opened the FIFO, the writer would wait in its open for good: a reader of our own releases
    // it (its writes then fail once this reader is gone too).
    {
        use std::os::unix::fs::OpenOptionsExt;
        let _reader = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&fifo);
    }
    writer.join().expect("the writer stops when the reader leaves");
    if !kvm_usable() {
        return;
    }
    let sparse_log = scratch_dir().join("huge.log");
    let file = std::fs::File::create(&sparse_log).expect("created");
    file.set_len((1 << 30) + 1).expect("sparse");
    for (log, wanted) in [("/dev/zero", "not a regular file"), (path_arg(&sparse_log), "1073741824 bytes")] {
        let output = ftvm_bounded_memory(&["replay", "--guest", "kv", "--log", log]);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{log}: {stderr}");
        assert!(stderr.contains(&format!("log {log}")) && stderr.contains(wanted), "{log}: {stderr}");
        assert!(!stderr.contains("panicked") && !stderr.contains("memory allocation"), "{stderr}");
    }
    let _ = std::fs::remove_file(&sparse_log);
    let _ = std::fs::remove_file(&sparse_image);
}
