"""`run_training`: plan (no torch) -> session (models) -> loop -> final file and `train_summary.json`.

The hooks here decide, after each step and epoch, what sd-scripts would do at that point: write
`NAME-step00000500` / `NAME-000001` files and state folders, prune old ones, make preview images, and stop
cleanly (state saved) when SIGTERM arrives.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lorapipe.file_names import TRAIN_SUMMARY_NAME
from lorapipe.sdxl.libraries import loaded_models_frozen
from lorapipe.train.caching import precache_in_turn
from lorapipe.train.checkpoints import TrainState, find_resume_folder, load_state, remove_quietly, save_state
from lorapipe.train.loop import NonFiniteLoss, run_loop
from lorapipe.train.memory_savings import is_out_of_memory, out_of_memory_error
from lorapipe.train.naming import STATE_SUFFIX, SaveCadence, epoch_name, last_name, step_name
from lorapipe.train.plan import RunPlan, plan_run
from lorapipe.train.report import Progress, TrainSummary, peak_memory_bytes, steady_rate, write_summary
from lorapipe.train.sampling import write_sample_images
from lorapipe.train.saving import LoraWriter
from lorapipe.train.session import build_session
from lorapipe.train.validation import validation_loss, validation_plan


@dataclass(frozen=True)
class TrainResult:
    """What a run produced. status: "finished" or "interrupted" (state saved, resume to continue)."""

    status: str
    output_dir: Path
    lora_path: Path | None
    summary_path: Path
    state_path: Path | None
    steps_done: int
    total_steps: int
    final_loss: float | None
    losses: tuple[float, ...] = ()
    saved_files: tuple[Path, ...] = ()
    sample_images: tuple[Path, ...] = ()


def run_training(
    dataset_dir,
    *,
    base_model: str | None = None,
    output_dir=None,
    config_path=None,
    overrides=(),
    resume=None,
    state_dir=None,
    stop_signals: tuple[int, ...] = (),
    stop_after_steps: int | None = None,
    show_progress: bool = True,
    step_lines: bool = True,
    speed=None,
) -> TrainResult:
    """Train a Kohya-format SDXL LoRA for the dataset folder; raise LorapipeError subclasses on bad input.

    `resume`: a state folder (or a folder holding several; the newest complete one is used). `state_dir`: where
    state folders go (default: the output folder). `stop_signals`: signals (e.g. SIGTERM) that save state and
    stop. `stop_after_steps`: stop (with state saved) after that many steps, as if a signal had arrived.
    `speed`: `models.SpeedOptions` (channels_last, torch.compile) for GPU runs.
    """
    stop = threading.Event()
    threads = torch.get_num_threads()  # build_session may pick one thread for a tiny CPU model; restore after
    with _stop_on(stop_signals, lambda *_: stop.set()), _restore_threads(threads):
        t0 = time.perf_counter()
        plan = plan_run(
            Path(dataset_dir),
            base_model=base_model,
            output_dir=Path(output_dir) if output_dir else None,
            config_path=Path(config_path) if config_path else None,
            overrides=overrides,
        )
        resume_folder = find_resume_folder(resume, plan.dataset_hash) if resume else None
        try:
            session = build_session(plan, speed) if speed else build_session(plan)
        except RuntimeError as exc:
            if is_out_of_memory(exc):
                raise out_of_memory_error(plan.config, "while loading the models") from None
            raise
        t_loaded = time.perf_counter()
        precache_in_turn(session, plan)
        run = _Run(
            plan,
            session,
            Path(state_dir) if state_dir else plan.output_dir,
            stop_after_steps,
            show_progress,
            step_lines,
            seconds_model_load=t_loaded - t0,
            stop=stop,
        )
        run.seconds_caching = time.perf_counter() - t_loaded
        with loaded_models_frozen():  # the models outlive every step: keep the collector's full passes off them
            return run.train(run.resume_from(resume_folder))


class _Run:
    """Hooks and bookkeeping of one run (the loop calls after_step / after_epoch)."""

    def __init__(
        self,
        plan: RunPlan,
        session,
        state_dir: Path,
        stop_after_steps,
        show_progress,
        step_lines,
        seconds_model_load: float,
        stop: threading.Event,
    ):
        self.plan, self.session, self.state_dir = plan, session, state_dir
        self.cfg = plan.config
        self.cadence = self.cfg.options(SaveCadence)
        self.writer = LoraWriter(plan, session.models.network, session.optimizer_choice.metadata_string())
        self.stop_after_steps = stop_after_steps
        # Only the main process writes files, samples and prints; the others train their share and stay quiet.
        self.main = plan.processes.is_main
        self.show_progress, self.step_lines = show_progress and self.main, step_lines and self.main
        self.seconds_model_load = seconds_model_load
        self.seconds_caching = 0.0
        self.stop_event = stop
        self.stopping = False  # all processes agreed to stop (set from the step report)
        self.losses: list[float] = []
        self.epoch_losses: list[float] = []
        self.saved: list[Path] = []
        self.samples: list[Path] = []
        self.last_state: Path | None = None
        self.validation = validation_plan(plan)
        self.validation_losses: list[dict] = []
        self.progress = None
        self.state: TrainState | None = None
        self.epoch_seconds: list[float] = []
        self.step_times: list[float] = []
        self._epoch_started = time.perf_counter()

    # ---- start ---------------------------------------------------------------------------------------------
    def resume_from(self, folder: Path | None) -> TrainState:
        if folder is None:
            return TrainState(0, 1, 0, self.plan.dataset_hash)
        s = self.session
        return load_state(
            folder,
            network=s.models.network,
            optimizer=s.optimizer,
            lr_scheduler=s.lr_scheduler,
            scaler=s.scaler,
        )

    # ---- the run -------------------------------------------------------------------------------------------
    def train(self, start: TrainState) -> TrainResult:
        plan = self.plan
        # wandb keeps its offline run beside the outputs when no logging_dir is given.
        logging_dir = self.cfg.logging_dir or (
            str(Path(plan.output_dir) / "logs") if self.cfg.log_with == "wandb" else None
        )
        self.progress = Progress(
            plan.total_steps,
            initial_step=start.current_step,
            logging_dir=logging_dir,
            log_prefix=self.cfg.log_prefix,
            log_with=self.cfg.log_with,
            config=self.cfg.to_dict() if self.cfg.log_with == "wandb" else None,
            show_bar=self.show_progress,
            step_lines=self.step_lines,
        )
        for warning in plan.warnings if self.main else ():
            self.progress.note(f"warning: {warning}")
        for note in self.session.notes if self.main else ():
            self.progress.note(note)
        t_start = self._epoch_started = time.perf_counter()
        status, state = "finished", start
        self.state = start
        try:
            if self.cfg.sample_at_first and start.current_step == 0:
                self._sample(step=0, epoch=None)
            # A stop that arrived while the models loaded ends the run before its first step.
            # (With several processes they agree on stopping at a step, so all of them enter the loop.)
            stop_now = self.stop_event.is_set() and not plan.processes.is_distributed
            state = start if stop_now else run_loop(self.session, plan, start, self)
            if (
                stop_now
                or self.stopping
                or (
                    self.stop_after_steps
                    and state.current_step < plan.total_steps
                    and state.current_step >= self.stop_after_steps
                )
            ):
                status = "interrupted"
                self.last_state = self._save_state(step_name(plan.output_name, state.current_step), state)
        except RuntimeError as exc:
            if is_out_of_memory(exc):
                self._write_summary("failed", None, self.state, time.perf_counter() - t_start)
                raise out_of_memory_error(self.cfg, f"after step {self.state.current_step}") from None
            raise
        except NonFiniteLoss:
            # The weights are still those of the last good step: keep them as a step file, then report.
            good = self.state
            if self.main:
                self.saved.append(
                    self.writer.save(
                        step_name(plan.output_name, good.current_step),
                        steps=good.current_step,
                        epoch=good.current_epoch,
                    )
                )
            self._write_summary("failed", None, good, time.perf_counter() - t_start)
            raise
        finally:
            self.progress.close()
        lora = None
        if status == "finished" and self.main:
            lora = self.writer.save(
                last_name(plan.output_name), steps=state.current_step, epoch=min(state.current_epoch, plan.epochs)
            )
            if self.cfg.save_state or self.cfg.save_state_on_train_end:
                self.last_state = self._save_state(last_name(plan.output_name), state)
        seconds = time.perf_counter() - t_start
        summary_path = self._write_summary(status, lora, state, seconds)
        return TrainResult(
            status=status,
            output_dir=plan.output_dir,
            lora_path=lora,
            summary_path=summary_path,
            state_path=self.last_state,
            steps_done=state.current_step,
            total_steps=plan.total_steps,
            final_loss=self.losses[-1] if self.losses else None,
            losses=tuple(self.losses),
            saved_files=tuple(self.saved),
            sample_images=tuple(self.samples),
        )

    # ---- hooks called by the loop ----------------------------------------------------------------------------
    def after_step(self, report, state: TrainState) -> bool:
        self.state = state
        self.step_times.append(time.perf_counter())
        self.losses.append(report.loss)
        self.epoch_losses.append(report.loss)
        avg = sum(self.epoch_losses) / len(self.epoch_losses)
        self.progress.step(
            report.step,
            loss=report.loss,
            avg_loss=avg,
            lrs=self.session.learning_rates(),
            epoch=report.epoch,
            max_norm=report.max_norm,
        )
        if self.cadence.saves_at_step(report.step):
            self._save_and_prune(step_name, report.step, self.cadence.step_to_remove, state)
        n = self.cfg.sample_every_n_steps or 0
        if n > 0 and not (self.cfg.sample_every_n_epochs or 0) and report.step % n == 0:
            self._sample(step=report.step, epoch=None)
        if self.validation.due_after_step(report.step):
            self._validate(step=report.step, epoch=None)
        if self.stop_after_steps and report.step >= self.stop_after_steps:
            return True
        self.stopping = report.stop
        return report.stop

    def stop_requested(self) -> bool:
        """Whether this process was asked to stop (the loop shares it with the other processes)."""
        return self.stop_event.is_set()

    def after_epoch(self, epoch: int, state: TrainState) -> bool:
        self.state = state
        now = time.perf_counter()
        self.epoch_seconds.append(round(now - self._epoch_started, 4))
        self._epoch_started = now
        self.progress.epoch_end(epoch, sum(self.epoch_losses) / max(1, len(self.epoch_losses)))
        self.epoch_losses = []
        if self.cadence.saves_at_epoch_end(epoch, self.plan.epochs):
            self._save_and_prune(epoch_name, epoch, self.cadence.epoch_to_remove, state, epoch=epoch)
        n = self.cfg.sample_every_n_epochs or 0
        if n > 0 and epoch % n == 0:
            self._sample(step=state.current_step, epoch=epoch)
        if self.validation.due_after_epoch(epoch):
            self._validate(step=state.current_step, epoch=epoch)
        return self.stopping

    # ---- helpers ---------------------------------------------------------------------------------------------
    def _save_and_prune(self, name_of, at: int, to_remove, state: TrainState, epoch: int | None = None) -> None:
        """Write the file (and, with save_state, the state folder) named for step or epoch `at` by `name_of`, then
        delete the ones `to_remove` (the cadence's save_last_n_* rule) says are now too old."""
        name = self.plan.output_name
        self._save_file(name_of(name, at), state, epoch=epoch)
        old = to_remove(at)
        if old:
            self._remove(self.plan.output_dir / f"{name_of(name, old)}.safetensors")
        if self.cfg.save_state:
            self._save_state(name_of(name, at), state)
            old = to_remove(at, state=True)
            if old:
                self._remove(self.state_dir / f"{name_of(name, old)}{STATE_SUFFIX}")

    def _remove(self, path: Path) -> None:
        if self.main:
            remove_quietly(path)

    def _save_file(self, name: str, state: TrainState, epoch: int | None = None) -> None:
        if not self.main:
            return
        self.saved.append(self.writer.save(name, steps=state.current_step, epoch=epoch or state.current_epoch))

    def _save_state(self, name: str, state: TrainState) -> Path:
        s = self.session
        folder = self.state_dir / f"{name}{STATE_SUFFIX}"
        if not self.main:
            return folder  # the weights and optimizer state are the same in every process
        self.last_state = save_state(
            folder,
            network=s.models.network,
            optimizer=s.optimizer,
            lr_scheduler=s.lr_scheduler,
            scaler=s.scaler,
            state=state,
        )
        return self.last_state

    def _sample(self, *, step: int, epoch: int | None) -> None:
        if not self.plan.sample_prompts or not self.main:
            return
        self.samples += write_sample_images(
            self.session.models,
            list(self.plan.sample_prompts),
            self.plan.output_dir / "sample",
            output_name=self.cfg.output_name,
            epoch=epoch,
            step=step,
            default_sampler=self.cfg.sample_sampler,
            v_parameterization=self.cfg.v_parameterization,
            fallback_seed=self.plan.seed,
            device=self.session.models.device,
        )

    def _validate(self, *, step: int, epoch: int | None) -> None:
        """Main process only: the others go on to the next step and wait for it there."""
        if not self.main:
            return
        loss = validation_loss(self.session, self.plan, self.validation)
        self.validation_losses.append({"step": step, "epoch": epoch, "loss": round(loss, 6)})
        self.progress.validation(step, loss, epoch=epoch)

    def _write_summary(self, status: str, lora: Path | None, state: TrainState, seconds: float) -> Path:
        plan = self.plan
        if not self.main:
            return plan.output_dir / TRAIN_SUMMARY_NAME
        steps_run = len(self.losses)
        summary = TrainSummary(
            status=status,
            lora_file=str(Path(lora).resolve()) if lora else None,
            output_name=plan.output_name,
            dataset_hash=plan.dataset_hash,
            total_steps=plan.total_steps,
            steps_done=state.current_step,
            epochs=plan.epochs,
            batches_per_epoch=plan.batches_per_epoch,
            final_loss=self.losses[-1] if self.losses else None,
            average_loss=sum(self.losses) / steps_run if steps_run else None,
            seconds_model_load=round(self.seconds_model_load, 3),
            seconds_caching=round(self.seconds_caching, 3),
            seconds_training=round(seconds, 3),
            seconds_per_epoch=list(self.epoch_seconds),
            steps_per_second=round(steps_run / seconds, 4) if seconds else None,
            steps_per_second_steady=steady_rate(self.step_times),
            memory=peak_memory_bytes(self.session.models.device.type),
            device=str(self.session.models.device),
            saved_files=[str(p) for p in self.saved],
            sample_images=[str(p) for p in self.samples],
            warnings=list(plan.warnings),
            seed=plan.seed,
            losses=[round(x, 6) for x in self.losses],
            state_folder=str(self.last_state) if self.last_state else None,
            num_validation_images=len(self.validation.items),
            validation_losses=list(self.validation_losses),
            config=plan.config.to_dict(),
        )
        return write_summary(plan.output_dir, summary)


class _restore_threads:
    def __init__(self, threads: int):
        self.threads = threads

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        torch.set_num_threads(self.threads)
        return False


class _stop_on:
    """Context manager: route `signals` to `callback` (main thread only), restore the old handlers after."""

    def __init__(self, signals, callback):
        self.signals = tuple(signals) if threading.current_thread() is threading.main_thread() else ()
        self.callback = callback
        self.previous: dict[int, object] = {}

    def __enter__(self):
        for sig in self.signals:
            self.previous[sig] = signal.signal(sig, self.callback)
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False
