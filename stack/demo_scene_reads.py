"""What the lifecycle scene reads and writes while it waits for a step: the inspection alarm, operator
verdicts from the ground truth, model roles and shadow evidence (mixed into
stack.demo_scene.LifecycleScene, whose attributes it uses)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OPERATOR = "demo-operator"


class SceneReads:
    """The scene's questions to Redis and Postgres, through the steelcore packages."""

    settings: Any
    args: Any
    summary: Any
    started: Any
    verdicts: dict[str, int]
    reviewed_frames: set[str]
    _truth_cache: dict[str, list[str]]
    _scene_truth: Any

    def _inspection_alarm(self, camera: str) -> str | None:
        from steelcore.redis.connection import redis_client
        from steelcore.redis.entries import newest_entries

        client = redis_client(self.settings, socket_timeout=5)
        try:
            entries = newest_entries(client, self.settings.inspection_alarm_stream, 50)
        finally:
            client.close()
        for _, fields in entries:
            if fields.get("camera") == camera:
                return fields.get("message", "") if fields.get("state") == "raised" else None
        return None

    def _review(self) -> int:
        """Judge each stored, unjudged defect of this run whose frame's truth is known; the number of
        frames reviewed so far."""
        from steelcore.postgres.verdicts import defects_without_verdict, record_feedback

        engine = self.summary.engine
        rows = defects_without_verdict(engine, self.args.line, self.started)
        missing = [r.frame_id for r in rows if r.frame_id not in self._truth_cache]
        self._truth_cache.update(self._scene_truth.take(missing))
        for r in rows:
            truth = self._truth_cache.get(r.frame_id)
            if truth is None:
                continue  # its truth message is still on the way
            verdict = "confirmed" if truth[r.class_id - 1].strip() else "false"
            record_feedback(engine, verdict=verdict, operator=OPERATOR, defect_id=r.defect_id)
            self.verdicts[verdict] += 1
            self.reviewed_frames.add(r.frame_id)
        return len(self.reviewed_frames)

    def _review_evidence(self, shadow: int, production: int | None) -> int:
        """Review what is new; the verdict pairs on shadowed frames the gate would count."""
        self._review()
        return self._evidence(shadow, production).pairs

    def _roles(self) -> Any:
        from steelcore.postgres.model_registry import read_roles

        return read_roles(self.summary.engine)

    def _production_bundle(self) -> str:
        from steelcore.postgres.model_registry import version_bundles

        roles = self._roles()
        if roles.production is None:
            return self.settings.model_name
        return version_bundles(self.summary.engine).get(roles.production, self.settings.model_name)

    def _shadowed(self, version: int) -> int:
        from steelcore.postgres.model_evidence import shadowed_frame_count

        return shadowed_frame_count(self.summary.engine, version)

    def _evidence(self, shadow: int, production: int | None) -> Any:
        from steelcore.model_agreement import compare_verdicts
        from steelcore.postgres.model_evidence import read_evidence

        evidence = read_evidence(self.summary.engine, shadow, production_version=production)
        return compare_verdicts(evidence.frames, evidence.verdicts)

    def _judged_by(self, version: int) -> int:
        from steelcore.postgres.line_reads import frames_judged_by

        return frames_judged_by(self.summary.engine, self.args.line, self.started, version)

    @staticmethod
    def _retrain_note(out: Path) -> str:
        """Where the candidate went and how it compares with production on each evaluated set."""
        try:
            report = json.loads((out / "retrain.json").read_text())
        except (OSError, ValueError):
            return f"written to {out}"
        scores = []
        for name, row in (report.get("comparison") or {}).items():
            try:
                before, after = row["production"]["mean_dice"], row["candidate"]["mean_dice"]
                scores.append(f"{name} mean Dice {before:.4f} (production) -> {after:.4f}")
            except (KeyError, TypeError):
                continue
        return f"written to {out}" + (f"; {'; '.join(scores)}" if scores else "")
