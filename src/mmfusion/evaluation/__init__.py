"""Evaluation after training: test-time corruptions (:mod:`~mmfusion.evaluation.corruption`), reading and
rebuilding a checkpoint (:mod:`~mmfusion.evaluation.checkpoints`) and the robustness suite
(:mod:`~mmfusion.evaluation.robustness`)."""
