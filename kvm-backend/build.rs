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
    std::fs::write(out.join("corpus_guests.rs"), table).expect("write corpus_guests.rs");
}
