"""Data: from records to batches. ``records`` reads JSONL files and hub datasets (errors name the file and
line); ``pairs``, ``dialogues`` and ``templates`` tokenize records into examples; ``examples`` names the kinds
of example an objective can read (pairs, dialogues, unpaired completions); ``batches`` is the one place that
pads examples into typed batches; ``samplers`` and ``datamodule`` feed them to Lightning, resumably."""
