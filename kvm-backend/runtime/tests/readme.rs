//! The README's deployment commands, run as written with the sample configs of corpus/configs, in a scratch copy
//! of the repository's files with free ports instead of the samples' fixed ones and a scratch directory instead
//! of /tmp/ftvm-pair. The pair must come up protected. The `cargo build` and `export PATH` line is what made the
//! binary under test (it is on the PATH here); everything else runs through `sh`. Needs KVM (the samples run the
//! kv guest on it): skipped with a printed reason otherwise (fails instead with FT_REQUIRE_KVM=1).

mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const FTVM: &str = env!("CARGO_BIN_EXE_ftvm");
const GUARD: Duration = Duration::from_secs(60);

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the workspace")
}

/// The indented command block of the README section `heading`.
fn readme_block(heading: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(repository().join("README.md")).expect("README.md");
    let section = readme.split(&format!("\n{heading}\n")).nth(1).unwrap_or_else(|| panic!("README has {heading:?}"));
    section
        .lines()
        .skip_while(|line| !line.starts_with("    "))
        .take_while(|line| line.starts_with("    ") || line.is_empty())
        .filter(|line| !line.trim().is_empty())
        .map(|line| line.trim().to_string())
        .collect()
}

/// A port free for both TCP and UDP on localhost.
fn free_port() -> u16 {
    loop {
        // Below the ephemeral range (`ft_host::pair`), so no `connect` takes it before the node binds it.
        let port = ft_host::pair::free_tcp().expect("a free local port").port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Background processes started by the commands, killed on drop, and the scratch directory, removed.
struct Scratch {
    dir: PathBuf,
    children: Vec<Child>,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for child in &mut self.children {
            // `sh -c "exec ..."`: the child is ftvm itself.
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::env::var_os("FTVM_KEEP_SCRATCH").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn status_json(addr: &str) -> Option<serde_json::Value> {
    let output = Command::new(FTVM).args(["status", "--json", "--addr", addr]).output().ok()?;
    serde_json::from_slice(&output.stdout).ok()
}

#[test]
fn the_readme_deployment_commands_bring_a_pair_up() {
    if !common::kvm_usable() {
        return;
    }
    let commands = readme_block("## Deployment (docs/deployment.md)");
    assert!(commands.iter().any(|c| c.contains("ftvm backup")), "the block starts a backup: {commands:?}");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("readme-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("corpus/configs")).unwrap();
    let mut scratch = Scratch { dir: dir.clone(), children: Vec::new() };
    let storage = dir.join("ftvm-pair");
    // The samples' ports, each replaced by a free one; /tmp/ftvm-pair by a scratch path.
    let mut ports: HashMap<String, String> = HashMap::new();
    let mut rewrite = |text: &str| -> String {
        let mut out = text.replace("/tmp/ftvm-pair", &storage.display().to_string());
        for (at, _) in text.match_indices("127.0.0.1:") {
            let port: String = text[at + 10..].chars().take_while(char::is_ascii_digit).collect();
            let old = format!("127.0.0.1:{port}");
            let new = ports.entry(old.clone()).or_insert_with(|| format!("127.0.0.1:{}", free_port())).clone();
            out = out.replace(&old, &new);
        }
        out
    };
    for sample in ["primary.toml", "backup.toml"] {
        let text = std::fs::read_to_string(repository().join("corpus/configs").join(sample)).unwrap();
        std::fs::write(dir.join("corpus/configs").join(sample), rewrite(&text)).unwrap();
    }
    let bin = Path::new(FTVM).parent().unwrap().display().to_string();
    let path = format!("{bin}:{}", std::env::var("PATH").unwrap_or_default());
    let mut status_output = None;
    for command in &commands {
        if command.starts_with("cargo build") {
            continue; // built already: it is the binary under test, on the PATH below
        }
        // Keep the test short: one trial of report-failover is the same code as ten.
        let command = rewrite(command).replace("--trials 10", "--trials 1");
        let (line, background) = match command.strip_suffix('&') {
            Some(line) => (line.trim().to_string(), true),
            None => (command.clone(), false),
        };
        let mut shell = Command::new("sh");
        shell.arg("-c").current_dir(&dir).env("PATH", &path).env_remove("FTVM_KVM_PATH");
        if background {
            let log = std::fs::File::create(dir.join(format!("bg-{}.log", scratch.children.len()))).unwrap();
            let child = shell.arg(format!("exec {line}")).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
            scratch.children.push(child.spawn().expect("sh starts"));
            continue;
        }
        let output = common::output_within(shell.arg(&line), GUARD)
            .unwrap_or_else(|hang| panic!("README command {line:?}: {hang}"));
        let logs: String = (0..scratch.children.len())
            .map(|n| std::fs::read_to_string(dir.join(format!("bg-{n}.log"))).unwrap_or_default())
            .collect();
        assert!(
            output.status.success(),
            "README command {line:?} failed: {}{}\n--- node logs\n{logs}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if line.contains("ftvm status") {
            status_output = Some(String::from_utf8_lossy(&output.stdout).into_owned());
        }
    }
    let status = status_output.expect("the README shows the primary's status");
    assert!(status.contains("role: primary"), "{status}");
    let primary_status: SocketAddr = ports["127.0.0.1:7110"].parse().unwrap();
    let start = Instant::now();
    loop {
        let status = status_json(&primary_status.to_string());
        if status.as_ref().is_some_and(|s| s["channel_up"] == true && s["role"] == "primary") {
            break;
        }
        assert!(start.elapsed() < GUARD, "the sample pair never came up protected: {status:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
