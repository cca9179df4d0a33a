//! Progress bars for long work (fit, evaluation, benches), drawn on stderr.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar with rate and time left; hidden when stderr is not a terminal.
pub fn bar(total: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(total as u64);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:>14} [{bar:32}] {pos}/{len} {per_sec} eta {eta} ({elapsed})",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// One bar per phase of a fit, reused as the phases change.
pub struct FitBars {
    current: Option<(String, ProgressBar)>,
}

impl FitBars {
    pub fn new() -> Self {
        FitBars { current: None }
    }

    pub fn update(&mut self, p: miad::fit::banks::Progress) {
        use miad::fit::banks::Progress;
        let (name, done, total) = match p {
            Progress::Extract { done, total } => ("features".to_string(), done, total),
            Progress::Coreset { bank, done, total } => (format!("coreset {bank}"), done, total),
            Progress::Select { bank, done, total } => (format!("select {bank}"), done, total),
            Progress::Neighbours { bank, done, total } => {
                (format!("neighbours {bank}"), done, total)
            }
            Progress::Score { done, total } => ("scoring".to_string(), done, total),
            Progress::Case { case, done, total } => (format!("case {case}"), done, total),
            Progress::Done => {
                if let Some((_, pb)) = self.current.take() {
                    pb.finish();
                }
                return;
            }
        };
        if self
            .current
            .as_ref()
            .map(|(n, _)| n != &name)
            .unwrap_or(true)
        {
            if let Some((_, pb)) = self.current.take() {
                pb.finish();
            }
            self.current = Some((name.clone(), bar(total, &name)));
        }
        if let Some((_, pb)) = &self.current {
            pb.set_length(total as u64);
            pb.set_position(done as u64);
        }
    }
}

/// The bar of `miad train-fusion`: features, then steps with loss, learning rate and rate.
pub struct TrainBar {
    current: Option<(&'static str, ProgressBar)>,
}

impl TrainBar {
    pub fn new() -> Self {
        TrainBar { current: None }
    }

    fn phase(&mut self, name: &'static str, total: usize) -> &ProgressBar {
        if self
            .current
            .as_ref()
            .map(|(n, _)| *n != name)
            .unwrap_or(true)
        {
            if let Some((_, pb)) = self.current.take() {
                pb.finish();
            }
            let pb = bar(total, name);
            if name == "training" {
                pb.set_style(
                    ProgressStyle::with_template(
                        "{prefix:>14} [{bar:32}] {pos}/{len} {per_sec} eta {eta} {msg}",
                    )
                    .expect("a valid template")
                    .progress_chars("=> "),
                );
                pb.set_prefix(name);
            }
            self.current = Some((name, pb));
        }
        &self.current.as_ref().expect("just set").1
    }

    pub fn update(&mut self, p: miad::fit::train_fusion::TrainProgress) {
        use miad::fit::train_fusion::TrainProgress;
        match p {
            TrainProgress::Extract { done, total } => {
                self.phase("features", total).set_position(done as u64)
            }
            TrainProgress::Step {
                epoch,
                step,
                total,
                loss,
                lr,
            } => {
                let pb = self.phase("training", total);
                pb.set_position(step as u64);
                pb.set_message(format!("epoch {} loss {loss:.4} lr {lr:.2e}", epoch + 1));
            }
            TrainProgress::Done => {
                if let Some((_, pb)) = self.current.take() {
                    pb.finish();
                }
            }
        }
    }
}
