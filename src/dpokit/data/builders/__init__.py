"""Where pairs come from: builders that turn votes, scored answers, samples and failures into
``prompt, chosen, rejected`` rows with provenance columns, each with a report of what was kept
and what was dropped, by reason. Text only, no tokenizer, no model: a sampler or a reward is
passed in as a function."""

from .common import BuildReport, BuiltPairs, write_rows
from .failures import DEGENERATE, DETECTORS, FailureSettings, detect_failures, failure_pairs
from .sample import PromptRow, SampleText, ScoredSamples, prompt_rows, sample_pairs, score_samples
from .scored import PAIRINGS, ScoredGroup, ScoredSettings, pair_scored, scored_groups
from .votes import VoteRules, reddit_rows, threads_rows, vote_pairs

__all__ = ["DEGENERATE", "DETECTORS", "PAIRINGS", "BuildReport", "BuiltPairs", "FailureSettings",
           "PromptRow", "SampleText", "ScoredGroup", "ScoredSamples", "ScoredSettings",
           "VoteRules", "detect_failures", "failure_pairs", "pair_scored", "prompt_rows",
           "reddit_rows", "sample_pairs", "score_samples", "scored_groups", "threads_rows",
           "vote_pairs",
           "write_rows"]
