//! Builds the guest programs of `corpus/guests/` with the host gcc and exposes them to `corpus.rs`.
//!
//! Each directory of `corpus/guests/` other than `common` and `sdk` is one guest, linked with the corpus kernel
//! of `common/` into a static ELF loaded at 1 MiB:
//! - a C guest is its `*.c` files, built freestanding without SSE/x87, because the host emulates guest CPL0 code
//!   and that emulator cannot run them (docs/guest-abi.md);
//! - a Rust guest is a directory with a `Cargo.toml`: a `no_std` static library over the guest SDK (`sdk/`), a
//!   member of the guests' own workspace (`corpus/guests/Cargo.toml`, its own lock file), built by a nested cargo
//!   for the host target (its code runs at CPL3 only, natively, where SSE is fine) into a target directory of
//!   its own, then linked with the kernel by gcc.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

const GUEST_FLAGS: &[&str] = &[
    "-ffreestanding",
    "-nostdlib",
    "-static",
    "-fno-pic",
    "-no-pie",
    "-mno-sse",
    "-mno-mmx",
    "-mno-80387",
    "-mgeneral-regs-only",
    "-mno-red-zone",
    "-fno-stack-protector",
    "-fno-asynchronous-unwind-tables",
    "-fno-tree-loop-distribute-patterns",
    "-fcf-protection=none",
    "-O2",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-Wl,--build-id=none",
    "-Wl,-n",
];

fn sources(directory: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(directory)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", directory.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| matches!(path.extension().and_then(|e| e.to_str()), Some("c" | "S")))
        .collect();
    files.sort();
    files
}

fn build_guest(compiler: &str, common: &Path, guest: &Path, output: &Path) {
    let mut command = Command::new(compiler);
    command.args(GUEST_FLAGS).arg("-I").arg(common).arg("-T").arg(common.join("link.ld"));
    command.arg("-o").arg(output).args(sources(common)).args(sources(guest));
    let result = command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {compiler} (needed to build corpus guests): {error}"));
    if !result.status.success() {
        panic!(
            "building guest {} failed:\n{}{}",
            guest.display(),
            String::from_utf8_lossy(&result.stdout),
            String::from_utf8_lossy(&result.stderr)
        );
    }
}

/// Links the single assembly file `source` alone (no corpus kernel): a bare guest with its own `_start`.
fn build_bare_guest(compiler: &str, common: &Path, source: &Path, output: &Path) {
    let mut command = Command::new(compiler);
    command.args(GUEST_FLAGS).arg("-T").arg(common.join("link.ld")).arg("-o").arg(output).arg(source);
    let result = command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {compiler} (needed to build fault guests): {error}"));
    if !result.status.success() {
        panic!(
            "building fault guest {} failed:\n{}{}",
            source.display(),
            String::from_utf8_lossy(&result.stdout),
            String::from_utf8_lossy(&result.stderr)
        );
    }
}

/// The fault guests of `corpus/faults/` (test material, not corpus guests): a directory is a C guest linked with
/// the corpus kernel, a `.S` file a bare guest. Returns the table `FAULT_GUESTS` for `corpus.rs`.
fn build_fault_guests(compiler: &str, common: &Path, faults: &Path, out: &Path) -> String {
    println!("cargo:rerun-if-changed={}", faults.display());
    let mut entries: Vec<PathBuf> = std::fs::read_dir(faults)
        .expect("corpus/faults")
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.is_dir() || path.extension().is_some_and(|e| e == "S"))
        .collect();
    entries.sort();
    let mut table = String::from("/// The fault guests built by build.rs from corpus/faults: (name, ELF image).\n");
    table.push_str("pub const FAULT_GUESTS: &[(&str, &[u8])] = &[\n");
    for entry in entries {
        let name = entry.file_stem().expect("a name").to_string_lossy().into_owned();
        let output = out.join(format!("fault-{name}.elf"));
        if entry.is_dir() {
            for file in sources(&entry) {
                println!("cargo:rerun-if-changed={}", file.display());
            }
            build_guest(compiler, common, &entry, &output);
        } else {
            println!("cargo:rerun-if-changed={}", entry.display());
            build_bare_guest(compiler, common, &entry, &output);
        }
        writeln!(table, "    ({name:?}, include_bytes!({:?})),", output.display().to_string()).expect("write");
    }
    table.push_str("];\n");
    table
}

/// Stack of a Rust guest's CPL3 code: smoltcp and `core::fmt` want more than the C guests' 64 KiB.
const RUST_GUEST_STACK_BYTES: u32 = 1 << 20;

/// Builds the Rust guest in `guest` with a nested cargo and links it with the kernel into `output`.
fn build_rust_guest(compiler: &str, common: &Path, guest: &Path, target_dir: &Path, output: &Path) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut command = Command::new(&cargo);
    let manifest = std::fs::read_to_string(guest.join("Cargo.toml")).expect("the guest's Cargo.toml");
    let package = manifest
        .lines()
        .find_map(|line| line.trim().strip_prefix("name = \"").and_then(|rest| rest.strip_suffix('"')))
        .expect("a package name in the guest's Cargo.toml");
    // The guests' workspace (corpus/guests/Cargo.toml, with its own Cargo.lock) holds the SDK and every Rust guest.
    let workspace = guest.parent().expect("corpus/guests").join("Cargo.toml");
    command
        .args(["build", "--release", "--locked", "--quiet", "--manifest-path"])
        .arg(&workspace)
        .args(["--package", package])
        .arg("--target-dir")
        .arg(target_dir);
    // The outer build's settings are not the guest's: its flags (`--cfg tokio_unstable`, coverage, sanitizers
    // of cargo-fuzz or cargo-mutants), its target directory and its jobserver.
    for variable in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
    ] {
        command.env_remove(variable);
    }
    // Profile overrides of the outer build (CARGO_PROFILE_RELEASE_LTO, ..._PANIC, ...) are not the guests'.
    for (variable, _) in std::env::vars_os() {
        if variable.to_string_lossy().starts_with("CARGO_PROFILE_") {
            command.env_remove(variable);
        }
    }
    // Empty flags, set, so that no config file's `rustflags` (a `target-cpu=native` would emit AVX, which a
    // guest without XSAVE cannot run) reaches the guest either.
    command.env("CARGO_ENCODED_RUSTFLAGS", "");
    let result =
        command.output().unwrap_or_else(|error| panic!("cannot run {cargo} for guest {}: {error}", guest.display()));
    if !result.status.success() {
        panic!(
            "building Rust guest {} failed:\n{}{}",
            guest.display(),
            String::from_utf8_lossy(&result.stdout),
            String::from_utf8_lossy(&result.stderr)
        );
    }
    let library = target_dir.join("release").join(format!("lib{}.a", package.replace('-', "_")));
    let mut link = Command::new(compiler);
    link.args(GUEST_FLAGS)
        .arg(format!("-DUSER_STACK_BYTES={RUST_GUEST_STACK_BYTES}"))
        .arg("-I")
        .arg(common)
        .arg("-T")
        .arg(common.join("link.ld"))
        .arg("-o")
        .arg(output)
        .args(sources(common))
        .arg(&library)
        .arg("-Wl,--gc-sections");
    let result = link.output().unwrap_or_else(|error| panic!("cannot run {compiler}: {error}"));
    if !result.status.success() {
        panic!(
            "linking Rust guest {} failed:\n{}{}",
            guest.display(),
            String::from_utf8_lossy(&result.stdout),
            String::from_utf8_lossy(&result.stderr)
        );
    }
}

/// Every file under `directory` but build output, for `rerun-if-changed`.
fn watch_tree(directory: &Path) {
    for entry in std::fs::read_dir(directory).expect("a guest directory") {
        let path = entry.expect("directory entry").path();
        if path.file_name().is_some_and(|name| name == "target") {
            continue;
        }
        if path.is_dir() {
            watch_tree(&path);
        } else {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let guests = manifest.join("../corpus/guests");
    let common = guests.join("common");
    let compiler = std::env::var("FTVM_GUEST_CC").unwrap_or_else(|_| "gcc".to_string());
    println!("cargo:rerun-if-env-changed=FTVM_GUEST_CC");
    println!("cargo:rerun-if-changed={}", guests.display());
    for file in std::fs::read_dir(&common).expect("corpus/guests/common") {
        println!("cargo:rerun-if-changed={}", file.expect("entry").path().display());
    }

    let mut names: Vec<String> = std::fs::read_dir(&guests)
        .expect("corpus/guests")
        .map(|entry| entry.expect("directory entry"))
        .filter(|entry| entry.path().is_dir() && entry.file_name() != "common" && entry.file_name() != "sdk")
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();

    let mut table = String::from("/// The corpus guests built by build.rs: (name, ELF image).\n");
    table.push_str("pub const GUESTS: &[(&str, &[u8])] = &[\n");
    for name in &names {
        let directory = guests.join(name);
        let output = out.join(format!("{name}.elf"));
        if directory.join("Cargo.toml").exists() {
            watch_tree(&directory);
            watch_tree(&guests.join("sdk"));
            println!("cargo:rerun-if-changed={}", guests.join("Cargo.toml").display());
            println!("cargo:rerun-if-changed={}", guests.join("Cargo.lock").display());
            build_rust_guest(&compiler, &common, &directory, &out.join("rust-guests"), &output);
        } else {
            for file in sources(&directory) {
                println!("cargo:rerun-if-changed={}", file.display());
            }
            build_guest(&compiler, &common, &directory, &output);
        }
        writeln!(table, "    ({name:?}, include_bytes!({:?})),", output.display().to_string()).expect("write");
    }
    table.push_str("];\n");
    table.push_str(&build_fault_guests(&compiler, &common, &manifest.join("../corpus/faults"), &out));
    std::fs::write(out.join("corpus_guests.rs"), table).expect("write corpus_guests.rs");
}
