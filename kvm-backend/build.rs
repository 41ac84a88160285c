//! Builds the guest programs of `corpus/guests/` with the host gcc and exposes them to `corpus.rs`.
//!
//! Each directory of `corpus/guests/` other than `common` is one guest: its `*.c` files are linked with
//! `common/` into a static ELF loaded at 1 MiB. The guests are freestanding and built without SSE/x87, because
//! the host emulates guest CPL0 code and that emulator cannot run them (docs/guest-abi.md).

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
        .filter(|entry| entry.path().is_dir() && entry.file_name() != "common")
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();

    let mut table = String::from("/// The corpus guests built by build.rs: (name, ELF image).\n");
    table.push_str("pub const GUESTS: &[(&str, &[u8])] = &[\n");
    for name in &names {
        let directory = guests.join(name);
        for file in sources(&directory) {
            println!("cargo:rerun-if-changed={}", file.display());
        }
        let output = out.join(format!("{name}.elf"));
        build_guest(&compiler, &common, &directory, &output);
        writeln!(table, "    ({name:?}, include_bytes!({:?})),", output.display().to_string()).expect("write");
    }
    table.push_str("];\n");
    table.push_str(&build_fault_guests(&compiler, &common, &manifest.join("../corpus/faults"), &out));
    std::fs::write(out.join("corpus_guests.rs"), table).expect("write corpus_guests.rs");
}
