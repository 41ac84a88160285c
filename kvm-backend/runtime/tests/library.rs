//! The runtime called as a library, without a process in between: each bad input gets an error that names what
//! is wrong, and nothing on disk is created or changed by a refused start; a node whose guest ends, ends.

mod common;

use std::path::{Path, PathBuf};

use ft_host::config::NodeConfig;
use ft_host::error::CliError;
use ft_host::machine::{Disk, GuestImage};
use ft_host::node::{self, StartAs};
use ft_host::replay::{self, ReplayOptions};
use ft_host::session::{self, SessionOptions};

fn sample(name: &str) -> NodeConfig {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../corpus/configs").join(format!("{name}.toml"));
    NodeConfig::load(&path).expect("the sample config loads")
}

/// A directory of its own under the temp dir, removed when dropped (failure included).
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("ft-host-lib-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("scratch dir");
        Scratch(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_missing_kvm_device_is_named_before_anything_else() {
    let missing = Path::new("/nonexistent/kvm");
    // Storage in a directory that does not exist: without the early check the error would be the storage one.
    let scratch = Scratch::new("kvm");
    let gone = scratch.0.join("not-made");
    let config =
        NodeConfig { disk: Some(gone.join("disk.img")), arbiter: Some(gone.join("arbiter")), ..sample("primary") };
    let error = within_seconds(move || node::run(missing, config, StartAs::Primary)).expect_err("refused");
    assert!(matches!(error, CliError::KvmUnavailable { .. }), "{error:?}");
    assert!(error.to_string().contains("/nonexistent/kvm"), "{error}");
    let options = SessionOptions {
        kvm_path: missing.into(),
        image: GuestImage::resolve("cpu").expect("corpus guest"),
        disk: Disk::zeroed(8),
        workload: None,
        timeout: None,
        echo_console: false,
        kick_every: None,
    };
    let error = session::run(options, None).err().expect("refused");
    assert!(matches!(error, CliError::KvmUnavailable { .. }), "{error:?}");
}

#[test]
fn shared_storage_in_a_missing_directory_is_refused_and_nothing_is_created() {
    let scratch = Scratch::new("storage");
    let gone = scratch.0.join("not-made");
    let config = NodeConfig {
        machine: Some("model".into()),
        disk: Some(gone.join("disk.img")),
        arbiter: Some(gone.join("arbiter")),
        ..sample("primary")
    };
    let error =
        within_seconds(move || node::run(Path::new("/dev/kvm"), config, StartAs::Primary)).expect_err("refused");
    let text = error.to_string();
    assert!(text.contains("shared storage") && text.contains("not-made"), "{text}");
    assert!(!gone.exists(), "a refused start created {}", gone.display());
    // A directory that exists, with an arbiter that is not a file: refused, and the disk image is not created.
    let present = scratch.0.join("present");
    std::fs::create_dir_all(present.join("arbiter")).expect("a directory where the arbiter file belongs");
    let before = listing(&present);
    let config = NodeConfig {
        machine: Some("model".into()),
        disk: Some(present.join("disk.img")),
        arbiter: Some(present.join("arbiter")),
        ..sample("primary")
    };
    let error =
        within_seconds(move || node::run(Path::new("/dev/kvm"), config, StartAs::Primary)).expect_err("refused");
    assert!(error.to_string().contains("not a regular file"), "{error}");
    assert_eq!(listing(&present), before, "a refused start changed the storage directory");
}

fn listing(directory: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(directory)
        .expect("listed")
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Runs `start` on a thread of its own and gives its result, or fails the test after 30 s: a refused start that
/// regressed into waiting for storage must fail the test, not hang it.
fn within_seconds(start: impl FnOnce() -> Result<(), CliError> + Send + 'static) -> Result<(), CliError> {
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(start());
    });
    result.recv_timeout(std::time::Duration::from_secs(30)).expect("a refused start returns instead of waiting")
}

#[test]
fn config_files_that_are_missing_empty_or_not_text_are_refused_with_their_path() {
    let scratch = Scratch::new("config");
    let missing = scratch.0.join("absent.toml");
    let error = NodeConfig::load(&missing).expect_err("refused").to_string();
    assert!(error.contains("absent.toml"), "{error}");
    let error = NodeConfig::load(Path::new("/dev/zero")).expect_err("refused").to_string();
    assert!(error.contains("/dev/zero"), "{error}");
    let garbage = scratch.0.join("garbage.toml");
    std::fs::write(&garbage, [0xff, 0xfe, 0x00, 0x01]).expect("written");
    let error = NodeConfig::load(&garbage).expect_err("refused").to_string();
    assert!(error.contains("garbage.toml"), "{error}");
    // An empty file parses, but a node cannot start from it: the first missing key is named.
    let empty = scratch.0.join("empty.toml");
    std::fs::write(&empty, "").expect("written");
    let config = NodeConfig::load(&empty).expect("an empty file is an empty config");
    let error = config.settings(ft_host::config::Side::Primary).expect_err("refused").to_string();
    assert!(error.contains("`guest`"), "{error}");
}

#[test]
fn a_replay_of_a_log_that_is_missing_or_a_device_is_refused() {
    if !common::kvm_usable() {
        return;
    }
    let scratch = Scratch::new("replay");
    let image = || GuestImage::resolve("kv").expect("corpus guest");
    let missing = scratch.0.join("absent.ftlog");
    let error = replay::run(ReplayOptions { kvm_path: "/dev/kvm".into(), image: image(), log: missing })
        .err()
        .expect("refused");
    assert!(matches!(error, CliError::Log { .. }) && error.to_string().contains("absent.ftlog"), "{error}");
    let error = replay::run(ReplayOptions { kvm_path: "/dev/kvm".into(), image: image(), log: "/dev/zero".into() })
        .err()
        .expect("refused");
    assert!(matches!(error, CliError::Log { .. }) && error.to_string().contains("/dev/zero"), "{error}");
}

#[test]
fn a_guest_image_that_is_not_an_elf_is_refused_by_name() {
    let scratch = Scratch::new("image");
    let path = scratch.0.join("zeros.elf");
    std::fs::write(&path, vec![0u8; 4096]).expect("written");
    let image = GuestImage::resolve(path.to_str().expect("utf-8 path")).expect("a readable file resolves");
    let error = GuestImage::resolve(scratch.0.join("absent.elf").to_str().unwrap()).err().expect("refused");
    assert!(error.to_string().contains("absent.elf"), "{error}");
    if !common::kvm_usable() {
        return;
    }
    let error = ft_host::machine::new_guest(Path::new("/dev/kvm"), &image).err().expect("refused");
    assert!(error.to_string().contains("zeros.elf"), "{error}");
}

/// A primary without a backup whose guest powers off returns, and leaves its last status in `status_file`. It
/// used to hang after the power-off: its guest's last exit came from the vCPU thread, and with no channel and no
/// timer nothing woke the driver to see that the node had stopped (found by `ftvm bench`).
#[test]
fn a_primary_alone_whose_guest_powers_off_returns_with_its_status_file() {
    if !common::kvm_usable() {
        return;
    }
    let scratch = Scratch::new("alone");
    let free_udp = || ft_host::pair::free_udp().expect("a free port");
    let status_file = scratch.0.join("status.json");
    let config = NodeConfig {
        guest: Some("cpu".into()),
        channel_peer: Some(ft_host::pair::free_tcp().expect("a free port")),
        heartbeat_listen: Some(free_udp()),
        heartbeat_peer: Some(free_udp()),
        service: Some(free_udp()),
        disk: Some(scratch.0.join("disk.img")),
        arbiter: Some(scratch.0.join("arbiter")),
        startup_timeout_ms: Some(100),
        status_file: Some(status_file.clone()),
        ..sample("primary")
    };
    within_seconds(move || node::run(Path::new("/dev/kvm"), config, StartAs::Primary)).expect("powered off with 0");
    let status: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&status_file).expect("the status file")).expect("JSON");
    assert_eq!(status["role"], "stopped", "{status}");
    let (started, off) = (status["guest_started_at_ms"].as_u64(), status["powered_off_at_ms"].as_u64());
    assert!(started.is_some() && off.is_some() && off >= started, "{status}");
}
