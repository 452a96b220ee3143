//! Progress while `plan --live` pages through a large cluster, on stderr,
//! as `kubectl` users expect from long operations: `pods: 4,000/10,000`,
//! rewritten in place. Only on a terminal: nothing when either stream is
//! redirected (a script or CI job reads the report and the exit code), and
//! nothing with `--quiet`.

use std::io::{IsTerminal, Write};

pub struct Progress {
    out: Option<Box<dyn Write + Send>>,
}

impl Progress {
    /// On stderr, when stdout and stderr are both terminals and not `quiet`.
    pub fn on_terminal(quiet: bool) -> Self {
        let shown = !quiet && std::io::stderr().is_terminal() && std::io::stdout().is_terminal();
        if shown {
            Progress::to(Box::new(std::io::stderr()))
        } else {
            Progress::hidden()
        }
    }

    pub fn to(out: Box<dyn Write + Send>) -> Self {
        Progress { out: Some(out) }
    }

    pub fn hidden() -> Self {
        Progress { out: None }
    }

    /// After each page: `listed` so far, of `total` when the API server said.
    pub fn page(&mut self, what: &str, listed: usize, total: Option<u64>) {
        if let Some(out) = &mut self.out {
            // \r and "erase to the end of the line": the line is rewritten.
            let _ = write!(out, "\r{}\x1b[K", progress_line(what, listed, total));
            let _ = out.flush();
        }
    }

    /// After the last page: the line stays, with the count.
    pub fn done(&mut self, what: &str, listed: usize) {
        if let Some(out) = &mut self.out {
            let _ = writeln!(
                out,
                "\r{}\x1b[K",
                progress_line(what, listed, Some(listed as u64))
            );
            let _ = out.flush();
        }
    }
}

/// `pods: 4,000/10,000`, or `pods: 4,000` when the total is unknown (the
/// API server gives no remainingItemCount for a LIST with a selector).
pub fn progress_line(what: &str, listed: usize, total: Option<u64>) -> String {
    match total {
        Some(total) => format!("{what}: {}/{}", thousands(listed as u64), thousands(total)),
        None => format!("{what}: {}", thousands(listed as u64)),
    }
}

/// `10000` as `10,000`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn numbers_are_grouped_by_thousands() {
        let cases = [
            (0, "0"),
            (7, "7"),
            (999, "999"),
            (1000, "1,000"),
            (10_000, "10,000"),
            (123_456, "123,456"),
            (1_234_567, "1,234,567"),
        ];
        for (n, want) in cases {
            assert_eq!(thousands(n), want, "{n}");
        }
    }

    #[test]
    fn a_line_shows_the_total_when_known() {
        assert_eq!(
            progress_line("pods", 4000, Some(10_000)),
            "pods: 4,000/10,000"
        );
        assert_eq!(
            progress_line("EndpointSlices", 300, None),
            "EndpointSlices: 300"
        );
    }

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn pages_rewrite_one_line_and_the_end_keeps_it() {
        let captured = Captured::default();
        let mut p = Progress::to(Box::new(captured.clone()));
        p.page("pods", 100, Some(250));
        p.page("pods", 200, Some(250));
        p.done("pods", 250);
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text,
            "\rpods: 100/250\x1b[K\rpods: 200/250\x1b[K\rpods: 250/250\x1b[K\n"
        );
    }
}
