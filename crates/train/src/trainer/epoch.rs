//! The end of an epoch: evaluation of the raw and averaged weights when due, the best result,
//! the learning curves and the epoch's checkpoint.

use std::time::Instant;

use burn::module::Module;

use xception_model::Network;

use super::TrainError;
use super::data::{evaluate_counts, scores};
use super::run::Run;
use crate::checkpoint::{self, Best};
use crate::distributed;
use crate::metrics::ClassificationMeter;
use crate::record::MetricsRow;
use crate::report::{EvalReport, Reporter, Scores};

impl Run<'_> {
    /// Closes the epoch that [`Run::train_epoch`] finished: evaluates when due, draws the
    /// curves and writes the epoch's checkpoint.
    pub fn end_epoch(&mut self, reporter: &mut dyn Reporter) -> Result<(), TrainError> {
        self.state.epoch += 1;
        self.state.batch_in_epoch = 0;
        self.state.running = ClassificationMeter::default();
        let epochs_done = self.state.epoch;
        let last = epochs_done == self.plan.epochs;
        let every = u64::from(self.config.training.eval_every_epochs);
        if epochs_done.is_multiple_of(every) || last {
            self.evaluate(reporter)?;
        }
        self.flush_log()?;
        if self.config.logging.plot && self.leads() {
            let path = self.run_dir.join("curves.png");
            self.curves.draw(&path).map_err(super::io_error(&path))?;
        }
        self.save(if last { "final" } else { "epoch" }, reporter)?;
        Ok(())
    }

    /// Evaluates the raw and averaged weights on the validation set, logs the result and
    /// keeps the best (by the averaged weights' top-1 when averaging).
    fn evaluate(&mut self, reporter: &mut dyn Reporter) -> Result<(), TrainError> {
        let started = Instant::now();
        let epochs_done = self.state.epoch;
        let raw = self.evaluate_model(&self.model()?.valid(), reporter)?;
        let ema = match &self.ema {
            Some(ema) => Some(self.evaluate_model(ema.model(), reporter)?),
            None => None,
        };
        let report = EvalReport {
            epochs_done,
            step: self.state.step,
            raw,
            ema,
            seconds: started.elapsed().as_secs_f64(),
        };
        let row = MetricsRow {
            kind: "val".into(),
            epoch: epochs_done as f64,
            step: self.state.step,
            samples: self.state.samples_seen,
            loss: raw.loss,
            top1: raw.top1,
            top5: raw.top5,
            ema_loss: ema.map(|s| s.loss),
            ema_top1: ema.map(|s| s.top1),
            ema_top5: ema.map(|s| s.top5),
            ..Default::default()
        };
        self.log_row(&row)?;
        let headline = ema.map_or(raw.top1, |s| s.top1);
        if self.state.best.as_ref().is_none_or(|b| headline > b.top1) {
            self.state.best = Some(Best {
                top1: headline,
                epochs_done,
                checkpoint: checkpoint::checkpoint_name(self.state.step),
            });
        }
        reporter.evaluated(&report);
        self.last_eval = Some(report);
        Ok(())
    }

    /// Scores of `model` on the validation set: each process evaluates its shard, and the
    /// counts are summed, so every image counts once.
    fn evaluate_model(
        &self,
        model: &Network,
        reporter: &mut dyn Reporter,
    ) -> Result<Scores, TrainError> {
        let mine = evaluate_counts(model, &self.val_loader, &self.device, reporter);
        let counts = [
            mine.images as f64,
            mine.loss_sum,
            mine.top1 as f64,
            mine.top5 as f64,
        ];
        let all = distributed::sum_f64(self.world, &counts)?;
        Ok(scores(&ClassificationMeter {
            images: all[0] as u64,
            loss_sum: all[1],
            top1: all[2] as u64,
            top5: all[3] as u64,
        }))
    }
}
