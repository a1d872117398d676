"""The description stage: prompts, LMM backends, the collage, the SQLite store and the concurrent runner."""
