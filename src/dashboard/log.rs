//! Where tracing writes: stderr, until the dashboard takes the screen and moves it to a file
//! in the report folder ([`LogSink::to_file`]), so log lines never scribble over the
//! dashboard. The subscriber is set up once, with this sink as its writer.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use tracing_subscriber::fmt::MakeWriter;

/// The log's destination, switchable while the program runs.
#[derive(Clone, Default)]
pub struct LogSink {
    target: Arc<Mutex<Target>>,
}

#[derive(Default)]
enum Target {
    #[default]
    Stderr,
    File(File, PathBuf),
}

impl LogSink {
    fn lock(&self) -> MutexGuard<'_, Target> {
        self.target.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// From now on the log goes to `path` (appended; created if missing).
    pub fn to_file(&self, path: &Path) -> std::io::Result<()> {
        let file = File::options().create(true).append(true).open(path)?;
        *self.lock() = Target::File(file, path.to_path_buf());
        Ok(())
    }

    /// The log file, once the log goes to one.
    pub fn file(&self) -> Option<PathBuf> {
        match &*self.lock() {
            Target::File(_, path) => Some(path.clone()),
            Target::Stderr => None,
        }
    }
}

/// One write of the subscriber (one formatted event).
pub struct SinkWriter {
    sink: LogSink,
}

impl Write for SinkWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut *self.sink.lock() {
            Target::Stderr => std::io::stderr().write(buf),
            Target::File(f, _) => f.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        // One lock for the whole event, so two threads' lines never interleave.
        match &mut *self.sink.lock() {
            Target::Stderr => std::io::stderr().write_all(buf),
            Target::File(f, _) => f.write_all(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut *self.sink.lock() {
            Target::Stderr => std::io::stderr().flush(),
            Target::File(f, _) => f.flush(),
        }
    }
}

impl<'a> MakeWriter<'a> for LogSink {
    type Writer = SinkWriter;

    fn make_writer(&'a self) -> SinkWriter {
        SinkWriter { sink: self.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_moves_to_the_file_and_stays_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("station.log");
        let sink = LogSink::default();
        assert_eq!(sink.file(), None);
        sink.to_file(&path).unwrap();
        assert_eq!(sink.file().as_deref(), Some(path.as_path()));
        sink.make_writer().write_all(b"one\n").unwrap();
        let mut w = sink.make_writer();
        w.write_all(b"two\n").unwrap();
        w.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\ntwo\n");
    }
}
