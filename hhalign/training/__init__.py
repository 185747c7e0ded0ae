"""Training machinery around the objectives: atomic checkpoints and resume fingerprints
(``checkpointing``), stopping on a signal with a checkpoint (``preemption``), a CSV log that survives
resumes (``loggers``) and the callbacks the configs name (``callbacks``)."""
