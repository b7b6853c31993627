"""Text data: chat rendering with exact prompt/completion boundaries, preference pairs, SFT
sequences, and their collation into :class:`TextBatch`."""
