"""The one training loop: epochs of optimizer steps on an objective, validation, best weights.

Both ways of training a closure run through `fit`; they differ only in their
objective:

- a-priori (`closure.training.trainer`): the squared error of the normalized SGS
  term on stencil points or whole fields streamed from the dataset;
- a-posteriori (`closure.training.unroll`): the trajectory mismatch of the LES
  unrolled through the solver with the closure.

An objective provides

- ``batches(epoch)``: the epoch's batches (it also sets up the epoch: sampling
  seed, unroll length, ...);
- ``loss(batch)``: ``(loss, summed_loss, count)``, the tensor to differentiate,
  its contribution to the epoch's summed loss (a float) and the number of samples
  in it, or None to skip the batch (e.g. every window blew up);
- ``reduce(summed_loss, count)``: the totals over all processes (distributed
  training; the identity otherwise);
- ``validate(epoch, train_loss)``: the validation loss and extra history columns
  (it may raise `ClosureError` when the training diverged);
- ``postfix(summed_loss, count, seconds)``: the progress bar's fields;
- ``epoch_done(row, state, best_state)``: called after each epoch (checkpoints,
  logs, callbacks).

Per epoch `fit` records the history row ``epoch, train_loss (summed loss / count),
validation_loss, lr_factor, samples, seconds, samples_per_second`` plus the
objective's columns, keeps the weights of the best validation loss, and stops
early after ``train.patience`` epochs without improvement. ``state`` (a dict that
a checkpoint stores as JSON) carries ``epoch, best_loss, best_epoch, bad_epochs,
stopped_early, history, seconds`` across resumptions.
"""

from __future__ import annotations

import time
from typing import Optional

from torch import nn

from closure.training.runs import learning_rate_factor, optimizer_step

__all__ = ["fit", "new_state"]


def new_state(normalization: Optional[dict] = None) -> dict:
    """The state of a training that has not run an epoch yet."""
    return {"epoch": 0, "best_loss": float("inf"), "best_epoch": 0, "bad_epochs": 0, "stopped_early": False,
            "history": [], "seconds": 0.0, "normalization": normalization}


def _snapshot(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def fit(objective, model: nn.Module, optimizer, scheduler, tc, state: dict, bar, total_steps: int,
        best_state: Optional[dict] = None) -> Optional[dict]:
    """Train ``model`` on ``objective`` until ``tc.epochs`` (or early stopping); return the best weights.

    ``tc`` is the ``train`` config section (epochs, grad_clip, schedule, patience);
    ``bar`` a `closure.progress.progress` bar; ``total_steps`` the optimizer steps of
    the whole run (the schedule's length). ``state`` is updated in place.
    """
    while state["epoch"] < tc.epochs and not state["stopped_early"]:
        epoch = state["epoch"]
        start = time.time()
        summed, count = 0.0, 0
        model.train()
        for batch in objective.batches(epoch):
            out = objective.loss(batch)
            if out is not None:
                loss, batch_sum, n = out
                optimizer_step(loss, model, optimizer, scheduler, tc.grad_clip)
                summed += batch_sum
                count += n
            bar.update(1)
            if count:
                bar.set_postfix(**objective.postfix(summed, count, time.time() - start))
        summed, count = objective.reduce(summed, count)
        train_seconds = time.time() - start
        model.eval()
        val_loss, extras = objective.validate(epoch, summed / max(count, 1))
        row = {"epoch": epoch + 1, "train_loss": summed / max(count, 1), "validation_loss": val_loss,
               "lr_factor": learning_rate_factor(tc.schedule, scheduler.last_epoch, total_steps),
               "samples": int(count), "seconds": round(time.time() - start, 4),
               "samples_per_second": count / max(train_seconds, 1e-9), **extras}
        state["history"].append(row)
        state["seconds"] += time.time() - start
        state["epoch"] = epoch + 1
        if val_loss < state["best_loss"]:
            state.update(best_loss=val_loss, best_epoch=epoch + 1, bad_epochs=0)
            best_state = _snapshot(model)
        else:
            state["bad_epochs"] += 1
            if tc.patience and state["bad_epochs"] >= tc.patience:
                state["stopped_early"] = True
        bar.set_postfix(loss=row["train_loss"], val=val_loss, epoch=epoch + 1)
        objective.epoch_done(row, state, best_state)
    return best_state
