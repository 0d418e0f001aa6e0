//! Progress of a long offline job (import, export, scrub): a bar (indicatif) when stderr is
//! a terminal, otherwise one plain line per tenth of the work and one when it is done, so
//! logs stay short.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    what: String,
    total: u64,
    bar: Option<ProgressBar>,
    /// Tenths reported so far (plain lines).
    tenths: u64,
}

impl Progress {
    pub fn new(what: impl Into<String>, total: u64) -> Self {
        let what = what.into();
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            if let Ok(style) =
                ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}")
            {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(what.clone());
            bar
        });
        if bar.is_none() {
            eprintln!("{what}: 0 of {total} bytes (0%)");
        }
        Self { what, total, bar, tenths: 0 }
    }

    /// `done` bytes of the total are through.
    pub fn set(&mut self, done: u64) {
        match &self.bar {
            Some(bar) => bar.set_position(done),
            None => {
                let tenths = (done.min(self.total) * 10).checked_div(self.total).unwrap_or(10);
                if tenths > self.tenths {
                    self.tenths = tenths;
                    eprintln!("{}: {done} of {} bytes ({}%)", self.what, self.total, tenths * 10);
                }
            }
        }
    }

    pub fn finish(&mut self) {
        self.set(self.total);
        match &self.bar {
            Some(bar) => bar.finish(),
            None => eprintln!("{}: done", self.what),
        }
    }
}
