//! Reading a whole file into memory with a bound. A path from the command line or a config can name anything: a
//! device that never ends (`/dev/zero`), a FIFO whose writer never stops, or a sparse file of a terabyte. Every
//! whole-file read of `ftvm` (guest images, logs, disks, configs, keys, the arbiter record) goes through here.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

/// Why a bounded read failed. The caller names the path.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{}", reason(.0))]
    Io(#[from] io::Error),
    /// A directory or a device: nothing a whole-file read makes sense of.
    #[error("{0}, not a regular file or a pipe")]
    NotAFile(&'static str),
    /// More than `limit` bytes (by its size, or by reading `limit + 1` of them).
    #[error("larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
}

/// An IO error's description without the "(os error N)" suffix that std appends.
fn reason(error: &io::Error) -> String {
    let text = error.to_string();
    match text.find(" (os error ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// Reads all of `path`, which must be a regular file of at most `limit` bytes or a pipe (FIFO, socket) that ends
/// within `limit` bytes. A regular file's size is checked before anything is read; every read goes through
/// `Read::take(limit + 1)`, so a file that grows, a FIFO and a lying size are bounded too.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let metadata = std::fs::metadata(path)?;
    let kind = metadata.file_type();
    if kind.is_dir() {
        return Err(ReadError::NotAFile("a directory"));
    }
    if kind.is_char_device() {
        return Err(ReadError::NotAFile("a character device"));
    }
    if kind.is_block_device() {
        return Err(ReadError::NotAFile("a block device"));
    }
    if kind.is_file() && metadata.len() > limit {
        return Err(ReadError::TooLarge { limit });
    }
    let file = File::open(path)?;
    let capacity = if kind.is_file() { metadata.len().min(limit) } else { 0 };
    let mut bytes = Vec::with_capacity(usize::try_from(capacity).unwrap_or(0));
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge { limit });
    }
    Ok(bytes)
}

/// [`read_bounded`] of a UTF-8 text file.
pub fn read_text_bounded(path: &Path, limit: u64) -> Result<String, ReadError> {
    String::from_utf8(read_bounded(path, limit)?)
        .map_err(|_| ReadError::Io(io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("ftvm-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    #[test]
    fn devices_directories_and_large_files_are_refused() {
        let error = read_bounded(Path::new("/dev/zero"), 10).unwrap_err();
        assert_eq!(error.to_string(), "a character device, not a regular file or a pipe");
        assert!(matches!(read_bounded(Path::new("/"), 10), Err(ReadError::NotAFile("a directory"))));
        let path = scratch("sparse");
        std::fs::File::create(&path).unwrap().set_len(11).unwrap();
        assert_eq!(read_bounded(&path, 10).unwrap_err().to_string(), "larger than the limit of 10 bytes");
        assert_eq!(read_bounded(&path, 11).unwrap(), vec![0; 11]);
        let missing = read_bounded(&scratch("missing"), 10).unwrap_err();
        assert_eq!(missing.to_string(), "No such file or directory");
    }

    #[test]
    fn a_pipe_is_bounded_by_reading() {
        let mut child =
            std::process::Command::new("sh").args(["-c", "yes"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
        let pipe = child.stdout.take().unwrap();
        use std::os::fd::AsRawFd;
        let path = std::path::PathBuf::from(format!("/proc/self/fd/{}", pipe.as_raw_fd()));
        assert!(matches!(read_bounded(&path, 1000), Err(ReadError::TooLarge { limit: 1000 })));
        drop(pipe);
        let _ = child.kill();
        let _ = child.wait();
    }
}
