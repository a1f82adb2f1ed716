//! Apps' output, captured for `dormouse logs`: every line a service process
//! or a guest writes, with a timestamp, its source and its stream, appended
//! to a file of the app's that is bounded in size and rotated
//! (`services.log` for service processes, written by whoever spawned them;
//! `guests.log` for components). A line reads
//! `2026-11-30T12:00:00.123456Z web[4242] stderr: listening on 8080`, so the
//! files of an app merge by sorting.
//!
//! Invariants: a file never grows past [`MAX_LOG_BYTES`] (it is renamed to
//! `<file>.1`, replacing the previous one, and started again), so an app
//! keeps at most twice that per file; one writer per file per process.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead as _, BufReader, Read, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

/// Size at which a log file is rotated: 1 MiB, so an app's logs take at
/// most 4 MiB (two files, each with one rotated copy).
pub const MAX_LOG_BYTES: u64 = 1 << 20;

/// The longest line kept; longer ones are cut (with a mark), so one
/// runaway write cannot take the whole file.
const MAX_LINE_BYTES: usize = 16 << 10;

/// One log file, appended to by line.
pub struct LogFile {
    path: PathBuf,
    file: Option<File>,
    size: u64,
}

impl LogFile {
    /// The one writer of `path` in this process.
    pub fn shared(path: &Path) -> Arc<Mutex<LogFile>> {
        static OPEN: OnceLock<Mutex<HashMap<PathBuf, Arc<Mutex<LogFile>>>>> = OnceLock::new();
        let mut open = OPEN.get_or_init(Mutex::default).lock().expect("not poisoned");
        open.entry(path.to_owned())
            .or_insert_with(|| Arc::new(Mutex::new(LogFile { path: path.to_owned(), file: None, size: 0 })))
            .clone()
    }

    /// Appends one line from `source` on `stream` (`stdout`, `stderr`).
    /// Errors are dropped: logging never fails the app.
    pub fn write_line(&mut self, source: &str, stream: &str, text: &[u8]) {
        let text = String::from_utf8_lossy(&text[..text.len().min(MAX_LINE_BYTES)]);
        let cut = if text.len() >= MAX_LINE_BYTES { " [cut]" } else { "" };
        let stamp = humantime::format_rfc3339_micros(SystemTime::now());
        let line = format!("{stamp} {source} {stream}: {}{cut}\n", text.trim_end_matches(['\n', '\r']));
        if self.size + line.len() as u64 > MAX_LOG_BYTES {
            self.file = None;
            let mut rotated = self.path.clone().into_os_string();
            rotated.push(".1");
            let _ = std::fs::rename(&self.path, rotated);
        }
        // The file went away (the app was removed): a new one is started,
        // not written past its end in the dark.
        if self.file.is_some() && !self.path.exists() {
            self.file = None;
        }
        if self.file.is_none() {
            if let Some(dir) = self.path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let Ok(file) = std::fs::OpenOptions::new().create(true).append(true).open(&self.path) else { return };
            self.size = file.metadata().map(|m| m.len()).unwrap_or(0);
            self.file = Some(file);
        }
        if let Some(file) = &mut self.file
            && file.write_all(line.as_bytes()).is_ok()
        {
            self.size += line.len() as u64;
        }
    }
}

/// Copies `reader` (a process's stdout or stderr pipe) into `log` line by
/// line, on a thread of its own, until the pipe closes.
pub fn capture(reader: impl Read + Send + 'static, log: Arc<Mutex<LogFile>>, source: String, stream: &'static str) {
    std::thread::spawn(move || {
        let mut lines = BufReader::new(reader);
        let mut line = Vec::new();
        loop {
            line.clear();
            match lines.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => log.lock().expect("not poisoned").write_line(&source, stream, &line),
            }
        }
    });
}

/// The last `limit` lines of the log files in `dir` (rotated copies
/// included), merged in time order; only lines stamped after `after` if it
/// is given (for following).
pub fn tail(dir: &Path, after: Option<&str>, limit: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return lines };
    for entry in entries.flatten() {
        let Ok(file) = File::open(entry.path()) else { continue };
        lines.extend(BufReader::new(file).lines().map_while(Result::ok));
    }
    if let Some(after) = after {
        lines.retain(|line| line.split(' ').next().is_some_and(|stamp| stamp > after));
    }
    // Stable: lines of one source with the same stamp keep their order.
    lines.sort_by(|a, b| a.split(' ').next().cmp(&b.split(' ').next()));
    let skip = lines.len().saturating_sub(limit);
    lines.split_off(skip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_stamped_rotated_and_merged() {
        let dir = tempfile::tempdir().unwrap();
        let services = LogFile::shared(&dir.path().join("services.log"));
        let guests = LogFile::shared(&dir.path().join("guests.log"));
        services.lock().unwrap().write_line("web[1]", "stdout", b"first\n");
        guests.lock().unwrap().write_line("api", "stderr", b"second");
        services.lock().unwrap().write_line("web[1]", "stdout", b"third\r\n");
        let lines = tail(dir.path(), None, 10);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[0].ends_with(" web[1] stdout: first"), "{}", lines[0]);
        assert!(lines[1].ends_with(" api stderr: second"), "{}", lines[1]);
        assert!(lines[2].ends_with(" web[1] stdout: third"), "{}", lines[2]);
        let stamp = lines[1].split(' ').next().unwrap();
        assert!(stamp.ends_with('Z') && stamp.contains('T'), "{stamp}");
        assert_eq!(tail(dir.path(), Some(stamp), 10).len(), 1, "only what came after");
        assert_eq!(tail(dir.path(), None, 1), lines[2..].to_vec());

        // Past the bound the file is rotated, and the total stays bounded.
        let long = vec![b'x'; 10_000];
        for _ in 0..300 {
            services.lock().unwrap().write_line("web[1]", "stdout", &long);
        }
        let size = |name: &str| std::fs::metadata(dir.path().join(name)).map(|m| m.len()).unwrap_or(0);
        assert!(size("services.log") <= MAX_LOG_BYTES && size("services.log.1") <= MAX_LOG_BYTES);
        assert!(size("services.log.1") > MAX_LOG_BYTES / 2, "rotated once full");
    }
}
