//! The end of an epoch: evaluation of the raw and averaged weights when due, the best result,
//! the learning curves and the epoch's checkpoint.

use std::time::Instant;

use burn::module::Module;

use super::data::evaluate;
use super::run::Run;
use super::{TrainError, io_error};
use crate::checkpoint::{self, Best};
use crate::metrics::ClassificationMeter;
use crate::record::MetricsRow;
use crate::report::{EvalReport, Reporter};

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
        self.log.flush().map_err(io_error(self.log.jsonl_path()))?;
        if self.config.logging.plot {
            let path = self.run_dir.join("curves.png");
            self.curves.draw(&path).map_err(io_error(&path))?;
        }
        self.save(if last { "final" } else { "epoch" }, reporter)?;
        Ok(())
    }

    /// Evaluates the raw and averaged weights on the validation set, logs the result and
    /// keeps the best (by the averaged weights' top-1 when averaging).
    fn evaluate(&mut self, reporter: &mut dyn Reporter) -> Result<(), TrainError> {
        let started = Instant::now();
        let epochs_done = self.state.epoch;
        let raw = evaluate(
            &self.model()?.valid(),
            &self.val_loader,
            &self.device,
            reporter,
        );
        let ema = self
            .ema
            .as_ref()
            .map(|ema| evaluate(ema.model(), &self.val_loader, &self.device, reporter));
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
        self.log
            .write(&row)
            .map_err(io_error(self.log.jsonl_path()))?;
        self.curves.add(&row);
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
}
