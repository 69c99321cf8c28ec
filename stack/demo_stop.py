"""How `steel demo` stops (mixed into stack.demo.Demo, whose attributes it uses): children in order,
the final summary, the stack, and the report with its exit code."""

from __future__ import annotations

import json
import time
from typing import Any

from steelcore import exit_codes

PRODUCER_STOP_S = 30.0
WORKER_STOP_S = 90.0  # a worker finishes its batch (one Triton request on CPU) and commits
OTHER_STOP_S = 15.0


class DemoStop:
    """Demo._shutdown and the report."""

    settings: Any
    args: Any
    hurry: Any

    def _shutdown(self) -> dict[str, Any] | None:
        """Stop children in order, collect the final summary, stop the stack; None if nothing ran."""
        for child in self.producers:
            child.stop(PRODUCER_STOP_S)
        final = None
        produced, stages = 0, {}
        if self.summary is not None:
            produced = self._produced()
            # The live Dice scores a stored frame once its truth has been read, and the truth reader
            # can be seconds behind the workers (each rebalance of its group waits 1 s on the
            # embedded broker): wait for the truth the cameras delivered too.
            truth = self._truth_delivered()
            deadline = time.monotonic() + self.args.drain_timeout_s
            workers_alive = any(w.running for w in self.workers)
            while workers_alive and not self.hurry.is_set() and time.monotonic() < deadline:
                stored = self.summary.refresh(produced).stored
                if stored >= produced and (truth is None or self.truth.seen >= truth):
                    break
                time.sleep(1.0)
            self.summary.refresh(produced)  # the workers' metrics, before they stop
            stages = self.summary.stage_seconds()
        for worker in self.workers:
            worker.terminate()  # all at once: they finish their batches in parallel
        worker_codes = {w.name: w.stop(WORKER_STOP_S) for w in self.workers}
        actuator = self.others.get("actuator")
        if actuator is not None and self.summary is not None:
            deadline = time.monotonic() + 10.0
            while actuator.running and not self.hurry.is_set() and time.monotonic() < deadline:
                latest = self.summary.refresh(produced)
                if latest.actuator_acks >= latest.alarms:
                    break
                time.sleep(0.5)
        for name in ("actuator", "dashboard"):
            if name in self.others:
                self.others[name].stop(OTHER_STOP_S)
        if self.summary is not None:
            snapshot = self.summary.refresh(produced)
            final = {
                **snapshot.to_json(),
                "frames_per_s": self.summary.throughput(),
                "frames_per_s_measured": "stored frames / (last stored_at - first captured_at)",
                "camera_to_alarm_measured": "Redis stream entry time (alarm published) - captured_at",
                "camera_to_actuator_measured": "actuator journal acted_at - captured_at",
                "defects_total": sum(snapshot.defects.values()),
                **self._offer_json(),
                "worker_stage_seconds": stages,
                "worker_exit_codes": worker_codes,
                "failure": self.failure,
                "run_dir": str(self.run_dir),
            }
        if self.truth is not None:
            self.truth.stop()
        if self.stack is not None and not self.args.keep_stack:
            self.stack.down()
            self._say("steel demo: stack stopped")
        return final

    def _offer_json(self) -> dict[str, Any]:
        if self.offer is None:
            return {}
        capacity = self.offer.capacity
        return {
            "offered_frames_per_s": self.offer.total_fps,
            "camera_fps": self.offer.camera_fps,
            "camera_fps_chosen": self.offer.chosen,
            "capacity_frames_per_s": capacity.frames_per_s if capacity is not None else None,
            "capacity_source": capacity.source if capacity is not None else None,
        }

    def _report(self, final: dict[str, Any], code: int) -> int:
        ok = self.failure is None and final["produced"] > 0 and final["stored"] == final["produced"]
        final["ok"] = ok
        text = json.dumps(final, indent=2, default=str)
        (self.run_dir / "demo-summary.json").write_text(text + "\n")
        if self.args.json is not None:
            self.args.json.parent.mkdir(parents=True, exist_ok=True)
            self.args.json.write_text(text + "\n")
        if self.args.frames is not None:
            print(text, flush=True)
        else:
            from stack.demo_summary import Snapshot, render

            fields = {k: final[k] for k in Snapshot.__dataclass_fields__}
            self._say(render(Snapshot(**fields), title="steel demo: final"))
        if code != exit_codes.OK:
            return code
        if not ok:
            self._say(f"steel demo: stored {final['stored']} of {final['produced']} frames produced")
            return exit_codes.FAILURE
        return exit_codes.OK
