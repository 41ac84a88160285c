//! RESP, the Redis protocol: requests are arrays of bulk strings (or inline commands, for a human on `nc`);
//! replies are simple strings, errors, integers, bulk strings and arrays.

use alloc::vec::Vec;

/// Largest request the guest accepts: bigger ones are a protocol error and close the connection. Small, because
/// every connection may hold one partial request in the guest's 12 MiB heap.
pub const REQUEST_BYTES_MAX: usize = 64 << 10;
/// Most arguments in one request.
const ARGUMENTS_MAX: usize = 1024;

#[derive(Debug, PartialEq, Eq)]
pub enum Parse {
    /// A whole request and the bytes it took.
    Command(Vec<Vec<u8>>, usize),
    /// More bytes are needed.
    Incomplete,
    /// Not RESP: the reply is this error, and the connection is closed.
    Error(&'static str),
}

fn line(input: &[u8]) -> Option<(&[u8], usize)> {
    let end = input.windows(2).position(|pair| pair == b"\r\n")?;
    Some((&input[..end], end + 2))
}

fn number(digits: &[u8]) -> Option<i64> {
    let (negative, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // Accumulated negatively, so that i64::MIN parses too.
    let mut value = 0i64;
    for digit in digits {
        value = value.checked_mul(10)?.checked_sub(i64::from(digit - b'0'))?;
    }
    if negative {
        Some(value)
    } else {
        value.checked_neg()
    }
}

/// Parses the first request in `input`.
pub fn parse(input: &[u8]) -> Parse {
    match input.first() {
        None => Parse::Incomplete,
        Some(b'*') => parse_array(input),
        Some(_) => parse_inline(input),
    }
}

fn parse_array(input: &[u8]) -> Parse {
    let Some((header, mut at)) = line(input) else {
        return if input.len() > REQUEST_BYTES_MAX {
            Parse::Error("ERR Protocol error: too big")
        } else {
            Parse::Incomplete
        };
    };
    let count = match number(&header[1..]) {
        Some(count) if (0..=ARGUMENTS_MAX as i64).contains(&count) => count as usize,
        _ => return Parse::Error("ERR Protocol error: invalid multibulk length"),
    };
    let mut arguments = Vec::with_capacity(count);
    for _ in 0..count {
        let Some((header, used)) = line(&input[at..]) else { return incomplete(input) };
        if header.first() != Some(&b'$') {
            return Parse::Error("ERR Protocol error: expected '$'");
        }
        let length = match number(&header[1..]) {
            Some(length) if (0..=REQUEST_BYTES_MAX as i64).contains(&length) => length as usize,
            _ => return Parse::Error("ERR Protocol error: invalid bulk length"),
        };
        at += used;
        if input.len() < at + length + 2 {
            return incomplete(input);
        }
        if &input[at + length..at + length + 2] != b"\r\n" {
            return Parse::Error("ERR Protocol error: bulk string not followed by CRLF");
        }
        arguments.push(input[at..at + length].to_vec());
        at += length + 2;
    }
    Parse::Command(arguments, at)
}

fn incomplete(input: &[u8]) -> Parse {
    if input.len() > REQUEST_BYTES_MAX {
        Parse::Error("ERR Protocol error: too big")
    } else {
        Parse::Incomplete
    }
}

fn parse_inline(input: &[u8]) -> Parse {
    let Some(end) = input.iter().position(|&byte| byte == b'\n') else { return incomplete(input) };
    let text = input[..end].strip_suffix(b"\r").unwrap_or(&input[..end]);
    let arguments = text.split(|byte| *byte == b' ').filter(|word| !word.is_empty()).map(<[u8]>::to_vec).collect();
    Parse::Command(arguments, end + 1)
}

/// Reply encoders.
pub fn simple(out: &mut Vec<u8>, text: &str) {
    out.push(b'+');
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(b"\r\n");
}

pub fn error(out: &mut Vec<u8>, text: &str) {
    out.push(b'-');
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(b"\r\n");
}

pub fn integer(out: &mut Vec<u8>, value: i64) {
    out.push(b':');
    decimal(out, value);
    out.extend_from_slice(b"\r\n");
}

pub fn bulk(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        None => out.extend_from_slice(b"$-1\r\n"),
        Some(bytes) => {
            out.push(b'$');
            decimal(out, bytes.len() as i64);
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(bytes);
            out.extend_from_slice(b"\r\n");
        }
    }
}

pub fn empty_array(out: &mut Vec<u8>) {
    out.extend_from_slice(b"*0\r\n");
}

pub fn decimal(out: &mut Vec<u8>, value: i64) {
    if value < 0 {
        out.push(b'-');
    }
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = value.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// A decimal integer as Redis's INCR reads it.
pub fn parse_integer(bytes: &[u8]) -> Option<i64> {
    number(bytes)
}
